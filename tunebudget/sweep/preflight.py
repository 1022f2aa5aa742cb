"""Preflight: every store and the Ray cluster are checked before anything is written.
"""


from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from tunebudget.errors import TuneBudgetError
from tunebudget.sweep.plan import Plan
from tunebudget.store import check_store, is_uri
from tunebudget.tracking import Tracker
from tunebudget.factory import check_importable
from tunebudget.util import check_writable_dir

log = logging.getLogger(__name__)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an unreachable cluster: ``ray.init`` would retry for minutes before giving up."""
    import socket

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise TuneBudgetError(f"--address {address}: expected host:port of the Ray head (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise TuneBudgetError(f"--address {address}: cannot reach the Ray head ({exc.strerror or exc}); check that "
                              "'ray start --head' runs there and the port is open, or leave --address out") from None


def check_optuna_storage(url: str) -> None:
    """A database URL SQLAlchemy can use, with its driver installed; a sqlite file's directory writable.

    Nothing is written: a server database is only connected to; a sqlite file is created later.
    """
    import sqlalchemy
    from sqlalchemy.engine import make_url

    flag = f"--optuna-storage {url}"
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (sqlalchemy.exc.NoSuchModuleError, ImportError) as exc:  # NoSuchModuleError is an ArgumentError
        raise TuneBudgetError(f"{flag}: no SQLAlchemy driver for {parsed.drivername!r} ({exc}); use sqlite:// "
                              "or postgresql://, or install the driver") from None
    except sqlalchemy.exc.ArgumentError:
        raise TuneBudgetError(f"{flag}: not a database URL; use e.g. sqlite:////abs/path/optuna.db or "
                              "postgresql://user:pw@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            check_writable_dir(Path(parsed.database).expanduser().resolve().parent, flag)
        return
    try:
        timeout = {"connect_timeout": 10} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
        sqlalchemy.create_engine(parsed, connect_args=timeout).connect().close()
    except Exception as exc:  # noqa: BLE001 - any driver's connection error is the user's to fix
        text = str(exc).splitlines()[0][:160]
        raise TuneBudgetError(f"{flag}: cannot connect ({text}); check the URL and that the database runs") from None


#: What a local Ray's prestarted workers import before they take a trial: torch (2.3 s on one CPU
#: core) and torch._dynamo (1.9 s more: torch.optim imports it when the first optimizer is built).
#: A joined cluster starts its workers itself: there the first trial on each worker pays them.
WORKER_PRELOAD = ["torch", "torch._dynamo", "tunebudget.trainer"]


def preload_workers(plan: Plan, cpus: int) -> bool:
    """Whether a local Ray should preload WORKER_PRELOAD in the workers it prestarts.

    Ray prestarts one worker per CPU core, and a preloaded idle worker holds ~390 MB (42 MB
    bare): worth it where most of them become trial workers, not for 4 trials on 64 cores.
    """
    return not plan.address and cpus <= 2 * plan.sweep.concurrency


def take_prestarted_workers() -> None:
    """Let trial actors run in the workers a local Ray prestarted, which imported torch while the
    driver set up (WORKER_PRELOAD): a trial's first seconds are then training.

    Ray gives a prestarted worker only to an actor with an empty runtime environment, and Tune
    gives every trial actor one with ``PL_DISABLE_FORK=1`` (class_cache.DEFAULT_ENV_VARS, for
    PyTorch Lightning's forking launchers, which tunebudget's trainer never uses): each trial
    slot then started a fresh worker and imported torch in it, ~4 s before its first trial. With
    that entry gone, and none of the variables Tune forwards set (cloud keys), the runtime
    environment is empty. On a joined cluster Ray starts its own workers: not called there.
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # another Ray layout: trials start fresh workers, as before
        return
    getattr(class_cache, "DEFAULT_ENV_VARS", {}).pop("PL_DISABLE_FORK", None)


def connect_ray(plan: Plan) -> dict[str, float]:
    """Start a local Ray (or join ``plan.address``) and check it has what the trials ask for."""
    import ray

    if plan.address:
        check_address(plan.address)
    if ray.is_initialized():
        ray.shutdown()
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.ERROR, "configure_logging": True}
    auth_error = getattr(ray.exceptions, "AuthenticationError", RuntimeError)  # Ray >= 2.5x
    try:
        if plan.address:
            ray.init(address=plan.address, **kwargs)
        else:
            # GPUs: Ray detects them itself (NVML, CUDA_VISIBLE_DEVICES); the driver never imports torch.
            # The workers Ray prestarts import torch while the driver sets up: a trial actor takes one
            # of them (take_prestarted_workers), so its first trial does not pay the imports.
            cpus = os.cpu_count() or 1
            config = {"preload_python_modules": WORKER_PRELOAD} if preload_workers(plan, cpus) else {}
            ray.init(num_cpus=cpus, _system_config=config, **kwargs)
            take_prestarted_workers()
    except (ConnectionError, RuntimeError, TimeoutError, ValueError, auth_error) as exc:
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        auth = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)") if plan.address else ""
        raise TuneBudgetError(f"--address {plan.address}: cannot join the Ray cluster ({text}); "
                              f"check the address (host:port of the head node) or leave it out for a local Ray{auth}") from None
    resources = ray.cluster_resources()
    if plan.gpus > 0 and resources.get("GPU", 0) < plan.gpus:
        ray.shutdown()
        raise TuneBudgetError(f"--gpus-per-trial {plan.gpus:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs; "
                              "use --gpus-per-trial 0 on a machine without a GPU")
    if resources.get("CPU", 0) < plan.cpus:
        ray.shutdown()
        raise TuneBudgetError(f"--cpus-per-trial {plan.cpus:g}: the Ray cluster has {resources.get('CPU', 0):g} CPUs; "
                              "ask for fewer")
    return resources


def preflight(plan: Plan) -> tuple[Tracker, dict[str, float]]:
    """Reach the tracking store, then start (or join) Ray: nothing starts if either fails.

    (Checking the store in a thread while Ray starts was tried: on 2 cores both are CPU-bound,
    so it saved under 0.5 s of ~11 s, and an existing store answers in milliseconds anyway.)
    """
    t0 = time.perf_counter()
    task = plan.base.task
    for field_name in ("model", "dataset"):  # a user's factory that no worker could import fails here, not per trial
        if ":" in str(getattr(task, field_name, "")):
            check_importable(getattr(task, field_name), f"task.{field_name}")
    tracker = Tracker(plan.tracking_uri or None)
    tracker.check()  # first: the Optuna study's default place follows the store's
    if is_uri(plan.storage):  # an object store: the bucket, credentials and endpoint take a write
        check_store(plan.storage)
    else:
        check_writable_dir(Path(plan.storage), f"--storage-path {plan.storage}")
    check_optuna_storage(plan.optuna_storage)
    log.info("tracking store %s reached in %.1f s", tracker.uri, time.perf_counter() - t0)
    resources = connect_ray(plan)
    log.info("Ray ready in %.1f s: %s", time.perf_counter() - t0, resources)
    return tracker, resources
