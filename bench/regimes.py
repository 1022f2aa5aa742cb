"""Where does selection pay? Data regimes x policies x paired seeds, under a deterministic sample
budget (the headline: no machine noise) and under wall clock (what a user gets).

Regimes (Fashion-MNIST; a regime changes the training split only, validation and test stay clean):

* ``clean_cnn``: the small CNN for 2 epochs (110k sample passes);
* ``clean_small``: the MLP on a 11k-sample subset for 25 passes over it (275k sample passes);
* ``noise20``, ``noise40``: 20% / 40% symmetric label noise; ``pairs30``: 30% of the labels
  flipped to the confusable class; ``dup3``: 3x redundancy (a third of the samples, repeated a
  geometric number of times); ``longtail10``: a 10:1 long tail. All with the MLP for 275k sample
  passes (5 epochs of the clean training split).

Every policy shares the base policy of ``search_spaces/fashion_mnist_cnn.yaml`` (SGD, LR 0.1
decaying linearly to zero at the end of the budget, batch 128) and, within a regime, the same
budget and the same seeds (seed s: the same data split, label noise, initialisation for every
policy). Selective policies keep half the data (``ratio`` 0.5). Nothing is tuned per method.

The wall-clock budget of a regime is the median training time of full data + linear decay under
the sample budget, measured in the same run: the same amount of machine time, every scoring pass
and irreducible-loss model charged.

Per regime and policy: test accuracy mean ± std, the difference to full + linear, Welch's one-sided
test, whether it beats full + linear beyond the seed noise (difference larger than both standard
deviations and p < 0.05), the speedup (budget / the first point at which the validation accuracy
reached full + linear's final one; >= 1.67 means at most 0.6 of the budget), and for the noise
regimes the share of trained samples whose label was wrong.

Output (``--out``, default ``bench/results/cpu``): ``regimes.md``, ``regimes.json`` (every run),
``regimes_delta.png``, ``regimes_curves.png``; logged to MLflow (experiment ``bench_regimes``).

**The many-pass suite** (``--suite many``): small data sets and budgets that buy many passes over
them, where full data memorises wrong labels. The MLP on a 10k or a 5k subset of the training split,
clean, 20% and 40% symmetric noise, 30% pair noise, at 20 and 50 passes over the subset (``10k_n40_50p``
...), plus ``cnn_10k_n40_20p`` (the CNN, ``--regimes`` it in: ~10 min more). Every policy of the short
suite, and the baselines that train less: full + linear at ``budget.use`` shares 0.05-0.5 with the share
chosen **per seed on validation** (``full_best_use``), full + linear with the best validated weights
(``full_keep_best``); small-loss selection, top-k with the noise rate estimated (``small_loss_topk``,
``ratio: auto``; its best share chosen on validation too, ``small_loss_topk_best_use``), online, and with
the noise rate known (``small_loss_topk_known``, co-teaching's setting: tau = the noise rate, ramped over 5%
of the budget). A reference no policy has: full + linear on the clean samples only (``oracle_clean``, and
at its best share), in the noisy 10k 50-pass regimes. Every policy is compared with **the strongest full-data baseline** (of full + linear,
``full_best_use`` and ``full_keep_best``, the one with the best mean test accuracy: the choice favours the
baseline) by a **paired** test over the seeds. The 50-pass 10k regimes (the headline) run every policy
with 5 seeds; the others a core set with 3. Output: ``many_passes.md``, ``many_passes.json``,
``memorisation.png`` (test accuracy against passes over the data).

Usage:
    python bench/regimes.py                                   # ~45 min on 2 cores
    python bench/regimes.py --best noise40=best_policy.yaml   # adds a sweep's best policy to a regime
    python bench/regimes.py --regimes noise40 --seeds 2 --wall-seeds 0   # a quick look
    python bench/regimes.py --suite many                      # small noisy data, many passes (~1 h)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MLP_PASSES = 275_000  # 5 epochs of the 55k clean training split
REGIMES: dict[str, dict[str, Any]] = {
    "clean_cnn": {"task": {"model": "cnn"}, "samples": 110_000, "eval_every": 0.2},
    "clean_small": {"task": {"model": "mlp", "train_subset": 11_000}, "samples": MLP_PASSES},
    "noise20": {"task": {"model": "mlp", "label_noise": 0.2}, "samples": MLP_PASSES},
    "noise40": {"task": {"model": "mlp", "label_noise": 0.4}, "samples": MLP_PASSES},
    "pairs30": {"task": {"model": "mlp", "label_noise": 0.3, "noise_kind": "pairs"}, "samples": MLP_PASSES},
    "dup3": {"task": {"model": "mlp", "duplicates": 3}, "samples": MLP_PASSES},
    "longtail10": {"task": {"model": "mlp", "imbalance": 10}, "samples": MLP_PASSES},
}
SHORT = list(REGIMES)
NOISE = {"clean": {}, "n20": {"label_noise": 0.2}, "n40": {"label_noise": 0.4},
         "pairs30": {"label_noise": 0.3, "noise_kind": "pairs"}}
MANY = []
for _n in (10_000, 5_000):
    for _passes in (50, 20):
        for _tag, _noise in NOISE.items():
            MANY.append(f"{_n // 1000}k_{_tag}_{_passes}p")
            REGIMES[MANY[-1]] = {"task": {"model": "mlp", "train_subset": _n, **_noise}, "samples": _n * _passes,
                                 "eval_every": 0.02, "passes": _passes, "seeds": 5 if _passes == 50 and _n == 10_000 else 3,
                                 "all_policies": _passes == 50 and _n == 10_000}
REGIMES["cnn_10k_n40_20p"] = {"task": {"model": "cnn", "train_subset": 10_000, "label_noise": 0.4}, "samples": 200_000,
                              "eval_every": 0.02, "passes": 20, "seeds": 3, "cnn": True}
SUITES = {"short": SHORT, "many": MANY}
RATIO = 0.5
EPOCH_LEVEL = {"ratio": RATIO, "warmup": 0.2, "rerank_every": 2, "final_full": 0.1}
POLICIES: dict[str, dict[str, Any]] = {
    "full_linear": {"strategy": "full"},
    "rs2": {"strategy": "rs2", "ratio": RATIO},
    "topk_random": {"strategy": "topk", "scorer": "random", **EPOCH_LEVEL},  # top-k's phases, no scorer
    "topk_loss": {"strategy": "topk", "scorer": "loss", **EPOCH_LEVEL},
    "topk_margin": {"strategy": "topk", "scorer": "margin", **EPOCH_LEVEL},
    "topk_entropy": {"strategy": "topk", "scorer": "entropy", **EPOCH_LEVEL},
    "infobatch": {"strategy": "infobatch", "scorer": "loss", "ratio": RATIO, "final_full": 0.125},
    "topk_reducible": {"strategy": "topk", "scorer": "reducible", **EPOCH_LEVEL},
    "online_loss": {"strategy": "online", "scorer": "loss", "ratio": RATIO},
    "online_margin": {"strategy": "online", "scorer": "margin", "ratio": RATIO},
    "online_reducible": {"strategy": "online", "scorer": "reducible", "ratio": RATIO},
}
REFERENCE = "full_linear"
SPACE = ROOT / "search_spaces" / "fashion_mnist_cnn.yaml"

#: Many-pass suite: shares of the budget for the train-less baselines (1.0 is full_linear itself).
USE_SHARES = (0.05, 0.1, 0.2, 0.3, 0.5)
SMALL_LOSS = {"strategy": "topk", "scorer": "small_loss", "ratio": "auto", "warmup": 0.05, "shrink_span": 0.05}
SMALL_LOSS_SHARES = (0.2, 0.5)
#: name -> {selection, training, budget}; "member_of": a run whose best share (per seed, on validation)
#: makes the derived policy; "known": ratio = 1 - the regime's noise rate (noisy regimes only).
MANY_POLICIES: dict[str, dict[str, Any]] = {
    "full_linear": {"selection": {"strategy": "full"}},
    **{f"full_use{u:g}": {"selection": {"strategy": "full"}, "budget": {"use": u}, "member_of": "full_best_use"}
       for u in USE_SHARES},
    "full_keep_best": {"selection": {"strategy": "full"}, "training": {"keep_best": True}},
    **{name: {"selection": sel} for name, sel in POLICIES.items() if name not in ("full_linear", "topk_random")},
    "small_loss_topk": {"selection": SMALL_LOSS},
    **{f"small_loss_topk_use{u:g}": {"selection": SMALL_LOSS, "budget": {"use": u}, "member_of": "small_loss_topk_best_use"}
       for u in SMALL_LOSS_SHARES},
    "small_loss_online": {"selection": {**SMALL_LOSS, "strategy": "online"}},
    "small_loss_topk_known": {"selection": {"strategy": "topk", "scorer": "small_loss", "shrink_span": 0.05}, "known": True},
    # the ceiling: full + linear on the clean samples only (an oracle), at its best share; noisy headline regimes
    "oracle_clean": {"selection": {"strategy": "full"}, "oracle": True},
    **{f"oracle_clean_use{u:g}": {"selection": {"strategy": "full"}, "budget": {"use": u}, "oracle": True,
                                  "member_of": "oracle_clean_best_use"} for u in (0.1, 0.2, 0.5)},
}
#: Reference rows, neither a full-data baseline nor a selective policy.
ORACLE = ("oracle_clean", "oracle_clean_best_use")
#: Derived policies: the best share of their members (and of the whole-budget run), per seed, on validation.
BEST_USE = {"full_best_use": "full_linear", "small_loss_topk_best_use": "small_loss_topk",
            "oracle_clean_best_use": "oracle_clean"}
FULL_DATA = ("full_linear", "full_best_use", "full_keep_best")
CORE = ["full_linear", *(f"full_use{u:g}" for u in USE_SHARES), "full_keep_best", "rs2", "topk_margin",
        "topk_reducible", "online_reducible", "small_loss_topk", *(f"small_loss_topk_use{u:g}" for u in SMALL_LOSS_SHARES),
        "small_loss_online", "small_loss_topk_known"]
CNN = ["full_linear", *(f"full_use{u:g}" for u in USE_SHARES), "full_keep_best", "small_loss_topk",
       "small_loss_online", "small_loss_topk_known"]


# ---- one run (in a worker process) ----------------------------------------------------------------

_DATA: dict[str, Any] = {}


def make_policy(regime: str, name: str, selection: dict, training: dict, kind: str, budget: float, seed: int,
                budget_extra: Optional[dict] = None):
    from tunebudget.policy import load_policy, policy_from_dict

    r = REGIMES[regime]
    data = load_policy(SPACE).to_dict()
    data["name"] = f"{regime}/{name}"
    data["task"].update(r["task"])
    if r["task"]["model"] != "cnn":
        data["task"]["model_options"] = {}
    data["budget"] = {**data["budget"], "seconds": budget if kind == "seconds" else None,
                      "samples": budget if kind == "samples" else None,
                      "eval_every": r.get("eval_every", 0.1), "eval_samples": None, **(budget_extra or {})}
    data["training"].update(training)
    data["selection"] = dict(selection)
    data["seed"] = seed
    return policy_from_dict(data, data["name"])


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from tunebudget.data import load_data
    from tunebudget.trainer import BudgetTrainer

    torch.set_num_threads(1)
    policy = make_policy(job["regime"], job["policy"], job["selection"], job["training"], job["kind"],
                         job["budget"], job["seed"], job.get("budget_extra"))
    key = json.dumps([policy.task.model_dump(mode="json"), policy.seed], sort_keys=True)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_data(policy.task, policy.seed, "cpu")
    data = _DATA[key]
    if job.get("oracle"):  # a reference no policy has: only the samples whose label is right
        import dataclasses

        data = dataclasses.replace(data, train=data.train.subset(~data.train.noisy))
    t0 = time.perf_counter()
    result = BudgetTrainer(policy, device="cpu", data=data).run()
    s = result.stats
    return {**{k: job[k] for k in ("regime", "policy", "seed", "kind", "budget")},
            "status": result.status, "wall_seconds": time.perf_counter() - t0,
            "test_accuracy": result.test.get("accuracy", float("nan")),
            "val_accuracy": result.val.get("accuracy", float("nan")),
            **{k: s.get(k) for k in ("train_seconds", "scoring_seconds", "il_seconds", "samples_seen",
                                     "sample_passes_charged", "candidates_scored", "mislabelled_share", "train_size",
                                     "noise_estimate", "kept_progress", "budget_use", "unspent_share")},
            "history": [{"progress": h["progress"], "train_seconds": h["train_seconds"],
                         "val_accuracy": h["val_accuracy"]} for h in result.history]}


def _job_key(job: dict[str, Any]) -> str:
    return json.dumps([job[k] for k in ("regime", "policy", "seed", "kind")] + [round(float(job["budget"]), 6)])


def run_all(jobs: list[dict[str, Any]], workers: int, label: str,
            reuse: Optional[list[dict[str, Any]]] = None) -> list[dict[str, Any]]:
    """Run the jobs (a row per run); rows of ``reuse`` that match a job (regime, policy, seed, kind,
    budget) are taken instead of running it again (a resumed or extended benchmark)."""
    done = {_job_key(r): r for r in reuse or []}
    rows = [done[_job_key(j)] for j in jobs if _job_key(j) in done]
    jobs = [j for j in jobs if _job_key(j) not in done]
    if rows:
        print(f"[{label}] {len(rows)} runs reused, {len(jobs)} to run", file=sys.stderr, flush=True)
    t0 = time.time()
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=None) as pool:
        for i, row in enumerate(pool.imap(run_job, jobs, chunksize=1)):
            rows.append(row)
            print(f"[{label} {i + 1}/{len(jobs)} {time.time() - t0:5.0f}s] {row['regime']:11s} seed {row['seed']} "
                  f"{row['policy']:17s} test {row['test_accuracy']:.4f} ({row['wall_seconds']:.1f} s)",
                  file=sys.stderr, flush=True)
    return rows


def jobs_for(regimes: list[str], policies: dict[str, dict], seeds: int, kind: str,
             budgets: dict[str, float]) -> list[dict[str, Any]]:
    """Regime by regime, seed by seed, every policy: both workers run neighbouring jobs of one
    regime, so machine load falls on every policy alike."""
    return [{"regime": r, "policy": name, "seed": seed, "kind": kind, "budget": budgets[r],
             "selection": p["selection"], "training": p.get("training", {})}
            for r in regimes for seed in range(seeds) for name, p in policies.items()
            if name != "sweep_best" or r in p.get("regimes", ())]


def many_jobs(regimes: list[str], kind: str, budgets: dict[str, float], seeds: Optional[int] = None,
              best: Optional[dict[str, Any]] = None, core_only: bool = False) -> list[dict[str, Any]]:
    """The many-pass suite's runs, regime by regime and seed by seed (a worker's data cache holds)."""
    jobs = []
    for regime in regimes:
        r = REGIMES[regime]
        names = CNN if r.get("cnn") else (list(MANY_POLICIES) if r.get("all_policies") and not core_only else CORE)
        noise = r["task"].get("label_noise", 0.0)
        specs = {n: MANY_POLICIES[n] for n in names
                 if not ((MANY_POLICIES[n].get("known") or MANY_POLICIES[n].get("oracle")) and noise == 0)}
        if best and regime in best["regimes"]:
            specs["sweep_best"] = best
        for seed in range(seeds or r["seeds"]):
            for name, spec in specs.items():
                selection = dict(spec["selection"])
                if spec.get("known"):
                    selection["ratio"] = round(1 - noise, 4)
                jobs.append({"regime": regime, "policy": name, "seed": seed, "kind": kind, "budget": budgets[regime],
                             "selection": selection, "training": spec.get("training", {}),
                             "budget_extra": spec.get("budget"), "oracle": bool(spec.get("oracle"))})
    return jobs


def _by_seed(rows: list[dict], name: str) -> dict[int, dict]:
    return {r["seed"]: r for r in rows if r["policy"] == name}


def _derived(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """Per policy, its runs by seed; a BEST_USE policy is, per seed, the run of its members (the
    whole-budget run included) with the best validation accuracy: the share a user would pick."""
    out = {name: _by_seed(rows, name) for name in dict.fromkeys(r["policy"] for r in rows)}
    for derived, whole in BEST_USE.items():
        members = [whole] + [n for n, p in MANY_POLICIES.items() if p.get("member_of") == derived]
        seeds = set.intersection(*(set(out.get(m, {})) for m in members)) if all(m in out for m in members) else set()
        if seeds:
            out[derived] = {k: max((out[m][k] for m in members), key=lambda r: r["val_accuracy"]) for k in sorted(seeds)}
    return out


def _mean(runs: dict[int, dict], key: str = "test_accuracy") -> float:
    return statistics.fmean(r[key] for r in runs.values())


def summarise_many(rows: list[dict], kind: str) -> tuple[list[str], dict]:
    """Per regime: every policy against the strongest full-data baseline (paired over seeds), and a
    headline row per regime."""
    from tunebudget.sweep.report import paired

    lines, table = [], {}
    head = ["", "| regime | full + linear | strongest full-data baseline | best selective (chosen on validation) | "
            "Δ (points) [95% CI] | paired t p | beats it? |", "|---" * 7 + "|"]
    for regime in dict.fromkeys(r["regime"] for r in rows):
        mine = [r for r in rows if r["regime"] == regime and r["kind"] == kind and r["status"] == "completed"]
        if not mine:
            continue
        runs = _derived(mine)
        base_name = max((n for n in FULL_DATA if n in runs), key=lambda n: _mean(runs[n]))
        base = {k: r["test_accuracy"] for k, r in runs[base_name].items()}
        full = {k: r["test_accuracy"] for k, r in runs[REFERENCE].items()}
        unit = "sample passes" if kind == "samples" else "s"
        lines += ["", f"### {regime} ({mine[0]['budget']:g} {unit}; strongest full-data baseline: {base_name}, "
                  f"{_mean(runs[base_name]) * 100:.2f})", "",
                  "| policy | test accuracy (%) | Δ vs strongest (points) [95% CI] | paired t p | Wilcoxon p | beats it? | "
                  "Δ vs full_linear | mislabelled share | noise estimate | share used | val accuracy (%) |",
                  "|---" * 11 + "|"]
        shown = [n for n in runs if not MANY_POLICIES.get(n, {}).get("member_of")]
        for name in shown:
            got = runs[name]
            acc = [r["test_accuracy"] for r in got.values()]
            mine_by_seed = {k: r["test_accuracy"] for k, r in got.items()}
            cmp = paired(mine_by_seed, base) if name != base_name else None
            vs_full = paired(mine_by_seed, full) if name != REFERENCE else None
            mis = [r["mislabelled_share"] for r in got.values() if r.get("mislabelled_share") is not None]
            est = [r["noise_estimate"] for r in got.values() if r.get("noise_estimate") is not None]
            use = [r.get("budget_use") or 1.0 for r in got.values()]
            std = statistics.stdev(acc) * 100 if len(acc) > 1 else 0.0
            lines.append(
                f"| {name} | {statistics.fmean(acc) * 100:.2f} ± {std:.2f} (n={len(acc)}) | "
                + (f"{cmp.diff * 100:+.2f} [{cmp.low * 100:+.2f}, {cmp.high * 100:+.2f}] | {cmp.p:.3f} | "
                   f"{cmp.p_wilcoxon:.3f} | {'**yes**' if cmp.beats else 'no'} | " if cmp else "— | — | — | — | ")
                + (f"{vs_full.diff * 100:+.2f} | " if vs_full else "— | ")
                + (f"{statistics.fmean(mis) * 100:.1f}% | " if mis else "— | ")
                + (f"{statistics.fmean(est):.2f} | " if est else "— | ")
                + f"{'/'.join(f'{u:g}' for u in use) if len(set(use)) > 1 else f'{use[0]:g}'} | "
                + f"{_mean(got, 'val_accuracy') * 100:.2f} |")
            table[(regime, name)] = {"mean": statistics.fmean(acc), "std": std / 100, "n": len(acc),
                                     "diff": cmp.diff if cmp else 0.0, "low": cmp.low if cmp else 0.0,
                                     "high": cmp.high if cmp else 0.0, "p": cmp.p if cmp else float("nan"),
                                     "beats": bool(cmp and cmp.beats), "baseline": base_name,
                                     "vs_full": vs_full.diff if vs_full else 0.0,
                                     "mislabelled": statistics.fmean(mis) if mis else None,
                                     "noise_estimate": statistics.fmean(est) if est else None,
                                     "val": _mean(got, "val_accuracy")}
        selective = [n for n in shown if n not in FULL_DATA and n not in ORACLE]
        if selective:
            pick = max(selective, key=lambda n: table[(regime, n)]["val"])
            t = table[(regime, pick)]
            head.append(f"| {regime} | {_mean(runs[REFERENCE]) * 100:.2f} | {base_name} {_mean(runs[base_name]) * 100:.2f} | "
                        f"{pick} {t['mean'] * 100:.2f} | {t['diff'] * 100:+.2f} [{t['low'] * 100:+.2f}, "
                        f"{t['high'] * 100:+.2f}] | {t['p']:.3f} | {'**yes**' if t['beats'] else 'no'} |")
            table[(regime, "_headline")] = {"pick": pick, **t}
    return head + lines, table


def plot_memorisation(rows: list[dict], out: Path) -> Path:
    """Test accuracy against the passes over the data actually trained (budget.use x passes): the
    memorisation curve of full + linear and the curve of small-loss top-k, per noise kind (10k subset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(NOISE), figsize=(4.2 * len(NOISE), 3.8), squeeze=False)
    samples = [r for r in rows if r["kind"] == "samples" and r["status"] == "completed"]
    for ax, tag in zip(axes[0], NOISE):
        for label, prefix, color in (("full + linear", "full_", "C0"), ("small-loss top-k", "small_loss_topk", "C3")):
            points: dict[float, list[float]] = {}
            for passes in (50, 20):
                regime = f"10k_{tag}_{passes}p"
                for r in samples:
                    if r["regime"] != regime or not (r["policy"] == (REFERENCE if prefix == "full_" else prefix)
                                                     or (r["policy"].startswith(prefix + "use") if prefix == "full_"
                                                         else r["policy"].startswith(prefix + "_use"))):
                        continue
                    points.setdefault(round((r.get("budget_use") or 1.0) * passes, 3), []).append(r["test_accuracy"] * 100)
            if points:
                xs = sorted(points)
                ax.plot(xs, [statistics.fmean(points[x]) for x in xs], "o-", color=color, label=label, ms=3)
        ax.set_xscale("log")
        ax.set_title(f"10k samples, {tag}", fontsize=9)
        ax.set_xlabel("passes over the data trained (budget.use x passes)", fontsize=8)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "memorisation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- summaries ---------------------------------------------------------------------------------------

