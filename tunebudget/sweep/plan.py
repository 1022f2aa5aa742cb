"""Plan a sweep: the command line resolved against the space's ``sweep`` section, every value
checked, nothing written; and what the plan means on a cluster of a given size.
"""


from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from tunebudget.errors import TuneBudgetError
from tunebudget.options import SweepOptions, merged_sweep
from tunebudget.policy import BudgetPolicy, policy_from_dict
from tunebudget.spaces import SearchSpace, SweepSpec
from tunebudget.sweep.halving import rung_budgets
from tunebudget.store import ObjectPath, is_uri, location, normalize
from tunebudget.tracking import check_experiment_name, local_store, sqlite_file

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Options resolved against the space: exactly what this sweep will do. ``sweep`` is the space's
    ``sweep`` section with the command line's values over it, checked once by its model: a new
    sweep option is a field there, read here as ``plan.sweep.<name>``."""

    space_path: str
    name: str
    experiment: str
    cpus: float
    gpus: float
    #: the metric and its direction, resolved against the task (the section's may be unset)
    metric: str
    mode: str
    storage: str
    optuna_storage: str
    tracking_uri: str
    address: Optional[str]
    #: the space's base policy with --budget/--seed applied: what every trial starts from
    base: BudgetPolicy
    sweep: SweepSpec
    #: the budgets of the rungs, smallest first (restart successive halving; one rung, the budget, else)
    rungs: list[float] = field(default_factory=list)
    #: wall seconds after which the search stage stops (None: when its trials are done)
    search_seconds: Optional[float] = None

    @property
    def root(self) -> Union[Path, ObjectPath]:
        """The sweep's directory: a Path, or an ObjectPath in an object store (``s3://...``)."""
        return location(self.storage) / self.name

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))

    def to_json(self) -> dict[str, Any]:
        """The plan as the state file and the MLflow callback hold it (the policy and the section as dicts)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(base=self.base.to_dict(), sweep=self.sweep.model_dump(mode="json"))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        """A plan saved by :meth:`to_json`, or by a version whose plan held the section's fields itself
        (a state saved before races existed has no ``confirm``: it resumes as fixed)."""
        data = dict(data)
        if "sweep" not in data:
            flat = {k: data.pop(k) for k in list(data) if k in SweepSpec.model_fields and k not in ("metric", "mode")}
            data["sweep"] = {"confirm": "fixed", **flat}
        return cls(**{**data, "base": policy_from_dict(data["base"], "the sweep's saved plan"),
                      "sweep": SweepSpec.model_validate(data["sweep"])})

    def params(self) -> dict[str, Any]:
        """The plan as the parent run's ``sweep.*`` MLflow params (the base policy's are ``base.*``)."""
        data = self.to_json()
        data.pop("base")
        return {f"sweep.{k}": v for k, v in {**data.pop("sweep"), **data}.items()}


def _pick(flag: Any, default: Any) -> Any:
    return default if flag is None else flag


#: A sweep's name is a directory under the storage path: one safe path component.
_SWEEP_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def _safe_name(text: str) -> str:
    """A space's ``name`` as one safe directory name (it may hold '/', '..' or spaces): the
    default sweep name never leaves --storage-path."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip(".-")[:100]
    return safe or "sweep"


def make_plan(space: SearchSpace, opts: SweepOptions) -> Plan:
    """Resolve the command line against the space's ``sweep`` section; check every value."""
    base = space.base
    if opts.budget is not None:
        if not opts.budget > 0:
            raise TuneBudgetError(f"--budget: must be > 0 seconds (got {opts.budget})")
        base = base.with_overrides({"budget.seconds": opts.budget, "budget.samples": None}, "--budget")
    if opts.seed is not None:
        base = base.with_overrides({"seed": opts.seed}, "--seed")
    if opts.search_seconds is not None and not (opts.search_seconds > 0 and math.isfinite(opts.search_seconds)):
        raise TuneBudgetError(f"--search-time: must be a positive number of seconds (got {opts.search_seconds})")
    sw = merged_sweep(space, opts)
    cpus = _pick(opts.cpus_per_trial, sw.resources.get("cpu", 1))
    gpus = _pick(opts.gpus_per_trial, sw.resources.get("gpu", 0))
    if not cpus > 0 or gpus < 0:
        raise TuneBudgetError(f"--cpus-per-trial/--gpus-per-trial: need cpu > 0 and gpu >= 0 (got {cpus}, {gpus})")
    metric, mode = space.metric()
    storage = normalize(str(opts.storage_path or Path.cwd() / "ray_results"))  # a directory, or a URI
    if opts.name is not None and not _SWEEP_NAME.fullmatch(opts.name):
        long = f" of at most 128 characters (got {len(opts.name)})" if len(opts.name) > 128 else ""
        raise TuneBudgetError(f"--name {opts.name[:60]!r}: a sweep name is one directory under --storage-path{long}: "
                              "use letters, digits, '.', '_' and '-' (no '/', spaces or leading dot), "
                              "e.g. --name lr-sweep-1")
    check_experiment_name(opts.experiment)
    name = opts.name or f"{_safe_name(space.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    tracking_uri = opts.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    optuna_storage = opts.optuna_storage or f"sqlite:///{_default_optuna_db(tracking_uri, storage)}"
    rungs = _rungs(base, sw)
    return Plan(
        sweep=sw, rungs=rungs, search_seconds=opts.search_seconds, space_path=space.path, name=name, experiment=opts.experiment or space.name,
        cpus=float(cpus), gpus=float(gpus), metric=metric, mode=mode, storage=str(storage),
        optuna_storage=optuna_storage, tracking_uri=tracking_uri, address=opts.address or os.environ.get("RAY_ADDRESS"),
        base=base,
    )


