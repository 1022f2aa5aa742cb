"""A shared tracking server as a team runs it, with real processes on loopback.

PostgreSQL (Debian's postgresql, a throw-away cluster) holds the MLflow backend store, the
basic-auth app's users and the Optuna study; ``mlflow server --app-name basic-auth`` proxies
artifacts into a local directory; tunebudget runs as a subprocess with the credentials in
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. The services start once for the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from servers import group_listeners, listening_addresses, postgres_missing_reason, start_mlflow_server, start_postgres

_MISSING = postgres_missing_reason()
pytestmark = [pytest.mark.filterwarnings("ignore"),
              pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

EXPERIMENT = "digits_mlp"
SWEEP = "shared-sweep"
TRIALS, BASELINES = 1, 1  # one round of two concurrent trials: a searched one and a baseline


def space_file(tmp: Path, trials: int = TRIALS, samples: float = 4000, **sweep) -> Path:
    """The shipped digits space, one baseline, a deterministic samples budget (as in test_sweep.py)."""
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": None, "samples": samples, "eval_every": 0.25}
    data["sweep"].update({"trials": trials, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 0, **sweep})
    data["baselines"] = [b for b in data["baselines"] if b["name"] == "full_linear"]
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def services():
    """PostgreSQL with three databases, and an MLflow server with basic auth on top of it."""
    pg = start_postgres(databases=("mlflow", "mlflow_auth", "optuna"))
    try:
        server = start_mlflow_server(pg.url("mlflow"), auth_db=pg.url("mlflow_auth"))
        try:
            yield pg, server
        finally:
            server.stop()
    finally:
        pg.stop()


def credentials(server, password: str | None = None) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": server.username,
            "MLFLOW_TRACKING_PASSWORD": server.password if password is None else password}


@pytest.fixture(scope="module")
def client(services):
    """An MlflowClient on the server, authenticated through the environment like any user."""
    from mlflow.tracking import MlflowClient

    _, server = services
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key, value in credentials(server).items():
            mp.setenv(key, value)
        yield MlflowClient(server.url)


def all_runs(client) -> list:
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps], max_results=1000) if exps else []


@pytest.fixture(scope="module")
def sweep(services, tmp_path_factory):
    """One real sweep: runs in MLflow on the server, the Optuna study in the same PostgreSQL."""
    pg, server = services
    tmp = tmp_path_factory.mktemp("shared")
    proc = run_cli("sweep", str(space_file(tmp)), "--tracking-uri", server.url, "--optuna-storage", pg.url("optuna"),
                   "--name", SWEEP, "--quiet", cwd=tmp, env=credentials(server), timeout=600)
    return tmp, proc


def test_sweep_logs_parent_and_children_to_the_server(services, sweep, client):
    pg, server = services
    tmp, proc = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Verdict" in proc.stdout and "Traceback" not in proc.stderr
    assert not (tmp / "mlflow").exists()  # nothing went to the local default store
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tunebudget_role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == TRIALS + BASELINES
    assert [r.data.tags.get("baseline") for r in children if r.data.tags.get("baseline")] == ["full_linear"]
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["stage"] == "search"
        assert "test_accuracy" in r.data.metrics and r.data.params["selection.strategy"]
    # artifacts went through the server's proxy into --artifacts-destination
    assert {"best_policy.yaml", "summary.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert list(server.artifacts.rglob("best_policy.yaml"))
    # and the runs are rows in PostgreSQL
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg.url("mlflow"))
    try:
        with engine.connect() as conn:
            stored = conn.execute(sqlalchemy.text("SELECT count(*) FROM runs WHERE experiment_id = :e"),
                                  {"e": int(exp.experiment_id)}).scalar()
    finally:
        engine.dispose()
    assert stored == len(runs)


def test_export_from_the_server_then_train_replays_it(services, sweep):
    _, server = services
    tmp, proc = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp / "best.yaml"
    exported = run_cli("export", EXPERIMENT, "-o", str(out), "--tracking-uri", server.url, cwd=tmp,
                       env=credentials(server))
    assert exported.returncode == 0, exported.stderr[-3000:]
    policy = yaml.safe_load(out.read_text())
    assert policy["name"] == f"{EXPERIMENT}-best" and policy["budget"]["samples"] == 4000
    result = tmp / "replay.json"
    replay = run_cli("train", str(out), "--json", str(result), "--quiet", cwd=tmp)
    assert replay.returncode == 0, replay.stderr[-3000:]
    summary = json.loads(result.read_text())
    assert summary["status"] == "completed" and summary["test"]["accuracy"] > 0.7


def test_optuna_study_lives_in_the_same_postgresql(services, sweep):
    import optuna

    pg, _ = services
    _, proc = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(pg.url("optuna"))}
    assert SWEEP in summaries
    study = optuna.load_study(study_name=SWEEP, storage=pg.url("optuna"))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == TRIALS + BASELINES


def test_wrong_credentials_exit_2_before_any_trial(services, client, tmp_path):
    _, server = services
    before = {r.info.run_id for r in all_runs(client)}
    experiments = {e.name for e in client.search_experiments()}
    env = credentials(server, password="not-the-password-at-all")
    proc = run_cli("sweep", str(space_file(tmp_path)), "--tracking-uri", server.url, "--experiment", "never_created",
                   "--quiet", cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "--tracking-uri" in lines[0] and server.url in lines[0]
    assert "MLFLOW_TRACKING_USERNAME" in lines[0] and "MLFLOW_TRACKING_PASSWORD" in lines[0]
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow").exists()
    assert {r.info.run_id for r in all_runs(client)} == before
    assert {e.name for e in client.search_experiments()} == experiments


def test_a_teammate_account_logs_to_an_experiment_someone_else_created(services, client):
    """Users are created through the auth API by the admin; default_permission EDIT lets them share."""
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    _, server = services
    exp_id = client.create_experiment("created_by_admin")
    get_app_client("basic-auth", tracking_uri=server.url).create_user("teammate", "teammate-password")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", "teammate")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", "teammate-password")
        mate = MlflowClient(server.url)
        run = mate.create_run(exp_id, run_name="teammate-run")
        mate.log_metric(run.info.run_id, "x", 1.0)
        mate.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}


def test_every_server_binds_loopback_only(services):
    pg, server = services
    assert listening_addresses(pg.port) == {"127.0.0.1"}
    assert listening_addresses(server.port) == {"127.0.0.1"}
    # every listening socket of either process tree (postmaster, uvicorn workers, job runners)
    for proc, port in ((pg.proc, pg.port), (server.proc, server.port)):
        sockets = group_listeners(proc.pid)
        assert ("127.0.0.1", port) in sockets
        assert {addr for addr, _ in sockets} == {"127.0.0.1"}, sockets


def test_the_server_refuses_anonymous_requests(services):
    import urllib.error
    import urllib.request

    _, server = services
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
    assert info.value.code == 401
