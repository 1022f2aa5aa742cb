"""A real two-node Ray cluster on this machine: sweeps spread over both nodes, ``ray job submit``,
and the shared-storage check.

The cluster is two ``ray start`` processes (a head and a worker node, 1 CPU each) as an operator
would run them on two hosts, started once for the module:

    ray start --head --port P --num-cpus 1 --num-gpus 0 --temp-dir T --dashboard-port D ...
    ray start --address 127.0.0.1:P --num-cpus 1 --num-gpus 0 --temp-dir T ...

Two raylets on one host only need their own dashboard-agent HTTP port (its default, 52365, is
fixed; every other port defaults to a free one). Everything the cluster runs carries a marker in
its environment (``TUNEBUDGET_TEST_CLUSTER=T``), so the module stops exactly its own processes
(``ray stop`` would stop every Ray instance on the machine, other tests' included) and checks that
none is left. The dedicated ``--temp-dir`` keeps ``ray_current_cluster`` out of /tmp/ray, so a
plain ``ray.init()`` elsewhere never joins this cluster by accident.

Ray 2.60 enables token authentication on ``ray start --head`` when a token exists (ray.init()
writes ~/.ray/auth_token for local clusters), but never when joining with an explicit address: the
cluster, the sweep and ``ray job submit`` all run with ``RAY_AUTH_MODE=token`` and a private token
file (``RAY_AUTH_TOKEN_PATH``), as a real multi-node deployment has to.

``ray job submit`` needs the job server, which the head's dashboard runs only with ``ray[default]``
installed (without it the dashboard starts in its minimal mode and ``--include-dashboard true``
fails); that test skips, with the reason, where it is missing.

Shared storage is tested honestly on one machine: the worker node runs in its own mount namespace
(``unshare --mount``) with a private tmpfs over one directory, so a path under that directory is
storage the worker node really cannot see, exactly like a local disk on another host. That needs
root (``unshare --mount``); elsewhere that one test skips.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli

pytestmark = pytest.mark.filterwarnings("ignore")

RAY = str(Path(sys.executable).with_name("ray"))
_SCRIPT = Path(sys.executable).with_name("tunebudget")
TUNEBUDGET = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tunebudget"]
MARK = "TUNEBUDGET_TEST_CLUSTER"
TRIALS, BASELINES = 1, 2  # per sweep: the 2 baselines start together (one per node), then 1 searched trial

# Runs check_shared_storage(argv[1]) as the sweep's driver would; a TuneBudgetError exits 2.
CHECK_SCRIPT = """
import sys, ray
from tunebudget.cluster import check_shared_storage
from tunebudget.errors import TuneBudgetError
ray.init(logging_level="ERROR", log_to_driver=False)
try:
    check_shared_storage(sys.argv[1])
except TuneBudgetError as exc:
    print(exc)
    sys.exit(2)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_missing() -> str | None:
    """Why the head cannot run the job server, or None: it needs ``ray[default]``."""
    from ray._private.utils import get_dashboard_dependency_error

    err = get_dashboard_dependency_error()
    return None if err is None else f"ray job submit needs ray[default] on the head (missing: {err.name or err})"


