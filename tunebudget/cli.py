"""``tunebudget train | sweep | export | ui | report | cluster render``.

A user error (TuneBudgetError) becomes one line on stderr and exit status 2, with nothing
written; progress goes to stderr through rich, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from tunebudget.errors import TuneBudgetError

log = logging.getLogger("tunebudget")


def quiet_libraries(verbose: bool) -> None:
    """MLflow, Optuna and Ray log at INFO by default; the CLI shows its own progress instead."""
    level = logging.INFO if verbose else logging.WARNING
    for name in ("mlflow", "alembic", "ray", "optuna"):
        logging.getLogger(name).setLevel(level)
    # Tune prints trial-error blocks itself; the sweep reports failures (and MLflow keeps the traceback)
    logging.getLogger("ray.tune").setLevel(logging.INFO if verbose else logging.CRITICAL)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not verbose:  # Optuna's experimental/user warnings (e.g. on a restored study) are not the user's to act on
        import warnings

        warnings.filterwarnings("ignore", module=r"optuna(\.|$)")
        warnings.filterwarnings("ignore", module=r"ray\.tune\.search\.optuna")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["training.lr=0.1", ...]`` → ``{"training.lr": 0.1}`` (values parsed as YAML scalars)."""
    from tunebudget.policy import load_yaml_text

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TuneBudgetError(f"--set {item!r}: expected section.key=value, e.g. --set training.lr=0.1")
        try:
            out[key.strip()] = load_yaml_text(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise TuneBudgetError(f"--set {item!r}: the value is not valid YAML; quote it") from None
    return out


def _train_policy(args: argparse.Namespace):
    from tunebudget.policy import load_policy

    policy = load_policy(args.file)
    overrides = parse_overrides(args.set or [])
    if args.budget is not None:
        overrides.update({"budget.seconds": args.budget, "budget.samples": None})
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.threads is not None:
        if args.threads < 1:
            raise TuneBudgetError(f"--threads: must be at least 1 (got {args.threads})")
        overrides["training.threads"] = args.threads
    return policy.with_overrides(overrides, source="--set/--budget/--seed") if overrides else policy


def cmd_train(args: argparse.Namespace) -> int:
    policy = _train_policy(args)
    from tunebudget.util import check_writable_dir, write_output

    if args.json == "":
        raise TuneBudgetError("--json: empty; give a file path such as result.json, or leave --json out")
    if args.json:  # checked before training: a result that cannot be written is lost
        if Path(args.json).is_dir():
            raise TuneBudgetError(f"--json {args.json}: is a directory; give a file path such as result.json")
        if not (Path(args.json).exists() and not Path(args.json).is_file()):  # /dev/null needs no check
            check_writable_dir(Path(args.json).resolve().parent, f"--json {args.json}")
    if args.save is not None:
        from tunebudget.saved import check_save_dir

        check_save_dir(args.save)
    if args.register is not None and not args.tracking_uri:
        raise TuneBudgetError("--register: needs a tracking store to register the model in; add --tracking-uri URI "
                              "(e.g. sqlite:///mlflow/mlflow.db, the sweeps' default store)")
    if args.register is not None and not args.register.strip():
        raise TuneBudgetError("--register: empty; give the registered model's name, e.g. --register fashion-mlp")
    if args.tracking_uri:  # reached before training: a run that cannot be logged is not trained for nothing
        from tunebudget.tracking import Tracker, check_experiment_name

        check_experiment_name(args.experiment)
        Tracker(args.tracking_uri).check()
    from tunebudget.progress import train_with_progress

    result = train_with_progress(policy, device=args.device, quiet=args.quiet)
    if result.too_short:
        from tunebudget.trainer import too_short_message

        raise TuneBudgetError(too_short_message(policy.budget, result.stats["steps"], result.stats["train_seconds"]))
    summary = result.summary()
    if args.json:
        write_output(args.json, json.dumps(summary, indent=2, default=str), "--json")
    from tunebudget.progress import print_summary

    print_summary(summary)
    if args.save is not None and result.status != "diverged":  # a diverged model is not worth keeping
        print(f"saved the model to {result.save(args.save)} (load it with tunebudget.load_trained)")
    if args.tracking_uri:
        from tunebudget.tracking import log_train_run, run_ui_line

        logged = log_train_run(args.tracking_uri, args.experiment or policy.name, result, args.register,
                               " ".join(shlex.quote(a) for a in sys.argv))
        where = f"; the model is {logged['model_uri']}" if logged["model_uri"] else ""
        registered = f", registered as {args.register!r}" if args.register and logged["model_uri"] else ""
        print(f"logged to MLflow: run {logged['run_id']}{where}{registered} "
              f"(model logged in {logged['log_model_seconds']:.1f} s)")
        print(run_ui_line(logged["run_id"], args.tracking_uri))
    return 0 if result.status == "completed" else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from tunebudget.spaces import load_space

    space = load_space(args.space)
    from tunebudget.sweep import SweepInterrupted, SweepOptions, run_sweep
    from tunebudget.sweep.resume import SweepFinished

    try:
        outcome = run_sweep(space, SweepOptions.from_args(args))
    except SweepFinished as done:  # --resume-or-start after the sweep finished (a job retried after success)
        store = f" --tracking-uri {shlex.quote(args.tracking_uri)}" if args.tracking_uri else ""
        print(f"sweep {done.name} has finished (parent run {done.parent_id}, experiment {done.experiment}); "
              f"nothing to run. Export it with: tunebudget export {shlex.quote(done.experiment)} -o best_policy.yaml"
              f"{store}")
        return 0
    except SweepInterrupted as exc:
        where = f" --storage-path {shlex.quote(args.storage_path)}" if args.storage_path else ""
        print(f"tunebudget: sweep {exc} interrupted; finished trials are in MLflow. Continue it with: "
              f"tunebudget sweep {shlex.quote(args.space)} --resume --name {exc}{where}", file=sys.stderr)
        return 130
    # plain print: markdown tables and YAML must not be re-wrapped to the terminal width
    print(outcome.summary_md)
    print(f"Best policy (parent run {outcome.parent_id}, experiment {outcome.experiment}):\n")
    print(outcome.best_policy.to_yaml())
    print(f"Verdict: {outcome.verdict.text}")
    store = f" --tracking-uri {shlex.quote(args.tracking_uri)}" if args.tracking_uri else ""
    print(f"Export it with: tunebudget export {shlex.quote(outcome.experiment)} -o best_policy.yaml{store}")
    from tunebudget.tracking import run_ui_line
    print(run_ui_line(outcome.parent_id, args.tracking_uri))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tunebudget.export import export_best

    path = export_best(args.ref, args.output, tracking_uri=args.tracking_uri, allow_partial=args.allow_partial)
    print(f"wrote {path}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from tunebudget.export import serve_ui

    return serve_ui(args.port, args.host, args.tracking_uri)


def cmd_report(args: argparse.Namespace) -> int:
    from tunebudget.export import write_report

    out = write_report(args.ref, args.output, tracking_uri=args.tracking_uri)
    print(f"wrote {out}")
    return 0


def _add_sweep_commands(sub: Any) -> None:
    p = sub.add_parser("sweep", help="search budget policies with Ray Tune + Optuna, log to MLflow",
                       description="Run a sweep of a search space: Optuna proposes policies, Ray Tune trains "
                                   "them under a fixed budget each, MLflow records every trial; then the top "
                                   "policies and the baselines are re-run with extra seeds for a verdict.")
    p.add_argument("space", help="search-space YAML file (a base policy plus search/sweep/baselines)")
    from tunebudget.options import add_sweep_flags

    add_sweep_flags(p)  # every flag, its help and choices: SweepOptions' fields
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("export", help="write a sweep's best policy as YAML (replay it with 'tunebudget train')")
    p.add_argument("ref", help="MLflow experiment name (its latest sweep) or a sweep's parent run id")
    p.add_argument("-o", "--output", default="best_policy.yaml", help="output file (default best_policy.yaml)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow)")
    p.add_argument("--allow-partial", action="store_true", help="export the best finished trial of an unfinished sweep")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("ui", help="serve the MLflow UI on the local tracking store",
                       description="Serve the MLflow UI on a tracking store and print a link to the latest "
                                   "sweep's parent run in its Model training view.")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--tracking-uri", help="store to serve (default: ./mlflow)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("report", help="write a sweep's plots and markdown summary to a directory")
    p.add_argument("ref", help="MLflow experiment name (its latest sweep) or a sweep's parent run id")
    p.add_argument("-o", "--output", default="report", help="output directory (default ./report)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow)")
    p.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tunebudget",
        description="Find the best way to train a network inside a fixed wall-clock budget, then train it that way.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train once with a policy (or a search space's base policy)",
                       description="Train once under the policy's budget and print a summary.")
    p.add_argument("file", help="policy or search-space YAML file")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="wall-clock training budget (overrides the file)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a policy field, e.g. --set selection.ratio=0.5 (repeatable)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default: auto)")
    p.add_argument("--seed", type=int, help="random seed (overrides the file)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the policy's training.threads, which an "
                   "exported sweep winner sets to its trials' threads; else torch's default)")
    p.add_argument("--json", metavar="OUT", help="write the summary (status, timings, test metrics, policy) as JSON")
    p.add_argument("--save", metavar="DIR", help="save the trained model (weights, input standardisation, policy) "
                   "to this new directory; load it with tunebudget.load_trained(DIR)")
    p.add_argument("--tracking-uri", metavar="URI", help="log the run to this MLflow store: params, metrics, the "
                   "summary, the data set and the model (with its input standardisation) as an MLflow model")
    p.add_argument("--experiment", metavar="NAME", help="MLflow experiment of the logged run (default: the policy's name)")
    p.add_argument("--register", metavar="NAME", help="also register the logged model in the Model Registry "
                   "under this name (needs --tracking-uri)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    _add_sweep_commands(sub)
    from tunebudget.render import add_render_commands

    add_render_commands(sub)
    for command in sub.choices.values():  # -v also after the command: `tunebudget train -v p.yaml`
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log debug messages; tracebacks of internal errors")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries(args.verbose)
    try:
        return int(args.func(args) or 0)
    except TuneBudgetError as exc:
        print(f"tunebudget: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunebudget: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tunebudget ... | head`: the reader left; nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # a bug, not bad input: one line, the traceback with -v
        if args.verbose:
            raise
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"tunebudget: internal error: {type(exc).__name__}: {text} (run with -v for the traceback, "
              "and report it)", file=sys.stderr)
        return 3


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other error of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"tunebudget: error: {message} (see '{self.prog} --help')\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
