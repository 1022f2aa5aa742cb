"""The live view of a sweep's stage on stderr (fed by the driver's Tune callback)."""

from __future__ import annotations

from typing import Any

from tunebudget.progress import err_console
from tunebudget.sweep.records import Outcome


class SweepProgress:
    """Live sweep status on stderr: trials done / running / failed and the best value so far.

    On a terminal it redraws one status line; elsewhere (CI, logs, ``ray job submit``) it prints
    a line whenever a trial finishes.
    """

    def __init__(self, stage: str, total: int, metric: str, mode: str, quiet: bool = False) -> None:
        self.stage, self.total, self.metric, self.mode, self.quiet = stage, total, metric, mode, quiet
        self.best: float | None = None
        self._last = ""
        self._printed = (0, 0, 0)
        self._status = None
        if not quiet and err_console.is_terminal:
            self._status = err_console.status(f"{stage}: starting Ray trials…")
            self._status.start()

    def update(self, trials: list[Any], result: dict[str, Any] | None = None) -> None:
        counts = {"done": 0, "stopped": 0, "RUNNING": 0, "ERROR": 0}
        for t in trials:
            finished = t.status == "TERMINATED" and Outcome.of(t.last_result).finished
            # TERMINATED without the final report: early-stopped, or killed by an interrupt
            key = ("done" if finished else "stopped") if t.status == "TERMINATED" else t.status
            counts[key] = counts.get(key, 0) + 1
            value = (t.last_result or {}).get(self.metric) if finished else None
            if isinstance(value, (int, float)) and (self.best is None or (
                    value > self.best if self.mode == "max" else value < self.best)):
                self.best = float(value)
        best = f"{self.best:.4f}" if self.best is not None else "—"
        stopped = f", {counts['stopped']} stopped" if counts["stopped"] else ""
        line = (f"{self.stage}: {counts['done']}/{self.total} done, {counts['RUNNING']} running, "
                f"{counts['ERROR']} failed{stopped}; best {self.metric} {best}")
        if self.quiet or line == self._last:
            return
        ended = (counts["done"], counts["stopped"], counts["ERROR"])
        if self._status is not None:
            self._status.update(line)
        elif ended != self._printed:  # a trial ended; one line each, never wrapped (logs are grepped)
            err_console.print(line, highlight=False, soft_wrap=True)
            self._printed = ended
        self._last = line

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            err_console.print(self._last, highlight=False, soft_wrap=True)
            self._status = None
