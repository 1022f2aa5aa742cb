"""Where a sweep lives, and re-running its command: ``--resume-or-start`` after the driver's process
group is SIGKILLed (a RayJob retry, a Slurm requeue), and object-store storage (``s3://``) on a real
S3 API on loopback (moto's server).

Real parts throughout: a local Ray, a sqlite MLflow store, real training; the object store is moto's
S3 server spoken to over HTTP by pyarrow (what Ray Tune uses) and boto3.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import ROOT, run_cli

pytestmark = pytest.mark.filterwarnings("ignore")

NAME = "retried"


def space_file(tmp: Path, trials: int, samples: float) -> Path:
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": None, "samples": samples, "eval_every": 0.25}
    data["sweep"].update({"trials": trials, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 0})
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def runs_of(tmp: Path) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("digits_mlp")
    return c.search_runs([exp.experiment_id], max_results=1000) if exp else []


def finished_search_runs(tmp: Path) -> int:
    try:
        runs = runs_of(tmp)
    except Exception:  # noqa: BLE001 - the store is being created by the sweep
        return 0
    return sum(r.info.status == "FINISHED" and r.data.tags.get("stage") == "search" for r in runs)


def kill_mid_search(cmd: list[str], tmp: Path, env: dict, started: Callable[[], bool], after: int = 2) -> None:
    """Run ``cmd`` in its own process group and SIGKILL the whole group (no handler runs: no state
    saved on the way out, runs left RUNNING, the lock's holder gone) once the sweep's state exists
    and ``after`` search trials have finished in MLflow."""
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert proc.poll() is None, f"the sweep ended before it was killed: {proc.stderr.read()[-3000:]}"
            if started() and finished_search_runs(tmp) >= after:
                break
            time.sleep(1.0)
        else:
            raise AssertionError("the sweep did not finish trials in time")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def assert_each_trial_logged_once(tmp: Path, expected: int) -> list:
    runs = runs_of(tmp)
    parents = [r for r in runs if r.data.tags.get("tunebudget_role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status)
                                                                           for r in parents]
    search = [r for r in runs if r.data.tags.get("stage") == "search"]
    trial_ids = [r.data.tags["trial_id"] for r in search]
    assert len(trial_ids) == len(set(trial_ids)) == expected, sorted(trial_ids)
    assert all(r.info.status == "FINISHED" for r in search)
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in search)
    return runs


# ---- --resume-or-start ----------------------------------------------------------------------------

def test_resume_or_start_refuses_resume_and_a_missing_name_in_one_line(tmp_path):
    space = space_file(tmp_path, trials=2, samples=1000)
    for args, fragment in (((str(space), "--resume", "--resume-or-start", "--name", NAME), "leave out --resume"),
                           ((str(space), "--resume-or-start"), "needs --name")):
        proc = run_cli("sweep", *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.startswith("tunebudget: error: --resume-or-start") and proc.stderr.count("\n") == 1
        assert fragment in proc.stderr, proc.stderr
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow").exists()  # nothing written


def test_a_killed_sweep_rerun_with_the_same_command_resumes_and_a_finished_one_exits_0(tmp_path):
    space = space_file(tmp_path, trials=4, samples=12000)
    argv = ["sweep", str(space), "--name", NAME, "--resume-or-start", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    state = tmp_path / "ray_results" / NAME / "tunebudget_sweep.json"
    kill_mid_search([sys.executable, "-m", "tunebudget", *argv], tmp_path, env, state.is_file)
    before = {r.data.tags["trial_id"]: r.info.run_id for r in runs_of(tmp_path)
              if r.info.status == "FINISHED" and r.data.tags.get("stage") == "search"}
    assert 2 <= len(before) < 4 + 2

    again = run_cli(*argv, cwd=tmp_path, timeout=900)  # the retry: the very same command line
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Verdict" in again.stdout
    runs = assert_each_trial_logged_once(tmp_path, 4 + 2)
    for trial_id, run_id in before.items():  # what had finished was kept, not run and logged again
        assert {r.info.run_id for r in runs if r.data.tags.get("trial_id") == trial_id} == {run_id}

    done = run_cli(*argv, cwd=tmp_path, timeout=300)  # a retry after success
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sweep {NAME} has finished" in done.stdout and "nothing to run" in done.stdout, done.stdout
    assert "Verdict" not in done.stdout
    after = runs_of(tmp_path)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in runs)  # nothing new logged
