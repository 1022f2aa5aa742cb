"""Does restart successive halving find a better policy than full-budget search at equal wall time?

Each method runs a real sweep (local Ray, a throw-away sqlite MLflow store) of the same space with
the same per-trial budget and the same search-stage wall time (``--search-time``: Tune stops the
search there; trials still running are killed and never count), then the usual confirmation stage
(the top searched policy and the baselines, ``--confirm-seeds`` fresh seeds each, at the full
budget). Methods:

* ``random_full``: random search, every trial at the full budget;
* ``tpe_full``: TPE at the full budget (the default sweep);
* ``tpe_restart``: TPE over restart successive halving (rungs budget/eta^2, budget/eta, budget).

Reported per method, mean ± std over ``--seeds`` sweep seeds: the confirmed best (the best searched
policy's confirmed mean validation metric, and its test accuracy), how many policies were tried, and
the search wall time at which a full-budget trial first reached ``--target``; for restart sweeps also
the rank correlations between rungs (does a short budget predict the long one?).

Usage:
    python bench/search_efficiency.py                                   # clean Fashion-MNIST CNN, 3 seeds
    python bench/search_efficiency.py --space search_spaces/fashion_mnist_noisy.yaml
    python bench/search_efficiency.py --budget 6 --search-time 60 --seeds 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = {
    "random_full": {"sampler": "random", "fidelity": "full"},
    "tpe_full": {"sampler": "tpe", "fidelity": "full"},
    "tpe_restart": {"sampler": "tpe", "fidelity": "restart"},
}


def one_sweep(space_path: str, method: str, seed: int, args: argparse.Namespace) -> dict:
    from mlflow.tracking import MlflowClient

    from tunebudget.spaces import load_space
    from tunebudget.sweep import SweepOptions, run_sweep

    space = load_space(space_path)
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            t0 = time.time()
            outcome = run_sweep(space, SweepOptions(
                trials=10_000, budget=args.budget, concurrency=args.concurrency, seed=seed, quiet=True,
                confirm_top=1, confirm_seeds=args.confirm_seeds, name=f"{method}-{seed}",
                search_seconds=args.search_time, eta=args.eta, **METHODS[method]))
            wall = time.time() - t0
            client = MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow' / 'mlflow.db'}")
            exp = client.get_experiment_by_name(outcome.experiment).experiment_id
            runs = client.search_runs([exp], max_results=5000)
            parent = client.get_run(outcome.parent_id)
        finally:
            os.chdir(here)
    search = sorted((r for r in runs if r.data.tags.get("stage") == "search" and r.info.status == "FINISHED"),
                    key=lambda r: r.info.end_time)
    top1 = next((c for c in outcome.candidates if c.name == "top1"), None)
    confirm = [r for r in runs if r.data.tags.get("candidate") == "top1"]
    metric = parent.data.tags["metric"]
    start = min(r.info.start_time for r in search) if search else 0
    rungs = {int(r.data.tags["rung"]) for r in search if "rung" in r.data.tags}
    full = [r for r in search if not rungs or r.data.tags.get("rung") == str(max(rungs))]  # the full budget
    reached = next(((r.info.end_time - start) / 1000 for r in full
                    if r.data.metrics.get(metric, -math.inf) >= args.target), None)
    return {"method": method, "seed": seed, "wall": wall, "configs": len({r.data.tags.get("config") or r.info.run_id
                                                                           for r in search}),
            "trials": len(search), "confirmed": top1.mean if top1 and top1.values else None,
            "test": statistics.fmean(r.data.metrics["test_accuracy"] for r in confirm) if confirm else None,
            "reached": reached,
            "rank": {k: v for k, v in parent.data.metrics.items() if k.startswith("rank_")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces/fashion_mnist_cnn.yaml"))
    ap.add_argument("--budget", type=float, default=10.0, help="per-trial budget, seconds (default 10)")
    ap.add_argument("--search-time", type=float, default=120.0, help="search-stage wall seconds per sweep")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--confirm-seeds", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.88, help="validation metric a full-budget trial must reach")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", help="also write every sweep's figures as JSON here")
    args = ap.parse_args()

    from tunebudget.cli import quiet_libraries

    quiet_libraries(False)
    results = []
    for seed in range(args.seeds):  # paired: every method sees the same sweep seeds
        for method in args.methods.split(","):
            r = one_sweep(args.space, method, seed, args)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))

    def ms(xs: list) -> str:
        xs = [x for x in xs if x is not None]
        if not xs:
            return "—"
        return f"{statistics.fmean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"

    print(f"# search efficiency: {Path(args.space).stem}, {args.budget:g} s per trial, {args.search_time:g} s of "
          f"search per sweep, {args.concurrency} concurrent, {args.seeds} sweep seeds\n")
    print(f"| method | confirmed best (val) | its test accuracy | policies tried | trials | "
          f"search s to reach {args.target:g} at full budget |")
    print("|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        rs = [r for r in results if r["method"] == method]
        reached = [r["reached"] for r in rs]
        hit = [x for x in reached if x is not None]
        when = f"{statistics.median(hit):.0f} ({len(hit)}/{len(rs)} reached)" if hit else f"never (0/{len(rs)})"
        print(f"| {method} | {ms([r['confirmed'] for r in rs])} | {ms([r['test'] for r in rs])} | "
              f"{statistics.fmean(r['configs'] for r in rs):.1f} | {statistics.fmean(r['trials'] for r in rs):.1f} | "
              f"{when} |")
    restart = [r for r in results if r["rank"]]
    if restart:
        print("\nRank correlations between rungs (restart sweeps; Spearman / Kendall, shared policies):\n")
        for r in restart:
            pairs = sorted({k.rsplit("_", 2)[-2] + "_" + k.rsplit("_", 1)[-1] for k in r["rank"]})
            text = "; ".join(f"{p}: {r['rank'].get('rank_spearman_' + p, float('nan')):.2f} / "
                             f"{r['rank'].get('rank_kendall_' + p, float('nan')):.2f} "
                             f"(n={r['rank'].get('rank_shared_' + p, 0):.0f})" for p in pairs)
            print(f"- seed {r['seed']}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
