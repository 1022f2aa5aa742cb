"""Sweeps: Ray Tune runs trials of BudgetTrainer, Optuna proposes policies, MLflow keeps them.

Stages of ``run_sweep``:

1. **preflight**, before anything is written: options checked, the tracking store reached, Ray
   started or joined and its resources checked (GPUs asked for must exist).
2. **search**: a Tune ``Tuner`` over a function trainable, with ``OptunaSearch`` (define-by-run
   space, seeded sampler, persistent Optuna storage so the study resumes and optuna-dashboard
   can read it) and the baselines enqueued first through ``points_to_evaluate``.
3. **confirm**: the top-k searched policies and the baselines (plus RS2 at the winner's ratio)
   re-run with fresh seeds; the best policy is chosen on the confirmed mean, not on one lucky trial.
4. **verdict and artifacts**: the parent MLflow run gets the best policy YAML, the summary table
   and the plots; ``tunebudget export`` reads them back.

The driver writes everything to MLflow through a Tune callback (trial workers never talk to it).
A sweep's state lives in ``<storage>/<sweep>/tunebudget_sweep.json``, so ``--resume`` finds the
same parent run, the same Optuna study and the Tune experiment to restore.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import BudgetPolicy, policy_from_dict, read_yaml
from tunebudget.spaces import SearchSpace
from tunebudget.tracking import STATUS_FOR_TRIAL, Tracker, existing_children_by_trial, local_store, sqlite_file
from tunebudget.util import atomic_write_text, check_importable, check_writable_dir, git_commit

log = logging.getLogger(__name__)

STATE_FILE = "tunebudget_sweep.json"
#: Set when the driver receives SIGINT during a stage (Tune then stops and saves its state).
INTERRUPTED = threading.Event()
#: Child-run tag holding the trial's resolved policy as compact JSON (export reads it back).
POLICY_TAG = "tunebudget.policy"
CONFIRM_SEED_BASE = 1000
#: Tune result keys that are bookkeeping, not metrics worth an MLflow series.
_SKIP_METRICS = {"done", "training_iteration", "timestamp", "time_this_iter_s", "pid", "time_since_restore",
                 "iterations_since_restore", "final", "finished"}


@dataclass
class SweepOptions:
    """Command-line choices; None means "take the space file's ``sweep`` section"."""

    trials: Optional[int] = None
    budget: Optional[float] = None
    concurrency: Optional[int] = None
    cpus_per_trial: Optional[float] = None
    gpus_per_trial: Optional[float] = None
    address: Optional[str] = None
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None
    scheduler: Optional[str] = None
    sampler: Optional[str] = None
    confirm_seeds: Optional[int] = None
    confirm_top: Optional[int] = None
    max_failures: Optional[int] = None
    resume: bool = False
    seed: Optional[int] = None
    storage_path: Optional[str] = None
    optuna_storage: Optional[str] = None
    name: Optional[str] = None
    quiet: bool = False


@dataclass
class Plan:
    """Options resolved against the space: exactly what this sweep will do."""

    space_path: str
    name: str
    experiment: str
    trials: int
    concurrency: int
    cpus: float
    gpus: float
    scheduler: str
    sampler: str
    confirm_top: int
    confirm_seeds: int
    max_failures: int
    seed: int
    metric: str
    mode: str
    storage: str
    optuna_storage: str
    tracking_uri: str
    address: Optional[str]
    base: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.storage) / self.name

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


# ---- the trainable (runs in Ray workers) ---------------------------------------------------------

_DATA_CACHE: dict[str, Any] = {}


def _cached_data(policy: BudgetPolicy, device: str) -> Any:
    """Data sets are loaded once per worker process and reused by the trials it runs."""
    from tunebudget.data import load_data
    from tunebudget.trainer import resolve_device

    dev = resolve_device(device)
    key = json.dumps([policy.task.model_dump(mode="json"), policy.seed, str(dev)], sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_data(policy.task, policy.seed, dev)
    return _DATA_CACHE[key]


def trial_policy(config: dict[str, Any], base: dict[str, Any]) -> BudgetPolicy:
    """The policy a trial trains: a confirmation job's full policy, or base + sampled params."""
    job = config.get("job")
    if job:
        return policy_from_dict(job["policy"], f"confirm job {job['candidate']}")
    params = {k: v for k, v in config.items() if "." in k}
    return policy_from_dict(base, "search space").with_overrides(params, source="trial parameters")


def trainable(config: dict[str, Any], base: dict[str, Any], threads: int, metric: str, mode: str) -> None:
    """Ray Tune function trainable: one BudgetTrainer run, reporting each validation."""
    entered = time.time()
    import socket

    import ray
    import torch
    from ray import tune

    from tunebudget.trainer import BudgetTrainer

    torch.set_num_threads(threads)
    policy = trial_policy(config, base)
    device = "cuda" if torch.cuda.is_available() and tune.get_context().get_trial_resources() \
        .required_resources.get("GPU", 0) > 0 else "cpu"
    data = _cached_data(policy, device)

    def on_eval(metrics: dict[str, Any]) -> None:
        tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    trainer = BudgetTrainer(policy, device=device, data=data, on_eval=on_eval, threads=threads)  # the CPU share wins
    setup_seconds = time.time() - entered  # imports, data (cached per worker), model: not training
    result = trainer.run()
    final = {k: v for k, v in (result.history[-1] if result.history else {}).items() if isinstance(v, (int, float))}
    final.update({f"test_{k}": v for k, v in result.test.items()})
    final.update({k: v for k, v in result.stats.items() if isinstance(v, (int, float)) and v is not None})
    final["setup_seconds"] = setup_seconds
    final["trial_started_at"] = entered  # wall clock, for the sweep-efficiency benchmark's timeline
    final["diverged"] = int(result.status == "diverged")
    final["finished"] = 1  # marks a trial that ran to its end (an interrupted one never reports this)
    final["node_id"] = ray.get_runtime_context().get_node_id()  # where it ran (tagged in MLflow)
    final["hostname"] = socket.gethostname()
    final["device"] = str(result.stats.get("device", device))
    final["too_short"] = int(result.too_short)
    if result.status == "diverged" or metric not in final or result.too_short:
        final[metric] = 0.0 if mode == "max" else 1e12  # the worst value: diverged (or untrained) policies lose
    tune.report(final)


