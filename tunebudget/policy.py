"""BudgetPolicy: the complete recipe for spending a training budget.

One object is searched, logged, exported and replayed. It is validated strictly (unknown
keys, types, ranges, incompatible combinations) and round-trips through YAML with a schema
version. A *search-space file* is a policy plus optional ``search``, ``sweep`` and
``baselines`` sections; :func:`load_policy` reads the policy part of either kind of file.

This module imports neither torch nor Ray, so that bad input fails fast.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from tunebudget.errors import TuneBudgetError, field_path
from tunebudget.registry import DATASETS, MODELS, SCORERS, STRATEGIES
from tunebudget.schedules import SCHEDULES

SCHEMA_VERSION = 1

#: Where Debian's dataset-fashion-mnist puts the IDX files (the default of task.root).
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
#: Task fields that change the training split (data regimes); see TaskSpec.
REGIME_FIELDS = ("train_subset", "imbalance", "label_noise", "noise_kind", "duplicates")
#: Top-level sections of a search-space file that are not part of the policy.
SPACE_SECTIONS = ("search", "sweep", "baselines")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


class TaskSpec(_Section):
    """What to train: data set, model and how the data is prepared."""

    dataset: str = "fashion_mnist"
    #: classification or regression. Set it only for your own data set (``package.module:factory``;
    #: default classification): a built-in data set has its own kind.
    kind: Literal["classification", "regression"] | None = Field(default=None, validate_default=True)
    model: str = "cnn"
    #: Directory holding the data set's files (default: TUNEBUDGET_DATA, then the Debian location).
    root: Optional[str] = None
    #: Validation samples held out of the training set: a count, or a share if below 1. Not used
    #: when the data brings a validation split of its own (val_root, or your factory's val_x/val_y).
    val_size: Union[int, float] = Field(default=5000, gt=0)
    #: A directory with a validation split of its own, used as is instead of the carve (trusted
    #: labels, when the training labels are noisy): fashion_mnist reads val-images-idx3-ubyte.gz and
    #: val-labels-idx1-ubyte.gz there, imagefolder one folder per class.
    val_root: Optional[str] = None
    #: On-device random flip and crop of image batches.
    augment: bool = False
    #: Extra options of the data set (e.g. synthetic: n_samples, dim, noise, redundant).
    data_options: dict[str, Any] = Field(default_factory=dict)
    #: Extra keyword arguments of the model factory (e.g. mlp: hidden).
    model_options: dict[str, Any] = Field(default_factory=dict)
    # ---- data regimes: applied to the training split only (validation and test stay as given) ----
    #: Train on a subset of the training split: a count, or a share if below 1 (null: all of it).
    train_subset: Optional[Union[int, float]] = Field(default=None, gt=0)
    #: Long tail: class sizes fall exponentially so the largest class has this many times the
    #: samples of the smallest (1: as given). Classification only.
    imbalance: float = Field(default=1.0, ge=1, le=1000)
    #: Share of training labels replaced by another class. Classification only.
    label_noise: float = Field(default=0.0, ge=0, lt=1)
    #: symmetric: the new label is any other class; pairs: the class whose mean training input is closest.
    noise_kind: Literal["symmetric", "pairs"] = "symmetric"
    #: Redundancy factor: the training split is rebuilt from 1/duplicates of its samples, each
    #: repeated a geometric number of times with mean ``duplicates`` (its size stays about the same).
    duplicates: float = Field(default=1.0, ge=1, le=100)

    @field_validator("kind")
    @classmethod
    def _resolve_kind(cls, value: str | None, info: Any) -> str:
        """The task's kind: a built-in data set's own, else the one given (default classification)."""
        dataset = info.data.get("dataset")
        own = _builtin_kind(dataset)
        if own is not None and value not in (None, own):
            raise ValueError(f"task.kind: {dataset} is a {own} data set; remove task.kind "
                             "(it is for your own data set, task.dataset: package.module:factory)")
        return value or own or "classification"

    @model_serializer(mode="wrap")
    def _omit_own_kind(self, handler: Any) -> dict[str, Any]:
        """``kind`` is written only where the data set does not imply it (regression on your own data)."""
        data = handler(self)
        if data.get("kind") == (_builtin_kind(self.dataset) or "classification"):
            data.pop("kind")
        return data

    @model_validator(mode="after")
    def _known_names(self) -> "TaskSpec":
        if self.dataset not in DATASETS and not is_factory_spec(self.dataset):
            raise ValueError(
                f"task.dataset: unknown data set {self.dataset!r}; use one of {', '.join(DATASETS.names())} "
                "or 'package.module:factory' (your own data)"
            )
        if self.model not in MODELS and ":" not in self.model:
            raise ValueError(
                f"task.model: unknown model {self.model!r}; use one of {', '.join(MODELS.names())} "
                "or 'package.module:factory'"
            )
        reads_val = [e.name for e in DATASETS if e.val_layout]
        if self.val_root is not None and self.dataset not in reads_val:
            own = (f"return val_x and val_y (or val) from {self.dataset} instead" if self.user_data
                   else f"use it with {' or '.join(reads_val)}, or your own data set's factory")
            raise ValueError(f"task.val_root: {self.dataset} reads no validation split from a directory; "
                             f"remove it, or {own}")
        if self.kind == "regression":
            for name in ("label_noise", "imbalance"):
                if getattr(self, name) != TaskSpec.model_fields[name].default:
                    raise ValueError(f"task.{name}: needs class labels but task.dataset {self.dataset!r} "
                                     "is a regression task; remove it")
        if self.noise_kind != "symmetric" and self.label_noise == 0:
            raise ValueError(f"task.noise_kind: {self.noise_kind!r} has no effect with task.label_noise 0; "
                             "set task.label_noise (a share of the labels) or remove noise_kind")
        return self

    def regime(self) -> dict[str, Any]:
        """The data-regime fields that differ from a clean data set (empty: clean)."""
        return {k: getattr(self, k) for k in REGIME_FIELDS if getattr(self, k) != TaskSpec.model_fields[k].default}

    @property
    def user_data(self) -> bool:
        """True when the data set is the user's own ``package.module:factory``."""
        return self.dataset not in DATASETS


