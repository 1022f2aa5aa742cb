"""MLflow: one parent run per sweep, one child run per trial, artifacts, best-policy lookup.

All writes go through one ``MlflowClient`` in the driver process (a Tune callback calls it), so
trial workers on a cluster never need to reach the tracking server, and a local sqlite store
has a single writer. Child runs are keyed by the Tune trial id (tag ``trial_id``): a resumed
sweep finds the runs of trials that had finished and does not log them again.

Default store: ``sqlite:///<cwd>/mlflow/mlflow.db`` with artifacts under ``mlflow/artifacts``.
Any tracking URI through ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``; it is checked before
the first trial starts. A local sqlite store, however its URI is written, keeps its artifacts in
``artifacts/`` next to the database file (MLflow's default is ``./mlruns`` in whatever directory
the process runs in); a file store keeps them inside itself, as MLflow does.

Experiments are tagged as model training (``mlflow.experimentKind``), and ``ui_url`` builds the
links that open MLflow 3's UI on its Model training view instead of its GenAI one.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from tunebudget.errors import TuneBudgetError
from tunebudget.names import (  # noqa: F401 - re-exported: tracking.POLICY_TAG is how callers spell it
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    PARENT_ID_TAG,
    POLICY_DIGEST_TAG,
    POLICY_TAG,
    ROLE_SWEEP,
    ROLE_TAG,
    ROLE_TRAIN,
    RUN_NAME_TAG,
    SWEEP_NAME_TAG,
    TRAIN_POLICY,
    TRAIN_SUMMARY,
    TRIAL_ID_TAG,
    USER_TAG,
)

log = logging.getLogger(__name__)

STATUS_FOR_TRIAL = {"TERMINATED": "FINISHED", "ERROR": "FAILED", "KILLED": "KILLED"}
MAX_PARAM_LEN = 6000
DEFAULT_EXPERIMENT_ID = "0"
UI_PORT = 5000  # `tunebudget ui` default


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def local_store() -> Path:
    return Path.cwd() / "mlflow"


def resolve_uri(uri: Optional[str] = None) -> str:
    """Explicit URI, else ``MLFLOW_TRACKING_URI``, else the local sqlite store under ./mlflow."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if chosen:
        return chosen
    return f"sqlite:///{local_store() / 'mlflow.db'}"  # the directory is made with the database (Tracker.client)


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def sqlite_file(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:`` URI in any spelling (``sqlite:///rel/x.db``,
    ``sqlite:///./x.db``, ``sqlite:////abs/x.db``, ``sqlite+pysqlite:...``, a query string),
    absolute as SQLite opens it from the current directory; None for in-memory or other URIs."""
    if not uri.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except Exception:  # noqa: BLE001 - sqlalchemy.exc.ArgumentError and friends: not a URL we can place
        return None
    db = url.database or ""
    if url.get_backend_name() != "sqlite" or not db or db == ":memory:" or "mode=memory" in str(url.query):
        return None
    if db.startswith("file:"):  # SQLite URI filename (?uri=true)
        db = db.removeprefix("file:")
    return Path(db).resolve()


def artifact_root(uri: str) -> Optional[Path]:
    """Where tunebudget puts a local sqlite store's artifacts: ``artifacts/`` next to the database
    file. None for other stores: a file store keeps artifacts inside itself, a server or a
    database server has its own artifact root."""
    db = sqlite_file(uri)
    return db.parent / "artifacts" if db is not None else None


def ui_url(base: str, experiment_id: Optional[str] = None, run_id: Optional[str] = None) -> str:
    """A link into the MLflow UI at ``base`` that opens on its Model training view.

    MLflow 3's UI is a hash-routed single-page app (``#/experiments``, ``#/experiments/<id>/runs``,
    ``#/experiments/<id>/runs/<run id>``) that starts a visitor in its GenAI view (traces, no runs)
    and, in 3.17, decides the view from the ``workflowType`` URL parameter, else the visitor's last
    choice; the experiment's kind tag does not override it. So every link carries the parameter.
    """
    if run_id:
        route = f"experiments/{experiment_id}/runs/{run_id}"
    elif experiment_id:
        route = f"experiments/{experiment_id}/runs"
    else:
        route = "experiments"
    return f"{base.rstrip('/')}/#/{route}?workflowType=machine_learning"


def latest_sweep_link(base: str, timeout: float = 20.0) -> tuple[str, str]:
    """``(what, link)``: the latest sweep's parent run on the MLflow server at ``base``, found
    through its REST API (the sweep started last among the 100 most recently updated
    experiments), else the experiments list. Never raises: a link is not worth an error."""
    import json
    import urllib.request

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    try:
        exps = post("experiments/search", {"max_results": 100, "order_by": ["last_update_time DESC"]})
        ids = [e["experiment_id"] for e in exps.get("experiments", [])]
        runs = post("runs/search", {"experiment_ids": ids, "filter": f"tags.{ROLE_TAG} = '{ROLE_SWEEP}'",
                                    "order_by": ["attributes.start_time DESC"], "max_results": 1}) if ids else {}
        run = runs.get("runs", [None])[0]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        log.debug("cannot find the latest sweep on %s: %s", base, exc)
        run = None
    if run is None:
        return "no sweep yet", ui_url(base)
    info = run["info"]
    tags = {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}
    return f"sweep {tags.get(SWEEP_NAME_TAG, info.get('run_name'))}", ui_url(base, info["experiment_id"], info["run_id"])


def run_ui_line(parent_id: str, tracking_uri: Optional[str] = None) -> str:
    """One line for after a sweep (or a logged train): the link to its (parent) run in the MLflow UI and
    how to open it.

    Never raises (the sweep has finished; a link is not worth an error): without the run's
    experiment it links to the experiments list."""
    import shlex

    uri = resolve_uri(tracking_uri)
    try:
        exp_id: Optional[str] = Tracker(uri).client.get_run(parent_id).info.experiment_id
    except Exception:  # noqa: BLE001 - any MLflow/store failure: fall back to the experiments list
        exp_id = None
    if uri.startswith(("http://", "https://")):
        return f"See it in the MLflow UI: {ui_url(uri, exp_id, parent_id if exp_id else None)}"
    flag = f" --tracking-uri {shlex.quote(tracking_uri)}" if tracking_uri else ""
    link = ui_url(f"http://127.0.0.1:{UI_PORT}", exp_id, parent_id if exp_id else None)
    return f"See it in the MLflow UI: {link} (start the UI with: tunebudget ui{flag})"


def check_experiment_name(name: Optional[str]) -> None:
    """An --experiment that MLflow takes (or None: the default name)."""
    if name is not None and len(name) > 500:
        raise TuneBudgetError(f"--experiment: {len(name)} characters; MLflow takes at most 500")
    if name is not None and not name.strip():
        raise TuneBudgetError("--experiment: empty; give an MLflow experiment name, or leave it out for the default")


def dataset_source(task: Any) -> tuple[str, str]:
    """Where a task's data comes from, and MLflow's source type for it: the files of a data set read
    from disk (``local``), or the code that makes it (``code``: scikit-learn's digits, the generated
    sets, your ``package.module:factory``)."""
    if task.dataset == "fashion_mnist":
        from tunebudget.policy import DEBIAN_FASHION_MNIST

        return str(task.root or os.environ.get("TUNEBUDGET_DATA") or DEBIAN_FASHION_MNIST), "local"
    if task.root:
        return str(task.root), "local"
    return {"digits": "sklearn.datasets.load_digits"}.get(task.dataset, task.dataset), "code"


class Tracker:
    """A thin, typed layer over ``MlflowClient`` for sweeps."""

    def __init__(self, uri: Optional[str] = None) -> None:
        # fail fast against an unreachable server instead of MLflow's long default retry loop
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ..." lines
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri = resolve_uri(uri)

    @functools.cached_property
    def client(self) -> Any:
        """The MlflowClient, built on first use: building it creates (and migrates) a sqlite
        database, which :meth:`check` must be able to refuse first."""
        from mlflow.tracking import MlflowClient

        # MLflow configures its loggers at import (INFO "Creating initial MLflow database tables...")
        if not logging.getLogger("tunebudget").isEnabledFor(logging.DEBUG):
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
        db = sqlite_file(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.uri)

    # ---- connection -------------------------------------------------------------------------
    def check(self, create: bool = True) -> None:
        """Raise a TuneBudgetError (one line) when the store cannot be reached or refuses us.

        A sqlite store is checked on disk first, without MLflow (whose retries on a database it
        cannot write take minutes): a missing database is not created here (it is made when the
        first run is logged, so a preflight that fails later leaves nothing behind) and, with
        ``create=False`` (export, report), is an error.
        """
        db = sqlite_file(self.uri)
        if db is not None:
            from tunebudget.util import check_writable_dir

            flag = f"--tracking-uri {self.uri}"
            if not db.exists():
                if not create:
                    raise TuneBudgetError(f"{flag}: no tracking store at {db}; run a sweep first, or point "
                                          "--tracking-uri (or MLFLOW_TRACKING_URI) at the store that holds it")
                check_writable_dir(db.parent, flag)
                return
            check_writable_dir(db.parent, flag)  # sqlite writes a journal next to the database
            if not os.access(db, os.R_OK | os.W_OK):
                raise TuneBudgetError(f"{flag}: cannot write to {db} (permission denied or a read-only file "
                                      "system); give a store you can write to")
        retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # an unreachable server fails now, not in minutes
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types; all mean "cannot use it"
            raise self._as_user_error(exc, "cannot use the tracking store") from None
        finally:
            if retries is None:
                os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
            else:
                os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = retries

    def _as_user_error(self, exc: BaseException, what: str) -> TuneBudgetError:
        """One line for an MLflow failure: the HTTP status and the start of the server's answer."""
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        code = re.search(r"error code (\d+)", text)
        if code:
            body = text.split("Response body:", 1)[-1].strip(" '\"")[:80]
            text = f"HTTP {code.group(1)}: {body}"
        text = text[:240]
        if "401" in text or "nauthenticated" in text:
            hint = "check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        elif "403" in text or "ermission" in text:
            hint = "ask the server's admin for EDIT permission on the experiment, or use --experiment NAME"
        else:
            hint = "start the server or fix --tracking-uri / MLFLOW_TRACKING_URI"
        return TuneBudgetError(f"--tracking-uri {self.uri}: {what} ({text}); {hint}")

    @contextmanager
    def writing(self, what: str) -> Iterator[None]:
        """Turn an MLflow failure inside the block into a one-line TuneBudgetError."""
        try:
            yield
        except TuneBudgetError:
            raise
        except Exception as exc:  # noqa: BLE001 - MlflowException, requests errors, sqlalchemy errors
            raise self._as_user_error(exc, what) from None

    # ---- experiments and runs ---------------------------------------------------------------
    def experiment_id(self, name: str, create: bool = True) -> Optional[str]:
        """The id of experiment ``name`` (restored if deleted). With ``create``: made if missing, as
        a model-training experiment with its artifacts next to a local store; one it reuses gets
        the kind tag if it lacks it (readers such as export pass create=False and write no tag)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if not create:
                return exp.experiment_id
            if exp.experiment_id == DEFAULT_EXPERIMENT_ID:
                self.settle_default_experiment(exp)
            if exp.tags.get(EXPERIMENT_KIND_TAG) is None:
                self._tag_kind(exp.experiment_id)
            return exp.experiment_id
        if not create:
            return None
        location = self._artifact_location(name)
        return self.client.create_experiment(name, artifact_location=location,
                                             tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})

    def _artifact_location(self, name: str) -> Optional[str]:
        root = artifact_root(self.uri)
        if root is None:
            return None
        folder = re.sub(r"[/\\]", "_", name)
        folder = "_" + folder if folder in {"", ".", ".."} else folder
        return (root / folder).as_uri()

    def _tag_kind(self, experiment_id: str) -> None:
        try:
            self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        except Exception as exc:  # noqa: BLE001 - a label for the UI: not worth failing a sweep over
            log.debug("cannot tag experiment %s as model training: %s", experiment_id, exc)

    def settle_default_experiment(self, exp: Any = None) -> None:
        """Point an empty Default experiment of a local sqlite store next to the store.

        MLflow creates experiment 0 with the artifact location ``<cwd>/mlruns/0`` (the current
        directory of whichever process first opened the database) and has no API to move it;
        while it holds no run, rewriting its row loses nothing."""
        target = self._artifact_location("Default")
        if target is None:
            return
        exp = exp or self.client.get_experiment(DEFAULT_EXPERIMENT_ID)
        where = exp.artifact_location or ""
        remote = where.startswith("dbfs:") or ("://" in where and not where.startswith("file:"))
        if where.rstrip("/") == target.rstrip("/") or remote:  # someone chose s3://..., keep it
            return
        from mlflow.entities import ViewType

        if self.client.search_runs([DEFAULT_EXPERIMENT_ID], run_view_type=ViewType.ALL, max_results=1):
            return
        import sqlalchemy
        import sqlalchemy.orm
        from mlflow.store.tracking.dbmodels.models import SqlExperiment

        engine = sqlalchemy.create_engine(self.uri)
        try:
            with sqlalchemy.orm.Session(engine) as session, session.begin():
                session.query(SqlExperiment).filter(
                    SqlExperiment.experiment_id == int(DEFAULT_EXPERIMENT_ID)).update(
                    {SqlExperiment.artifact_location: target})
        finally:
            engine.dispose()

    def start_run(self, experiment_id: str, name: str, tags: dict[str, Any],
                  params: Optional[dict[str, Any]] = None, parent_id: Optional[str] = None) -> str:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME") or _local_user()
        all_tags = {RUN_NAME_TAG: name, USER_TAG: user, **{k: str(v) for k, v in tags.items() if v is not None}}
        if parent_id:
            all_tags[PARENT_ID_TAG] = parent_id
        run = self.client.create_run(experiment_id, tags=all_tags, run_name=name)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_file(self, run_id: str, path: Path, folder: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def log_dataset(self, run_id: str, task: Any, digest: str, sizes: dict[str, Any], context: str = "train") -> None:
        """The data a run trained on, as an MLflow dataset input (the UI's "Datasets" column): named
        after ``task.dataset``, with the content ``digest``, its source, and the data regime and split
        sizes in its profile."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        source, kind = dataset_source(task)
        profile = {"regime": task.regime(), **{k: v for k, v in sizes.items() if v is not None}}
        entity = Dataset(name=task.dataset, digest=digest, source_type=kind, source=json.dumps({"uri": source}),
                         profile=json.dumps(profile, default=str))
        self.client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])

    # ---- queries ---------------------------------------------------------------------------
    def runs(self, experiment_id: str, filter_string: str = "", max_results: int = 5000) -> list[Any]:
        out: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=filter_string,
                                           max_results=min(max_results, 1000), page_token=token)
            out.extend(page)
            token = page.token
            if not token or len(out) >= max_results:
                return out

    def children(self, experiment_id: str, parent_id: str) -> list[Any]:
        return self.runs(experiment_id, f"tags.`{PARENT_ID_TAG}` = '{parent_id}'")

    def find_parent(self, ref: str, command: str = "export") -> Any:
        """A sweep's parent run from an experiment name (its latest sweep) or a run id."""
        exp_id = self.experiment_id(ref, create=False)
        if exp_id is not None:
            parents = self.runs(exp_id, f"tags.{ROLE_TAG} = '{ROLE_SWEEP}'", max_results=1000)
            if not parents:
                raise TuneBudgetError(f"{command} {ref}: experiment {ref!r} holds no tunebudget sweep; "
                                      "run 'tunebudget sweep' first or give a parent run id")
            return max(parents, key=lambda r: r.info.start_time)
        try:
            run = self.client.get_run(ref)
        except Exception:  # noqa: BLE001 - MlflowException for unknown ids, varies by store
            raise TuneBudgetError(f"{command} {ref}: no experiment or run of that name or id in {self.uri}; "
                                  "list experiments in 'tunebudget ui' or check --tracking-uri") from None
        if run.data.tags.get(ROLE_TAG) != ROLE_SWEEP:
            raise TuneBudgetError(f"{command} {ref}: run {ref} is not a tunebudget sweep's parent run")
        return run

    def download_text(self, run_id: str, name: str) -> str:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, name, tmp)).read_text()


