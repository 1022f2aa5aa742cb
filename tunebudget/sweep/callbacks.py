"""Driver-side Tune callbacks: each trial becomes an MLflow child run of the sweep's parent
(the driver is the only MLflow writer), and the live progress line.
"""


from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from tunebudget import names
from tunebudget.names import DIVERGED_TAG, ROLE_TAG, ROLE_TRIAL, STAGE_TAG, TRIAL_ID_TAG
from tunebudget.sweep.halving import FIDELITY
from tunebudget.sweep.plan import Plan
from tunebudget.sweep.records import Outcome
from tunebudget.sweep.worker import trial_policy
from tunebudget.tracking import POLICY_TAG, STATUS_FOR_TRIAL, Tracker, existing_children_by_trial

log = logging.getLogger(__name__)

#: Set when the driver receives SIGINT during a stage (Tune then stops and saves its state).
INTERRUPTED = threading.Event()




#: Tune result keys that are bookkeeping, not metrics worth an MLflow series.
_SKIP_METRICS = {"done", "training_iteration", "timestamp", "time_this_iter_s", "pid", "time_since_restore",
                 "iterations_since_restore", "final", Outcome.KEYS[0]}


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
        tags = {TRIAL_ID_TAG: trial.trial_id, ROLE_TAG: ROLE_TRIAL, STAGE_TAG: self.stage,
                names.POLICY_DIGEST_TAG: policy.digest(), POLICY_TAG: json.dumps(policy.to_dict(), separators=(",", ":")),
                names.BASELINE_TAG: label if self.stage == "search" else None,
                names.CANDIDATE_TAG: label if self.stage == "confirm" else None}
        if self.stage == "confirm":
            job = trial.config.get("job") or {}
            tags.update({names.CONFIRM_TAG: "true", names.SEED_TAG: str(policy.seed),
                         names.ROUND_TAG: None if job.get("round") is None else str(job["round"])})
        fidelity = trial.config.get(FIDELITY)
        if fidelity:
            tags.update({names.RUNG_TAG: str(fidelity["rung"]), names.RUNG_BUDGET_TAG: f"{fidelity['amount']:g}",
                         names.CONFIG_TAG: fidelity["config"]})
        name = f"{self.stage}-{label or trial.trial_id}" + (f"-rung{fidelity['rung']}" if fidelity else "")
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
        tags: dict[str, Any] = {names.TRIAL_STATUS_TAG: status, names.NODE_TAG: last.get("node_id"),
                                names.HOSTNAME_TAG: last.get("hostname"), names.DEVICE_TAG: last.get("device")}
        tags = {k: v for k, v in tags.items() if v is not None}
        if Outcome.of(last).diverged:
            tags[DIVERGED_TAG] = "true"
        if error:
            tags[names.ERROR_TAG] = error[:5000]
        self.tracker.set_tags(run_id, tags)
        if last.get("data_digest"):  # what the trial trained on: the run's dataset input in the UI
            task = trial_policy(trial.config, self.plan.base).task
            self.tracker.log_dataset(run_id, task, str(last["data_digest"]),
                                     {k: last.get(k) for k in ("train_size", "val_size", "test_size")})
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
                                       Plan.from_json(st["plan"]), st["stage"], st["labels"])
        return self._logger

    @property
    def progress(self) -> Any:
        if self._progress is None:
            from tunebudget.sweep.live import SweepProgress

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