# ---- driver-side callbacks --------------------------------------------------------------------------

class TrialLogger:
    """Writes each Tune trial to MLflow as a child run of the sweep's parent run.

    Runs are keyed by trial id: a trial whose run had FINISHED (a resumed sweep) is not logged
    again; a run left unfinished by an interrupted sweep is deleted and started afresh.
    """

    def __init__(self, tracker: Tracker, experiment_id: str, parent_id: str, plan: Plan, stage: str,
                 labels: dict[str, str]) -> None:
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.plan = plan
        self.stage = stage
        self.labels = labels  # trial params digest -> baseline/candidate name
        self.runs: dict[str, str] = {}
        self.done: set[str] = set()
        for trial_id, run in existing_children_by_trial(tracker, experiment_id, parent_id).items():
            if run.info.status == "FINISHED" or run.info.status == "FAILED":
                self.done.add(trial_id)
            else:
                tracker.client.delete_run(run.info.run_id)

    def start(self, trial: Any) -> None:
        if trial.trial_id in self.done or trial.trial_id in self.runs:
            return
        policy = trial_policy(trial.config, self.plan.base)
        label = self.labels.get(label_key(trial.config), "")
        tags = {"trial_id": trial.trial_id, "tunebudget_role": "trial", "stage": self.stage,
                "policy_digest": policy.digest(), POLICY_TAG: json.dumps(policy.to_dict(), separators=(",", ":")), "baseline": label if self.stage == "search" else None,
                "candidate": label if self.stage == "confirm" else None}
        if self.stage == "confirm":
            tags["confirm"] = "true"
        name = f"{self.stage}-{label or trial.trial_id}"
        if self.stage == "confirm":
            name += f"-seed{policy.seed}"
        self.runs[trial.trial_id] = self.tracker.start_run(
            self.experiment_id, name, tags, policy.flat(), parent_id=self.parent_id)

    def result(self, trial: Any, result: dict[str, Any]) -> None:
        if trial.trial_id in self.done:
            return
        if trial.trial_id not in self.runs:  # a restarted attempt (see recover)
            self.start(trial)
        run_id = self.runs[trial.trial_id]
        step = int(float(result.get("train_seconds", 0.0)) * 1000)
        self.tracker.log_metrics(run_id, {k: v for k, v in result.items() if k not in _SKIP_METRICS}, step)

    def end(self, trial: Any, status: str, error: Optional[str] = None) -> None:
        run_id = self.runs.pop(trial.trial_id, None)
        if run_id is None:
            return
        last = trial.last_result or {}
        tags: dict[str, Any] = {"trial_status": status, "ray_node_id": last.get("node_id"),
                                "hostname": last.get("hostname"), "device": last.get("device")}
        tags = {k: v for k, v in tags.items() if v is not None}
        if last.get("diverged"):
            tags["diverged"] = "true"
        if error:
            tags["error"] = error[:5000]
        self.tracker.set_tags(run_id, tags)
        self.tracker.finish(run_id, STATUS_FOR_TRIAL.get(status, "KILLED"))
        self.done.add(trial.trial_id)

    def recover(self, trial: Any) -> None:
        """A trial failed and Tune retries it: drop the failed attempt's run (no duplicates)."""
        run_id = self.runs.pop(trial.trial_id, None)
        if run_id is not None:
            self.tracker.client.delete_run(run_id)

    def close(self) -> None:
        """Runs still open when the stage ends (interrupted) are marked KILLED."""
        for trial_id, run_id in list(self.runs.items()):
            self.tracker.finish(run_id, "KILLED")
            self.runs.pop(trial_id)


def label_key(config: dict[str, Any]) -> str:
    job = config.get("job")
    if job:
        return f"{job['candidate']}@{job['policy']['seed']}"
    return json.dumps({k: v for k, v in config.items() if "." in k}, sort_keys=True, default=str)


