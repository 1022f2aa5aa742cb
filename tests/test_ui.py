"""The user's path to a sweep's results: where artifacts land, the MLflow UI and its links.

``tunebudget ui`` serves the local store on 127.0.0.1 without MLflow's GenAI job runners and
prints a link that opens the latest sweep's parent run in MLflow's Model training view; the
last test loads that link in a real headless Chromium (skipped when none is installed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from servers import _stop_group, free_port
from tunebudget.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, Tracker, ui_url

pytestmark = pytest.mark.filterwarnings("ignore")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LINK = re.compile(r"http://\S+")


# ---- links ---------------------------------------------------------------------------------------

def test_ui_url_opens_the_model_training_view():
    base = "http://127.0.0.1:5000/"
    assert ui_url(base, "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert ui_url(base, "3") == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert ui_url(base) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"


def test_the_route_and_parameter_exist_in_this_mlflow_ui():
    """The links follow the routes of the UI that ships with the installed MLflow."""
    import mlflow

    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    main = next(js.glob("main.*.js")).read_text(errors="replace")
    assert "getRunPageRoute(e,t){return`/experiments/${e}/runs/${t}`}" in main
    assert 'MACHINE_LEARNING="machine_learning"' in main and 'e.get("workflowType")' in main
    assert 'CUSTOM_MODEL_DEVELOPMENT="custom_model_development"' in main and '"mlflow.experimentKind"' in main


# ---- experiments: kind tag and artifact location ------------------------------------------------

def _log_one_artifact(tracker: Tracker, experiment: str) -> str:
    exp = tracker.experiment_id(experiment)
    run = tracker.start_run(exp, "r", {"tunebudget_role": "trial"})
    tracker.client.log_text(run, "hello", "note.txt")
    return tracker.client.get_run(run).info.artifact_uri


URI_FORMS = {
    "relative": lambda store: f"sqlite:///{os.path.relpath(store / 'rel.db')}",
    "dot-relative": lambda store: f"sqlite:///./{os.path.relpath(store / 'dot.db')}",
    "absolute": lambda store: f"sqlite:///{store / 'abs.db'}",  # four slashes
    "driver-and-query": lambda store: f"sqlite+pysqlite:///{store / 'drv.db'}?timeout=20",
}


@pytest.mark.parametrize("form", sorted(URI_FORMS))
def test_artifacts_go_next_to_a_sqlite_store_in_any_uri_form(tmp_path, monkeypatch, form):
    store, cwd = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    uri = URI_FORMS[form](store)
    tracker = Tracker(uri)
    tracker.check()
    artifact_uri = _log_one_artifact(tracker, f"exp-{form}")
    assert not (cwd / "mlruns").exists() and not (cwd / "mlartifacts").exists()
    assert artifact_uri.startswith((store / "artifacts" / f"exp-{form}").as_uri()), artifact_uri
    assert list((store / "artifacts").rglob("note.txt"))


def test_the_default_experiment_keeps_its_artifacts_next_to_the_store(tmp_path, monkeypatch):
    store, cwd = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tracker = Tracker(f"sqlite:///{store / 'default.db'}")
    tracker.check()  # MLflow creates experiment 0 pointing at <cwd>/mlruns/0
    artifact_uri = _log_one_artifact(tracker, "Default")
    assert not (cwd / "mlruns").exists()
    assert artifact_uri.startswith((store / "artifacts" / "Default").as_uri()), artifact_uri


def test_a_file_store_keeps_its_artifacts_inside_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores otherwise
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tracker = Tracker((tmp_path / "fstore").as_uri())
    artifact_uri = _log_one_artifact(tracker, "exp-file")
    assert not (cwd / "mlruns").exists()
    assert artifact_uri.startswith((tmp_path / "fstore").as_uri())


def test_the_default_store_keeps_its_artifacts_under_mlflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    artifact_uri = _log_one_artifact(Tracker(), "exp-default-store")
    assert not (tmp_path / "mlruns").exists()
    assert artifact_uri.startswith((tmp_path / "mlflow" / "artifacts" / "exp-default-store").as_uri())


def test_experiments_are_tagged_as_model_training(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'kind.db'}")
    new = tracker.experiment_id("new")
    old = tracker.client.create_experiment("made-elsewhere")  # untagged, as an older tunebudget left it
    assert tracker.experiment_id("made-elsewhere") == old
    assert tracker.experiment_id("never-made", create=False) is None
    for exp_id in (new, old):
        assert tracker.client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


# ---- tunebudget ui --------------------------------------------------------------------------------

class UiServer:
    """``tunebudget ui`` in its own process group; stop() ends the whole group."""

    def __init__(self, cwd: Path, *args: str, timeout: float = 180) -> None:
        self.port = free_port()
        self.out = cwd / f"ui-{self.port}.out"
        self.err = cwd / f"ui-{self.port}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tunebudget", "ui", "--port", str(self.port), *args],
                                         cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.started = time.monotonic()
        self.link = self._wait_for_link(timeout)
        self.ready_s = time.monotonic() - self.started

    def _wait_for_link(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LINK.search(self.out.read_text())
            if found:
                return found.group(0)
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"tunebudget ui exited with {self.proc.returncode}: {self.err.read_text()[-3000:]}")
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"tunebudget ui printed no link in {timeout:.0f} s: {self.err.read_text()[-3000:]}")

    def group_commands(self) -> list[str]:
        out = subprocess.run(["ps", "-eo", "pgid=,args="], capture_output=True, text=True, check=True).stdout
        return [line.split(None, 1)[1] for line in out.splitlines()
                if line.split(None, 1)[0] == str(self.proc.pid) and len(line.split(None, 1)) == 2]

    def stop(self) -> None:
        _stop_group(self.proc)


def test_ui_serves_the_local_store_on_loopback_without_job_runners(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker()
    exp = tracker.experiment_id("ui_check")
    parent = tracker.start_run(exp, "sweep-x", {"tunebudget_role": "sweep", "sweep_name": "x"})
    tracker.start_run(exp, "search-1", {"tunebudget_role": "trial"}, parent_id=parent)
    ui = UiServer(tmp_path)
    try:
        assert ui.link == ui_url(f"http://127.0.0.1:{ui.port}", exp, parent)
        req = urllib.request.Request(f"http://127.0.0.1:{ui.port}/api/2.0/mlflow/runs/search",
                                     data=json.dumps({"experiment_ids": [exp]}).encode(),
                                     headers={"Content-Type": "application/json"})
        body = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert {r["info"]["run_name"] for r in body["runs"]} == {"sweep-x", "search-1"}
        if shutil.which("ss"):
            listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
            ours = [line for line in listening.splitlines() if f":{ui.port} " in line]
            assert ours and all("127.0.0.1:" in line for line in ours)
        commands = "\n".join(ui.group_commands())
        assert "uvicorn" in commands
        assert "huey" not in commands and "_job_runner" not in commands, commands
        assert commands.count("multiprocessing.spawn") <= 1, commands  # one uvicorn worker, not four
    finally:
        ui.stop()
    assert ui.proc.poll() is not None
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()


def test_ui_links_the_experiments_list_when_there_is_no_sweep(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ui = UiServer(tmp_path)
    ui.stop()
    assert ui.link == ui_url(f"http://127.0.0.1:{ui.port}")


@pytest.mark.parametrize("uri, fragment", [
    ("sqlite:///no/such/dir/x.db", "no directory"),
    ("file:./fstore", "MLFLOW_ALLOW_FILE_STORE=true"),
    ("http://127.0.0.1:5000", "is a tracking server already"),
])
def test_ui_on_a_store_it_cannot_serve_exits_2_with_one_line(tmp_path, cli, monkeypatch, uri, fragment):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    res = cli("ui", "--port", str(free_port()), "--tracking-uri", uri)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr


def test_ui_on_a_busy_port_exits_2_with_one_line(tmp_path, cli, monkeypatch):
    import socket

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        res = cli("ui", "--port", str(busy.getsockname()[1]))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("tunebudget: error: --host 127.0.0.1 --port") and "--port" in lines[-1]
    assert "Traceback" not in res.stderr


# ---- a real sweep, seen in a real browser ---------------------------------------------------------

def tiny_space(tmp: Path) -> Path:
    """The shipped digits space cut to two trials (one searched, one baseline), no confirmation runs."""
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": None, "samples": 1500, "eval_every": 0.5}
    data["sweep"].update({"trials": 1, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 0})
    data["baselines"] = [b for b in data["baselines"] if b["name"] == "full_linear"]
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def render(url: str, tmp: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``url`` after headless Chromium ran the page's scripts (virtual time: no waiting)."""
    args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1400,900",
            "--virtual-time-budget=20000", "--run-all-compositor-stages-before-draw"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install -y chromium)")
