"""Does restart successive halving find a better policy than full-budget search for the same compute?

Each method runs a real sweep (local Ray, a throw-away sqlite MLflow store) of the same space, the
same base policy and the same per-trial budget, then the usual confirmation stage (the top searched
policy and the baselines, ``--confirm-seeds`` fresh seeds each, at the full budget). The headline
is deterministic: budgets are sample passes (``--samples`` per trial), and every method gets the
same search compute: ``--trials`` (+ the baselines) full-budget trials' worth of sample passes. A
full-budget sweep spends it on that many trials; a restart sweep (``--trials`` buys the same
compute there) on as many configurations as it buys with rungs ``B/eta^2, B/eta, B``. What a user
gets, wall time, is reported next to it: the search stage's wall seconds, and the wall seconds
until the sweep first had a full-budget (top-rung) trial as good as the full-budget TPE sweeps'
mean confirmed best (the issue's bar: restart halving should get there in half the time). Methods:

* ``random_full``: random search, every trial at the full budget;
* ``tpe_full``: TPE at the full budget (the default sweep);
* ``tpe_restart``: TPE over restart successive halving.

Reported per method, mean ± std over ``--seeds`` paired sweep seeds: the confirmed best (the best
searched policy's confirmed mean validation metric, and its test accuracy), policies tried, search
sample passes and wall seconds, the time to the bar; for restart sweeps the rank correlations
between rungs.

Usage:
    python bench/search_efficiency.py --samples 20000                  # clean Fashion-MNIST CNN, 3 seeds
    python bench/search_efficiency.py --space search_spaces/fashion_mnist_noisy.yaml --samples 275000 --seeds 4
    python bench/search_efficiency.py --samples 10000 --trials 4 --seeds 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
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


def one_sweep(space_path: Path, method: str, seed: int, trials: int, args: argparse.Namespace) -> dict:
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
                trials=trials, concurrency=args.concurrency, seed=seed, quiet=True, confirm_top=1,
                confirm_seeds=args.confirm_seeds, name=f"{method}-{seed}", eta=args.eta, **METHODS[method]))
            wall = time.time() - t0
            client = MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow' / 'mlflow.db'}")
            exp = client.get_experiment_by_name(outcome.experiment).experiment_id
            runs = client.search_runs([exp], max_results=5000)
            parent = client.get_run(outcome.parent_id)
        finally:
            os.chdir(here)
    everything = [r for r in runs if r.data.tags.get("stage") == "search"]
    search = sorted((r for r in everything if r.info.status == "FINISHED"), key=lambda r: r.info.end_time)
    top1 = next((c for c in outcome.candidates if c.name == "top1"), None)
    confirm = [r for r in runs if r.data.tags.get("candidate") == "top1"]
    metric = parent.data.tags["metric"]
    rungs = {int(r.data.tags["rung"]) for r in search if "rung" in r.data.tags}
    # the search trials as they ended: wall seconds since the first one started, full budget (top rung)
    # or not, value; the time to the bar is computed once every method has run
    begin = min((r.info.start_time for r in everything), default=0) / 1000.0
    top = str(max(rungs)) if rungs else None
    timeline = [((r.info.end_time / 1000.0) - begin, top is None or r.data.tags.get("rung") == top,
                 r.data.metrics.get(metric)) for r in search]
    return {"method": method, "seed": seed, "wall": wall, "search_wall": parent.data.metrics.get("search_wall_seconds"),
            "passes": sum(r.data.metrics.get("sample_passes_charged", 0.0) for r in search),
            "configs": len({r.data.tags.get("config") or r.info.run_id for r in search}), "trials": len(search),
            "confirmed": top1.mean if top1 and top1.values else None,
            "test": statistics.fmean(r.data.metrics["test_accuracy"] for r in confirm) if confirm else None,
            "timeline": timeline, "metric": metric,
            "rank": {k: v for k, v in parent.data.metrics.items() if k.startswith("rank_")}}


def time_to(bar: float, r: dict) -> float | None:
    """Wall seconds of search until a full-budget (top-rung) trial first reached ``bar``."""
    return next((t for t, full, v in r["timeline"] if full and v is not None and v >= bar), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces/fashion_mnist_cnn.yaml"))
    ap.add_argument("--samples", type=float, default=30000, help="per-trial budget in sample passes (default 30000)")
    ap.add_argument("--trials", type=int, default=9, help="full-budget searched trials (default 9, + the baselines)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--confirm-seeds", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", help="also write every sweep's figures as JSON here")
    args = ap.parse_args()

    from tunebudget.cli import quiet_libraries

    quiet_libraries(False)
    import yaml

    data = yaml.safe_load(Path(args.space).read_text())
    data["budget"] = {**data.get("budget", {}), "seconds": None, "samples": args.samples}
    n_base = len(data.get("baselines") or [])
    results = []
    with tempfile.TemporaryDirectory() as spaces:
        space = Path(spaces) / Path(args.space).name
        space.write_text(yaml.safe_dump(data, sort_keys=False))
        for seed in range(args.seeds):  # paired: every method sees the same sweep seeds
            for method in args.methods.split(","):
                r = one_sweep(space, method, seed, args.trials, args)
                results.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))

    def ms(xs: list) -> str:
        xs = [x for x in xs if x is not None]
        if not xs:
            return "—"
        return f"{statistics.fmean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"

    tpe = [r["confirmed"] for r in results if r["method"] == "tpe_full" and r["confirmed"] is not None]
    bar = statistics.fmean(tpe) if tpe else None
    print(f"# search efficiency: {Path(args.space).stem}, {args.samples:g} sample passes per trial, the compute of "
          f"{args.trials} + {n_base} full-budget trials per sweep (restart: rungs B/{args.eta}^2, B/{args.eta}, B), "
          f"{args.concurrency} concurrent, {args.seeds} paired sweep seeds\n")
    bar_text = f"{bar:.4f}" if bar is not None else "—"
    print(f"| method | confirmed best (val) | its test accuracy | policies tried | trials | search passes (M) | "
          f"search wall s | search wall s until a full-budget trial reached {bar_text} (TPE full's confirmed best) |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        rs = [r for r in results if r["method"] == method]
        hit = [t for t in (time_to(bar, r) for r in rs) if t is not None] if bar is not None else []
        when = (f"{statistics.median(hit):.0f} ({len(hit)}/{len(rs)})" if hit else
                f"never (0/{len(rs)})" if bar is not None else "— (no tpe_full run)")
        print(f"| {method} | {ms([r['confirmed'] for r in rs])} | {ms([r['test'] for r in rs])} | "
              f"{statistics.fmean(r['configs'] for r in rs):.1f} | {statistics.fmean(r['trials'] for r in rs):.1f} | "
              f"{statistics.fmean(r['passes'] for r in rs) / 1e6:.2f} | "
              f"{statistics.fmean(r['search_wall'] or 0 for r in rs):.0f} | {when} |")
    paired = {}
    for r in results:
        paired.setdefault(r["seed"], {})[r["method"]] = r["confirmed"]
    diffs = [p["tpe_restart"] - p["tpe_full"] for p in paired.values()
             if p.get("tpe_restart") is not None and p.get("tpe_full") is not None]
    if diffs:
        sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        print(f"\nRestart minus full-budget TPE, confirmed best, paired by sweep seed: {statistics.fmean(diffs):+.4f} "
              f"(std {sd:.4f}, {len(diffs)} seeds: {', '.join(f'{d:+.4f}' for d in diffs)})")
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
