"""``tunebudget train | sweep | export | ui | report``.

A user error (TuneBudgetError) becomes one line on stderr and exit status 2, with nothing
written; progress goes to stderr through rich, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from tunebudget.errors import TuneBudgetError

log = logging.getLogger("tunebudget")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["training.lr=0.1", ...]`` → ``{"training.lr": 0.1}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TuneBudgetError(f"--set {item!r}: expected section.key=value, e.g. --set training.lr=0.1")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
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
    return policy.with_overrides(overrides, source="--set/--budget/--seed") if overrides else policy


def cmd_train(args: argparse.Namespace) -> int:
    policy = _train_policy(args)
    if args.json and Path(args.json).is_dir():
        raise TuneBudgetError(f"--json {args.json}: is a directory; give a file path such as result.json")
    from tunebudget.progress import train_with_progress
    from tunebudget.util import atomic_write_text

    result = train_with_progress(policy, device=args.device, quiet=args.quiet)
    summary = result.summary()
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(summary, indent=2, default=str))
    from tunebudget.progress import print_summary

    print_summary(summary)
    return 0 if result.status == "completed" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p.add_argument("--json", metavar="OUT", help="write the summary (status, timings, test metrics, policy) as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TuneBudgetError as exc:
        print(f"tunebudget: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunebudget: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
