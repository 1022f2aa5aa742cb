"""Ray Tune's Optuna searcher, able to resume a sweep whose driver was killed outright.

A driver killed without a chance to save (SIGKILL, a node lost, a RayJob pod evicted) leaves Tune's
last experiment snapshot a few seconds behind the Optuna study, which is written as results come:
a trial the snapshot still has RUNNING may be COMPLETE in the study. The resumed sweep runs that
trial again (TrialLogger does not log it twice), and Ray's ``OptunaSearch`` would report its results
to the finished Optuna trial, which Optuna refuses (``UpdateFinishedTrialError``, ending the sweep).
Here the study keeps what it already has: the re-run's results and completion are not told again.

It also keeps the search's concurrency slots true to Tune's own trials after such a resume
(:class:`SlotGuard`). Tune uploads its experiment snapshot (the trials) and the searcher's state (the
concurrency limiter's live trials, the count of trials suggested) to the storage path as separate
files, in parallel and while the next snapshot is being written: a driver killed in between leaves
an object store (or a disk) holding a searcher state from one snapshot and a trial list from
another. A trial the limiter holds live but Tune never restored would hold its slot for ever, and
with every slot so held the resumed sweep waits with nothing running; a trial Tune restored but the
searcher never suggested would be counted twice. The guard reconciles the two on the first step of
every run: the live slots become the trials Tune has unfinished, the count the trials Tune has, and
a trial Tune has never heard of is forgotten by the searcher (closed as failed in the Optuna study;
a baseline among them is enqueued again). Should the search still find itself with nothing to run
and nothing it can suggest for STALL_SECONDS, it says so and ends the stage with the trials it has,
as a search time budget would, rather than wait for ever.

Imported by the search stage only (it imports Ray Tune); kept importable by name, since Tune
pickles the searcher with the experiment.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune import Callback
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

log = logging.getLogger(__name__)

#: With no trial unfinished in Tune and none suggested for this long, the search stage ends.
STALL_SECONDS = 180.0


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that leaves a trial alone once the study has it finished."""

    def _told(self) -> set[str]:
        if not hasattr(self, "_finished_in_study"):  # a searcher pickled before this attribute
            self._finished_in_study: set[str] = set()
        return self._finished_in_study

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._told() or trial_id not in self._ot_trials:  # see SlotGuard for the latter
            return
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            log.info("trial %s is already finished in the Optuna study (a sweep resumed after a hard kill); "
                     "its re-run is not told again", trial_id)
            self._told().add(trial_id)

    def on_trial_complete(self, trial_id: str, result: Optional[dict[str, Any]] = None, error: bool = False) -> None:
        if trial_id in self._told() or trial_id not in self._ot_trials:
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def forget(self, trial_id: str) -> None:
        """A trial this searcher suggested that Tune never ran (see SlotGuard): closed as failed in
        the study; a baseline (an enqueued point) is enqueued again, so the sweep still measures it."""
        import optuna

        ot_trial = self._ot_trials.pop(trial_id, None)
        if ot_trial is None:
            return
        frozen = [t for t in self._ot_study.get_trials(deepcopy=False) if t.number == ot_trial.number]
        fixed = frozen[0].system_attrs.get("fixed_params") if frozen else None
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if fixed:
            self._ot_study.enqueue_trial(fixed)


def limited(searcher: Any, concurrency: int) -> tuple[SearchGenerator, "SlotGuard"]:
    """The search algorithm Tune is given for ``searcher`` at most ``concurrency`` trials at a
    time (what ``TuneConfig(max_concurrent_trials=...)`` builds), and the guard of its slots, to go
    in the run's callbacks and stoppers. Tune pickles both in one file, so a restored guard still
    holds the restored search."""
    search = SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=concurrency))
    return search, SlotGuard(search)


def reconcile(search: SearchGenerator, trials: list[Any]) -> list[str]:
    """Make the limiter's live slots Tune's unfinished trials and the count of suggestions Tune's
    trials; the searcher forgets what Tune never heard of. Returns the forgotten trial ids."""
    limiter = search.searcher
    known = {t.trial_id for t in trials}
    unfinished = {t.trial_id for t in trials if not t.is_finished()}
    phantoms = sorted(limiter.live_trials - known)
    for trial_id in phantoms:
        forget = getattr(limiter.searcher, "forget", None)
        if forget is not None:
            forget(trial_id)
    if phantoms or limiter.live_trials != unfinished or search._counter != len(known):
        log.warning("resumed search: the searcher's saved state and Tune's trials disagree (a driver killed "
                    "between the two uploads); %d live slot(s) of trials Tune never ran freed, %d trial(s) Tune "
                    "restored counted, %d suggestion(s) counted -> %d", len(phantoms),
                    len(unfinished - limiter.live_trials), search._counter, len(known))
    limiter.live_trials = set(unfinished)
    limiter.num_unfinished_live_trials = len(unfinished)
    search._counter = len(known)
    return phantoms


class SlotGuard(Callback, Stopper):
    """A Tune callback and stopper over one search: reconciles it with Tune's trials on each run's
    first step (see the module's docstring) and stops the run once it has stalled."""

    def __init__(self, search: SearchGenerator, stall_seconds: float = STALL_SECONDS) -> None:
        self.search, self.stall_seconds = search, stall_seconds
        self._first, self._idle_since, self.stalled = True, None, False

    def setup(self, **info: Any) -> None:
        self._first, self._idle_since, self.stalled = True, None, False

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._first:
            self._first = False
            reconcile(self.search, trials)
        if self.search.is_finished() or any(not t.is_finished() for t in trials):
            self._idle_since = None
            return
        now = time.monotonic()
        self._idle_since = self._idle_since or now
        if not self.stalled and now - self._idle_since > self.stall_seconds:
            self.stalled = True
            limiter = self.search.searcher
            log.error("the search stalled: no trial has run for %.0f s and the searcher suggests none (live "
                      "slots %s of %d, %d of %d trials suggested); it ends here with the trials it has",
                      self.stall_seconds, sorted(limiter.live_trials), limiter.max_concurrent,
                      self.search._counter, self.search._total_samples)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stalled
