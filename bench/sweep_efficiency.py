"""How much of a sweep's machine time goes into training: utilisation and per-trial overhead.

Runs a real sweep (local Ray, a throw-away sqlite MLflow store in a temporary directory) of the
Fashion-MNIST CNN space with ``--budget`` seconds per trial and ``--concurrency`` trials at once,
without the confirmation stage, then reads every trial back from MLflow and prints:

* ``utilisation`` = Σ trial training seconds / (wall seconds × concurrency), for the search stage
  (the Tuner's start, trial workers starting included, to its end: the figure every sweep logs on
  its parent run as ``search_utilisation``) and for the whole command (Ray start-up, a fresh MLflow
  store's set-up and the summary included). Validation and the test-set evaluation are not
  training: they count as overhead.
* ``per-trial overhead`` = a trial's wall time (MLflow run start to end, as the driver saw it)
  minus its training seconds: set-up, data loading (cached per worker), validation, reporting.

Usage:
    python bench/sweep_efficiency.py                          # the space's 17 + 3 baselines x 20 s, 2 concurrent
    python bench/sweep_efficiency.py --trials 9               # a shorter sweep: 6 rounds
    python bench/sweep_efficiency.py --trials 4 --budget 10   # quicker
    python bench/sweep_efficiency.py --fidelity restart --trials 9 --budget 18    # rungs of 2, 6, 18 s, the compute of 12 x 18 s
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces/fashion_mnist_cnn.yaml"))
    ap.add_argument("--trials", type=int, default=None,
                    help="searched trials (default: the space's own, 17 + 3 baselines = 10 full rounds of 2)")
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--fidelity", choices=["full", "restart"], default="full",
                    help="restart: successive halving with the budget as the fidelity (rungs budget/eta^2 .. budget)")
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--min-budget", type=float, help="restart: the smallest rung's budget (default budget/eta^2)")
    ap.add_argument("--json", help="also write the figures as JSON here")
    args = ap.parse_args()

    import os

    from mlflow.tracking import MlflowClient

    from tunebudget.cli import quiet_libraries

    quiet_libraries(False)
    json_out = Path(args.json).resolve() if args.json else None
    from tunebudget.spaces import load_space
    from tunebudget.sweep import SweepOptions, run_sweep

    space = load_space(args.space)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        t0 = time.time()
        outcome = run_sweep(space, SweepOptions(trials=args.trials, budget=args.budget, concurrency=args.concurrency,
                                                confirm_seeds=0, quiet=True, name="efficiency",
                                                fidelity=args.fidelity, eta=args.eta, min_budget=args.min_budget))
        wall = time.time() - t0
        client = MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow' / 'mlflow.db'}")
        everything = client.search_runs([client.get_experiment_by_name(outcome.experiment).experiment_id],
                                        max_results=1000)
        runs = [r for r in everything if r.data.tags.get("stage") == "search"]
        parent = client.get_run(outcome.parent_id).data.metrics  # the sweep's own record of its efficiency
    train = [r.data.metrics.get("train_seconds", 0.0) for r in runs]
    spans = [((r.info.end_time - r.info.start_time) / 1000.0) for r in runs]
    stage_wall = parent["search_wall_seconds"]  # Tuner start (workers starting) to Tuner end
    overhead = [s - t for s, t in zip(spans, train)]
    def median_of(key: str) -> float:
        return statistics.median(r.data.metrics.get(key, 0.0) for r in runs)

    evals = [r.data.metrics.get("eval_seconds", 0.0) for r in runs]
    # Where each trial's non-training time went: set-up in the worker (imports, data, model), periodic
    # and final validation, the test-set evaluation, and the rest (actor start, Tune scheduling,
    # reporting, MLflow writes), taken as what the driver saw minus what the worker measured.
    rest = [span - sum(r.data.metrics.get(k, 0.0) for k in ("train_seconds", "eval_seconds", "test_seconds",
                                                               "setup_seconds"))
            for span, r in zip(spans, runs)]
    # Where the slots sat idle: before each slot's first trial (workers starting), after each slot's
    # last one (waiting for the other slots to finish), and between trials (the rest). The stage's
    # start is taken as its end minus its wall time (its end: the last trial's end, within ms).
    starts = sorted(r.info.start_time / 1000.0 for r in runs)
    ends = sorted(r.info.end_time / 1000.0 for r in runs)
    slots = args.concurrency
    stage_start = ends[-1] - stage_wall
    idle_start = sum(t - stage_start for t in starts[:slots])
    idle_tail = sum(ends[-1] - t for t in ends[-slots:])
    idle_between = stage_wall * slots - sum(spans) - idle_start - idle_tail
    util_stage = parent["search_utilisation"]
    util_all = sum(train) / (wall * args.concurrency)
    rungs = sorted({r.data.tags["rung_budget"] for r in runs if "rung_budget" in r.data.tags}, key=float)
    shape = f"restart, rungs {', '.join(rungs)} s" if rungs else f"{args.budget:g} s each"
    print(f"# sweep efficiency: {space.name}, {len(runs)} trials ({shape}), {args.concurrency} concurrent")
    print("\n| figure | value |\n|---|---|")
    print(f"| utilisation, search stage | {util_stage:.3f} |")
    print(f"| utilisation, whole command | {util_all:.3f} |")
    print(f"| Σ training seconds | {sum(train):.1f} |")
    print(f"| search stage wall seconds | {stage_wall:.1f} |")
    print(f"| whole command wall seconds | {wall:.1f} |")
    print(f"| per-trial overhead, median (s) | {statistics.median(overhead):.2f} |")
    print(f"| per-trial overhead, first trials (s) | {max(overhead):.2f} |")
    print(f"| of which validation, median (s) | {statistics.median(evals):.2f} |")
    print(f"| of which test-set evaluation, median (s) | {median_of('test_seconds'):.2f} |")
    print(f"| of which worker set-up, median (s) | {median_of('setup_seconds'):.2f} |")
    print(f"| of which worker set-up, first trials (s) | {max(r.data.metrics.get('setup_seconds', 0.0) for r in runs):.2f} |")
    print(f"| of which scheduling + reporting, median (s) | {statistics.median(rest):.2f} |")
    print(f"| idle slot-seconds before the first trials | {idle_start:.1f} |")
    print(f"| idle slot-seconds between trials | {idle_between:.1f} |")
    print(f"| idle slot-seconds at the end (waiting for the last trials) | {idle_tail:.1f} |")
    print(f"| slot-seconds in trials but not training (Σ per-trial overhead) | {sum(overhead):.1f} |")
    if json_out:
        json_out.write_text(json.dumps({"utilisation_stage": util_stage, "utilisation_all": util_all,
                                               "overhead": overhead, "train": train, "wall": wall}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