class SweepCallback(Callback):
    """The Tune callback of a stage: MLflow logging and the live progress line, in the driver.

    It pickles to plain settings only (Tune saves callbacks with the experiment and restores them
    on ``--resume``): the MLflow client and the display are rebuilt on first use.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self._logger: Optional[TrialLogger] = None
        self._progress: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "_logger": None, "_progress": None}

    @property
    def logger(self) -> TrialLogger:
        if self._logger is None:
            st = self.settings
            self._logger = TrialLogger(Tracker(st["tracking_uri"] or None), st["experiment_id"], st["parent_id"],
                                       Plan(**st["plan"]), st["stage"], st["labels"])
        return self._logger

    @property
    def progress(self) -> Any:
        if self._progress is None:
            from tunebudget.progress import SweepProgress

            st = self.settings
            self._progress = SweepProgress(st["stage"], st["total"], st["plan"]["metric"], st["plan"]["mode"],
                                           quiet=st.get("quiet", False))
        return self._progress

    def setup(self, **info):
        """Note a Ctrl-C (Tune installs its own SIGINT handler before this runs; chain to it)."""
        import signal

        previous = signal.getsignal(signal.SIGINT)

        def note_interrupt(sig, frame):
            INTERRUPTED.set()
            if callable(previous):
                previous(sig, frame)

        try:
            signal.signal(signal.SIGINT, note_interrupt)
        except ValueError:  # not the main thread (e.g. under ray job submit's entrypoint wrapper)
            pass

    def on_trial_start(self, iteration, trials, trial, **info):
        self.logger.start(trial)
        self.progress.update(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.logger.result(trial, result)
        self.progress.update(trials, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.logger.end(trial, "TERMINATED")
        self.progress.update(trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.logger.recover(trial)
        self.progress.update(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        err = getattr(trial, "error_file", None)
        text = Path(err).read_text()[-2000:] if err and Path(err).is_file() else "trial raised"
        self.logger.end(trial, "ERROR", text)
        self.progress.update(trials)

    def on_experiment_end(self, trials, **info):
        self.close(trials)

    def close(self, trials: Optional[list[Any]] = None) -> None:
        if self._logger is not None:
            self._logger.close()
        if self._progress is not None:
            if trials is not None:
                self._progress.update(trials)
            self._progress.close()


# ---- plan and preflight (nothing written yet) -------------------------------------------------------

def _pick(flag: Any, default: Any) -> Any:
    return default if flag is None else flag


#: A sweep's name is a directory under the storage path: one safe path component.
_SWEEP_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def make_plan(space: SearchSpace, opts: SweepOptions) -> Plan:
    """Resolve the command line against the space's ``sweep`` section; check every value."""
    sw = space.sweep
    base = space.base
    if opts.budget is not None:
        if not opts.budget > 0:
            raise TuneBudgetError(f"--budget: must be > 0 seconds (got {opts.budget})")
        base = base.with_overrides({"budget.seconds": opts.budget, "budget.samples": None}, "--budget")
    if opts.seed is not None:
        base = base.with_overrides({"seed": opts.seed}, "--seed")
    checks = [("--trials", opts.trials, 1), ("--concurrency", opts.concurrency, 1),
              ("--confirm-seeds", opts.confirm_seeds, 0), ("--confirm-top", opts.confirm_top, 0),
              ("--max-failures", opts.max_failures, 0)]
    for flag, value, low in checks:
        if value is not None and value < low:
            raise TuneBudgetError(f"{flag}: must be at least {low} (got {value})")
    cpus = _pick(opts.cpus_per_trial, sw.resources.get("cpu", 1))
    gpus = _pick(opts.gpus_per_trial, sw.resources.get("gpu", 0))
    if not cpus > 0 or gpus < 0:
        raise TuneBudgetError(f"--cpus-per-trial/--gpus-per-trial: need cpu > 0 and gpu >= 0 (got {cpus}, {gpus})")
    metric, mode = space.metric()
    raw = str(opts.storage_path or Path.cwd() / "ray_results")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", raw):
        raise TuneBudgetError(f"--storage-path {raw}: URIs are not supported yet (the sweep's state file is written "
                              "with local file operations); use a directory on storage every node mounts (e.g. NFS)")
    storage = Path(raw).expanduser().resolve()
    if opts.name is not None and not _SWEEP_NAME.fullmatch(opts.name):
        raise TuneBudgetError(f"--name {opts.name!r}: a sweep name is one directory under --storage-path: use "
                              "letters, digits, '.', '_' and '-' (no '/', spaces or leading dot), e.g. --name lr-sweep-1")
    if opts.experiment is not None and not opts.experiment.strip():
        raise TuneBudgetError("--experiment: empty; give an MLflow experiment name, or leave it out for the space's name")
    name = opts.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tracking_uri = opts.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    optuna_storage = opts.optuna_storage or f"sqlite:///{_default_optuna_db(tracking_uri, storage)}"
    return Plan(
        space_path=space.path, name=name, experiment=opts.experiment or space.name,
        trials=_pick(opts.trials, sw.trials), concurrency=_pick(opts.concurrency, sw.concurrency),
        cpus=float(cpus), gpus=float(gpus), scheduler=_pick(opts.scheduler, sw.scheduler),
        sampler=_pick(opts.sampler, sw.sampler), confirm_top=_pick(opts.confirm_top, sw.confirm_top),
        confirm_seeds=_pick(opts.confirm_seeds, sw.confirm_seeds), max_failures=_pick(opts.max_failures, sw.max_failures),
        seed=_pick(opts.seed, sw.seed), metric=metric, mode=mode, storage=str(storage),
        optuna_storage=optuna_storage, tracking_uri=tracking_uri, address=opts.address or os.environ.get("RAY_ADDRESS"),
        base=base.to_dict(),
    )


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


def _default_optuna_db(tracking_uri: str, storage: Path) -> Path:
    """Next to a sqlite tracking store (./mlflow by default), else in the Ray storage directory."""
    if not tracking_uri:
        return local_store() / "optuna.db"
    db = sqlite_file(tracking_uri)
    return db.parent / "optuna.db" if db is not None else storage / "optuna.db"


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
            # GPUs: Ray detects them itself (NVML, CUDA_VISIBLE_DEVICES); the driver never imports torch
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
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


# ---- state of a sweep on disk (for --resume) ---------------------------------------------------

def save_state(plan: Plan, **fields: Any) -> dict[str, Any]:
    path = plan.root / STATE_FILE
    state = read_state(plan.root) or {}
    state.update({"plan": asdict(plan), **fields})
    atomic_write_text(path, json.dumps(state, indent=2, default=str))
    return state


def read_state(root: Path) -> Optional[dict[str, Any]]:
    path = Path(root) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def find_resumable(storage: Path, space_name: str, name: Optional[str]) -> Path:
    """The sweep directory to resume: ``--name`` if given, else this space's latest unfinished sweep."""
    if name:
        root = storage / name
        if not (root / STATE_FILE).is_file():
            raise TuneBudgetError(f"--resume --name {name}: no sweep state in {root}; check --name and --storage-path")
        return root
    candidates = []
    for state_file in storage.glob(f"*/{STATE_FILE}"):
        state = json.loads(state_file.read_text())
        if state.get("plan", {}).get("base", {}).get("name") == space_name and \
                state.get("stage") not in ("finished", "failed"):
            candidates.append(state_file.parent)
    if not candidates:
        raise TuneBudgetError(f"--resume: no unfinished sweep of {space_name!r} under {storage}; "
                              "start a new one without --resume (or give --name / --storage-path)")
    return max(candidates, key=lambda p: p.stat().st_mtime)