def test_the_printed_link_shows_the_sweep_in_the_model_training_view(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = run_cli("sweep", str(tiny_space(tmp_path)), "--cpus-per-trial", "0.5", "--quiet", cwd=tmp_path,
                    env={"MLFLOW_TRACKING_URI": ""}, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    store = Tracker(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    exp = store.experiment_id("digits_mlp", create=False)
    (parent,) = store.runs(exp, "tags.tunebudget_role = 'sweep'")
    children = store.children(exp, parent.info.run_id)
    assert len(children) == 2
    run_path = f"#/experiments/{exp}/runs/{parent.info.run_id}?workflowType=machine_learning"
    assert f"See it in the MLflow UI: http://127.0.0.1:5000/{run_path}" in sweep.stdout
    assert store.client.get_experiment(exp).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND

    ui = UiServer(tmp_path)
    try:
        assert ui.link == f"http://127.0.0.1:{ui.port}/{run_path}"
        dom = render(ui.link, tmp_path)
        shot = os.environ.get("TUNEBUDGET_UI_SCREENSHOT")  # a PNG of what the user sees, to look at by hand
        if shot:
            render(ui.link, tmp_path, Path(shot))
    finally:
        ui.stop()
    assert f">{parent.info.run_name}<" in dom  # the page's heading: the sweep's parent run
    for child in children:  # its child runs, linked from the parent's overview
        assert f'href="#/experiments/{exp}/runs/{child.info.run_id}"' in dom and child.info.run_name in dom
    # the Model training view's side navigation (Runs, Models, Traces), not the GenAI one
    # (Overview, Sessions, Judges, Evaluation runs, ...) that MLflow 3 shows without the parameter
    assert f'href="#/experiments/{exp}/runs?workflowType=machine_learning"' in dom
    for genai in ("/evaluation-runs", "/judges", "/chat-sessions", "/overview/usage"):
        assert f'href="#/experiments/{exp}{genai}' not in dom