def existing_children_by_trial(tracker: Tracker, experiment_id: str, parent_id: str) -> dict[str, Any]:
    """Child runs of a sweep keyed by their ``trial_id`` tag (for resume without duplicates)."""
    out: dict[str, Any] = {}
    for run in tracker.children(experiment_id, parent_id):
        trial = run.data.tags.get(TRIAL_ID_TAG)
        if trial:
            out[trial] = run
    return out


def log_train_run(uri: Optional[str], experiment: str, result: Any, register: Optional[str] = None,
                  command: str = "") -> dict[str, Any]:
    """Log a ``tunebudget train`` run: the policy as params, every validation and the summary as
    metrics, ``summary.json`` and ``policy.yaml``, the data as a dataset input, and the model as an
    MLflow PyTorch model (``pt2``: torch.export, no pickle) with the input standardisation inside,
    a signature and an input example; ``register`` also registers it in the Model Registry.
    Returns the ids, the model URI and the seconds the model took to log."""
    import tempfile

    from tunebudget.data import digest
    from tunebudget.saved import raw_inputs, standardised_module

    tracker = Tracker(uri)
    policy, data = result.policy, result.data
    with tracker.writing("cannot log the run"):
        exp = tracker.experiment_id(experiment)
        run_id = tracker.start_run(exp, f"train-{policy.name}", {ROLE_TAG: ROLE_TRAIN, "command": command,
                                                               POLICY_DIGEST_TAG: policy.digest(),
                                                               POLICY_TAG: json.dumps(policy.to_dict(), separators=(",", ":"))},
                                   policy.flat())
        for h in result.history:
            tracker.log_metrics(run_id, {k: v for k, v in h.items() if k != "final"}, int(h["train_seconds"] * 1000))
        summary = result.summary()
        tracker.log_metrics(run_id, {**{k: v for k, v in summary.items() if k not in ("test", "val", "history")},
                                     **{f"test_{k}": v for k, v in result.test.items()}})
        tracker.log_dataset(run_id, policy.task, digest(data), {"train_size": len(data.train),
                                                               "val_size": len(data.val), "test_size": len(data.test)})
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in ((TRAIN_SUMMARY, json.dumps(summary, indent=2, default=str)),
                               (TRAIN_POLICY, policy.to_yaml())):
                (Path(tmp) / name).write_text(text)
                tracker.log_file(run_id, Path(tmp) / name)
        model_uri, seconds = None, 0.0
        if result.status != "diverged":  # a diverged model is not worth logging
            model_uri, seconds = _log_model(tracker, run_id, standardised_module(result.model, data),
                                            raw_inputs(data, data.test.x[:4]).numpy(), register)
        tracker.finish(run_id, "FINISHED" if result.status == "completed" else "FAILED")
    return {"experiment_id": exp, "run_id": run_id, "model_uri": model_uri, "log_model_seconds": seconds}


def _log_model(tracker: Tracker, run_id: str, module: Any, example: Any, register: Optional[str]) -> tuple[str, float]:
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    t0 = time.perf_counter()
    with torch.no_grad():
        out = module(torch.from_numpy(example)).numpy()
    with _fluent_uri(tracker.uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(module, name="model", serialization_format="pt2",
                                        signature=infer_signature(example, out), input_example=example,
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                        registered_model_name=register)
    return info.model_uri, time.perf_counter() - t0


@contextmanager
def _fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``log_model`` has no client form) pointed at ``uri`` for the block only:
    ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` for every later subprocess, which
    would send a later sweep of the same process (the Python API, the tests) to this store."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_env, saved_uri = os.environ.get("MLFLOW_TRACKING_URI"), utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