# ---- stages -------------------------------------------------------------------------------------------

class SweepInterrupted(Exception):
    """The driver was interrupted; finished trials are logged, ``--resume`` continues."""


def _finished(trial_result: Any) -> bool:
    metrics = trial_result.metrics or {}
    return bool(metrics.get("finished"))


def _make_sampler(plan: Plan) -> Any:
    import optuna

    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=plan.seed)
    if plan.sampler == "gp":
        return optuna.samplers.GPSampler(seed=plan.seed)
    return optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=max(4, min(10, plan.trials // 3)))


def _scheduler(plan: Plan) -> Any:
    if plan.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    budget = float(plan.base["budget"]["seconds"] or 60.0)
    # time_total_s includes validation and set-up; give trials room beyond the budget itself
    return ASHAScheduler(time_attr="time_total_s", metric=plan.metric, mode=plan.mode, max_t=budget * 3,
                         grace_period=max(1.0, budget * 0.3), reduction_factor=3)


def _trainable(plan: Plan) -> Any:
    from ray import tune

    fn = tune.with_parameters(trainable, base=plan.base, threads=plan.threads, metric=plan.metric, mode=plan.mode)
    return tune.with_resources(fn, {"cpu": plan.cpus, "gpu": plan.gpus})


def _run_config(plan: Plan, stage: str, callback: SweepCallback) -> Any:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    # CSV and JSON loggers by name: the result grid's metric histories are read from them (Tune's
    # automatic loggers are off, see run_sweep)
    return tune.RunConfig(name=stage, storage_path=str(plan.root), verbose=0,
                          callbacks=[callback, CSVLoggerCallback(), JsonLoggerCallback()],
                          failure_config=tune.FailureConfig(max_failures=plan.max_failures))


def _callback(plan: Plan, stage: str, ids: dict[str, str], labels: dict[str, str], total: int,
              quiet: bool) -> SweepCallback:
    return SweepCallback({"tracking_uri": plan.tracking_uri, "experiment_id": ids["experiment_id"],
                          "parent_id": ids["parent_id"], "plan": asdict(plan), "stage": stage, "labels": labels,
                          "total": total, "quiet": quiet})


def run_search(plan: Plan, space: SearchSpace, ids: dict[str, str], resume: bool, quiet: bool) -> Any:
    """Stage 2: Optuna proposes, Tune runs; the baselines are enqueued first."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.INFO if log.isEnabledFor(logging.DEBUG) else optuna.logging.WARNING)
    path = plan.root / "search"
    total = plan.trials + len(space.baselines)
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=_trainable(plan), resume_errored=False)
        return tuner.fit()
    points = space.baseline_points()
    labels = {label_key(p): b.name for p, b in zip(points, space.baselines)}
    searcher = OptunaSearch(space=space.suggest, metric=plan.metric, mode=plan.mode,
                            points_to_evaluate=points or None, sampler=_make_sampler(plan),
                            study_name=plan.name, storage=optuna.storages.RDBStorage(plan.optuna_storage))
    tuner = tune.Tuner(
        _trainable(plan),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=total, max_concurrent_trials=plan.concurrency,
                                    reuse_actors=True,
                                    scheduler=_scheduler(plan)),
        run_config=_run_config(plan, "search", _callback(plan, "search", ids, labels, total, quiet)),
    )
    return tuner.fit()


def _user_error(error: Optional[BaseException]) -> Optional[str]:
    """The one-line message of a trial that failed on bad input (a TuneBudgetError raised in the
    worker, which Ray wraps), else None."""
    cause = getattr(error, "cause", error)
    return str(cause).strip().splitlines()[0] if isinstance(cause, TuneBudgetError) and str(cause).strip() else None


def _trial_status(r: Any) -> str:
    if r.error:
        return "ERROR"
    if _finished(r):
        return "TERMINATED"
    return "INTERRUPTED" if INTERRUPTED.is_set() else "STOPPED"  # STOPPED: early-stopped by ASHA


def search_rows(grid: Any, plan: Plan, labels: dict[str, str]) -> list[dict[str, Any]]:
    """One row per search trial: id, status, value, baseline name, sampled parameters.

    An early-stopped (ASHA) trial keeps its truncated value: that is what Optuna was told too.
    """
    rows = []
    for r in grid:
        config = r.config or {}
        metrics = r.metrics or {}
        status = _trial_status(r)
        value = metrics.get(plan.metric) if status in ("TERMINATED", "STOPPED") else None
        history = r.metrics_dataframe
        curve = (list(zip(history["train_seconds"].tolist(), history[plan.metric].tolist()))
                 if history is not None and plan.metric in history and "train_seconds" in history else [])
        rows.append({"trial_id": metrics.get("trial_id") or Path(r.path).name, "status": status, "curve": curve,
                     "value": float(value) if isinstance(value, (int, float)) else None,
                     "baseline": labels.get(label_key(config), ""),
                     "params": {k: v for k, v in config.items() if "." in k},
                     "diverged": bool(metrics.get("diverged")), "too_short": bool(metrics.get("too_short")),
                     "steps": int(metrics.get("steps") or 0), "error": _user_error(r.error),
                     "train_seconds": float(metrics.get("train_seconds") or 0.0)})
    return rows


def pick_candidates(rows: list[dict[str, Any]], space: SearchSpace, plan: Plan) -> list[Any]:
    """Top-k distinct searched policies, every baseline, and RS2 at the leader's ratio."""
    from tunebudget.report import Candidate

    sign = 1 if plan.mode == "max" else -1
    done = [r for r in rows if r["value"] is not None and not r["diverged"]]
    searched = sorted((r for r in done if not r["baseline"]), key=lambda r: -sign * r["value"])
    chosen, seen = [], set()
    for r in searched:
        key = json.dumps(r["params"], sort_keys=True, default=str)
        if key not in seen and len(chosen) < plan.confirm_top:
            seen.add(key)
            chosen.append(Candidate(f"top{len(chosen) + 1}", "searched", r["params"], search_value=r["value"],
                                    curves=[r.get("curve") or []]))
    by_name = {r["baseline"]: r for r in done if r["baseline"]}
    for b in space.baselines:
        row = by_name.get(b.name, {})
        chosen.append(Candidate(b.name, "baseline", dict(b.set), search_value=row.get("value"),
                                curves=[row.get("curve") or []]))
    if chosen and chosen[0].kind == "searched":
        leader = space.policy_for(chosen[0].params)
        if leader.selection.ratio < 1 and leader.selection.strategy != "rs2":
            chosen.append(Candidate("rs2_at_best_ratio", "baseline",
                                    {"selection.strategy": "rs2", "selection.ratio": leader.selection.ratio}))
    return chosen


def _candidate_policy(space: SearchSpace, plan: Plan, c: Any, seed: int) -> BudgetPolicy:
    base = policy_from_dict(plan.base, "search space")
    overrides = dict(c.params)
    if c.kind == "baseline" and c.name != "rs2_at_best_ratio":
        overrides = dict(next(b.set for b in space.baselines if b.name == c.name))
    return base.with_overrides({**overrides, "seed": seed}, source=f"confirm {c.name}")


def run_confirm(plan: Plan, space: SearchSpace, ids: dict[str, str], candidates: list[Any], resume: bool,
                quiet: bool) -> Any:
    """Stage 3: every candidate again with ``confirm_seeds`` fresh seeds."""
    from ray import tune

    path = plan.root / "confirm"
    if resume and tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable=_trainable(plan)).fit()
    jobs, labels = [], {}
    for c in candidates:
        for k in range(plan.confirm_seeds):
            policy = _candidate_policy(space, plan, c, CONFIRM_SEED_BASE + k)
            job = {"candidate": c.name, "kind": c.kind, "policy": policy.to_dict()}
            jobs.append(job)
            labels[label_key({"job": job})] = c.name
    tuner = tune.Tuner(
        _trainable(plan), param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=plan.concurrency, reuse_actors=True),
        run_config=_run_config(plan, "confirm", _callback(plan, "confirm", ids, labels, len(jobs), quiet)),
    )
    return tuner.fit()


