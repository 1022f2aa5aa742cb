"""Does the sweep's verdict see the effects that exist, and only those? Its false-positive rate and its
power, for the fixed confirmation with Welch's test (the verdict before paired seeds), the fixed
confirmation with the paired test, and the race, at the same confirmation compute.

Every run is a real training under the deterministic sample budget, so a policy's result on seed s is
a fixed number: a *pool* of seeds per policy is trained once, and each simulated confirmation stage
draws its confirmation seeds from the pool (in a random order, without replacement within a stage) and
applies tunebudget's own verdict (:func:`tunebudget.sweep.report.verdict`) and race
(:class:`tunebudget.sweep.race.Race`) to those results: exactly what the sweep would have measured with
those seeds. The metric is the sweep's, validation accuracy.

* **False positives** (digits MLP, 20,000 sample passes): "full + linear" against (a) an identical copy of
  itself under another name (paired seeds and a deterministic budget make every difference 0: it can
  never "beat"), and (b) a true null with noise: the same policy drawing its batches from another random
  stream (top-k with the random scorer at ratio 1.0: every sample every epoch, in another order). At least
  40 disjoint comparisons (5 seeds each): the rate of "beats" must be at most 5%.
* **Power**: (1) top-k by margin against full + linear and RS2 at 40% label noise, 5 passes (the short
  suite's noise40 regime, +0.42 test points there); (2) small-loss top-k (ratio auto) against full + linear
  at 0.1 and 0.2 of the budget at 10k samples, 40% noise, 50 passes (the many-pass suite's headline,
  +0.89 test points). Confirmation compute as the shipped noisy spaces: candidates x 5 seeds; the race
  starts testing after 3 and gives a candidate at most 10. Power = the share of simulated stages whose
  verdict says the effect's policy beats the best baseline.

Seeds in a pool are reused across simulated stages (a bootstrap over the pool), so the power's own
uncertainty is that of the pool's size, not of the number of stages; the table says both.

Usage:
    python bench/verdict_power.py                     # ~20 min on 2 cores
    python bench/verdict_power.py --pool 20 --stages 200   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import regimes as R  # noqa: E402  (the benchmark's runs: the same base policy, budgets and seeds)

R.REGIMES["digits"] = {"task": {"dataset": "digits", "model": "mlp", "val_size": 300}, "samples": 20_000,
                       "eval_every": 0.25}
SL = R.SMALL_LOSS
EXPERIMENTS: dict[str, dict[str, Any]] = {
    "null_copy": {"regime": "digits", "effect": None, "policies": {
        "full_linear": {"selection": {"strategy": "full"}}, "full_linear_copy": {"selection": {"strategy": "full"}}}},
    "null_stream": {"regime": "digits", "effect": None, "policies": {
        "full_linear": {"selection": {"strategy": "full"}},
        "full_other_stream": {"selection": {"strategy": "topk", "scorer": "random", "ratio": 1.0}}}},
    "margin_noise40_5p": {"regime": "noise40", "effect": "topk_margin", "policies": {
        "topk_margin": {"selection": R.POLICIES["topk_margin"]}, "full_linear": {"selection": {"strategy": "full"}},
        "rs2": {"selection": R.POLICIES["rs2"]}}},
    "small_loss_10k_n40_50p": {"regime": "10k_n40_50p", "effect": "small_loss_topk", "policies": {
        "small_loss_topk": {"selection": SL}, "full_use0.1": {"selection": {"strategy": "full"}, "budget": {"use": 0.1}},
        "full_use0.2": {"selection": {"strategy": "full"}, "budget": {"use": 0.2}}}},
}
SEEDS, FIRST_TEST, MAX_SEEDS = 5, 3, 10


def pool_jobs(name: str, n: int) -> list[dict[str, Any]]:
    e = EXPERIMENTS[name]
    r = R.REGIMES[e["regime"]]
    return [{"regime": e["regime"], "policy": p, "seed": seed, "kind": "samples", "budget": r["samples"],
             "selection": spec["selection"], "training": spec.get("training", {}), "budget_extra": spec.get("budget"),
             "experiment": name}
            for seed in range(n) for p, spec in e["policies"].items()]


def stage(values: dict[str, dict[int, float]], effect: str | None, seeds: list[int], how: str) -> dict[str, Any]:
    """One simulated confirmation stage on ``seeds`` (in order): the verdict, and the runs it used."""
    from tunebudget.sweep.report import verdict
    from tunebudget.sweep.records import Candidate
    from tunebudget.sweep.race import Race

    names = list(values)
    first = effect or names[0]  # the policy that would be the searched candidate
    cands = [Candidate(n, "searched" if n == first else "baseline", {}) for n in names]
    if how == "race":
        race = Race(cands, 1.0, FIRST_TEST, MAX_SEEDS, cap=len(cands) * SEEDS)
        while jobs := race.next_round():
            for c, k in jobs:
                c.values.append(values[c.name][seeds[k]])
                c.seeds.append(k)
        runs = race.runs
    else:
        for c in cands:
            c.values = [values[c.name][s] for s in seeds[:SEEDS]]
            c.seeds = list(range(SEEDS)) if how == "paired" else []
        runs = len(cands) * SEEDS
    v = verdict(cands, "max", "val_accuracy")
    return {"beats": bool(v.beats and v.best is not None and v.best.name == first), "runs": runs,
            "any_beats": bool(v.beats)}


def simulate(values: dict[str, dict[int, float]], effect: str | None, stages: int, disjoint: bool,
             rng: random.Random) -> dict[str, dict[str, float]]:
    pool = sorted(set.intersection(*(set(v) for v in values.values())))
    out = {}
    for how in ("welch", "paired", "race"):
        got = []
        if disjoint:  # independent comparisons: disjoint blocks of seeds (the race may use up to MAX_SEEDS)
            block = MAX_SEEDS if how == "race" else SEEDS
            for i in range(len(pool) // block):
                got.append(stage(values, effect, pool[i * block:(i + 1) * block], how))
        else:
            for _ in range(stages):
                got.append(stage(values, effect, rng.sample(pool, min(MAX_SEEDS, len(pool))), how))
        out[how] = {"rate": statistics.fmean(g["beats"] for g in got), "n": len(got),
                    "runs": statistics.fmean(g["runs"] for g in got)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=int, default=40, help="seeds trained per policy for the power experiments")
    ap.add_argument("--null-pool", type=int, default=400, help="seeds per policy for the false-positive ones "
                    "(disjoint blocks: 400 gives 80 fixed and 40 raced comparisons)")
    ap.add_argument("--stages", type=int, default=1000, help="simulated confirmation stages per power estimate")
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu"))
    ap.add_argument("--reuse", help="verdict_power.json of an earlier run: its pool runs are not run again")
    args = ap.parse_args()
    names = [n.strip() for n in args.experiments.split(",")]
    t0 = time.time()
    jobs = [j for n in names for j in pool_jobs(n, args.null_pool if EXPERIMENTS[n]["effect"] is None else args.pool)]
    reuse = json.loads(Path(args.reuse).read_text())["runs"] if args.reuse else None
    # copies: a reused row can serve two experiments' jobs (the same policy, regime and seed)
    runs = [{**row, "experiment": job["experiment"]} for job, row in zip(jobs, R.run_all(jobs, args.workers, "pool", reuse))]
    took = time.time() - t0
    rng = random.Random(0)
    lines = [f"# Verdict calibration: false positives and power (CPU, {args.workers} runs at once)", "",
             f"Command: `python bench/verdict_power.py {' '.join(sys.argv[1:])}`; took {took / 60:.0f} min. "
             f"Confirmation compute: candidates x {SEEDS} seeds; race: first test after {FIRST_TEST} seeds, at most "
             f"{MAX_SEEDS} per candidate. Metric: validation accuracy.", "",
             "| experiment | true effect (val, pool mean) | Welch, fixed | paired, fixed | race (paired) | race runs / fixed runs | "
             "comparisons | pool |", "|---" * 8 + "|"]
    table = {}
    for name in names:
        e = EXPERIMENTS[name]
        rows = [r for r in runs if r["experiment"] == name and r["status"] == "completed"]
        values = {p: {r["seed"]: r["val_accuracy"] for r in rows if r["policy"] == p} for p in e["policies"]}
        res = simulate(values, e["effect"], args.stages, e["effect"] is None, rng)
        first = e["effect"] or list(e["policies"])[0]
        others = [p for p in e["policies"] if p != first]
        best_base = max(others, key=lambda p: statistics.fmean(values[p].values()))
        effect = statistics.fmean(values[first].values()) - statistics.fmean(values[best_base].values())
        fixed_runs = len(e["policies"]) * SEEDS
        lines.append(f"| {name} ({first} vs {best_base}) | {effect * 100:+.2f} points | {res['welch']['rate']:.3f} | "
                     f"{res['paired']['rate']:.3f} | {res['race']['rate']:.3f} | "
                     f"{res['race']['runs']:.1f} / {fixed_runs} | {res['paired']['n']} fixed, {res['race']['n']} raced | "
                     f"{len(next(iter(values.values())))} seeds |")
        table[name] = {"effect": effect, **res}
    lines += ["", "False-positive rows (no true effect): the share of comparisons that said 'beats' (must be <= 0.05). "
              "Power rows: the share of simulated stages that said the effect's policy beats the best baseline."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdict_power.md").write_text("\n".join(lines) + "\n")
    (out / "verdict_power.json").write_text(json.dumps({"table": table, "runs": runs}))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