def _rungs(base: BudgetPolicy, sw: SweepSpec) -> list[float]:
    """The rung budgets of a restart sweep (one rung, the budget, for a full-budget sweep)."""
    eta, budget = sw.eta, base.budget
    if sw.fidelity == "full":
        return [float(budget.amount)]
    smallest = sw.min_budget or budget.amount / eta ** 2
    unit = "seconds" if budget.kind == "seconds" else "samples"
    if not 0 < smallest <= budget.amount or not math.isfinite(smallest):
        raise TuneBudgetError(f"--min-budget: must be in (0, {budget.amount:g}] {unit}, the per-trial budget "
                              f"(got {smallest:g})")
    rungs = rung_budgets(float(budget.amount), eta, float(smallest))
    if budget.kind == "samples" and rungs[0] < base.training.batch_size:
        raise TuneBudgetError(f"--min-budget: the smallest rung ({rungs[0]:g} samples) is less than one batch "
                              f"({base.training.batch_size}); give a larger --min-budget")
    return rungs


def _default_optuna_db(tracking_uri: str, storage: str) -> Path:
    """Next to a sqlite tracking store (./mlflow by default), else in the Ray storage directory; with an
    object-store storage path (no place for a sqlite file), ./mlflow/optuna.db on the driver's machine."""
    if not tracking_uri:
        return local_store() / "optuna.db"
    db = sqlite_file(tracking_uri)
    if db is not None:
        return db.parent / "optuna.db"
    return local_store() / "optuna.db" if is_uri(storage) else Path(storage) / "optuna.db"


def trial_slots(plan: Plan, resources: dict[str, float]) -> int:
    """How many trials can run at once: the concurrency limit, or fewer if the cluster is smaller."""
    slots = min(plan.sweep.concurrency, int(resources.get("CPU", 0) // plan.cpus) if plan.cpus > 0 else plan.sweep.concurrency)
    if plan.gpus > 0:
        slots = min(slots, int(resources.get("GPU", 0) // plan.gpus))
    return max(1, slots)


def capacity_note(plan: Plan, resources: dict[str, float]) -> Optional[str]:
    """A note when the cluster runs fewer trials at once than the concurrency asked for."""
    slots = trial_slots(plan, resources)
    if slots >= plan.sweep.concurrency:
        return None
    per = f"{plan.cpus:g} CPU" + (f" and {plan.gpus:g} GPU" if plan.gpus > 0 else "")
    return (f"note: concurrency {plan.sweep.concurrency}, but the cluster ({resources.get('CPU', 0):g} CPUs"
            + (f", {resources.get('GPU', 0):g} GPUs" if plan.gpus > 0 else "")
            + f") fits {slots} trials of {per} at once: {slots} run at a time")


def idle_round_note(plan: Plan, n_baselines: int, resources: dict[str, float]) -> Optional[str]:
    """A note when the search's trials do not fill the last round of equal-length trials.

    Every trial takes the same budget, so with ``total % slots`` trials in the last round the
    other slots sit idle for a whole trial: wall time paid for no training.
    """
    slots, total = trial_slots(plan, resources), plan.sweep.trials + n_baselines
    left = total % slots
    if plan.sweep.scheduler != "none" or plan.sweep.fidelity != "full" or slots < 2 or left == 0:
        return None
    fill = sorted({t for t in (plan.sweep.trials - left, plan.sweep.trials + slots - left) if t >= 1})
    return (f"note: {total} trials ({plan.sweep.trials} searched + {n_baselines} baselines) on {slots} slots: the last "
            f"round runs {left} and leaves {slots - left} idle for a whole trial; "
            f"--trials {' or '.join(map(str, fill))} fills every round")


def ladder_note(plan: Plan, n_baselines: int) -> Optional[str]:
    """A note when a restart sweep's compute may not carry any configuration to the top rung.

    Reaching rung K takes eta^K rung-0 results, eta^(K-1) at rung 1, ... (K + 1) full budgets'
    worth even one at a time; trials running at once promote on fewer results and need more. The
    factor 2 is a heuristic: in a simulation with 2-4 slots, 3 full budgets for 3 rungs missed the
    top rung most of the time, 5 reached it.
    """
    if plan.sweep.fidelity != "restart" or len(plan.rungs) < 2:
        return None
    total, need = plan.sweep.trials + n_baselines, 2 * len(plan.rungs)
    if total >= need:
        return None
    return (f"note: the compute of {total} full-budget trials ({plan.sweep.trials} + {n_baselines} baselines) may not "
            f"carry a policy to the top of {len(plan.rungs)} rungs (the confirmation stage then takes the highest "
            f"rung reached); --trials {need - n_baselines} or more")