def collect_confirm(grid: Any, candidates: list[Any], plan: Plan) -> None:
    """Fill each candidate's per-seed values and validation curves from the confirm stage."""
    by_name = {c.name: c for c in candidates}
    for c in candidates:
        c.curves = []  # the confirmation runs replace the search-stage curves
    for r in grid:
        job = (r.config or {}).get("job") or {}
        c = by_name.get(job.get("candidate"))
        if c is None or not _finished(r) or (r.metrics or {}).get("diverged"):
            continue
        c.values.append(float(r.metrics[plan.metric]))
        history = r.metrics_dataframe
        if history is not None and plan.metric in history and "train_seconds" in history:
            c.curves.append(list(zip(history["train_seconds"].tolist(), history[plan.metric].tolist())))


# ---- the whole sweep -----------------------------------------------------------------------------------

@dataclass
class SweepOutcome:
    name: str
    parent_id: str
    experiment: str
    best_policy: BudgetPolicy
    verdict: Any
    candidates: list[Any]
    rows: list[dict[str, Any]]
    summary_md: str


#: Flags a resumed sweep cannot change (they define what the sweep is), by SweepOptions and Plan field.
_FIXED_ON_RESUME = {"trials": "trials", "concurrency": "concurrency", "cpus_per_trial": "cpus",
                    "gpus_per_trial": "gpus", "experiment": "experiment", "scheduler": "scheduler",
                    "sampler": "sampler", "confirm_seeds": "confirm_seeds", "confirm_top": "confirm_top",
                    "max_failures": "max_failures", "seed": "seed", "optuna_storage": "optuna_storage",
                    "tracking_uri": "tracking_uri"}


def _resume_plan(space: SearchSpace, opts: SweepOptions) -> tuple[Plan, dict[str, Any]]:
    """The saved plan of the sweep to resume; refuses a changed space or a flag that changes the plan.

    Only ``--address`` (where the Ray cluster is now) and ``--quiet`` may differ: they change where
    and how the sweep runs, not what it is.
    """
    fresh = make_plan(space, opts)
    root = find_resumable(Path(fresh.storage), space.name, opts.name)
    state = read_state(root) or {}
    plan = Plan(**state["plan"])
    if state.get("stage") == "finished":
        raise TuneBudgetError(f"--resume --name {plan.name}: that sweep has finished; export it with "
                              f"'tunebudget export {shlex.quote(plan.experiment)}', or start a new sweep")
    if state.get("stage") == "failed":
        raise TuneBudgetError(f"--resume --name {plan.name}: that sweep failed (its parent run in MLflow says why); "
                              "start a new sweep without --resume")
    saved = state.get("space")
    if saved is not None:
        changed = _first_difference(saved, _as_json(read_yaml(space.path)))
        if changed:
            raise TuneBudgetError(
                f"--resume: {space.path} changed since sweep {plan.name} started ({changed}); restore it, "
                "or start a new sweep without --resume")
    for flag, field_name in _FIXED_ON_RESUME.items():
        given, was = getattr(opts, flag), getattr(plan, field_name)
        if given is not None and getattr(fresh, field_name) != was:
            raise TuneBudgetError(
                f"--resume: --{flag.replace('_', '-')} {given} differs from sweep {plan.name}'s {was}; a resumed "
                "sweep keeps its settings: leave the flag out, or start a new sweep")
    if opts.budget is not None and fresh.base["budget"] != plan.base["budget"]:
        raise TuneBudgetError(
            f"--resume: --budget {opts.budget:g} differs from sweep {plan.name}'s budget "
            f"({plan.base['budget']}); leave it out, or start a new sweep")
    plan.address = fresh.address
    return plan, state