def reach(history: list[dict], target: float) -> Optional[float]:
    """The first budget progress at which the validation accuracy reached ``target``."""
    return next((h["progress"] for h in history if h["val_accuracy"] >= target - 1e-12), None)


def summarise(rows: list[dict], kind: str) -> tuple[list[str], dict]:
    from tunebudget.sweep.report import beyond_noise
    from tunebudget.sweep.records import Candidate

    lines, table = [], {}
    for regime in dict.fromkeys(r["regime"] for r in rows):
        mine = [r for r in rows if r["regime"] == regime and r["kind"] == kind and r["status"] == "completed"]
        if not mine:
            continue
        ref_rows = [r for r in mine if r["policy"] == REFERENCE]
        ref = Candidate(REFERENCE, "baseline", {}, values=[r["test_accuracy"] for r in ref_rows])
        target = statistics.fmean(r["val_accuracy"] for r in ref_rows)
        budget = mine[0]["budget"]
        noisy = any(r["mislabelled_share"] is not None for r in mine)
        unit = "sample passes" if kind == "samples" else "s"
        lines += ["", f"### {regime} ({budget:g} {unit}; reference {REFERENCE} {ref.mean * 100:.2f} ± "
                  f"{ref.std * 100:.2f}, target val accuracy {target * 100:.2f})", "",
                  "| policy | test accuracy (%) | Δ vs full (points) | Welch p | beats full? | speedup | "
                  "trained samples | scoring + IL share |" + (" mislabelled share |" if noisy else ""),
                  "|---" * (8 + noisy) + "|"]
        for name in dict.fromkeys(r["policy"] for r in mine):
            pr = [r for r in mine if r["policy"] == name]
            c = Candidate(name, "searched", {}, values=[r["test_accuracy"] for r in pr])
            diff, p, beats = beyond_noise(c, ref) if name != REFERENCE else (0.0, float("nan"), False)
            times = [reach(r["history"], target) for r in pr]
            got = [t for t in times if t is not None]
            speed = f"{1 / statistics.fmean(got):.2f}x ({len(got)}/{len(times)})" if got else f"— (0/{len(times)})"
            overhead = statistics.fmean((r["scoring_seconds"] + r["il_seconds"]) / max(r["train_seconds"], 1e-9)
                                        for r in pr)
            seen = statistics.fmean(r["samples_seen"] for r in pr)
            mis = (f" {statistics.fmean(r['mislabelled_share'] for r in pr) * 100:.1f}% |"
                   if noisy and pr[0]["mislabelled_share"] is not None else (" |" if noisy else ""))
            verdict = "**yes**" if beats else "no"
            lines.append(f"| {name} | {c.mean * 100:.2f} ± {c.std * 100:.2f} (n={len(c.values)}) | "
                         f"{diff * 100:+.2f} | {p:.3f} | {verdict if name != REFERENCE else '—'} | {speed} | "
                         f"{seen / 1000:.0f}k | {overhead * 100:.0f}% |{mis}")
            table[(regime, name)] = {"mean": c.mean, "std": c.std, "diff": diff, "p": p, "beats": beats,
                                     "speedup": 1 / statistics.fmean(got) if got else None,
                                     "reached": len(got), "n": len(times)}
    return lines, table


