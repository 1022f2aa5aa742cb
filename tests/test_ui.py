"""`tunebudget ui` serves the local store on 127.0.0.1, with the sweep's runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from tunebudget.tracking import Tracker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_local_store_on_loopback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = Tracker()
    exp = tracker.experiment_id("ui_check")
    parent = tracker.start_run(exp, "sweep-x", {"tunebudget_role": "sweep"})
    tracker.start_run(exp, "search-1", {"tunebudget_role": "trial"}, parent_id=parent)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tunebudget", "ui", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, body = time.time() + 120, None
        while time.time() < deadline and body is None:
            assert proc.poll() is None, proc.stderr.read()
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
                                             data=json.dumps({"experiment_ids": [exp]}).encode(),
                                             headers={"Content-Type": "application/json"})
                body = json.loads(urllib.request.urlopen(req, timeout=5).read())
            except OSError:
                time.sleep(1)
        assert body is not None, "the UI did not answer in time"
        names = {r["info"]["run_name"] for r in body["runs"]}
        assert names == {"sweep-x", "search-1"}
        if shutil.which("ss"):
            listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
            ours = [line for line in listening.splitlines() if f":{port} " in line]
            assert ours and all("127.0.0.1:" in line for line in ours)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