def _as_json(data: Any) -> Any:
    """``data`` as the state file will hold it (JSON: string keys), so saved and fresh compare equal."""
    return json.loads(json.dumps(data, default=str))


def _first_difference(old: Any, new: Any, where: str = "") -> Optional[str]:
    """The first dotted key at which two parsed YAML documents differ, described (None if equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            at = f"{where}.{key}" if where else str(key)
            if key not in new:
                return f"{at} was removed"
            if key not in old:
                return f"{at} was added"
            found = _first_difference(old[key], new[key], at)
            if found:
                return found
        return None
    if old != new:
        return f"{where or 'the file'} changed from {old!r} to {new!r}"
    return None


def _start_parent(tracker: Tracker, plan: Plan, space: SearchSpace, resources: dict[str, float]) -> dict[str, str]:
    import ray

    exp_id = tracker.experiment_id(plan.experiment)
    base = policy_from_dict(plan.base)
    tags = {"tunebudget_role": "sweep", "sweep_name": plan.name, "space_file": plan.space_path,
            "space_hash": space.file_hash, "git_commit": git_commit(Path(plan.space_path).resolve().parent),
            "ray_address": plan.address or "local", "ray_cluster": json.dumps(resources, sort_keys=True),
            "device": "cuda" if plan.gpus > 0 else "cpu", "budget": f"{base.budget.amount:g} {base.budget.kind}",
            "metric": plan.metric, "mode": plan.mode, "ray_version": ray.__version__}
    params = {f"sweep.{k}": v for k, v in asdict(plan).items() if k != "base"}
    params.update({f"base.{k}": v for k, v in base.flat().items()})
    parent = tracker.start_run(exp_id, f"sweep-{plan.name}", tags, params)
    return {"experiment_id": exp_id, "parent_id": parent}


def trial_slots(plan: Plan, resources: dict[str, float]) -> int:
    """How many trials can run at once: the concurrency limit, or fewer if the cluster is smaller."""
    slots = min(plan.concurrency, int(resources.get("CPU", 0) // plan.cpus) if plan.cpus > 0 else plan.concurrency)
    if plan.gpus > 0:
        slots = min(slots, int(resources.get("GPU", 0) // plan.gpus))
    return max(1, slots)


def capacity_note(plan: Plan, resources: dict[str, float]) -> Optional[str]:
    """A note when the cluster runs fewer trials at once than the concurrency asked for."""
    slots = trial_slots(plan, resources)
    if slots >= plan.concurrency:
        return None
    per = f"{plan.cpus:g} CPU" + (f" and {plan.gpus:g} GPU" if plan.gpus > 0 else "")
    return (f"note: concurrency {plan.concurrency}, but the cluster ({resources.get('CPU', 0):g} CPUs"
            + (f", {resources.get('GPU', 0):g} GPUs" if plan.gpus > 0 else "")
            + f") fits {slots} trials of {per} at once: {slots} run at a time")


def idle_round_note(plan: Plan, n_baselines: int, resources: dict[str, float]) -> Optional[str]:
    """A note when the search's trials do not fill the last round of equal-length trials.

    Every trial takes the same budget, so with ``total % slots`` trials in the last round the
    other slots sit idle for a whole trial: wall time paid for no training.
    """
    slots, total = trial_slots(plan, resources), plan.trials + n_baselines
    left = total % slots
    if plan.scheduler != "none" or slots < 2 or left == 0:
        return None
    fill = sorted({t for t in (plan.trials - left, plan.trials + slots - left) if t >= 1})
    return (f"note: {total} trials ({plan.trials} searched + {n_baselines} baselines) on {slots} slots: the last "
            f"round runs {left} and leaves {slots - left} idle for a whole trial; "
            f"--trials {' or '.join(map(str, fill))} fills every round")


def _preflight(plan: Plan) -> tuple[Tracker, dict[str, float]]:
    """Reach the tracking store, then start (or join) Ray: nothing starts if either fails.

    (Checking the store in a thread while Ray starts was tried: on 2 cores both are CPU-bound,
    so it saved under 0.5 s of ~11 s, and an existing store answers in milliseconds anyway.)
    """
    t0 = time.perf_counter()
    task = plan.base["task"]
    for field_name in ("model", "dataset"):  # a user's factory that no worker could import fails here, not per trial
        if ":" in str(task.get(field_name, "")):
            check_importable(task[field_name], f"task.{field_name}")
    tracker = Tracker(plan.tracking_uri or None)
    tracker.check()  # first: the Optuna study's default place follows the store's
    check_writable_dir(Path(plan.storage), f"--storage-path {plan.storage}")
    check_optuna_storage(plan.optuna_storage)
    log.info("tracking store %s reached in %.1f s", tracker.uri, time.perf_counter() - t0)
    resources = connect_ray(plan)
    log.info("Ray ready in %.1f s: %s", time.perf_counter() - t0, resources)
    return tracker, resources


def run_sweep(space: SearchSpace, opts: SweepOptions) -> SweepOutcome:
    """Preflight, search, confirm, verdict. Raises SweepInterrupted on Ctrl-C (resumable)."""
    import ray

    if opts.resume:
        plan, state = _resume_plan(space, opts)
    else:
        plan, state = make_plan(space, opts), {}
    from tunebudget.progress import err_console, starting

    budget = policy_from_dict(plan.base).budget
    what = (f"sweep {plan.name}: {'resuming; ' if opts.resume else ''}{plan.trials} searched trials + "
            f"{len(space.baselines)} baselines, {budget.amount:g} {budget.kind} each")
    # Ray takes seconds to start: a terminal sees a spinner from the first second (it vanishes, so
    # a preflight error stays one line); a log gets one line once Ray is up
    with starting(f"{what}; checking the stores and starting {'Ray at ' + plan.address if plan.address else 'a local Ray'}…",
                  opts.quiet):
        tracker, resources = _preflight(plan)
    if not opts.quiet:
        err_console.print(f"{what}; Ray ready ({resources.get('CPU', 0):g} CPUs"
                          + (f", {resources.get('GPU', 0):g} GPUs" if resources.get("GPU") else "") + ")",
                          highlight=False, soft_wrap=True)
    # Tune adds CSV, JSON and TensorBoardX loggers unless told otherwise. The TensorBoardX one imports
    # torch in the driver as the first trial starts (3.3 s of the search stage on 2 cores, ~400 MB of
    # driver memory) to write event files nobody reads: MLflow holds the metrics. Set for restored
    # stages too (Tuner.restore brings back the callbacks of _run_config, not this setting).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    INTERRUPTED.clear()
    try:
        from tunebudget.cluster import check_shared_storage

        check_shared_storage(plan.storage)
        if not state:
            with tracker.writing(f"cannot create the sweep's parent run in experiment {plan.experiment!r}"):
                ids = _start_parent(tracker, plan, space, resources)
            state = save_state(plan, stage="search", space=_as_json(read_yaml(space.path)), **ids)
        ids = {"experiment_id": state["experiment_id"], "parent_id": state["parent_id"]}
        state["slots"] = trial_slots(plan, resources)
        notes = [n for n in (capacity_note(plan, resources), idle_round_note(plan, len(space.baselines), resources))
                 if n]
        if notes and not opts.quiet and state.get("stage") == "search":
            from tunebudget.progress import err_console

            for note in notes:
                err_console.print(note, highlight=False, soft_wrap=True)
        return _stages(plan, space, tracker, ids, state, opts)
    finally:
        ray.shutdown()


def _stages(plan: Plan, space: SearchSpace, tracker: Tracker, ids: dict[str, str], state: dict[str, Any],
            opts: SweepOptions) -> SweepOutcome:
    resume = opts.resume
    labels = {label_key(p): b.name for p, b in zip(space.baseline_points(), space.baselines)}
    t0 = time.perf_counter()
    if state.get("stage") == "search":
        grid = run_search(plan, space, ids, resume, opts.quiet)
        wall = time.perf_counter() - t0
        log.info("search stage done in %.1f s", wall)
        rows = search_rows(grid, plan, labels)
        if INTERRUPTED.is_set() or any(r["status"] == "INTERRUPTED" for r in rows):
            raise SweepInterrupted(plan.name)
        _refuse_failed(plan, tracker, ids, rows)
        _refuse_untrained(plan, tracker, ids, rows)
        # a resumed search ran in two sittings: its wall time here is only the second one
        efficiency = {} if resume else search_efficiency(rows, wall, state.get("slots", plan.concurrency))
        state = save_state(plan, stage="confirm", rows=rows, efficiency=efficiency)
        resume = False
    rows = state["rows"]
    candidates = pick_candidates(rows, space, plan)
    if plan.confirm_seeds > 0 and candidates:
        grid = run_confirm(plan, space, ids, candidates, resume, opts.quiet)
        if INTERRUPTED.is_set():
            raise SweepInterrupted(plan.name)
        collect_confirm(grid, candidates, plan)
        log.info("confirm stage done after %.1f s", time.perf_counter() - t0)
    else:
        for c in candidates:
            c.values = [c.search_value] if c.search_value is not None else []
    outcome = finalize(plan, space, tracker, ids, rows, candidates, state.get("efficiency") or {},
                       slots=state.get("slots", plan.concurrency))
    save_state(plan, stage="finished")
    log.info("verdict and artifacts done after %.1f s", time.perf_counter() - t0)
    return outcome


def _fail_parent(plan: Plan, tracker: Tracker, ids: dict[str, str], why: str) -> None:
    """The sweep cannot go on: its parent run ends FAILED with ``why`` (not left RUNNING), and
    ``--resume`` refuses it rather than re-running what fails again."""
    tracker.set_tags(ids["parent_id"], {"verdict": why})
    tracker.finish(ids["parent_id"], "FAILED")
    save_state(plan, stage="failed")


def _refuse_failed(plan: Plan, tracker: Tracker, ids: dict[str, str], rows: list[dict[str, Any]]) -> None:
    """Every trial failed on the same bad input (a model or data set that cannot be built): say so
    in one line rather than go on to a confirmation stage with nothing to confirm."""
    errors = {r["error"] for r in rows}
    if rows and all(r["status"] == "ERROR" for r in rows) and len(errors) == 1 and None not in errors:
        _fail_parent(plan, tracker, ids, "every trial failed on bad input")
        raise TuneBudgetError(f"sweep {plan.name}: every trial failed: {errors.pop()}")


def _refuse_untrained(plan: Plan, tracker: Tracker, ids: dict[str, str], rows: list[dict[str, Any]]) -> None:
    """Fail the sweep (one line, parent run FAILED) when no finished trial trained MIN_STEPS steps:
    every value is the initialisation's, and a 'best policy' would be noise."""
    from tunebudget.trainer import MIN_STEPS, too_short_message

    finished = [r for r in rows if r["status"] == "TERMINATED" and not r["diverged"]]
    if not finished or not all(r.get("too_short") for r in finished):
        return
    longest = max(finished, key=lambda r: r["steps"])
    message = too_short_message(policy_from_dict(plan.base).budget, longest["steps"], longest["train_seconds"])
    _fail_parent(plan, tracker, ids, f"every trial trained under {MIN_STEPS} steps")
    raise TuneBudgetError(f"sweep {plan.name}: every trial was too short; {message}")


