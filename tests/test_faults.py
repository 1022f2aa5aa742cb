"""Faults with real processes: a trial that raises, one that diverges, a worker SIGKILLed.

One sweep carries all three; it must complete, with every finished trial in MLflow exactly
once and with the right status, and the exported best policy must come from a healthy trial.
(The driver interrupted with SIGINT and resumed is in test_sweep.py.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def faulty_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    faults = tmp / "faults"
    faults.mkdir()
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["task"]["model"] = "faults:faulty_mlp"
    data["task"]["model_options"] = {"hidden": [64], "faults": {"1": "raise", "2": "nan", "4": "kill"}}
    data["budget"] = {"seconds": None, "samples": 4000, "eval_every": 0.25}
    data["sweep"].update({"trials": 6, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 1, "max_failures": 1})
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"TUNEBUDGET_FAULT_DIR": str(faults),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("sweep", str(space), "--quiet", "--name", "faulty", cwd=tmp, env=env, timeout=900)
    return tmp, faults, proc, env


def search_runs(tmp: Path):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("digits_mlp")
    return [r for r in c.search_runs([exp.experiment_id], max_results=1000)]


def test_the_sweep_completes_despite_the_faults(faulty_sweep):
    tmp, faults, proc, _ = faulty_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every fault really fired
    assert list(faults.glob("raise-*")) and list(faults.glob("nan-*")) and list(faults.glob("killed-*"))


def test_each_trial_is_logged_once_with_its_status(faulty_sweep):
    tmp, faults, _, _ = faulty_sweep
    runs = search_runs(tmp)
    search = [r for r in runs if r.data.tags.get("stage") == "search"]
    trial_ids = [r.data.tags["trial_id"] for r in search]
    assert len(trial_ids) == len(set(trial_ids)) == 6 + 2
    by_trial = {r.data.tags["trial_id"]: r for r in search}
    raised = [p.name.removeprefix("raise-") for p in faults.glob("raise-*")]
    nan = [p.name.removeprefix("nan-") for p in faults.glob("nan-*")]
    killed = [p.name.removeprefix("killed-") for p in faults.glob("killed-*")]
    assert [by_trial[t].info.status for t in raised] == ["FAILED"]
    assert "injected fault" in by_trial[raised[0]].data.tags["error"]
    assert [by_trial[t].info.status for t in nan] == ["FINISHED"]
    assert by_trial[nan[0]].data.tags.get("diverged") == "true"
    assert [by_trial[t].info.status for t in killed] == ["FINISHED"]  # retried once, logged once
    healthy = set(by_trial) - set(raised)
    assert all(by_trial[t].info.status == "FINISHED" for t in healthy)
    parent = [r for r in runs if r.data.tags.get("tunebudget_role") == "sweep"][0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_failed"] == 1


def test_the_exported_best_comes_from_a_healthy_trial(faulty_sweep):
    tmp, faults, _, env = faulty_sweep
    out = tmp / "best.yaml"
    proc = run_cli("export", "digits_mlp", "-o", str(out), cwd=tmp, env=env)
    assert proc.returncode == 0, proc.stderr
    best = yaml.safe_load(out.read_text())
    runs = {r.data.tags["trial_id"]: r for r in search_runs(tmp) if r.data.tags.get("stage") == "search"}
    bad = [p.name.split("-", 1)[1] for p in [*faults.glob("raise-*"), *faults.glob("nan-*")]]
    for trial in bad:
        policy = json.loads(runs[trial].data.tags["tunebudget.policy"])
        assert (policy["training"], policy["selection"]) != (best["training"], best["selection"])
