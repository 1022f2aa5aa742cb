"""Search-space files: a base policy plus ``search``, ``sweep`` and ``baselines`` sections.

```yaml
# ... a complete base policy (task, budget, training, selection, seed) ...
search:                               # dotted policy keys -> distributions, sampled in this order
  selection.strategy: {type: categorical, choices: [full, topk, infobatch, rs2]}
  selection.ratio: {type: float, low: 0.2, high: 0.9, when: {selection.strategy: [topk, infobatch, rs2]}}
  training.lr: {type: float, low: 0.01, high: 0.5, log: true}
  selection.rerank_every: {type: int, low: 1, high: 5}
sweep: {trials: 15, concurrency: 2, sampler: tpe, scheduler: none, resources: {cpu: 1, gpu: 0}}
baselines:                            # always evaluated first (Optuna points_to_evaluate)
  - {name: full_linear, set: {selection.strategy: full, training.schedule: linear}}
```

``when`` makes a parameter conditional on other parameters' values (a define-by-run space):
when the condition fails the parameter is not sampled and the base policy's value stands.
Parameters are sampled in file order, except that one comes after those its ``when`` names.
A space is checked when it is loaded, before any trial starts: every name must be a policy
field, every range valid, every baseline a valid policy, and a sample of random draws from the
space must all be valid policies.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunebudget.errors import TuneBudgetError, field_path
from tunebudget.policy import BudgetPolicy, policy_from_dict, read_yaml, split_space

#: How many random draws from a space are validated when it is loaded.
CHECK_DRAWS = 200


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ParamSpec(_Strict):
    """One searched policy field."""

    type: Literal["float", "int", "categorical"]
    low: Optional[Union[int, float]] = None
    high: Optional[Union[int, float]] = None
    log: bool = False
    step: Optional[Union[int, float]] = None
    choices: Optional[list[Any]] = None
    #: Sample only when these earlier parameters (or base policy fields) take one of the listed values.
    when: dict[str, list[Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _domain(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("choices: a categorical parameter needs a non-empty list of choices")
            if self.low is not None or self.high is not None:
                raise ValueError("low/high: a categorical parameter takes choices, not low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"choices: a {self.type} parameter takes low and high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"low/high: a {self.type} parameter needs both low and high")
        if self.type == "int" and not all(isinstance(v, int) for v in (self.low, self.high)):
            raise ValueError(f"low/high: an int parameter needs integer bounds (got {self.low}, {self.high})")
        if not self.low < self.high:
            raise ValueError(f"low/high: the range is empty or inverted (low {self.low} >= high {self.high}); "
                             "make low < high, or fix the value in the base policy instead")
        if self.log and self.low <= 0:
            raise ValueError(f"low: a log-scale range needs low > 0 (got {self.low})")
        if self.step is not None and (self.step <= 0 or self.log):
            raise ValueError("step: must be > 0 and cannot be combined with log")
        if self.step is not None and self.type == "int" and not (isinstance(self.step, int) and self.step >= 1):
            raise ValueError(f"step: an int parameter needs a whole-number step of at least 1 (got {self.step})")
        if self.step is not None and not 1 <= (self.high - self.low) / self.step <= 1e6:
            raise ValueError(f"step: {self.step} gives {(self.high - self.low) / self.step:.3g} steps between low "
                             "and high; use a step that gives 1 to 1,000,000 of them")
        return self


#: What a trial reports at every validation, by task kind, with the direction that is better: a
#: sweep optimises one of these, and its mode defaults to that direction. Test-split metrics are
#: reported too but never optimised (choosing a policy on the test split would leak it).
_EVERY_KIND = {"val_loss": "min", "train_loss": "min", "throughput": "max"}
METRICS: dict[str, dict[str, str]] = {
    "classification": {"val_accuracy": "max", **_EVERY_KIND},
    "regression": {"val_mse": "min", **_EVERY_KIND},
}


class SweepSpec(_Strict):
    """How a sweep runs (every field can be overridden on the command line)."""

    trials: int = Field(default=16, ge=1, le=100_000)
    concurrency: int = Field(default=2, ge=1, le=10_000)
    #: Metric to optimise (one of METRICS for the task kind); default val_accuracy or val_mse.
    metric: Optional[str] = None
    mode: Optional[Literal["max", "min"]] = None
    sampler: Literal["tpe", "gp", "random"] = "tpe"
    scheduler: Literal["none", "asha"] = "none"
    #: full: every trial runs the whole budget; restart: successive halving with the budget as the
    #: fidelity (rungs B/eta^K ... B, every trial a complete run, promoted policies retrained).
    fidelity: Literal["full", "restart"] = "full"
    eta: int = Field(default=3, ge=2, le=10)
    #: The smallest rung's budget, in the budget's unit (default: the budget / eta^2, three rungs).
    min_budget: Optional[float] = Field(default=None, gt=0)
    resources: dict[str, Union[int, float]] = Field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    confirm_top: int = Field(default=3, ge=0, le=100)
    confirm_seeds: int = Field(default=3, ge=0, le=100)
    #: The verdict's bar: "beats" means the paired difference's 95% interval lies above this, in the
    #: metric's units (0.005: half a point of accuracy). 0: above zero.
    min_effect: float = Field(default=0.0, ge=0)
    #: race: seeds in rounds, candidates the leader beats beyond the noise dropped after first_test
    #: seeds, their runs spent on the others (up to max_seeds each, at most candidates x confirm_seeds
    #: runs in all); fixed: every candidate confirm_seeds seeds.
    confirm: Literal["race", "fixed"] = "race"
    first_test: int = Field(default=3, ge=2, le=100)
    max_seeds: int = Field(default=10, ge=1, le=1000)
    max_failures: int = Field(default=1, ge=0, le=100)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _resources(self) -> "SweepSpec":
        if self.fidelity == "restart" and self.scheduler != "none":
            raise ValueError("sweep.fidelity: restart runs every trial to its rung's budget; set scheduler: none")
        unknown = set(self.resources) - {"cpu", "gpu"}
        if unknown:
            raise ValueError(f"sweep.resources: unknown resource {sorted(unknown)[0]!r}; use cpu and gpu")
        cpu, gpu = self.resources.get("cpu", 1), self.resources.get("gpu", 0)
        if not 0 < cpu <= 1024 or not 0 <= gpu <= 64:
            raise ValueError(f"sweep.resources: need 0 < cpu and 0 <= gpu (got cpu {cpu}, gpu {gpu})")
        return self


class BaselineSpec(_Strict):
    name: str = Field(min_length=1)
    set: dict[str, Any] = Field(default_factory=dict)


@dataclass
class SearchSpace:
    """A loaded, checked search-space file."""

    path: str
    base: BudgetPolicy
    params: dict[str, ParamSpec]
    sweep: SweepSpec
    baselines: list[BaselineSpec]
    file_hash: str
    #: The file as parsed: what a sweep's state records, and what --resume compares it with.
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.base.name

    def metric(self) -> tuple[str, str]:
        """The metric to optimise and its mode (the metric's better direction unless set)."""
        kind = self.base.task.kind
        metric = self.sweep.metric or ("val_accuracy" if kind == "classification" else "val_mse")
        known = METRICS[kind]
        if metric not in known:
            hint = "; the test split is never optimised" if metric.startswith("test_") else ""
            raise TuneBudgetError(
                f"{self.path}: sweep.metric: a {kind} trial never reports {metric!r}{hint}; "
                f"use one of {', '.join(known)}")
        return metric, self.sweep.mode or known[metric]

    def suggest(self, trial: Any) -> None:
        """Optuna define-by-run: sample every parameter whose ``when`` conditions hold."""
        chosen: dict[str, Any] = {}
        for name, spec in self.params.items():
            if self._active(spec, chosen):
                chosen[name] = _suggest_one(trial, name, spec)

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """One random draw from the space (for checking it), without Optuna."""
        chosen: dict[str, Any] = {}
        for name, spec in self.params.items():
            if self._active(spec, chosen):
                chosen[name] = _draw(rng, spec)
        return chosen

    def _active(self, spec: ParamSpec, chosen: dict[str, Any]) -> bool:
        flat = self.base.flat()
        return all(chosen.get(key, flat.get(key)) in values for key, values in spec.when.items())

    def policy_for(self, params: dict[str, Any], seed: Optional[int] = None) -> BudgetPolicy:
        """The base policy with the sampled ``params`` (dotted keys) applied."""
        overrides = dict(params)
        if seed is not None:
            overrides["seed"] = seed
        return self.base.with_overrides(overrides, source=f"{self.path}: trial parameters")

    def baseline_points(self) -> list[dict[str, Any]]:
        """Each baseline as the searched parameters Optuna should enqueue (points_to_evaluate).

        Every parameter that is active for the baseline gets a value: the baseline's own, else
        the base policy's, so Optuna samples nothing at random for a baseline.
        """
        return [self._point(b) for b in self.baselines]

    def _point(self, b: "BaselineSpec") -> dict[str, Any]:
        flat = self.base.flat()
        chosen: dict[str, Any] = {}
        for name, spec in self.params.items():
            if self._active(spec, chosen):
                value = b.set.get(name, flat.get(name))
                if not _in_domain(spec, value):
                    raise TuneBudgetError(
                        f"{self.path}: baselines.{b.name}: {name} = {value!r} lies outside search.{name}; "
                        f"set {name} in the baseline to a value inside the searched range")
                chosen[name] = value
        return chosen

    def baseline_policy(self, baseline: BaselineSpec) -> BudgetPolicy:
        return self.base.with_overrides(baseline.set, source=f"{self.path}: baselines.{baseline.name}")


def _suggest_one(trial: Any, name: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(name, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(name, float(spec.low), float(spec.high), step=spec.step, log=spec.log)


def _in_domain(spec: ParamSpec, value: Any) -> bool:
    if spec.type == "categorical":
        return value in (spec.choices or [])
    return isinstance(value, (int, float)) and not isinstance(value, bool) and spec.low <= value <= spec.high


def _draw(rng: random.Random, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return rng.choice(spec.choices)
    if spec.type == "int":
        return rng.randrange(int(spec.low), int(spec.high) + 1, int(spec.step or 1))
    return rng.uniform(float(spec.low), float(spec.high))


# ---- loading -------------------------------------------------------------------------------

def _validate(model: type[BaseModel], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = field_path(err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = f"unknown key; valid keys are {', '.join(model.model_fields)}"
        got = err.get("input")
        shown = "" if err.get("type") == "value_error" or isinstance(got, (dict, list)) else f" (got {got!r})"
        raise TuneBudgetError(f"{where}{'.' + loc if loc else ''}: {msg}{shown}") from None


def _check_param_names(path: str, base: BudgetPolicy, params: dict[str, ParamSpec]) -> None:
    flat = base.flat()
    for name, spec in params.items():
        if name not in flat or name in ("schema_version", "name"):
            raise TuneBudgetError(
                f"{path}: search.{name}: not a policy field; use dotted keys such as training.lr or selection.ratio")
        for key, values in spec.when.items():
            if key not in flat:
                raise TuneBudgetError(f"{path}: search.{name}.when: {key!r} is not a policy field")
            _check_when_values(path, name, key, values, flat[key], params.get(key))


def _check_when_values(path: str, name: str, key: str, values: list[Any], base_value: Any,
                       searched: ParamSpec | None) -> None:
    """Every listed value of a condition must be one ``key`` can take: a typo would silently keep
    the parameter from ever being sampled."""
    where = f"{path}: search.{name}.when.{key}"
    if searched is None:
        if base_value not in values:
            raise TuneBudgetError(f"{where}: {key} is not searched and is {base_value!r} in the base policy, so "
                                  f"{name} would never be sampled; list {base_value!r} or search {key}")
        return
    if searched.type == "float":
        raise TuneBudgetError(f"{where}: {key} is a searched float, which equals a listed value only by chance, so "
                              f"{name} would almost never be sampled; condition on a categorical or int parameter")
    if searched.type == "categorical":
        unknown = [v for v in values if v not in (searched.choices or [])]
        if unknown:
            raise TuneBudgetError(f"{where}: {unknown[0]!r} is not one of search.{key}'s choices "
                                  f"({', '.join(map(str, searched.choices or []))}); fix the value")
    elif not any(isinstance(v, (int, float)) and searched.low <= v <= searched.high for v in values):
        raise TuneBudgetError(f"{where}: no listed value is inside search.{key}'s range "
                              f"[{searched.low}, {searched.high}], so {name} would never be sampled; fix the values")


def _sampling_order(path: str, params: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
    """File order, except that a parameter comes after those its ``when`` depends on."""
    ordered: dict[str, ParamSpec] = {}
    pending = dict(params)
    while pending:
        ready = [n for n, spec in pending.items() if all(k in ordered or k not in params for k in spec.when)]
        if not ready:
            raise TuneBudgetError(f"{path}: search: the 'when' conditions of {', '.join(pending)} depend on each "
                                  "other in a cycle; remove one of the conditions")
        for name in ready:
            ordered[name] = pending.pop(name)
    return ordered


def _check_baselines(space: SearchSpace) -> None:
    names = [b.name for b in space.baselines]
    if len(set(names)) != len(names):
        raise TuneBudgetError(f"{space.path}: baselines: names must be unique (got {names})")
    flat = space.base.flat()
    for b in space.baselines:
        space.baseline_policy(b)  # raises with the field named
        for key, value in b.set.items():
            if key not in space.params and flat.get(key) != value:
                raise TuneBudgetError(
                    f"{space.path}: baselines.{b.name}.{key}: not a searched parameter, so Optuna cannot "
                    f"evaluate it; add {key} to search or set it in the base policy")


def _check_draws(space: SearchSpace) -> None:
    rng = random.Random(0)
    for _ in range(CHECK_DRAWS if space.params else 0):
        try:
            space.policy_for(space.sample(rng))
        except TuneBudgetError as exc:
            raise TuneBudgetError(
                f"{space.path}: search: the space can produce an invalid policy ({exc}); "
                "narrow the ranges or add a 'when' condition") from None


def load_space(path: Union[str, os.PathLike[str]]) -> SearchSpace:
    """Load and check a search-space file (a plain policy file is a space with nothing searched)."""
    p = str(path)
    data = read_yaml(path)
    policy_part, extras = split_space(data)
    base = policy_from_dict(policy_part, p)
    search = extras.get("search") or {}
    if not isinstance(search, dict):
        raise TuneBudgetError(f"{p}: search: expected a mapping of policy keys to distributions")
    params = {str(k): _validate(ParamSpec, v, f"{p}: search.{k}") for k, v in search.items()}
    sweep = _validate(SweepSpec, extras.get("sweep") or {}, f"{p}: sweep")
    raw_baselines = extras.get("baselines") or []
    if not isinstance(raw_baselines, list):
        raise TuneBudgetError(f"{p}: baselines: expected a list of {{name, set}} entries")
    baselines = [_validate(BaselineSpec, b, f"{p}: baselines[{i}]") for i, b in enumerate(raw_baselines)]
    _check_param_names(p, base, params)
    params = _sampling_order(p, params)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    space = SearchSpace(p, base, params, sweep, baselines, digest, data)
    _check_baselines(space)
    space.baseline_points()  # every baseline must be a point of the space
    _check_draws(space)
    space.metric()  # a metric no trial reports is refused before anything starts
    return space
