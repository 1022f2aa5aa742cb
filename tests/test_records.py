"""The sweep's records and its pure verdict step: no Ray, no MLflow, no Optuna needed to judge."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunebudget.sweep.records import Candidate, Outcome, TrialRow, TrialStatus

ROOT = Path(__file__).resolve().parents[1]


def _space(tmp: Path):
    from tunebudget.spaces import load_space

    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_space(path)


def test_an_outcome_round_trips_through_a_tune_result():
    """What the worker reports is what the stages, the callback and the searcher read back; a
    result without the keys (an interrupted trial's last report) is unfinished."""
    for o in (Outcome(True), Outcome(True, diverged=True), Outcome(True, too_short=True)):
        assert Outcome.of({"val_accuracy": 0.5, **o.metrics()}) == o
    assert Outcome.of({"val_accuracy": 0.5}) == Outcome() and not Outcome.of(None).finished
    assert Outcome(True).usable and not Outcome(True, diverged=True).usable and not Outcome().usable


def test_a_row_survives_the_state_file_and_older_ones_load():
    """Rows are saved as JSON in the state file: the status comes back as the enum, curves as
    pairs; a row saved by an earlier version (plain dict, a key it no longer has) still loads."""
    row = TrialRow("t1", TrialStatus.TERMINATED, 0.9, "", {"selection.ratio": 0.5}, [(1.0, 0.8), (2.0, 0.9)],
                   steps=40, train_seconds=2.0)
    again = TrialRow.from_json(json.loads(json.dumps(row.to_json())))
    assert again == row and again.status is TrialStatus.TERMINATED
    old = {"trial_id": "t2", "status": "CUT", "value": None, "curve": [], "baseline": "full", "params": {},
           "rung": None, "config": None, "diverged": False, "too_short": False, "steps": 0, "error": None,
           "train_seconds": 0.0, "retired_key": 1}
    assert TrialRow.from_json(old).status is TrialStatus.CUT and not TrialStatus.CUT.has_value


def test_judge_is_pure_and_says_what_the_parent_run_gets(tmp_path):
    """The verdict stage's thinking half, with no tracker: a searched policy that beats the best
    baseline on every paired seed wins; the metrics, tags and summary say so; nothing is written."""
    from tunebudget.options import SweepOptions
    from tunebudget.sweep.plan import make_plan
    from tunebudget.sweep.verdict import judge

    space = _space(tmp_path)
    plan = make_plan(space, SweepOptions(name="pure", storage_path=str(tmp_path / "ray")))
    seeds = [1000, 1001, 1002, 1003]
    top = Candidate("top1", "searched", {"selection.strategy": "topk", "selection.ratio": 0.5}, [0.91, 0.92, 0.90, 0.93], seeds=seeds)
    full = Candidate(space.baselines[0].name, "baseline", dict(space.baselines[0].set), [0.88, 0.89, 0.87, 0.90],
                     seeds=seeds)
    rows = [TrialRow("a", TrialStatus.TERMINATED, 0.9, params=top.params),
            TrialRow("b", TrialStatus.ERROR, error="boom")]
    j = judge(plan, space, rows, [top, full])
    assert j is not None and j.verdict.beats and j.verdict.test == "paired"
    assert j.tags["best_candidate"] == "top1" and j.tags["beats_baseline"] == "true"
    assert j.metrics["n_trials"] == 2 and j.metrics["n_failed"] == 1 and j.metrics["paired_seeds"] == 4
    assert j.best.selection.ratio == 0.5 and j.best.seed == plan.base.seed
    assert j.summary_json["trials"][1]["status"] == "ERROR" and "top1" in j.summary_md
    assert not (tmp_path / "ray").exists()  # judged without a store, a run or a file
    assert judge(plan, space, rows, [Candidate("top1", "searched", {})]) is None  # nothing finished


def test_a_plan_saved_flat_by_an_earlier_version_resumes(tmp_path):
    """State files written before the plan held the sweep section as one record (its fields were the
    plan's own; before races, no ``confirm``) load as the same plan, confirming as they did (fixed)."""
    from tunebudget.options import SweepOptions
    from tunebudget.sweep.plan import Plan, make_plan

    plan = make_plan(_space(tmp_path), SweepOptions(name="old", trials=5, storage_path=str(tmp_path)))
    saved = json.loads(json.dumps(plan.to_json()))
    assert Plan.from_json(saved) == plan
    section = saved.pop("sweep")
    flat = {**saved, **{k: v for k, v in section.items() if k not in ("metric", "mode", "confirm")}}
    flat.pop("resources"), flat.pop("min_budget")
    again = Plan.from_json(flat)
    assert again.sweep.trials == 5 and again.sweep.confirm == "fixed" and again.base == plan.base
    assert again.params()["sweep.trials"] == 5 and again.params()["sweep.metric"] == plan.metric
