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
from tunebudget.policy import BudgetPolicy, policy_from_dict, save_policy
from tunebudget.tracking import Tracker, resolve_uri

REPORT_FILES = ("summary.md", "summary.json", "best_policy.yaml", "optimization_history.png",
                "param_importance.png", "validation_vs_time.png")


def _sweep(ref: str, tracking_uri: Optional[str]) -> tuple[Tracker, Any]:
    tracker = Tracker(tracking_uri)
    tracker.check()
    with tracker.writing(f"cannot read sweep {ref!r}"):
        return tracker, tracker.find_parent(ref)


def _best_finished_trial(tracker: Tracker, parent: Any) -> BudgetPolicy:
    """The best FINISHED child run of an unfinished sweep (confirmation runs first)."""
    from tunebudget.sweep import POLICY_TAG

    metric, mode = parent.data.tags.get("metric", "val_accuracy"), parent.data.tags.get("mode", "max")
    runs = [r for r in tracker.children(parent.info.experiment_id, parent.info.run_id)
            if r.info.status == "FINISHED" and metric in r.data.metrics and POLICY_TAG in r.data.tags
            and r.data.tags.get("diverged") != "true"]
    if not runs:
        raise TuneBudgetError(f"export {parent.info.run_id}: the sweep has no finished trial yet; "
                              "wait for one or resume the sweep")
    best = (max if mode == "max" else min)(runs, key=lambda r: r.data.metrics[metric])
    return policy_from_dict(json.loads(best.data.tags[POLICY_TAG]), f"run {best.info.run_id}")


def export_best(ref: str, output: str, tracking_uri: Optional[str] = None, allow_partial: bool = False) -> Path:
    """Write the sweep's best policy (chosen on the confirmed mean) to ``output`` as YAML."""
    out = Path(output)
    if out.is_dir():
        raise TuneBudgetError(f"-o {output}: is a directory; give a file name such as best_policy.yaml")
    tracker, parent = _sweep(ref, tracking_uri)
    status = parent.info.status
    if status != "FINISHED":
        if not allow_partial:
            raise TuneBudgetError(
                f"export {ref}: sweep {parent.data.tags.get('sweep_name', parent.info.run_id)} has not finished "
                f"(status {status}); resume it with 'tunebudget sweep SPACE --resume', or pass --allow-partial "
                "to export its best finished trial")
        policy = _best_finished_trial(tracker, parent)
    else:
        text = tracker.download_text(parent.info.run_id, "best_policy.yaml")
        import yaml

        policy = policy_from_dict(yaml.safe_load(text), f"run {parent.info.run_id}: best_policy.yaml")
    save_policy(policy, out)
    return out


def write_report(ref: str, output: str, tracking_uri: Optional[str] = None) -> Path:
    """Copy a sweep's plots and markdown summary from its parent run into ``output``/."""
    tracker, parent = _sweep(ref, tracking_uri)
    names = {a.path for a in tracker.client.list_artifacts(parent.info.run_id)}
    wanted = [n for n in REPORT_FILES if n in names]
    if not wanted:
        raise TuneBudgetError(f"report {ref}: the sweep's parent run has no report artifacts "
                              f"(status {parent.info.status}); finish the sweep first")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            path = Path(tracker.client.download_artifacts(parent.info.run_id, name, tmp))
            (out / name).write_bytes(path.read_bytes())
    return out


def serve_ui(port: int, host: str = "127.0.0.1", tracking_uri: Optional[str] = None) -> int:
    """Run ``mlflow ui`` on the store (local by default), bound to ``host`` (127.0.0.1 by default)."""
    if not 0 < port < 65536:
        raise TuneBudgetError(f"--port: must be 1-65535 (got {port})")
    uri = resolve_uri(tracking_uri)
    if not uri.startswith(("sqlite:", "file:", "postgresql", "mysql")) and "://" in uri:
        raise TuneBudgetError(f"--tracking-uri {uri}: is a tracking server already; open it in a browser instead")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    print(f"MLflow UI on http://{host}:{port} (store {uri}); Ctrl-C to stop", file=sys.stderr)
    try:
        return subprocess.call(cmd, env=os.environ.copy())
    except KeyboardInterrupt:
        return 0