def _best_policy(space: SearchSpace, plan: Plan, best: Any) -> BudgetPolicy:
    """The winner as a policy to replay: the candidate's settings with the sweep's base seed, and
    the torch threads its trials ran with (unless the space set them)."""
    policy = _candidate_policy(space, plan, best, int(plan.base.get("seed", 0)))
    if policy.training.threads is None and plan.gpus == 0:
        policy = policy.with_overrides({"training.threads": plan.threads}, "the sweep's threads per trial")
    return policy


def search_efficiency(rows: list[dict[str, Any]], wall: float, slots: int) -> dict[str, float]:
    """How much of the search stage's machine time went into training.

    utilisation = Σ trial training seconds / (stage wall seconds × trial slots). The wall time
    runs from the Tuner's start (trial workers starting included) to its end; validation, the
    test-set evaluation, worker set-up and scheduling count as overhead.
    """
    train = sum(r.get("train_seconds") or 0.0 for r in rows)
    return {"search_wall_seconds": wall, "search_train_seconds": train, "trial_slots": float(slots),
            "search_utilisation": train / (wall * slots) if wall > 0 and slots > 0 else 0.0}


def _concurrency(plan: Plan, slots: Optional[int]) -> str:
    """How many trials ran at once: the slots the cluster had, and the limit asked for if larger."""
    if slots is None or slots >= plan.concurrency:
        return f"{plan.concurrency} concurrent"
    return f"{slots} concurrent ({plan.concurrency} asked; the cluster fits {slots})"


