"""LR schedules are functions of budget progress with the published shapes."""

from __future__ import annotations

import math

import pytest

from tunebudget.errors import TuneBudgetError
from tunebudget.schedules import SCHEDULES, lr_multiplier

GRID = [i / 100 for i in range(101)]


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_budget_aware_schedules_end_at_zero_and_decrease(name):
    values = [lr_multiplier(name, p) for p in GRID]
    assert values[0] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_shapes():
    assert lr_multiplier("linear", 0.25) == pytest.approx(0.75)
    assert lr_multiplier("cosine", 0.5) == pytest.approx(0.5)
    assert lr_multiplier("cosine", 0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert [lr_multiplier("step", p) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_multiplier("exponential", 0.5) == pytest.approx(0.1)
    assert {lr_multiplier("constant", p) for p in GRID} == {1.0}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_warmup_ramps_from_zero_and_meets_the_schedule(name):
    assert lr_multiplier(name, 0.0, warmup=0.1) == 0.0
    assert lr_multiplier(name, 0.05, warmup=0.1) == pytest.approx(0.5 * lr_multiplier(name, 0.05))
    assert lr_multiplier(name, 0.2, warmup=0.1) == pytest.approx(lr_multiplier(name, 0.2))


def test_progress_is_clipped_and_unknown_names_fail():
    assert lr_multiplier("linear", 1.7) == 0.0 and lr_multiplier("linear", -1) == 1.0
    with pytest.raises(TuneBudgetError, match="training.schedule"):
        lr_multiplier("sawtooth", 0.5)


def test_clock_waits_for_the_device_only_every_few_steps_and_reports_the_overshoot():
    from tunebudget.budget import BudgetClock
    from tunebudget.policy import BudgetSpec

    waits, now = [], [0.0]
    clock = BudgetClock(BudgetSpec(seconds=1.0), sync=lambda: waits.append(now[0]), timer=lambda: now[0],
                        sync_every=4)
    clock.start()
    for _ in range(10):
        now[0] += 0.11
        assert clock.progress() == pytest.approx(min(now[0], 1.0))  # host time: no wait to read it
        clock.tick()
    assert len(waits) == 1 + 2  # start, then every 4th step
    clock.stop()
    assert len(waits) == 4 and clock.overshoot_seconds() == pytest.approx(0.1)


def test_charged_regions_timed_with_device_events_are_read_lazily():
    from tunebudget.budget import BudgetClock
    from tunebudget.policy import BudgetSpec

    class Event:
        def __init__(self):
            self.t = None

        def record(self):
            self.t = len(log) * 1.0
            log.append("record")

        def synchronize(self):
            log.append("sync")

        def elapsed_time(self, end):
            return (end.t - self.t) * 1000.0

    log: list[str] = []
    clock = BudgetClock(BudgetSpec(seconds=10.0), event=Event)
    for _ in range(3):
        with clock.charged("scoring"):
            pass
    assert "sync" not in log  # nothing waited inside the loop
    assert clock.scoring_seconds == pytest.approx(3.0) and log.count("sync") == 3
