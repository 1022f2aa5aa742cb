"""Throw-away services for tests, as real processes on loopback: PostgreSQL and an MLflow server.

No pytest in here, so the helpers also work from a script or a REPL::

    from servers import start_postgres, start_mlflow_server
    pg = start_postgres()                              # Debian's postgresql, 127.0.0.1, a free port
    srv = start_mlflow_server(pg.url("mlflow"), auth_db=pg.url("mlflow_auth"))
    ...                                                # http://127.0.0.1:PORT, admin credentials
    srv.stop(); pg.stop()

``start_postgres`` runs ``initdb`` and ``postgres`` from Debian's ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin``) in a fresh temporary directory, bound to 127.0.0.1 only,
with the Unix socket in that private directory. PostgreSQL refuses to run as root, so under root
the server runs as the ``postgres`` system user the package creates. One login role with a
password owns the databases asked for.

``start_mlflow_server`` runs ``python -m mlflow server`` with that PostgreSQL as the backend
store, a local ``--artifacts-destination`` (artifacts proxied by the server) and
``--app-name basic-auth``: the auth app reads ``MLFLOW_AUTH_CONFIG_PATH`` (an ini file with the
admin user name and the auth store's ``database_uri``), bootstraps the admin user from
``MLFLOW_AUTH_ADMIN_PASSWORD`` (at least 12 characters; MLflow ships no default password) and
needs ``MLFLOW_FLASK_SERVER_SECRET_KEY``.

Both stop() functions end the whole process group and remove the temporary directory.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable


class ServiceError(RuntimeError):
    """A service could not be started; the message carries the tail of its log."""


# ---- small utilities ------------------------------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Signal the process group of ``proc`` (started with start_new_session); SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:  # children (uvicorn workers, postgres backends) may outlive the leader
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _listeners() -> list[tuple[str, int, set[int]]]:
    """Every listening TCP socket as (local address, port, owning pids), from ``ss -Htlnp``."""
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        addr, _, port = parts[3].rpartition(":")
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        rows.append((addr.strip("[]"), int(port), pids))
    return rows


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port``."""
    return {addr for addr, p, _ in _listeners() if p == port}


