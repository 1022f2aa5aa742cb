"""Read finished sweeps back from MLflow: export the best policy, write a report, serve the UI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import BudgetPolicy, load_yaml_text, policy_from_dict
from tunebudget.names import (
    BEST_POLICY,
    DIVERGED_TAG,
    METRIC_TAG,
    MODE_TAG,
    POLICY_TAG,
    SWEEP_ARTIFACTS,
    SWEEP_NAME_TAG,
    VERDICT_TAG,
)
from tunebudget.tracking import Tracker, resolve_uri
from tunebudget.util import atomic_write_bytes, write_output

#: What `tunebudget report` fetches: every artifact the verdict writes onto the parent run.
REPORT_FILES = SWEEP_ARTIFACTS


def _sweep(ref: str, tracking_uri: Optional[str], command: str) -> tuple[Tracker, Any]:
    tracker = Tracker(tracking_uri)
    tracker.check(create=False)
    with tracker.writing(f"cannot read sweep {ref!r}"):
        return tracker, tracker.find_parent(ref, command)


def _best_finished_trial(tracker: Tracker, parent: Any) -> BudgetPolicy:
    """The best FINISHED child run of an unfinished sweep (confirmation runs first)."""
    metric, mode = parent.data.tags.get(METRIC_TAG, "val_accuracy"), parent.data.tags.get(MODE_TAG, "max")
    runs = [r for r in tracker.children(parent.info.experiment_id, parent.info.run_id)
            if r.info.status == "FINISHED" and metric in r.data.metrics and POLICY_TAG in r.data.tags
            and r.data.tags.get(DIVERGED_TAG) != "true"]
    if not runs:
        raise TuneBudgetError(f"export {parent.info.run_id}: the sweep has no finished trial yet; "
                              "wait for one or resume the sweep")
    best = (max if mode == "max" else min)(runs, key=lambda r: r.data.metrics[metric])
    return policy_from_dict(json.loads(best.data.tags[POLICY_TAG]), f"run {best.info.run_id}")


def export_best(ref: str, output: str, tracking_uri: Optional[str] = None, allow_partial: bool = False) -> Path:
    """Write the sweep's best policy (chosen on the confirmed mean) to ``output`` as YAML."""
    out = Path(output)
    if out.is_dir():
        raise TuneBudgetError(f"export -o {output}: is a directory; give a file name such as best_policy.yaml")
    tracker, parent = _sweep(ref, tracking_uri, "export")
    status = parent.info.status
    if status != "FINISHED":
        if not allow_partial and status == "FAILED":
            raise TuneBudgetError(
                f"export {ref}: sweep {parent.data.tags.get(SWEEP_NAME_TAG, parent.info.run_id)} failed "
                f"({parent.data.tags.get(VERDICT_TAG, 'see its parent run in MLflow')}); start a new sweep, or pass "
                "--allow-partial to export its best finished trial")
        if not allow_partial:
            raise TuneBudgetError(
                f"export {ref}: sweep {parent.data.tags.get(SWEEP_NAME_TAG, parent.info.run_id)} has not finished "
                f"(status {status}); resume it with 'tunebudget sweep SPACE --resume', or pass --allow-partial "
                "to export its best finished trial")
        policy = _best_finished_trial(tracker, parent)
    else:
        text = tracker.download_text(parent.info.run_id, BEST_POLICY)
        policy = policy_from_dict(load_yaml_text(text), f"run {parent.info.run_id}: {BEST_POLICY}")
    return write_output(out, policy.to_yaml(), "export -o")