def finalize(plan: Plan, space: SearchSpace, tracker: Tracker, ids: dict[str, str], rows: list[dict[str, Any]],
             candidates: list[Any], efficiency: Optional[dict[str, float]] = None,
             slots: Optional[int] = None) -> SweepOutcome:
    """Stage 4: verdict, best policy, summary and plots onto the parent run; the parent finishes."""
    import tempfile

    from tunebudget import report

    v = report.verdict(candidates, plan.mode, plan.metric)
    if v.best is None:
        _fail_parent(plan, tracker, ids, "no finished trials")
        raise TuneBudgetError(f"sweep {plan.name}: no trial finished, so there is no best policy; "
                              "see the failed runs in MLflow (tunebudget ui)")
    best = _best_policy(space, plan, v.best).with_overrides({"name": f"{space.name}-best"})
    meta = {"sweep": plan.name, "space": f"{plan.space_path} (sha256 {space.file_hash})",
            "trials": f"{plan.trials} searched + {len(space.baselines)} baselines, {_concurrency(plan, slots)}",
            "budget per trial": f"{best.budget.amount:g} {best.budget.kind}",
            "confirmation": f"top {plan.confirm_top} and baselines × {plan.confirm_seeds} seeds",
            "sampler": plan.sampler, "scheduler": plan.scheduler}
    if efficiency:
        meta["search utilisation"] = (f"{efficiency['search_utilisation']:.2f} (Σ training "
                                      f"{efficiency['search_train_seconds']:.0f} s / ({efficiency['search_wall_seconds']:.0f} s "
                                      f"wall × {efficiency['trial_slots']:g} slots))")
    summary = report.summary_markdown(space.name, plan.metric, plan.mode, candidates, v, rows, meta)
    parent = ids["parent_id"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "best_policy.yaml").write_text(best.to_yaml())
        (out / "summary.md").write_text(summary)
        (out / "summary.json").write_text(json.dumps(_summary_json(plan, v, candidates, rows), indent=2, default=str))
        report.plot_history(rows, plan.metric, plan.mode, out / "optimization_history.png")
        report.plot_curves(candidates, plan.metric, out / "validation_vs_time.png")
        importances = _importances(plan)
        if importances:
            report.plot_importance(importances, out / "param_importance.png")
        for path in sorted(out.iterdir()):
            tracker.log_file(parent, path)
    metrics = {"best_mean": v.best.mean, "best_std": v.best.std, "n_trials": len(rows),
               "n_failed": sum(r["status"] == "ERROR" for r in rows), **(efficiency or {})}
    if v.best_baseline is not None:
        metrics.update({"baseline_mean": v.best_baseline.mean, "baseline_std": v.best_baseline.std,
                        "diff_vs_baseline": v.diff, "p_value": v.p_value})
    tracker.log_metrics(parent, metrics)
    tracker.set_tags(parent, {"verdict": v.text[:5000], "beats_baseline": str(v.beats).lower(),
                              "best_candidate": v.best.name, "best_policy_digest": best.digest(),
                              POLICY_TAG: json.dumps(best.to_dict(), separators=(",", ":"))})
    tracker.finish(parent, "FINISHED")
    return SweepOutcome(plan.name, parent, plan.experiment, best, v, candidates, rows, summary)


def _importances(plan: Plan) -> dict[str, float]:
    import optuna

    from tunebudget.report import param_importances

    try:
        study = optuna.load_study(study_name=plan.name, storage=plan.optuna_storage)
    except Exception:  # noqa: BLE001 - a missing study only costs the importance plot
        return {}
    return param_importances(study)


def _summary_json(plan: Plan, v: Any, candidates: list[Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"sweep": plan.name, "metric": plan.metric, "mode": plan.mode, "verdict": v.text, "beats": v.beats,
            "best": v.best.name if v.best else None,
            "candidates": [{"name": c.name, "kind": c.kind, "params": c.params, "values": c.values,
                            "mean": c.mean, "std": c.std, "search_value": c.search_value} for c in candidates],
            "trials": rows}
