"""The sweep's options are one list: the command line's parser is generated from SweepOptions, the
space's ``sweep`` section is updated by it in one place and checked once, by the space's model."""

from __future__ import annotations

import argparse
import dataclasses
from typing import get_args

import pytest

from conftest import ROOT


def _sweep_parser() -> argparse.ArgumentParser:
    from tunebudget.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["sweep"]


def test_every_option_is_a_flag_and_every_flag_an_option():
    from tunebudget.options import SweepOptions
    from tunebudget.spaces import SweepSpec

    # every flag but the ones all commands share (--help, --verbose)
    actions = {a.dest: a for a in _sweep_parser()._actions if a.option_strings and a.dest not in ("help", "verbose")}
    opts = {f.name: f for f in dataclasses.fields(SweepOptions)}
    assert set(actions) == set(opts)
    for name, f in opts.items():
        assert actions[name].option_strings == [f.metadata["flag"]] and actions[name].help == f.metadata["help"]
        spec = f.metadata.get("spec")
        if spec:  # an option that overrides the space's sweep section: its choices are the section's
            assert spec in SweepSpec.model_fields
            choices = get_args(SweepSpec.model_fields[spec].annotation)
            if choices and all(isinstance(c, str) for c in choices):
                assert actions[name].choices == list(choices)
    args = _sweep_parser().parse_args(["space.yaml", "--search-time", "5", "--confirm", "fixed", "--quiet"])
    got = SweepOptions.from_args(args)
    assert got.search_seconds == 5.0 and got.confirm == "fixed" and got.quiet and got.trials is None


def _space():
    from tunebudget.spaces import load_space

    return load_space(str(ROOT / "search_spaces" / "digits_mlp.yaml"))


@pytest.mark.parametrize("opts, message", [
    ({"trials": 0}, "--trials: must be at least 1 (got 0)"),
    ({"concurrency": 0}, "--concurrency: must be at least 1 (got 0)"),
    ({"confirm_seeds": -1}, "--confirm-seeds: must be at least 0 (got -1)"),
    ({"eta": 11}, "--eta: must be at most 10 (got 11)"),  # the file's bound, now the flag's too
    ({"min_budget": 0.0}, "--min-budget: must be > 0.0 (got 0.0)"),
    ({"max_failures": 101}, "--max-failures: must be at most 100 (got 101)"),
    ({"min_effect": -0.01}, "--min-effect: must be at least 0.0 (got -0.01)"),
    ({"fidelity": "restart", "scheduler": "asha"},
     "--fidelity restart --scheduler asha: sweep.fidelity: restart runs every trial to its rung's budget"),
])
def test_bounds_are_the_space_models_and_name_the_flag(opts, message):
    from tunebudget.errors import TuneBudgetError
    from tunebudget.options import SweepOptions
    from tunebudget.sweep.plan import make_plan

    with pytest.raises(TuneBudgetError) as exc:
        make_plan(_space(), SweepOptions(**opts))
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_flags_override_the_file_and_the_file_fills_the_rest():
    from tunebudget.options import SweepOptions
    from tunebudget.sweep.plan import make_plan

    space = _space()
    plan = make_plan(space, SweepOptions(trials=7, confirm="fixed", eta=4, min_effect=0.005))
    assert (plan.sweep.trials, plan.sweep.confirm, plan.sweep.eta, plan.sweep.min_effect) == (7, "fixed", 4, 0.005)
    assert plan.sweep.concurrency == space.sweep.concurrency and plan.sweep.first_test == space.sweep.first_test
