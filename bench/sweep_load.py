"""Load: a sweep of many tiny trials. Are all runs logged, is nothing left behind, is memory flat?

Runs ``tunebudget sweep`` as a real process on the digits space with a deterministic budget of
``--samples`` sample passes per trial (tiny), ``--trials`` trials, 2 concurrent, no confirmation
stage, in a temporary directory. While it runs, the driver's resident memory (VmRSS) is sampled
every 0.5 s together with the number of finished child runs in MLflow. Printed: wall time,
trials per minute, child runs logged (must equal the trials), duplicates (must be 0), the driver's
RSS when 50 trials had finished, at the end, and its peak, and Ray processes left behind (must be 0).

Usage:
    python bench/sweep_load.py                    # 200 trials
    python bench/sweep_load.py --trials 60        # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY_PROCESS_MARKERS = ("raylet", "gcs_server", "ray::", "default_worker.py", "ray/dashboard", "log_monitor.py")


def ray_processes() -> set[int]:
    """PIDs of Ray processes on this machine (by command line)."""
    out = set()
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmd for m in RAY_PROCESS_MARKERS):
            out.add(int(pid_dir.name))
    return out


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def finished_children(db: Path) -> tuple[int, int]:
    """(finished search runs, distinct trial ids among them) read straight from the sqlite store."""
    if not db.exists():
        return 0, 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = con.execute("select t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                           "where t.key = 'trial_id' and r.status = 'FINISHED' and r.lifecycle_stage = 'active'"
                           ).fetchall()
        con.close()
    except sqlite3.Error:
        return 0, 0
    return len(rows), len({r[0] for r in rows})


def run(trials: int, samples: float, tmp: Path) -> dict:
    data = json.loads(json.dumps(__import__("yaml").safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())))
    data["budget"] = {"seconds": None, "samples": samples, "eval_every": 0.5}
    data["sweep"].update({"trials": trials, "concurrency": 2, "confirm_seeds": 0})
    space = tmp / "space.yaml"
    space.write_text(__import__("yaml").safe_dump(data))
    before = ray_processes()
    cmd = [sys.executable, "-m", "tunebudget", "sweep", str(space), "--quiet", "--name", "load"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    db = tmp / "mlflow" / "mlflow.db"
    rss_at_50 = peak = last = 0.0
    while proc.poll() is None:
        rss = rss_mib(proc.pid) or 0.0
        peak, last = max(peak, rss), (rss or last)
        done, _ = finished_children(db)
        if done >= 50 and not rss_at_50:
            rss_at_50 = rss
        time.sleep(0.5)
    wall = time.time() - t0
    done, distinct = finished_children(db)
    time.sleep(3)  # give Ray a moment to reap its processes
    left = ray_processes() - before
    return {"returncode": proc.returncode, "stderr": proc.stderr.read()[-2000:] if proc.stderr else "",
            "trials": trials + len(data["baselines"]), "logged": done, "duplicates": done - distinct,
            "wall_s": wall, "rss_at_50_mib": rss_at_50, "rss_at_end_mib": last,
            "rss_peak_mib": peak, "ray_processes_left": len(left)}  # other Ray instances on the machine count too: run it alone


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=198, help="searched trials (+2 baselines; default 200 in all)")
    ap.add_argument("--samples", type=float, default=300, help="sample passes per trial")
    ap.add_argument("--json", help="also write the figures as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = run(args.trials, args.samples, Path(tmp))
    if r["returncode"] != 0:
        print(r["stderr"], file=sys.stderr)
    print(f"# sweep load: {r['trials']} tiny trials ({args.samples:g} sample passes each), 2 concurrent\n")
    print("| figure | value |\n|---|---|")
    for key in ("returncode", "trials", "logged", "duplicates", "wall_s", "rss_at_50_mib", "rss_at_end_mib", "rss_peak_mib",
                "ray_processes_left"):
        value = r[key]
        print(f"| {key} | {value:.1f} |" if isinstance(value, float) else f"| {key} | {value} |")
    print(f"| trials per minute | {60 * r['trials'] / r['wall_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0 if r["returncode"] == 0 and r["logged"] == r["trials"] and r["duplicates"] == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