def plot(rows: list[dict], tables: dict[str, dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    kinds = [k for k in ("samples", "seconds") if tables.get(k)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        t = tables[kind]
        regimes = list(dict.fromkeys(r for r, _ in t))
        names = [n for n in dict.fromkeys(n for _, n in t) if n != REFERENCE]
        grid = np.full((len(names), len(regimes)), np.nan)
        for i, n in enumerate(names):
            for j, r in enumerate(regimes):
                if (r, n) in t:
                    grid[i, j] = t[(r, n)]["diff"] * 100
        lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for i, n in enumerate(names):
            for j, r in enumerate(regimes):
                if (r, n) in t:
                    mark = "*" if t[(r, n)]["beats"] else ""
                    ax.text(j, i, f"{grid[i, j]:+.1f}{mark}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(regimes)), regimes, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"test accuracy − full+linear (points), {'sample' if kind == 'samples' else 'wall-clock'} "
                     "budget\n* = beats it beyond the seed noise", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    paths.append(out / "regimes_delta.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    regimes = list(dict.fromkeys(r["regime"] for r in rows if r["kind"] == "samples"))
    fig, axes = plt.subplots(2, (len(regimes) + 1) // 2, figsize=(4 * ((len(regimes) + 1) // 2), 7), squeeze=False)
    for ax, regime in zip(axes.flat, regimes):
        names = list(dict.fromkeys(r["policy"] for r in rows if r["regime"] == regime))
        for i, name in enumerate(names):
            runs = [r for r in rows if r["regime"] == regime and r["policy"] == name and r["kind"] == "samples"]
            if not runs or not runs[0]["history"]:
                continue
            n = min(len(r["history"]) for r in runs)
            xs = [runs[0]["history"][k]["progress"] for k in range(n)]
            ys = [statistics.fmean(r["history"][k]["val_accuracy"] for r in runs) * 100 for k in range(n)]
            ax.plot(xs, ys, lw=1.2, color=f"C{i % 10}", ls="--" if name in (REFERENCE, "rs2") else "-",
                    label=name)
        ax.set_title(regime, fontsize=9)
        ax.set_xlabel("share of the sample budget", fontsize=8)
        ax.set_ylabel("val accuracy (%)", fontsize=8)
        lo = [line.get_ydata()[-1] for line in ax.get_lines()]
        if lo:
            ax.set_ylim(min(lo) - 6, max(lo) + 1.5)
    for ax in list(axes.flat)[len(regimes):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=7)
    fig.tight_layout()
    paths.append(out / "regimes_curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def load_best(specs: list[str]) -> Optional[dict[str, Any]]:
    """``REGIME=best_policy.yaml``: the sweep's selection and training sections join those regimes."""
    from tunebudget.policy import load_policy

    if not specs:
        return None
    regimes, policy = [], None
    for spec in specs:
        regime, _, path = spec.partition("=")
        if regime not in REGIMES or not path:
            raise SystemExit(f"--best {spec!r}: expected REGIME=path with REGIME one of {', '.join(REGIMES)}")
        policy = load_policy(path)
        regimes.append(regime)
    assert policy is not None
    return {"selection": policy.selection.model_dump(), "regimes": regimes, "budget": {"use": policy.budget.use},
            "training": {k: v for k, v in policy.training.model_dump().items() if k != "compile"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regimes", help="comma-separated (default: the suite's own)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--seeds", type=int, help="paired seeds under the sample budget (the headline; default 5, "
                    "and the many-pass suite's own per regime)")
    ap.add_argument("--wall-seeds", type=int, default=3, help="paired seeds under wall clock (0: skip)")
    ap.add_argument("--wall-regimes", help="regimes also run under wall clock (default: all but clean_cnn, whose runs take "
                    "36 s each with two at once; bench/selection_vs_baselines.py covers the clean CNN under wall clock; "
                    "many-pass suite: the 10k 50-pass regimes)")
    ap.add_argument("--workers", type=int, default=2, help="runs at once, one torch thread each")
    ap.add_argument("--best", action="append", default=[], metavar="REGIME=FILE",
                    help="a sweep's best policy for a regime (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu"))
    ap.add_argument("--tracking-uri", help="MLflow store (default ./mlflow)")
    ap.add_argument("--reuse", metavar="JSON", help="many-pass suite: take the runs of an earlier many_passes.json "
                    "instead of running them again (same regime, policy, seed, budget); run only what is missing")
    ap.add_argument("--suite", choices=list(SUITES), default="short",
                    help="short: the 5-pass regimes (default); many: small data sets, many passes (~1 h)")
    args = ap.parse_args()
    if args.suite == "many":
        return main_many(args)

    regimes = [r.strip() for r in (args.regimes or ",".join(SHORT)).split(",")]
    args.seeds = args.seeds or 5
    args.wall_regimes = args.wall_regimes or ",".join(r for r in SHORT if r != "clean_cnn")
    policies = {n: {"selection": POLICIES[n]} for n in (p.strip() for p in args.policies.split(","))}
    best = load_best(args.best)
    if best:
        policies["sweep_best"] = best
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = run_all(jobs_for(regimes, policies, args.seeds, "samples", {r: REGIMES[r]["samples"] for r in regimes}),
                   args.workers, "samples")
    seconds = {r: statistics.median(x["train_seconds"] for x in rows if x["regime"] == r and x["policy"] == REFERENCE)
               for r in regimes}
    wall = [r for r in regimes if r in args.wall_regimes.split(",")]
    if args.wall_seeds and wall:
        rows += run_all(jobs_for(wall, policies, args.wall_seeds, "seconds", seconds), args.workers, "wall")
    took = time.time() - t0
    tables, md = {}, [f"# Selection by data regime: Fashion-MNIST, CPU ({args.workers} runs at once, 1 thread each)",
                      "", f"Command: `python bench/regimes.py {' '.join(sys.argv[1:])}`; took {took / 60:.0f} min.",
                      "", "## Deterministic budget (sample passes; the headline)"]
    lines, tables["samples"] = summarise(rows, "samples")
    md += lines
    if args.wall_seeds:
        md += ["", "## Wall-clock budget (each regime: the median time full + linear took for its sample budget)"]
        lines, tables["seconds"] = summarise(rows, "seconds")
        md += lines
    (out / "regimes.md").write_text("\n".join(md) + "\n")
    (out / "regimes.json").write_text(json.dumps(rows))
    pngs = plot(rows, tables, out)
    print("\n".join(md))
    log_to_mlflow(args, out, pngs, tables, took)
    return 0


def main_many(args) -> int:
    """The many-pass suite: sample budget (the headline), then wall clock on the 10k 50-pass regimes."""
    regimes = [r.strip() for r in (args.regimes or ",".join(MANY)).split(",")]
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        raise SystemExit(f"--regimes: unknown regime {unknown[0]!r}; use {', '.join(MANY)} or cnn_10k_n40_20p")
    best = load_best(args.best)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    reuse = json.loads(Path(args.reuse).read_text()) if args.reuse else None
    rows = run_all(many_jobs(regimes, "samples", {r: REGIMES[r]["samples"] for r in regimes}, args.seeds, best),
                   args.workers, "samples", reuse)
    took_samples = time.time() - t0
    wall = [r.strip() for r in (args.wall_regimes or ",".join(r for r in regimes if r.startswith("10k_")
                                                                and r.endswith("_50p"))).split(",") if r.strip()]
    wall = [r for r in wall if r in regimes]
    if args.wall_seeds and wall:
        seconds = {r: statistics.median(x["train_seconds"] for x in rows if x["regime"] == r and x["policy"] == REFERENCE)
                   for r in wall}
        rows += run_all(many_jobs(wall, "seconds", seconds, args.wall_seeds, best, core_only=True), args.workers, "wall",
                        reuse)
    took = time.time() - t0
    reused = sum(1 for r in rows if any(r is x for x in reuse or []))
    again = f"; {reused} of its {len(rows)} runs taken from {args.reuse}, run before" if reused else ""
    md = [f"# Small noisy data, many passes: Fashion-MNIST, CPU ({args.workers} runs at once, 1 thread each)", "",
          f"Command: `python bench/regimes.py {' '.join(sys.argv[1:])}`; took {took / 60:.0f} min "
          f"({took_samples / 60:.0f} min under the sample budget){again}.", "",
          "Δ: paired over seeds (seed k: the same subset, label noise, validation split and initialisation for every "
          "policy) against the strongest full-data baseline of the regime (of full_linear, full_best_use and "
          "full_keep_best, the one with the best mean test accuracy); 95% CI of the mean difference; one-sided paired "
          "t-test and Wilcoxon signed-rank test; 'beats' = the interval lies above zero. *_best_use: per seed, the "
          "budget.use share (0.05-1) with the best validation accuracy. The best selective policy of the headline "
          "is the one with the best mean validation accuracy.", "", "## Deterministic budget (sample passes; the headline)"]
    tables = {}
    lines, tables["samples"] = summarise_many(rows, "samples")
    md += lines
    if any(r["kind"] == "seconds" for r in rows):
        md += ["", "## Wall-clock budget (each regime: the median time full + linear took for its sample budget; "
               f"{args.wall_seeds} paired seeds, the core policies)"]
        lines, tables["seconds"] = summarise_many(rows, "seconds")
        md += lines
    (out / "many_passes.md").write_text("\n".join(md) + "\n")
    (out / "many_passes.json").write_text(json.dumps(rows))
    pngs = [plot_memorisation(rows, out)]
    print("\n".join(md))
    flat = {kind: {k: v for k, v in t.items() if k[1] != "_headline"} for kind, t in tables.items()}
    log_to_mlflow(args, out, pngs, flat, took, files=("many_passes.md", "many_passes.json"), name="many_passes")
    return 0


def log_to_mlflow(args, out: Path, pngs: list[Path], tables: dict, took: float,
                  files: tuple[str, ...] = ("regimes.md", "regimes.json"), name: str = "regimes") -> None:
    from tunebudget.tracking import Tracker

    tracker = Tracker(args.tracking_uri)
    exp = tracker.experiment_id("bench_regimes")
    run = tracker.start_run(exp, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", {"command": " ".join(sys.argv)},
                            {"regimes": args.regimes, "seeds": args.seeds, "wall_seeds": args.wall_seeds,
                             "suite": args.suite})
    metrics = {"bench_minutes": took / 60}
    for kind, table in tables.items():
        for (regime, name), v in table.items():
            metrics[f"{kind}.{regime}.{name}.test_accuracy"] = v["mean"]
            metrics[f"{kind}.{regime}.{name}.delta_vs_full"] = v["diff"]
    tracker.log_metrics(run, metrics)
    for path in [*(out / f for f in files), *pngs]:
        tracker.log_file(run, path)
    tracker.finish(run)


if __name__ == "__main__":
    sys.exit(main())
