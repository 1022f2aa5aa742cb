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
from typing import Callable, Optional

import pytest
import yaml

from conftest import ROOT, run_cli

pytestmark = pytest.mark.filterwarnings("ignore")

NAME = "retried"


def space_file(tmp: Path, trials: int, samples: Optional[float] = None, seconds: Optional[float] = None,
               **sweep) -> Path:
    """The digits space, small; a budget in ``seconds`` where a trial must outlast Tune's 1-s experiment
    snapshot (a trial started and finished between two snapshots is lost to a hard kill: see README)."""
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": seconds, "samples": None if seconds else samples, "eval_every": 0.25}
    data["sweep"].update({"trials": trials, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 0, **sweep})
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


def assert_each_trial_logged_once(tmp: Path, expected: Optional[int]) -> list:
    runs = runs_of(tmp)
    parents = [r for r in runs if r.data.tags.get("tunebudget_role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status)
                                                                           for r in parents]
    search = [r for r in runs if r.data.tags.get("stage") == "search"]
    trial_ids = [r.data.tags["trial_id"] for r in search]
    assert len(trial_ids) == len(set(trial_ids)), sorted(trial_ids)
    assert expected is None or len(trial_ids) == expected, sorted(trial_ids)
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


def tear_searcher_state(search_dir: Path, phantoms: int) -> None:
    """Leave the search's saved state as a driver killed between Tune's two uploads can (the searcher's
    state from a later snapshot than the trials'): the concurrency limiter holds ``phantoms`` live
    trials, counted as suggested, that Tune's experiment snapshot does not have."""
    import ray.cloudpickle as cloudpickle

    path = max(search_dir.glob("search_gen_state-*.json"))
    state = cloudpickle.loads(path.read_bytes())
    limiter = state["name:ConcurrencyLimiter"]
    limiter["live_trials"] |= {f"phantom{i}" for i in range(phantoms)}
    limiter["num_unfinished_live_trials"] += phantoms
    state["counter"] += phantoms
    path.write_bytes(cloudpickle.dumps(state))


def test_a_killed_sweep_rerun_with_the_same_command_resumes_and_a_finished_one_exits_0(tmp_path):
    """Killed mid-search, with the searcher's saved state torn from Tune's trials as a kill between
    uploads can leave it (every concurrency slot held by a trial Tune never ran: the resumed search
    would wait for ever); the rerun frees those slots, runs the trials still owed and finishes."""
    space = space_file(tmp_path, trials=3, seconds=2.0)
    argv = ["sweep", str(space), "--name", NAME, "--resume-or-start", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    state = tmp_path / "ray_results" / NAME / "tunebudget_sweep.json"
    kill_mid_search([sys.executable, "-m", "tunebudget", *argv], tmp_path, env, state.is_file)
    before = {r.data.tags["trial_id"]: r.info.run_id for r in runs_of(tmp_path)
              if r.info.status == "FINISHED" and r.data.tags.get("stage") == "search"}
    assert len(before) >= 2
    tear_searcher_state(state.parent / "search", phantoms=2)  # concurrency is 2

    again = run_cli(*argv, cwd=tmp_path, timeout=600)  # the retry: the very same command line
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 live slot(s) of trials Tune never ran freed" in again.stderr, again.stderr[-3000:]
    assert "the search stalled" not in again.stderr
    assert "Verdict" in again.stdout
    runs = assert_each_trial_logged_once(tmp_path, 3 + 2)
    for trial_id, run_id in before.items():  # what had finished was kept, not run and logged again
        assert {r.info.run_id for r in runs if r.data.tags.get("trial_id") == trial_id} == {run_id}

    done = run_cli(*argv, cwd=tmp_path, timeout=300)  # a retry after success
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sweep {NAME} has finished" in done.stdout and "nothing to run" in done.stdout, done.stdout
    assert "Verdict" not in done.stdout
    after = runs_of(tmp_path)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in runs)  # nothing new logged


# ---- object-store storage: s3:// on moto's S3 server (loopback) -------------------------------------

BUCKET = "sweeps"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (a random port) with one bucket; the environment that points
    pyarrow (Ray Tune's filesystem layer) and boto3 at it."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] not installed (the dev extra has it)")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # for this process's own pyarrow and boto3 calls
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client, env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def state_in_bucket(client, prefix: str) -> dict:
    import json

    return json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/tunebudget_sweep.json")["Body"].read())


def test_a_sweep_on_s3_killed_and_rerun_resumes_and_finishes_with_everything_in_the_bucket(s3, tmp_path):
    """The sweep's state file, its lock and Tune's results live in the bucket; the driver's process group
    is SIGKILLed mid-search and the same command run again: it takes over the dead driver's lock,
    resumes (no trial logged twice), confirms (Tune's confirmation rounds in the bucket too) and
    finishes; run once more, it exits 0 and logs nothing."""
    client, env = s3
    space = space_file(tmp_path, trials=3, seconds=2.0, confirm_seeds=2)
    storage = f"s3://{BUCKET}/killed"
    argv = ["sweep", str(space), "--name", NAME, "--storage-path", storage, "--resume-or-start", "--quiet"]
    prefix = f"killed/{NAME}"

    def started() -> bool:
        return f"{prefix}/tunebudget_sweep.json" in keys(client, f"{prefix}/")

    kill_mid_search([sys.executable, "-m", "tunebudget", *argv], tmp_path,
                    {**os.environ, **env, "PYTHONUNBUFFERED": "1"}, started)
    assert state_in_bucket(client, prefix)["stage"] == "search"
    assert f"{prefix}/.lock" in keys(client, f"{prefix}/")  # the killed driver's lock is left behind
    before = {r.data.tags["trial_id"]: r.info.run_id for r in runs_of(tmp_path)
              if r.info.status == "FINISHED" and r.data.tags.get("stage") == "search"}

    again = run_cli(*argv, cwd=tmp_path, env=env, timeout=900)  # its holder is gone: the lock is taken over
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Verdict" in again.stdout
    runs = assert_each_trial_logged_once(tmp_path, 3 + 2)
    for trial_id, run_id in before.items():  # what had finished was kept, not logged again
        assert {r.info.run_id for r in runs if r.data.tags.get("trial_id") == trial_id} == {run_id}
    assert any(r.data.tags.get("stage") == "confirm" for r in runs)
    stored = keys(client, f"{prefix}/")
    assert state_in_bucket(client, prefix)["stage"] == "finished"
    assert f"{prefix}/.lock" not in stored  # released when the sweep ended
    assert any(k.startswith(f"{prefix}/search/experiment_state") for k in stored)  # Tune's own files
    assert any(k.startswith(f"{prefix}/confirm-round0/") for k in stored)
    assert not (tmp_path / "ray_results").exists()  # nothing of the sweep's state on the local disk
    assert (tmp_path / "mlflow" / "optuna.db").is_file()  # the Optuna study stays where its URI says
    (parent,) = [r for r in runs if r.data.tags.get("tunebudget_role") == "sweep"]
    assert parent.data.params["sweep.storage"] == storage

    done = run_cli(*argv, cwd=tmp_path, env=env, timeout=300)  # a retry after success
    assert done.returncode == 0 and f"sweep {NAME} has finished" in done.stdout, done.stderr[-3000:]
    assert len(runs_of(tmp_path)) == len(runs)


def test_resume_finds_the_latest_unfinished_sweep_in_a_bucket(s3, tmp_path):
    """--resume without --name lists the bucket's sweeps (pyarrow) and takes this space's unfinished one."""
    import json

    from tunebudget.sweep.resume import find_resumable
    from tunebudget.store import location

    client, _ = s3
    for name, space_name, stage in (("a", "digits_mlp", "finished"), ("b", "digits_mlp", "search"),
                                    ("c", "other", "search")):
        body = json.dumps({"plan": {"base": {"name": space_name}}, "stage": stage})
        client.put_object(Bucket=BUCKET, Key=f"listing/{name}/tunebudget_sweep.json", Body=body.encode())
    found = find_resumable(location(f"s3://{BUCKET}/listing"), "digits_mlp", None)
    assert str(found) == f"s3://{BUCKET}/listing/b"


def test_the_object_store_lock_refuses_a_live_holder_and_takes_over_a_dead_one(s3, monkeypatch):
    import json

    from tunebudget.errors import TuneBudgetError
    from tunebudget import store

    client, _ = s3
    monkeypatch.setattr(store, "HEARTBEAT", 0.3)
    monkeypatch.setattr(store, "STALE_AFTER", 1.5)
    monkeypatch.setattr(store, "SETTLE", 0.2)
    root = store.location(f"s3://{BUCKET}/locks/sweep")
    with store.object_lock(root):  # a live holder refreshes its lock: a second sweep is refused
        held = json.loads(client.get_object(Bucket=BUCKET, Key="locks/sweep/.lock")["Body"].read())
        assert held["pid"] == os.getpid()
        with pytest.raises(TuneBudgetError, match="a sweep of that name is running now"):
            with store.object_lock(root):
                pass
    assert "locks/sweep/.lock" not in keys(client, "locks/")  # released

    # a holder on another host that stopped refreshing (a lost pod): taken over once stale
    client.put_object(Bucket=BUCKET, Key="locks/sweep/.lock",
                      Body=json.dumps({"token": "x", "host": "elsewhere", "pid": 1, "beat": 7}).encode())
    with store.object_lock(root):
        assert json.loads(client.get_object(Bucket=BUCKET, Key="locks/sweep/.lock")["Body"].read())["token"] != "x"
    assert "locks/sweep/.lock" not in keys(client, "locks/")


def test_storage_uris_pyarrow_cannot_open_are_one_line(tmp_path):
    space = space_file(tmp_path, trials=2, samples=1000)
    for uri, fragment in (("nosuch://bucket/x", "pyarrow cannot open it"), ("s3://", "name a bucket"),
                          ("s3://sweeps/", "name a bucket and a prefix")):
        proc = run_cli("sweep", str(space), "--storage-path", uri, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.startswith(f"tunebudget: error: --storage-path {uri}") and proc.stderr.count("\n") == 1, \
            proc.stderr
        assert fragment in proc.stderr, proc.stderr
    assert not (tmp_path / "mlflow").exists()


def test_each_nodes_probe_reads_the_marker_object_as_tune_will(s3, monkeypatch):
    """The multi-node shared-storage check's per-node probe, on an object: pyarrow with the node's own
    settings (here the endpoint given in the URI's query, not in the environment)."""
    from tunebudget.cluster import _probe
    from tunebudget.store import location

    client, env = s3
    endpoint = env["AWS_ENDPOINT_URL"].removeprefix("http://")
    client.put_object(Bucket=BUCKET, Key="probe/marker", Body=b"token-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    uri = f"s3://{BUCKET}/probe?endpoint_override={endpoint}&scheme=http"
    marker = location(uri) / "marker"
    assert str(marker) == f"s3://{BUCKET}/probe/marker?endpoint_override={endpoint}&scheme=http"
    assert marker.read_text() == "token-1"
    assert _probe(str(marker), "token-1")["visible"]
    assert not _probe(str(marker), "another token")["visible"]
    assert not _probe(str(location(uri) / "missing"), "token-1")["visible"]


def test_resume_or_start_refuses_a_failed_sweep_in_one_line(tmp_path):
    """A failed sweep is not run again by a retry: exit 2, one line, nothing started."""
    import json

    space = space_file(tmp_path, trials=2, samples=1000)
    from tunebudget.spaces import load_space
    from tunebudget.sweep import SweepOptions, make_plan

    plan = make_plan(load_space(space), SweepOptions(name=NAME, storage_path=str(tmp_path / "ray_results")))
    plan.root.mkdir(parents=True)
    (plan.root / "tunebudget_sweep.json").write_text(json.dumps({"plan": plan.to_json(), "stage": "failed"}))
    proc = run_cli("sweep", str(space), "--name", NAME, "--resume-or-start", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"tunebudget: error: --resume-or-start --name {NAME}: that sweep failed")
    assert not (tmp_path / "mlflow").exists()


def test_a_trial_tune_never_ran_frees_its_slot_and_a_baseline_among_them_is_proposed_again(tmp_path):
    """The guard's reconciliation on its own, on a real Optuna study and Ray's own limiter: of two
    suggested trials Tune restored only one; the other (a baseline) is closed as failed in the study,
    its slot freed, the count of suggestions made Tune's, and the baseline is the next suggestion."""
    import optuna
    from ray.tune.experiment import Trial

    from tunebudget.sweep.searcher import ResumableOptunaSearch, limited, reconcile

    searcher = ResumableOptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="acc",
                                     mode="max", points_to_evaluate=[{"x": 0.25}], study_name="s",
                                     storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"))
    search, _ = limited(searcher, 2)
    limiter = search.searcher
    assert limiter.suggest("lost") == {"x": 0.25}
    assert limiter.suggest("kept") is not None
    assert limiter.suggest("blocked") is None  # both slots held
    search._counter = 2  # as the generator counted those two suggestions

    assert reconcile(search, [Trial("f", trial_id="kept", stub=True)]) == ["lost"]
    assert limiter.live_trials == {"kept"} and search._counter == 1
    states = [t.state for t in searcher._ot_study.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert limiter.suggest("next") == {"x": 0.25}  # the baseline is measured after all
    assert reconcile(search, [Trial("f", trial_id="kept", stub=True), Trial("f", trial_id="next", stub=True)]) == []
