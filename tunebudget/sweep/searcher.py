"""Ray Tune's Optuna searcher, able to resume a sweep whose driver was killed outright.

A driver killed without a chance to save (SIGKILL, a node lost, a RayJob pod evicted) leaves Tune's
last experiment snapshot a few seconds behind the Optuna study, which is written as results come:
a trial the snapshot still has RUNNING may be COMPLETE in the study. The resumed sweep runs that
trial again (TrialLogger does not log it twice), and Ray's ``OptunaSearch`` would report its results
to the finished Optuna trial, which Optuna refuses (``UpdateFinishedTrialError``, ending the sweep).
Here the study keeps what it already has: the re-run's results and completion are not told again.

Imported by the search stage only (it imports Ray Tune); kept importable by name, since Tune
pickles the searcher with the experiment.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that leaves a trial alone once the study has it finished."""

    def _told(self) -> set[str]:
        if not hasattr(self, "_finished_in_study"):  # a searcher pickled before this attribute
            self._finished_in_study: set[str] = set()
        return self._finished_in_study

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._told():
            return
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            log.info("trial %s is already finished in the Optuna study (a sweep resumed after a hard kill); "
                     "its re-run is not told again", trial_id)
            self._told().add(trial_id)

    def on_trial_complete(self, trial_id: str, result: Optional[dict[str, Any]] = None, error: bool = False) -> None:
        if trial_id in self._told():
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)
