"""MLflow: one parent run per sweep, one child run per trial, artifacts, best-policy lookup.

All writes go through one ``MlflowClient`` in the driver process (a Tune callback calls it), so
trial workers on a cluster never need to reach the tracking server, and a local sqlite store
has a single writer. Child runs are keyed by the Tune trial id (tag ``trial_id``): a resumed
sweep finds the runs of trials that had finished and does not log them again.

Default store: ``sqlite:///<cwd>/mlflow/mlflow.db`` with artifacts under ``mlflow/artifacts``.
Any tracking URI through ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``; it is checked before
the first trial starts.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from tunebudget.errors import TuneBudgetError

log = logging.getLogger(__name__)

PARENT_ID_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"
STATUS_FOR_TRIAL = {"TERMINATED": "FINISHED", "ERROR": "FAILED", "KILLED": "KILLED"}
MAX_PARAM_LEN = 6000


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
    store = local_store()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


class Tracker:
    """A thin, typed layer over ``MlflowClient`` for sweeps."""

    def __init__(self, uri: Optional[str] = None) -> None:
        # fail fast against an unreachable server instead of MLflow's long default retry loop
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ..." lines
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow.tracking import MlflowClient

        # MLflow configures its loggers at import (INFO "Creating initial MLflow database tables...")
        if not logging.getLogger("tunebudget").isEnabledFor(logging.DEBUG):
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = resolve_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)

    # ---- connection -------------------------------------------------------------------------
    def check(self) -> None:
        """Raise a TuneBudgetError (one line) when the store cannot be reached or refuses us."""
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
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        if not create:
            return None
        location = None
        if is_local(self.uri):
            location = (local_store() / "artifacts" / name).resolve().as_uri() if self.uri.startswith(
                f"sqlite:///{local_store()}") else None
        return self.client.create_experiment(name, artifact_location=location)

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

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_file(self, run_id: str, path: Path, folder: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

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

    def find_parent(self, ref: str) -> Any:
        """A sweep's parent run from an experiment name (its latest sweep) or a run id."""
        exp_id = self.experiment_id(ref, create=False)
        if exp_id is not None:
            parents = self.runs(exp_id, "tags.tunebudget_role = 'sweep'", max_results=1000)
            if not parents:
                raise TuneBudgetError(f"export {ref}: experiment {ref!r} holds no tunebudget sweep; "
                                      "run 'tunebudget sweep' first or give a parent run id")
            return max(parents, key=lambda r: r.info.start_time)
        try:
            run = self.client.get_run(ref)
        except Exception:  # noqa: BLE001 - MlflowException for unknown ids, varies by store
            raise TuneBudgetError(f"export {ref}: no experiment or run of that name or id in {self.uri}; "
                                  "list experiments in 'tunebudget ui' or check --tracking-uri") from None
        if run.data.tags.get("tunebudget_role") != "sweep":
            raise TuneBudgetError(f"export {ref}: run {ref} is not a tunebudget sweep's parent run")
        return run

    def download_text(self, run_id: str, name: str) -> str:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, name, tmp)).read_text()


def existing_children_by_trial(tracker: Tracker, experiment_id: str, parent_id: str) -> dict[str, Any]:
    """Child runs of a sweep keyed by their ``trial_id`` tag (for resume without duplicates)."""
    out: dict[str, Any] = {}
    for run in tracker.children(experiment_id, parent_id):
        trial = run.data.tags.get("trial_id")
        if trial:
            out[trial] = run
    return out