def write_report(ref: str, output: str, tracking_uri: Optional[str] = None) -> Path:
    """Copy a sweep's plots and markdown summary from its parent run into ``output``/."""
    tracker, parent = _sweep(ref, tracking_uri, "report")
    names = {a.path for a in tracker.client.list_artifacts(parent.info.run_id)}
    wanted = [n for n in REPORT_FILES if n in names]
    if not wanted:
        raise TuneBudgetError(f"report {ref}: the sweep's parent run has no report artifacts "
                              f"(status {parent.info.status}); finish the sweep first")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise TuneBudgetError(f"report -o {output}: is a file; give a directory for the report (e.g. -o report)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for name in wanted:
                path = Path(tracker.client.download_artifacts(parent.info.run_id, name, tmp))
                atomic_write_bytes(out / name, path.read_bytes())
    except OSError as exc:
        raise TuneBudgetError(f"report -o {output}: cannot write there ({exc.strerror or exc}); "
                              "give a directory you can write to") from None
    return out


def serve_ui(port: int, host: str = "127.0.0.1", tracking_uri: Optional[str] = None) -> int:
    """Run ``mlflow ui`` on the store (local by default), bound to ``host`` (127.0.0.1 by default).

    One uvicorn worker and no job runner: MLflow 3 otherwise starts four workers, a job runner
    and seven huey consumers for GenAI features (2-3 GB, twice the start-up time) that tunebudget
    never uses. Once the server answers, prints on stdout the link to the latest sweep's parent
    run in the Model training view (or to the experiments list); this process does not import
    MLflow, so it stays small while it waits.
    """
    from tunebudget.tracking import artifact_root

    if not 0 < port < 65536:
        raise TuneBudgetError(f"--port: must be 1-65535 (got {port})")
    uri, missing = _servable_store(tracking_uri)
    _check_listen(host, port)
    if missing is not None:
        missing.mkdir(parents=True)  # the default store before any sweep: serve it empty
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    root = artifact_root(uri)
    if root is not None:  # what someone logs through this server goes next to the store, not to ./mlartifacts
        cmd += ["--artifacts-destination", str(root)]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else (
        f"[{host}]" if ":" in host else host)
    base = f"http://{shown}:{port}"
    print(f"Starting the MLflow UI on {base} (store {uri}); Ctrl-C to stop", file=sys.stderr)
    return _supervise(subprocess.Popen(cmd, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}), base)


def _servable_store(tracking_uri: Optional[str]) -> tuple[str, Optional[Path]]:
    """The store ``mlflow ui`` is to serve, checked; and the default local store's directory when
    it does not exist yet (made once the server can listen)."""
    from tunebudget.tracking import is_local, sqlite_file

    uri = resolve_uri(tracking_uri)
    if not uri.startswith(("sqlite:", "file:", "postgresql", "mysql")) and "://" in uri:
        raise TuneBudgetError(f"--tracking-uri {uri}: is a tracking server already; open it in a browser instead")
    db = sqlite_file(uri)
    default_store = db is not None and uri == resolve_uri(None) and not tracking_uri
    if db is not None and not db.parent.is_dir() and not default_store:
        raise TuneBudgetError(f"--tracking-uri {uri}: no directory {db.parent}; check the path")
    if is_local(uri) and not uri.startswith("sqlite") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() \
            not in ("true", "1"):
        raise TuneBudgetError(f"--tracking-uri {uri}: MLflow 3 serves file stores only with "
                              "MLFLOW_ALLOW_FILE_STORE=true; or migrate it with 'mlflow migrate-filestore'")
    return uri, db.parent if default_store and not db.parent.is_dir() else None


def _check_listen(host: str, port: int) -> None:
    """One line, before the server starts, when it could not listen on ``host:port``."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except socket.gaierror as exc:
        raise TuneBudgetError(f"--host {host}: not an address of this machine ({exc.strerror or exc}); use "
                              "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    except OSError as exc:
        raise TuneBudgetError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                              "pick another port with --port") from None


def _supervise(proc: subprocess.Popen, base: str) -> int:
    """Wait for the server at ``base`` to answer, print the link to the latest sweep, and stay
    with it until it ends (Ctrl-C and SIGTERM stop it; it is never left running)."""
    import signal
    import time
    import urllib.request

    from tunebudget.tracking import latest_sweep_link

    try:  # `kill` of this process stops the server too (mlflow passes SIGTERM on to uvicorn)
        signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    except ValueError:  # not the main thread
        pass
    try:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        else:
            return proc.returncode
        what, link = latest_sweep_link(base)
        print(f"MLflow UI ({what}): {link}", flush=True)
        return proc.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to the server too
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        return 0
    finally:
        if proc.poll() is None:  # an error here, or a SIGTERM turned into an exception: do not leave it running
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