def _builtin_kind(dataset: Any) -> str | None:
    """The kind of task of a registered data set (None: not one, your own data)."""
    return DATASETS.get(dataset).kind if isinstance(dataset, str) and dataset in DATASETS else None


def is_factory_spec(text: str) -> bool:
    """``package.module:factory``: dotted identifiers, a colon, an identifier."""
    module, sep, attr = text.partition(":")
    return bool(sep) and attr.isidentifier() and all(p.isidentifier() for p in module.split("."))


class BudgetSpec(_Section):
    """How much may be spent: wall-clock seconds, or (deterministic) sample passes."""

    seconds: Optional[float] = Field(default=30.0, gt=0)
    #: Deterministic budget in training sample passes; set seconds to null to use it.
    samples: Optional[float] = Field(default=None, gt=0)
    #: Share of the budget between validations (0.1: ten validations per run).
    eval_every: float = Field(default=0.1, gt=0, le=1)
    #: Validation samples used by the periodic validations (null: all); the final one uses all.
    eval_samples: Optional[int] = Field(default=None, ge=1)
    #: Cost of a forward-only scoring pass relative to a training pass (sample budget only).
    scoring_cost: float = Field(default=1.0 / 3.0, gt=0, le=1)
    #: Share of the budget to spend (train less): the run trains for ``use`` x the budget, with the LR
    #: schedule, selection phases and validations fitted to that share, and leaves the rest unspent.
    use: float = Field(default=1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _one_limit(self) -> "BudgetSpec":
        if (self.seconds is None) == (self.samples is None):
            raise ValueError(
                "budget: set exactly one of budget.seconds (wall clock) or budget.samples "
                "(deterministic sample passes); set the other to null"
            )
        return self

    @property
    def kind(self) -> str:
        return "seconds" if self.seconds is not None else "samples"

    @property
    def amount(self) -> float:
        return float(self.seconds if self.seconds is not None else self.samples)  # type: ignore[arg-type]

    @property
    def limit(self) -> float:
        """What the run may spend: ``use`` x the budget, in the budget's unit."""
        return self.amount * self.use


class TrainingSpec(_Section):
    """Optimiser and learning-rate schedule; the LR follows the share of budget spent."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=5e-4, ge=0, lt=1)
    batch_size: int = Field(default=128, ge=1, le=65536)
    schedule: str = "linear"
    #: Share of the budget spent warming the LR up linearly from zero.
    lr_warmup: float = Field(default=0.0, ge=0, lt=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    #: torch.compile the model; compile time is spent before the clock starts.
    compile: bool = False
    #: torch CPU threads (null: torch's default). A sweep's exported policy records the threads its
    #: trials ran with, so that replaying it measures what the sweep measured.
    threads: Optional[int] = Field(default=None, ge=1, le=1024)
    #: Return the best validated weights instead of the last (Keras' ModelCheckpoint(save_best_only),
    #: Lightning's ModelCheckpoint): a copy of the weights is kept at each validation that improves
    #: the task's metric (val accuracy, or val MSE for regression), and the test metrics are the kept
    #: copy's. Its memory and copy time are reported (keep_best_bytes, keep_best_seconds).
    keep_best: bool = False

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        if value not in SCHEDULES:
            raise ValueError(f"training.schedule: unknown schedule {value!r}; use one of {', '.join(SCHEDULES)}")
        return value


class SelectionSpec(_Section):
    """Which samples get a gradient, and when.

    The first ``warmup`` share of the budget trains on all data; the last ``final_full``
    share too. In between the strategy keeps a share ``ratio`` of the samples (for
    ``infobatch``: keeps ``ratio`` of the below-mean-loss samples; for ``online``: trains on
    ``ratio`` of each step's candidates), re-ranked every ``rerank_every`` epochs. With
    ``shrink_span`` > 0 the kept share falls linearly from 1 to ``ratio`` over that share of the
    budget after warm-up (delayed shrinking). A field the strategy (or its scorer) does not read
    must keep its default: see :data:`tunebudget.registry.STRATEGIES`.
    """

    strategy: str = "full"
    scorer: str = "loss"
    #: The kept share, in (0, 1]. With scorer small_loss it is 1 - tau (tau: the share of high-loss
    #: samples dropped), and ``auto`` sets it to 1 - the noise rate estimated after warm-up.
    ratio: Union[float, Literal["auto"]] = 1.0
    warmup: float = Field(default=0.0, ge=0, lt=1)
    rerank_every: int = Field(default=1, ge=1, le=1000)
    #: Run a forward-only scoring pass over all samples at each re-rank (else reuse training losses).
    rescore: bool = False
    final_full: float = Field(default=0.0, ge=0, lt=1)
    shrink_span: float = Field(default=0.0, ge=0, lt=1)
    #: Smallest probability share kept for every sample by the ``sample`` strategy.
    floor: float = Field(default=0.1, ge=0, le=1)
    #: reducible: share of the budget spent training the irreducible-loss model(s) (charged). At
    #: 0.1 they were too weak to keep wrong labels out on digits with 20% noise (23% of the trained
    #: samples mislabelled, against 20% in the data); at 0.2, 11% (README, Reducible loss).
    il_budget: float = Field(default=0.2, gt=0, le=0.5)
    #: reducible: 0 = two models on the two halves of the training split, each scoring the other
    #: half (nothing held out); > 0 = one model on this share of the training split, which the
    #: main model then never trains on.
    il_holdout: float = Field(default=0.0, ge=0, le=0.5)

    @field_validator("ratio", mode="before")
    @classmethod
    def _share_or_auto(cls, value: Any) -> Any:
        if value == "auto" and isinstance(value, str):
            return value
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not 0 < value <= 1:  # NaN fails the comparison too
            raise ValueError(f"selection.ratio: {value!r} is not a share; give a number in (0, 1] (the kept share) "
                             "or auto (with scorer small_loss: 1 - the noise rate estimated after warm-up)")
        return value

    @field_validator("strategy", "scorer")
    @classmethod
    def _registered(cls, value: str, info: Any) -> str:
        registry = STRATEGIES if info.field_name == "strategy" else SCORERS
        if value not in registry:
            raise ValueError(registry.unknown(value))
        return value

    @model_validator(mode="after")
    def _compatible(self) -> "SelectionSpec":
        if self.ratio == "auto" and not (self.strategy in ("topk", "online") and self.scorer == "small_loss"
                                         and self.warmup > 0):
            raise ValueError(
                "selection.ratio: auto (1 - the noise rate estimated from the losses after warm-up) needs "
                "selection.strategy topk or online, selection.scorer small_loss and selection.warmup above 0 "
                f"(got {self.strategy}, {self.scorer}, warmup {self.warmup}); set those, or give ratio a number")
        if self.strategy == "full" and self.ratio != 1:
            raise ValueError(
                f"selection.ratio is {self.ratio} but selection.strategy is 'full' (all data); "
                "set ratio to 1 or choose a strategy such as topk, sample, infobatch, online or rs2"
            )
        if self.warmup + self.shrink_span + self.final_full >= 1:
            raise ValueError(
                "selection.warmup + selection.shrink_span + selection.final_full must be below 1 "
                f"(got {self.warmup} + {self.shrink_span} + {self.final_full}); shorten one of them"
            )
        unread = self.unread()
        if unread:
            name = unread[0]
            what = f"selection.strategy {self.strategy!r}"
            if "scorer" in STRATEGIES.get(self.strategy).reads:
                what += f" and selection.scorer {self.scorer!r}"
            raise ValueError(
                f"selection.{name}: {getattr(self, name)!r} has no effect with {what}, which use "
                f"{', '.join(sorted(self.reads())) or 'no other selection field'}; remove it, or choose a "
                "strategy or scorer that uses it")
        return self

    def reads(self) -> set[str]:
        """The fields this strategy and (if it scores) its scorer read."""
        return fields_read(self.strategy, self.scorer)

    def unread(self) -> list[str]:
        """Fields set away from their defaults that nothing reads (a policy must have none)."""
        reads = self.reads()
        return [name for name, info in type(self).model_fields.items()
                if name != "strategy" and name not in reads and getattr(self, name) != info.default]

    @property
    def selective(self) -> bool:
        return self.strategy != "full"

    @property
    def scores(self) -> bool:
        """Whether the strategy uses importance scores (rs2 and full do not: no bookkeeping)."""
        return "scorer" in STRATEGIES.get(self.strategy).reads


def fields_read(strategy: str, scorer: str) -> set[str]:
    """The selection fields a (registered) strategy reads, plus its scorer's if it scores and the
    scorer is registered (an unknown scorer is reported by the field's own validator)."""
    reads = set(STRATEGIES.get(strategy).reads)
    if "scorer" in reads and scorer in SCORERS:
        reads |= SCORERS.get(scorer).reads
    return reads


def drop_unread(data: dict[str, Any], explicit: set[str]) -> None:
    """Put back the defaults of selection fields that the policy's strategy (and scorer) do not read,
    except those in ``explicit`` (dotted keys the caller set on purpose, which must then be
    rejected). Used where overrides switch a base policy's strategy: a trial or a baseline that
    turns a top-k base policy into RS2 drops the base's scorer instead of failing on it."""
    sel = data.get("selection")
    if not isinstance(sel, dict) or sel.get("strategy", "full") not in STRATEGIES:
        return
    reads = fields_read(sel.get("strategy", "full"), sel.get("scorer", "loss"))
    for name, info in SelectionSpec.model_fields.items():
        if name != "strategy" and name not in reads and name in sel and f"selection.{name}" not in explicit:
            sel[name] = info.default


class BudgetPolicy(_Section):
    """The unit of everything: searched, logged, exported and replayed."""

    schema_version: int = SCHEMA_VERSION
    name: str = "policy"
    task: TaskSpec = Field(default_factory=TaskSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    seed: int = Field(default=0, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _task_fits(self) -> "BudgetPolicy":
        if self.task.kind == "regression" and self.selection.scores and SCORERS.get(self.selection.scorer).needs_classes:
            raise ValueError(
                f"selection.scorer {self.selection.scorer!r} needs class scores but task.dataset "
                f"{self.task.dataset!r} is a regression task; use one of "
                + ", ".join(e.name for e in SCORERS if not e.needs_classes)
            )
        if self.budget.samples is not None and self.budget.limit < self.training.batch_size:
            spent = "" if self.budget.use == 1 else f" x budget.use {self.budget.use:g} = {self.budget.limit:g}"
            raise ValueError(
                f"budget.samples: {self.budget.samples:g}{spent} is less than one batch "
                f"(training.batch_size {self.training.batch_size}); give at least a few batches"
            )
        return self

    # ---- conversions -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values, e.g. ``{"training.lr": 0.05, ...}`` (for MLflow params)."""
        return flatten(self.to_dict())

    def digest(self) -> str:
        """A short hash of the resolved policy (provenance)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def with_overrides(self, overrides: dict[str, Any], source: str = "override") -> "BudgetPolicy":
        data = self.to_dict()
        for key, value in overrides.items():
            set_dotted(data, key, value, source)
        if "selection.strategy" in overrides or "selection.scorer" in overrides:
            drop_unread(data, set(overrides))
        return policy_from_dict(data, source)


# ---- dotted keys -------------------------------------------------------------------------

def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("data_options", "model_options"):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str = "override") -> None:
    """Set ``data["a"]["b"] = value`` for ``key = "a.b"``; the sections must exist."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise TuneBudgetError(
                f"{source}: {key!r}: {where!r} is not a section of the policy; "
                f"sections are {', '.join(k for k, v in data.items() if isinstance(v, dict))}"
            )
        node = child
    node[parts[-1]] = value


# ---- loading -----------------------------------------------------------------------------

def _describe(err: dict[str, Any], section_keys: dict[str, list[str]]) -> str:
    loc = field_path(err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        parent = loc.rsplit(".", 1)[0] if "." in loc else ""
        known = section_keys.get(parent, [])
        return f"{loc}: unknown key; valid keys here are {', '.join(known)}"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "value_error":  # our own validators name the field and the fix
        return msg
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"{loc or 'policy'}: {msg}{shown}"


def _section_keys() -> dict[str, list[str]]:
    keys = {"": list(BudgetPolicy.model_fields)}
    for name in ("task", "budget", "training", "selection"):
        ann = BudgetPolicy.model_fields[name].annotation
        keys[name] = list(ann.model_fields)  # type: ignore[union-attr]
    return keys


def policy_from_dict(data: Any, source: str = "policy") -> BudgetPolicy:
    """Validate a plain dict into a policy; raise TuneBudgetError naming the field."""
    if not isinstance(data, dict):
        raise TuneBudgetError(f"{source}: expected a mapping of policy sections, got {type(data).__name__}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise TuneBudgetError(
            f"{source}: schema_version {version} was written by a newer tunebudget "
            f"(this one reads up to {SCHEMA_VERSION}); upgrade tunebudget"
        )
    try:
        return BudgetPolicy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise TuneBudgetError(f"{source}: {_describe(first, _section_keys())}{more}") from None


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (``1e-3`` is a number, not a string) and no
    duplicate keys (YAML forbids them; PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}; keep one of them", mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.2's float: the exponent needs no dot ("1e-3") and its sign is optional
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml_text(text: str) -> Any:
    """Parse YAML text with :class:`StrictLoader` (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass: safe


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a one-line TuneBudgetError."""
    p = Path(path)
    if p.is_dir():
        raise TuneBudgetError(f"{p}: is a directory; give the path of a policy or search-space YAML file")
    if not p.is_file():
        raise TuneBudgetError(f"{p}: no such file; give the path of a policy or search-space YAML file")
    try:
        data = load_yaml_text(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise TuneBudgetError(f"{p}: malformed YAML{where}: {problem}; fix the YAML syntax") from None
    except UnicodeDecodeError:
        raise TuneBudgetError(f"{p}: not a text file; give a YAML file") from None
    except OSError as exc:
        raise TuneBudgetError(f"{p}: cannot be read ({exc.strerror}); check its permissions") from None
    if data is None:
        raise TuneBudgetError(f"{p}: the file is empty; write a policy mapping (e.g. 'budget: {{seconds: 60}}')")
    if not isinstance(data, dict):
        raise TuneBudgetError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def split_space(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a search-space mapping into (policy part, {search, sweep, baselines})."""
    policy = {k: v for k, v in data.items() if k not in SPACE_SECTIONS}
    extras = {k: copy.deepcopy(data[k]) for k in SPACE_SECTIONS if k in data}
    return policy, extras


def load_policy(path: str | os.PathLike[str]) -> BudgetPolicy:
    """Load the policy of a policy file or the base policy of a search-space file."""
    policy_part, _ = split_space(read_yaml(path))
    return policy_from_dict(policy_part, str(path))


def save_policy(policy: BudgetPolicy, path: str | os.PathLike[str]) -> None:
    """Write the policy as YAML atomically (a half-written file is never left behind)."""
    from tunebudget.util import atomic_write_text

    atomic_write_text(Path(path), policy.to_yaml())
