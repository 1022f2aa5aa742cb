"""The budget clock: how much of the training budget has been spent, as progress in [0, 1].

Two kinds of budget, one interface:

* **seconds**: wall-clock seconds of everything done to train (forward, backward, scoring
  passes, re-ranking, shuffling). Periodic validation is *not* charged: the trainer pauses
  the clock around it and the time is reported separately as ``eval_seconds``. On CUDA the
  clock synchronises the device before it reads the time, so queued kernels are paid for.
* **samples**: deterministic sample passes. A training forward+backward of one sample costs 1,
  a forward-only scoring pass ``scoring_cost`` (1/3 by default). Same seed, same result,
  whatever the machine: use it for tests and for noise-free comparisons of policies.

The trainer checks :meth:`BudgetClock.exhausted` at every step boundary, so a run overshoots
its budget by at most one step.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from tunebudget.policy import BudgetSpec


class BudgetClock:
    """Tracks training seconds, scoring seconds, evaluation seconds and sample passes.

    Args:
        spec: the policy's budget section.
        sync: called before every time reading (``torch.cuda.synchronize`` on CUDA).
        timer: the time source, ``time.perf_counter`` by default.

    Example:
        >>> clock = BudgetClock(BudgetSpec(seconds=None, samples=100))
        >>> clock.start(); clock.charge(40)
        >>> clock.progress()
        0.4
    """

    def __init__(
        self,
        spec: BudgetSpec,
        sync: Optional[Callable[[], None]] = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.spec = spec
        self._sync = sync or (lambda: None)
        self._timer = timer
        self._t0: Optional[float] = None
        self._t_end: Optional[float] = None
        self._paused_total = 0.0
        self.eval_seconds = 0.0
        self.scoring_seconds = 0.0
        self.samples_used = 0.0  # training sample passes, scoring passes charged at scoring_cost
        self.samples_trained = 0  # training sample passes only

    # ---- the clock ----------------------------------------------------------------------
    def start(self) -> None:
        self._sync()
        self._t0 = self._timer()

    def stop(self) -> None:
        """Freeze the clock: what follows (final validation, test evaluation) is not charged."""
        self._sync()
        self._t_end = self._timer()

    def train_seconds(self) -> float:
        """Seconds charged to the budget so far (validation excluded)."""
        if self._t0 is None:
            return 0.0
        if self._t_end is not None:
            return self._t_end - self._t0 - self._paused_total
        self._sync()
        return self._timer() - self._t0 - self._paused_total

    def charge(self, n_samples: int) -> None:
        """Charge ``n_samples`` training sample passes."""
        self.samples_used += n_samples
        self.samples_trained += n_samples

    def charge_scoring(self, n_samples: int) -> None:
        """Charge a forward-only scoring pass over ``n_samples``."""
        self.samples_used += n_samples * self.spec.scoring_cost

    def progress(self) -> float:
        """Share of the budget spent, in [0, 1]."""
        if self.spec.seconds is not None:
            spent = self.train_seconds() / self.spec.seconds
        else:
            spent = self.samples_used / float(self.spec.samples)  # type: ignore[arg-type]
        return min(max(spent, 0.0), 1.0)

    def exhausted(self) -> bool:
        return self.progress() >= 1.0

    @property
    def limit(self) -> str:
        """Which limit this clock enforces: ``"seconds"`` or ``"samples"``."""
        return self.spec.kind

    # ---- timed regions ------------------------------------------------------------------
    @contextmanager
    def _timed(self) -> Iterator[list[float]]:
        """Time the region (device synchronised at both ends); the seconds land in the list."""
        self._sync()
        t = self._timer()
        out: list[float] = []
        try:
            yield out
        finally:
            self._sync()
            out.append(self._timer() - t)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop charging the budget (validation); the time goes to ``eval_seconds``."""
        with self._timed() as dt:
            yield
        if self._t_end is None:  # after stop() nothing is charged anyway
            self._paused_total += dt[0]
        self.eval_seconds += dt[0]

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """A region charged to the budget *and* counted in ``scoring_seconds``."""
        with self._timed() as dt:
            yield
        self.scoring_seconds += dt[0]
