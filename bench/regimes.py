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

Usage:
    python bench/regimes.py                                   # ~45 min on 2 cores
    python bench/regimes.py --best noise40=best_policy.yaml   # adds a sweep's best policy to a regime
    python bench/regimes.py --regimes noise40 --seeds 2 --wall-seeds 0   # a quick look
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


# ---- one run (in a worker process) ----------------------------------------------------------------

_DATA: dict[str, Any] = {}


def make_policy(regime: str, name: str, selection: dict, training: dict, kind: str, budget: float, seed: int):
    from tunebudget.policy import load_policy, policy_from_dict

    r = REGIMES[regime]
    data = load_policy(SPACE).to_dict()
    data["name"] = f"{regime}/{name}"
    data["task"].update(r["task"])
    if r["task"]["model"] != "cnn":
        data["task"]["model_options"] = {}
    data["budget"] = {**data["budget"], "seconds": budget if kind == "seconds" else None,
                      "samples": budget if kind == "samples" else None,
                      "eval_every": r.get("eval_every", 0.1), "eval_samples": None}
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
                         job["budget"], job["seed"])
    key = json.dumps([policy.task.model_dump(mode="json"), policy.seed], sort_keys=True)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_data(policy.task, policy.seed, "cpu")
    t0 = time.perf_counter()
    result = BudgetTrainer(policy, device="cpu", data=_DATA[key]).run()
    s = result.stats
    return {**{k: job[k] for k in ("regime", "policy", "seed", "kind", "budget")},
            "status": result.status, "wall_seconds": time.perf_counter() - t0,
            "test_accuracy": result.test.get("accuracy", float("nan")),
            "val_accuracy": result.val.get("accuracy", float("nan")),
            **{k: s[k] for k in ("train_seconds", "scoring_seconds", "il_seconds", "samples_seen",
                                 "sample_passes_charged", "candidates_scored", "mislabelled_share", "train_size")},
            "history": [{"progress": h["progress"], "train_seconds": h["train_seconds"],
                         "val_accuracy": h["val_accuracy"]} for h in result.history]}


def run_all(jobs: list[dict[str, Any]], workers: int, label: str) -> list[dict[str, Any]]:
    rows = []
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


# ---- summaries ---------------------------------------------------------------------------------------

def reach(history: list[dict], target: float) -> Optional[float]:
    """The first budget progress at which the validation accuracy reached ``target``."""
    return next((h["progress"] for h in history if h["val_accuracy"] >= target - 1e-12), None)


def summarise(rows: list[dict], kind: str) -> tuple[list[str], dict]:
    from tunebudget.report import Candidate, beyond_noise

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
    return {"selection": policy.selection.model_dump(), "regimes": regimes,
            "training": {k: v for k, v in policy.training.model_dump().items() if k != "compile"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regimes", default=",".join(REGIMES))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--seeds", type=int, default=5, help="paired seeds under the sample budget (the headline)")
    ap.add_argument("--wall-seeds", type=int, default=3, help="paired seeds under wall clock (0: skip)")
    ap.add_argument("--wall-regimes", default=",".join(r for r in REGIMES if r != "clean_cnn"),
                    help="regimes also run under wall clock (default: all but clean_cnn, whose runs take "
                         "36 s each with two at once; bench/selection_vs_baselines.py covers the clean CNN "
                         "under wall clock)")
    ap.add_argument("--workers", type=int, default=2, help="runs at once, one torch thread each")
    ap.add_argument("--best", action="append", default=[], metavar="REGIME=FILE",
                    help="a sweep's best policy for a regime (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu"))
    ap.add_argument("--tracking-uri", help="MLflow store (default ./mlflow)")
    args = ap.parse_args()

    regimes = [r.strip() for r in args.regimes.split(",")]
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


def log_to_mlflow(args, out: Path, pngs: list[Path], tables: dict, took: float) -> None:
    from tunebudget.tracking import Tracker

    tracker = Tracker(args.tracking_uri)
    exp = tracker.experiment_id("bench_regimes")
    run = tracker.start_run(exp, f"regimes-{time.strftime('%Y%m%d-%H%M%S')}", {"command": " ".join(sys.argv)},
                            {"regimes": args.regimes, "seeds": args.seeds, "wall_seeds": args.wall_seeds})
    metrics = {"bench_minutes": took / 60}
    for kind, table in tables.items():
        for (regime, name), v in table.items():
            metrics[f"{kind}.{regime}.{name}.test_accuracy"] = v["mean"]
            metrics[f"{kind}.{regime}.{name}.delta_vs_full"] = v["diff"]
    tracker.log_metrics(run, metrics)
    for path in [out / "regimes.md", out / "regimes.json", *pngs]:
        tracker.log_file(run, path)
    tracker.finish(run)


if __name__ == "__main__":
    sys.exit(main())