class LocalCluster:
    """A head and a worker node started with ``ray start``; stop() ends only their processes."""

    def __init__(self) -> None:
        # short path: Ray's Unix sockets live under it (108-byte limit)
        self.tmp = Path(tempfile.mkdtemp(prefix="tbray-", dir="/tmp"))
        self.private = self.tmp / "node2-only"  # a private tmpfs on the worker node, when possible
        self.private.mkdir()
        token = self.tmp / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update({MARK: str(self.tmp), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                         "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
        self.with_dashboard = dashboard_missing() is None
        self.isolated = False  # the worker node has its own mount namespace
        self.log: list[str] = []

    def _ray_start(self, args: list[str], prefix: list[str] = ()) -> subprocess.CompletedProcess:
        common = ["--num-cpus", "1", "--num-gpus", "0", "--temp-dir", str(self.tmp), "--disable-usage-stats",
                  "--object-store-memory", str(150 * 1024 ** 2), "--dashboard-agent-listen-port", str(free_port())]
        # cwd: a job's entrypoint (ray job submit) runs in the head's `ray start` directory
        proc = subprocess.run([*prefix, RAY, "start", *args, *common], env=self.env, capture_output=True,
                              text=True, timeout=180, cwd=self.tmp)
        self.log.append(f"$ ray start {' '.join(args)}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
        return proc

    def _namespace_prefix(self) -> list[str]:
        """``unshare`` mounting a private tmpfs over self.private for the worker node (root only)."""
        unshare = shutil.which("unshare")
        if not unshare or os.geteuid() != 0:
            return []
        prefix = [unshare, "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tbray "$0" && exec "$@"',
                  str(self.private)]
        # $0 is the mount point, "$@" the command: probe with `true`
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
        return prefix if probe.returncode == 0 else []

    def start(self) -> None:
        head = ["--head", "--port", str(self.port), "--include-dashboard", str(self.with_dashboard).lower()]
        if self.with_dashboard:
            head += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)]
        if self._ray_start(head).returncode != 0:
            raise RuntimeError("ray start --head failed")
        prefix = self._namespace_prefix()
        # `ray start` returns once its raylet has registered with the GCS
        if self._ray_start(["--address", self.address], prefix).returncode != 0:
            raise RuntimeError("ray start --address (the second node) failed")
        self.isolated = bool(prefix)
        self.nodes = self.raylets()
        if len(self.nodes) != 2:
            raise RuntimeError(f"expected 2 raylets, found {self.nodes}")

    def raylets(self) -> list[dict]:
        """Node id and role of each raylet of this cluster, read from the raylet command lines."""
        nodes = []
        for pid in self.processes():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if Path(argv[0]).name == "raylet":
                node_id = next(a.split("=", 1)[1] for a in argv if a.startswith("--node_id="))
                nodes.append({"id": node_id, "head": "--head" in argv})
        return nodes

    def driver(self, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a Python driver script against the cluster (RAY_ADDRESS set), in a subprocess."""
        return subprocess.run([sys.executable, "-c", script, *args], env={**self.env, "RAY_ADDRESS": self.address},
                              capture_output=True, text=True, timeout=timeout, cwd=self.tmp)

    @property
    def head_id(self) -> str:
        return next(n["id"] for n in self.nodes if n["head"])

    @property
    def worker_id(self) -> str:
        return next(n["id"] for n in self.nodes if not n["head"])

    def processes(self) -> list[int]:
        """PIDs of every process of this cluster (raylets, GCS, agents, workers, job drivers)."""
        needle = f"\0{MARK}={self.tmp}\0".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in b"\0" + (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone, a zombie, or not ours
                continue
        return pids

    def stop(self, grace: float = 3.0) -> list[int]:
        """SIGTERM every process of the cluster, SIGKILL what lingers; returns what is still alive."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            pids = self.processes()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait
            while pids and time.time() < deadline:
                time.sleep(0.2)
                pids = self.processes()
            if not pids:
                break
        left = self.processes()
        if not left:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return left


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        c.stop()
        pytest.skip(f"could not start a two-node Ray cluster here ({exc}): {''.join(c.log)[-1500:]}")
    try:
        yield c
    finally:
        left = c.stop()
        assert not left, f"Ray processes of the test cluster left running: {left}"


def space_file(tmp: Path, trials: int = TRIALS, samples: float = 2000) -> Path:
    """The shipped digits space with a deterministic samples budget (as in test_sweep.py)."""
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": None, "samples": samples, "eval_every": 0.25}
    data["sweep"].update({"trials": trials, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 0})
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One directory for the module's sweeps: the space, ./mlflow (sqlite) and ./ray_results."""
    tmp = tmp_path_factory.mktemp("cluster")
    space_file(tmp)
    return tmp


def sweep_args(tmp: Path, name: str) -> list[str]:
    """Every path absolute: under ``ray job submit`` the entrypoint's cwd is not the test's."""
    return [str(tmp / "space.yaml"), "--name", name, "--cpus-per-trial", "1", "--concurrency", "2",
            "--confirm-seeds", "0", "--quiet", "--tracking-uri", f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}",
            "--optuna-storage", f"sqlite:///{tmp / 'mlflow' / 'optuna.db'}", "--storage-path", str(tmp / "ray_results")]


def child_runs(tmp: Path, name: str, experiment: str = "digits_mlp") -> list:
    """The child runs of sweep ``name`` (its parent run FINISHED), from the sqlite store in ``tmp``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "the sweep created no MLflow experiment"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tunebudget_role") == "sweep" and r.data.tags.get("sweep_name") == name]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def assert_spread_over_both_nodes(children: list, cluster: LocalCluster) -> None:
    assert len(children) == TRIALS + BASELINES
    assert all(r.info.status == "FINISHED" for r in children)
    nodes = {r.data.tags.get("ray_node_id") for r in children}
    # two 1-CPU nodes, trials of 1 CPU, 2 at a time: both nodes ran trials
    assert nodes == {cluster.head_id, cluster.worker_id}, nodes


def test_sweep_places_trials_on_both_nodes(cluster, store):
    proc = run_cli("sweep", *sweep_args(store, "cli-sweep"), "--address", cluster.address, cwd=store,
                   env=cluster.env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Verdict" in proc.stdout
    assert_spread_over_both_nodes(child_runs(store, "cli-sweep"), cluster)


def test_ray_job_submit_runs_a_sweep_on_the_cluster(cluster, store, tmp_path):
    """``ray job submit -- tunebudget sweep ...``: the entrypoint runs on the head with RAY_ADDRESS set.

    ``ray job submit`` blocks until the job ends and streams its logs; its exit status is the job's.
    """
    if not cluster.with_dashboard:
        pytest.skip(dashboard_missing())
    cmd = [RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id", "tb-job-sweep", "--",
           *TUNEBUDGET, "sweep", *sweep_args(store, "job-sweep")]
    proc = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Job 'tb-job-sweep' succeeded" in out and "Verdict" in out  # the job's own output came back
    children = child_runs(store, "job-sweep")
    assert_spread_over_both_nodes(children, cluster)
    # the entrypoint ran in the head's directory; with absolute paths nothing of the sweep landed there
    assert not {"mlflow", "ray_results"} & {p.name for p in cluster.tmp.iterdir()}


def test_shared_storage_passes_when_every_node_sees_it(cluster, tmp_path):
    storage = tmp_path / "new" / "ray_results"
    proc = cluster.driver(CHECK_SCRIPT, str(storage))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert not (tmp_path / "new").exists()  # what the check created, it removed


def test_shared_storage_fails_on_storage_one_node_cannot_see(cluster):
    if not cluster.isolated:
        pytest.skip("the worker node has no mount namespace of its own here (needs root and unshare --mount)")
    storage = cluster.private / "ray_results"  # on the driver's disk; the worker node has a tmpfs there
    storage.mkdir()
    proc = cluster.driver(CHECK_SCRIPT, str(storage))
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    message = proc.stdout.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith(f"--storage-path {storage}: not visible from node(s) ")
    assert cluster.worker_id[:12] in message and cluster.head_id[:12] not in message
    assert "need shared storage" in message
    assert "or an object store (s3://" in message  # the other way to share a sweep's storage
    assert storage.is_dir() and not list(storage.iterdir())  # the marker is gone, the directory stays


def test_cluster_stops_without_leftovers(cluster):
    assert cluster.processes()
    assert cluster.stop() == []
    assert not cluster.tmp.exists()
