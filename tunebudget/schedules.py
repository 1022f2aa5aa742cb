"""Budget-aware learning-rate schedules.

The LR multiplier is a function of budget progress ``p`` in [0, 1] (the share of the budget
spent), not of the step count: whatever the throughput, ``linear`` and ``cosine`` reach zero
exactly when the budget ends (Li et al., "Budgeted Training: Rethinking Deep Neural Network
Training Under Resource Constraints", ICLR 2020, https://arxiv.org/abs/1905.04753).
``step`` and ``exponential`` are the classic schedules, kept for comparison: they end at
1% of the peak LR, not zero. ``constant`` never decays.

An optional linear warm-up over the first ``warmup`` share of the budget multiplies the
schedule, so the multiplier starts at 0 and meets the schedule at ``p = warmup``.

Example:
    >>> lr_multiplier("linear", 0.25)
    0.75
    >>> lr_multiplier("cosine", 1.0)
    0.0
"""

from __future__ import annotations

import math
from typing import Callable

from tunebudget.errors import TuneBudgetError


def _constant(p: float) -> float:
    return 1.0


def _linear(p: float) -> float:
    return 1.0 - p


def _cosine(p: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * p))


def _step(p: float) -> float:
    return 1.0 if p < 0.5 else (0.1 if p < 0.75 else 0.01)


def _exponential(p: float) -> float:
    return 0.01**p


SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "step": _step,
    "exponential": _exponential,
}


def lr_multiplier(name: str, p: float, warmup: float = 0.0) -> float:
    """The LR multiplier at budget progress ``p`` (clipped to [0, 1]).

    Args:
        name: one of ``constant``, ``linear``, ``cosine``, ``step``, ``exponential``.
        p: share of the budget spent.
        warmup: share of the budget for a linear warm-up from 0 (0 disables it).
    """
    try:
        fn = SCHEDULES[name]
    except KeyError:
        raise TuneBudgetError(
            f"training.schedule: unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}"
        ) from None
    p = min(max(p, 0.0), 1.0)
    scale = min(1.0, p / warmup) if warmup > 0 else 1.0
    return scale * fn(p)
