"""The records a sweep passes between its parts: how a trial ended (:class:`Outcome`, written by the
worker, read by the stages, the callback and the progress table), what the search stage keeps of
each trial (:class:`TrialRow`, saved in the state file and ``summary.json``), and the policies the
confirmation re-runs (:class:`Candidate`, judged by the verdict and drawn by the report).

Nothing here imports Ray, Optuna or MLflow: a record is plain data, checked where it is made.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Mapping, Optional


class TrialStatus(StrEnum):
    """How the driver saw a search trial end (the strings are the state file's and the summary's)."""

    #: ran its whole budget and reported its outcome
    TERMINATED = "TERMINATED"
    #: early-stopped by ASHA: keeps its truncated value (what Optuna was told too)
    STOPPED = "STOPPED"
    #: still running when the search stage's --search-time ran out: no value
    CUT = "CUT"
    ERROR = "ERROR"
    #: the driver was interrupted (Ctrl-C, SIGTERM): the trial is run again on --resume
    INTERRUPTED = "INTERRUPTED"

    @property
    def has_value(self) -> bool:
        return self in (TrialStatus.TERMINATED, TrialStatus.STOPPED)


@dataclass(frozen=True)
class Outcome:
    """How a trial's training ended, as its last Tune report says (the worker's :meth:`metrics`).

    ``finished`` marks a trial that ran to its end: an interrupted or early-stopped one never
    reports it. ``diverged`` (a NaN/inf loss) and ``too_short`` (under the trainer's MIN_STEPS) are
    finished trials whose value is the worst, so that they lose.
    """

    finished: bool = False
    diverged: bool = False
    too_short: bool = False

    #: the Tune result keys of an outcome (bookkeeping, not metrics worth an MLflow series)
    KEYS = ("finished", "diverged", "too_short")

    def metrics(self) -> dict[str, int]:
        """What the worker reports (Tune results are numbers)."""
        return {"finished": int(self.finished), "diverged": int(self.diverged), "too_short": int(self.too_short)}

    @classmethod
    def of(cls, result: Optional[Mapping[str, Any]]) -> "Outcome":
        """The outcome in a Tune result (or a trial's last result); an empty or partial one is unfinished."""
        result = result or {}
        return cls(*(bool(result.get(k)) for k in cls.KEYS))

    @property
    def usable(self) -> bool:
        """Finished and not diverged: its value measures the policy."""
        return self.finished and not self.diverged


@dataclass
class TrialRow:
    """One search trial as the sweep keeps it: its status, value, baseline name and parameters."""

    trial_id: str
    status: TrialStatus
    value: Optional[float] = None
    #: the baseline's name, "" for a searched trial
    baseline: str = ""
    #: the sampled parameters (dotted policy keys)
    params: dict[str, Any] = field(default_factory=dict)
    #: (training seconds, metric) at each validation
    curve: list[tuple[float, float]] = field(default_factory=list)
    #: restart successive halving only: the trial's rung and configuration key
    rung: Optional[int] = None
    config: Optional[str] = None
    diverged: bool = False
    too_short: bool = False
    steps: int = 0
    #: the one-line message of a trial that failed on bad input
    error: Optional[str] = None
    train_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": str(self.status)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TrialRow":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "status": TrialStatus(data["status"]),
                      "curve": [tuple(p) for p in data.get("curve") or []]})


@dataclass
class Candidate:
    """A policy re-run with several seeds in the confirmation stage."""

    name: str
    kind: str  # "searched" | "baseline"
    params: dict[str, Any]
    values: list[float] = field(default_factory=list)
    curves: list[list[tuple[float, float]]] = field(default_factory=list)
    search_value: Optional[float] = None
    #: The seed of each value (confirmation seed k is the same data split, subset, label noise and
    #: initialisation for every candidate); empty when unknown, and then nothing is paired.
    seeds: list[int] = field(default_factory=list)

    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds, self.values)) if len(self.seeds) == len(self.values) else {}

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0
