"""The budget clock: how much of the training budget has been spent, as progress in [0, 1].

Two kinds of budget, one interface:

* **seconds**: wall-clock seconds of everything done to train (forward, backward, scoring
  passes, irreducible-loss models, re-ranking, shuffling). Periodic validation is *not* charged:
  the trainer pauses the clock around it and the time is reported separately as ``eval_seconds``.
* **samples**: deterministic sample passes. A training forward+backward of one sample costs 1
  (the main model's or a scorer's own model's), a forward-only scoring pass ``scoring_cost``
  (1/3 by default). Same seed, same result, whatever the machine: use it for tests and for
  noise-free comparisons of policies.

On a GPU, work is queued: the host runs ahead of the device. Reading the time without waiting
for the device would undercount; waiting at every step (``torch.cuda.synchronize``) costs a host
round trip per step. The clock waits only every ``sync_every`` steps (:meth:`tick`) and at the
end (:meth:`stop`), so the host is never more than ``sync_every`` steps ahead; the deadline is
checked on host time at every step, and the run overshoots its budget by at most the device
work still queued then (reported as ``overshoot_seconds``). Charged regions that must not wait
(a scoring pass inside every online step) are timed with device events (``event``), read
lazily at validation.

``budget.use`` below 1 trains less: progress counts against ``use`` x the budget, so the LR
schedule, the selection phases and the validations all fit that share, and the rest is left
unspent (:meth:`BudgetClock.unspent_share`).

The trainer checks :meth:`BudgetClock.exhausted` at every step boundary, so a run overshoots
its budget by at most one step (plus, on a GPU, the queued steps).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from tunebudget.policy import BudgetSpec

#: Pending device-event pairs are resolved (one wait) when this many have piled up.
MAX_PENDING_EVENTS = 1024


class BudgetClock:
    """Tracks training seconds, charged regions (scoring, il), evaluation seconds and sample passes.

    Args:
        spec: the policy's budget section.
        sync: waits for the device (``torch.cuda.synchronize`` on CUDA); None on the CPU.
        timer: the time source, ``time.perf_counter`` by default.
        sync_every: :meth:`tick` waits for the device every this many steps.
        event: makes a timing event with ``record()``, ``synchronize()`` and ``elapsed_time()``
            in milliseconds (``torch.cuda.Event(enable_timing=True)``); None times on the host.

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
        sync_every: int = 1,
        event: Optional[Callable[[], Any]] = None,
    ) -> None:
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1 (got {sync_every})")
        self.spec = spec
        self._sync = sync
        self._timer = timer
        self._sync_every = sync_every
        self._event = event
        self._ticks = 0
        self.syncs = 0  # device waits so far (0 on the CPU: there is nothing to wait for)
        self._t0: Optional[float] = None
        self._t_end: Optional[float] = None
        self._paused_total = 0.0
        self.eval_seconds = 0.0
        self._regions: dict[str, float] = defaultdict(float)
        self._pending: list[tuple[str, Any, Any]] = []
        self.samples_used = 0.0  # every pass charged: training, scoring (at scoring_cost), scorers' own models
        self.samples_trained = 0  # the main model's training sample passes only

    def _wait(self) -> None:
        if self._sync is not None:
            self.syncs += 1
            self._sync()

    # ---- the clock ----------------------------------------------------------------------
    def start(self) -> None:
        self._wait()
        self._t0 = self._timer()

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def stop(self) -> None:
        """Freeze the clock (after waiting for queued work): what follows is not charged."""
        self._wait()
        self._t_end = self._timer()

    def tick(self) -> None:
        """One training step done: wait for the device every ``sync_every`` steps."""
        self._ticks += 1
        if self._ticks % self._sync_every == 0:
            self._wait()

    def train_seconds(self) -> float:
        """Seconds charged to the budget so far (validation excluded); host time while running."""
        if self._t0 is None:
            return 0.0
        end = self._t_end if self._t_end is not None else self._timer()
        return end - self._t0 - self._paused_total

    def overshoot_seconds(self) -> float:
        """How far a seconds budget was overrun (0 for a sample budget, or within the budget)."""
        if self.spec.seconds is None:
            return 0.0
        return max(0.0, self.train_seconds() - self.spec.limit)

    def charge(self, n_samples: int) -> None:
        """Charge ``n_samples`` training sample passes of the main model."""
        self.samples_used += n_samples
        self.samples_trained += n_samples

    def charge_scoring(self, n_samples: int) -> None:
        """Charge a forward-only scoring pass over ``n_samples``."""
        self.samples_used += n_samples * self.spec.scoring_cost

    def charge_passes(self, passes: float) -> None:
        """Charge sample passes spent on something other than the main model (a scorer's model)."""
        self.samples_used += passes

    def spent(self) -> float:
        """What has been charged so far, in the budget's unit (seconds or sample passes)."""
        return self.train_seconds() if self.spec.seconds is not None else self.samples_used

    def progress(self) -> float:
        """Share of the budget spent, in [0, 1]; with ``budget.use`` below 1, of that share of it."""
        return min(max(self.spent() / self.spec.limit, 0.0), 1.0)

    def unspent_share(self) -> float:
        """Share of the whole budget left unspent (``1 - budget.use`` for a run that trained less)."""
        return min(max(1.0 - self.spent() / self.spec.amount, 0.0), 1.0)

    def exhausted(self) -> bool:
        return self.progress() >= 1.0

    # ---- timed regions ------------------------------------------------------------------
    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop charging the budget (validation); the time goes to ``eval_seconds``."""
        self._wait()
        t = self._timer()
        try:
            yield
        finally:
            self._wait()
            dt = self._timer() - t
            if self._t_end is None:  # after stop() nothing is charged anyway
                self._paused_total += dt
            self.eval_seconds += dt

    @contextmanager
    def charged(self, name: str) -> Iterator[None]:
        """A region charged to the budget and counted under ``name`` (``scoring``, ``il``), timed
        without waiting for the device (device events when there are any)."""
        if self._event is None:
            t = self._timer()
            try:
                yield
            finally:
                self._regions[name] += self._timer() - t
            return
        start, end = self._event(), self._event()
        start.record()
        try:
            yield
        finally:
            end.record()
            self._pending.append((name, start, end))
            if len(self._pending) >= MAX_PENDING_EVENTS:
                self._resolve()

    def _resolve(self) -> None:
        for name, start, end in self._pending:
            end.synchronize()
            self._regions[name] += start.elapsed_time(end) / 1000.0
        self._pending.clear()

    def seconds_in(self, name: str) -> float:
        """Seconds spent in the charged regions called ``name`` so far."""
        if self._pending:
            self._resolve()
        return self._regions.get(name, 0.0)

    @contextmanager
    def scoring(self) -> Iterator[None]:
        with self.charged("scoring"):
            yield

    @property
    def scoring_seconds(self) -> float:
        return self.seconds_in("scoring")