def group_listeners(pgid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening socket owned by a process of process group ``pgid``."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True, check=True).stdout
    pids = {int(pid) for pid, group in (line.split() for line in out.splitlines() if line.strip())
            if int(group) == pgid}
    return {(addr, port) for addr, port, owners in _listeners() if owners & pids}


# ---- PostgreSQL -----------------------------------------------------------------------------------

def postgres_bindir() -> Optional[Path]:
    """Directory holding ``initdb`` and ``postgres``: Debian's newest, else the PATH; None if absent."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")])
    for d in reversed(candidates):
        if (Path(d) / "initdb").is_file() and (Path(d) / "postgres").is_file():
            return Path(d)
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return Path(os.path.realpath(postgres)).parent
    return None


def postgres_missing_reason() -> Optional[str]:
    """Why start_postgres cannot work here (for a pytest skip), or None."""
    if postgres_bindir() is None:
        return "PostgreSQL server binaries not installed (apt-get install -y postgresql)"
    if not shutil.which("ss"):
        return "'ss' (iproute2) not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    return None


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str
    databases: list[str]
    dir: Path
    proc: subprocess.Popen
    log: Path
    _stopped: bool = field(default=False, repr=False)

    def url(self, database: Optional[str] = None, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database or self.databases[0]}"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        _stop_group(self.proc, signal.SIGINT)  # SIGINT to the postmaster: "fast" shutdown
        shutil.rmtree(self.dir, ignore_errors=True)


def _as_user() -> dict:
    """Popen kwargs to run PostgreSQL as the 'postgres' user when we are root (it refuses root)."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def start_postgres(databases: tuple[str, ...] = ("mlflow",), user: str = "tunebudget",
                   password: Optional[str] = None, timeout: float = 60.0) -> Postgres:
    """Start a fresh PostgreSQL on 127.0.0.1:<free port>; ``user`` (password auth) owns ``databases``."""
    reason = postgres_missing_reason()
    if reason:
        raise ServiceError(reason)
    bindir = postgres_bindir()
    password = password or secrets.token_urlsafe(18)
    run_as = _as_user()
    top = Path(tempfile.mkdtemp(prefix="tunebudget-pg-"))
    if run_as:
        os.chown(top, run_as["user"], run_as["group"])
    data, sock, log = top / "data", top / "sock", top / "postgres.log"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PGTZ": "UTC"}
    env.pop("PGDATA", None)
    # superuser 'postgres': trust only on the private Unix socket; TCP needs a password (scram)
    step = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C",
                           "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
                          cwd=top, env=env, capture_output=True, text=True, timeout=120, **run_as)
    if step.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        raise ServiceError(f"initdb failed: {step.stderr[-2000:]}")
    sock.mkdir(mode=0o700)
    if run_as:
        os.chown(sock, run_as["user"], run_as["group"])
    port = free_port()
    with open(log, "wb") as logf:
        if run_as:
            os.chown(log, run_as["user"], run_as["group"])
        proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
             "-c", f"unix_socket_directories={sock}", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=100"],
            cwd=top, env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, **run_as)
    pg = Postgres("127.0.0.1", port, user, password, list(databases), top, proc, log)
    atexit.register(pg.stop)  # a script that forgets stop() does not leave a server behind
    try:
        psql = [str(bindir / "psql") if (bindir / "psql").is_file() else "psql",
                "-h", str(sock), "-p", str(port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt"]
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServiceError(f"postgres exited with {proc.returncode}: {_tail(log)}")
            ready = subprocess.run([*psql, "-c", "select 1"], env=env, capture_output=True, text=True, **run_as)
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ServiceError(f"postgres not ready after {timeout:.0f} s: {ready.stderr[-500:]} {_tail(log)}")
            time.sleep(0.3)
        quoted = password.replace("'", "''")
        sql = [f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{quoted}'"]
        sql += [f"CREATE DATABASE \"{db}\" OWNER \"{user}\"" for db in databases]
        for statement in sql:  # CREATE DATABASE cannot run inside a transaction block: one -c each
            step = subprocess.run([*psql, "-c", statement], env=env, capture_output=True, text=True, **run_as)
            if step.returncode != 0:
                raise ServiceError(f"psql {statement.split(' PASSWORD')[0]!r} failed: {step.stderr[-1000:]}")
    except BaseException:
        pg.stop()
        raise
    return pg


# ---- MLflow tracking server with basic auth --------------------------------------------------------

@dataclass
class MlflowServer:
    url: str
    port: int
    username: str
    password: str
    dir: Path
    artifacts: Path
    proc: subprocess.Popen
    log: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """What a client needs: the tracking URI and the admin credentials."""
        return {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_TRACKING_USERNAME": self.username,
                "MLFLOW_TRACKING_PASSWORD": self.password}

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        _stop_group(self.proc, signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)


def _get(url: str, auth: Optional[tuple[str, str]] = None, timeout: float = 10.0) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def start_mlflow_server(backend_store_uri: str, auth_db: Optional[str] = None, username: str = "admin",
                        password: Optional[str] = None, default_permission: str = "EDIT", workers: int = 1,
                        timeout: float = 180.0, python: str = PYTHON) -> MlflowServer:
    """Start ``mlflow server --app-name basic-auth`` on 127.0.0.1:<free port>; wait for /health and a login.

    ``auth_db`` is the auth app's own store (users, permissions); default: a sqlite file in the
    server's temporary directory. Artifacts are proxied by the server into a temporary directory.
    ``default_permission`` is what every user has on resources nobody granted them (EDIT: read
    and log to any experiment, as a team sharing experiments needs; READ: only their own).
    """
    password = password or secrets.token_urlsafe(18)  # MLflow requires at least 12 characters
    top = Path(tempfile.mkdtemp(prefix="tunebudget-mlflow-"))
    artifacts = top / "artifacts"
    artifacts.mkdir()
    auth_ini = top / "basic_auth.ini"
    auth_db = auth_db or f"sqlite:///{top / 'basic_auth.db'}"
    auth_ini.write_text(
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {auth_db}\n"
        f"admin_username = {username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # every request otherwise re-checks the password hash (PBKDF2, seconds on a busy 2-core box)
        "auth_cache_ttl_seconds = 600\n")
    auth_ini.chmod(0o600)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16), "PYTHONUNBUFFERED": "1",
                # no GenAI job runners (huey consumers, a store in /dev/shm): tunebudget does not use them
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    log = top / "server.log"
    cmd = [python, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers), "--app-name", "basic-auth"]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, cwd=top, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    server = MlflowServer(url, port, username, password, top, artifacts, proc, log)
    atexit.register(server.stop)
    try:
        wait_until(lambda: _get(f"{url}/health", timeout=5)[0] == 200, proc, log, timeout, "mlflow server /health")
        status, body = _get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", (username, password))
        if status != 200:
            raise ServiceError(f"mlflow server refuses the admin login ({status}): {body[:300]} {_tail(log)}")
    except BaseException:
        server.stop()
        raise
    return server


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServiceError(f"{what}: the process exited with {proc.returncode}: {_tail(log)}")
        try:
            if ready():
                return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise ServiceError(f"{what}: not ready after {timeout:.0f} s: {_tail(log)}")
        time.sleep(0.5)
