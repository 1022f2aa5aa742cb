"""The one list of names per kind: selection scorers and strategies, data sets and models.

A registry maps a name (what a policy file says) to an entry: where the implementation lives
(``module:attribute``, imported only when a trainer needs it, so that policy validation never
imports torch), a one-line summary (used in error messages and docs) and what policy validation
must know of it without importing it (the fields a strategy reads, a data set's kind, ...).
Policy validation, error messages, ``--help`` texts and the contract tests all read these
registries; nothing else lists the names.

Adding a scorer or a strategy is: a class in :mod:`tunebudget.selection` (a subclass of
``Scorer`` or ``Strategy``) and one ``add`` call here. Adding a built-in data set is: a source
function ``(task, seed) -> (train_x, train_y, test_x, test_y)`` in :mod:`tunebudget.data` and one
``DATASETS.add`` call here; adding a built-in model is a factory
``(input_shape, num_outputs, **options) -> nn.Module`` in :mod:`tunebudget.models` and one
``MODELS.add`` call.

Example:
    >>> STRATEGIES.get("topk").reads >= {"scorer", "rerank_every"}
    True
    >>> "reducible" in SCORERS
    True
    >>> DATASETS.get("synthetic_regression").kind
    'regression'
    >>> MODELS.get("cnn").widths["width"]
    'one'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, TypeVar

from tunebudget.errors import TuneBudgetError

#: Selection fields every selective strategy reads: how much is kept and when.
PHASE_FIELDS = frozenset({"ratio", "warmup", "final_full", "shrink_span"})


def _load(target: str) -> Any:
    """The attribute ``target`` (``package.module:attribute``) names (imports its module)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Entry:
    """One registered implementation.

    Attributes:
        name: what a policy file says.
        target: ``"package.module:attribute"`` of the implementation.
        summary: one line for error messages and docs.
    """

    name: str
    target: str
    summary: str

    def load(self) -> Any:
        """The implementation (imports its module)."""
        return _load(self.target)


@dataclass(frozen=True)
class SelectionEntry(Entry):
    """A scorer or a strategy (a ``Scorer`` or ``Strategy`` subclass).

    Attributes:
        reads: ``selection.*`` fields it uses beyond ``strategy`` (a field it does not read
            must keep its default: a policy that sets it is rejected, not silently accepted).
        needs_classes: a scorer that needs class scores (not valid for regression tasks).
    """

    reads: frozenset[str] = field(default_factory=frozenset)
    needs_classes: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "reads", frozenset(self.reads))


@dataclass(frozen=True)
class DataSetEntry(Entry):
    """A built-in data set: its target is a source ``(task, seed) -> (train_x, train_y, test_x, test_y)``
    (numpy arrays; uint8 inputs are scaled by 1/255).

    Attributes:
        kind: ``classification`` or ``regression`` (a policy cannot set another).
        takes_options: the source reads ``task.data_options`` (others reject any).
        val_layout: what ``task.val_root`` must hold for this data set (None: it reads no
            validation split from a directory).
        val_reader: ``"package.module:function"`` reading that split, ``(task) -> (val_x, val_y)``.
    """

    kind: str = "classification"
    takes_options: bool = False
    val_layout: Optional[str] = None
    val_reader: Optional[str] = None

    def load_val(self) -> Callable[..., Any]:
        """The reader of the validation split in ``task.val_root``."""
        if self.val_reader is None:
            raise TuneBudgetError(f"task.val_root: {self.name} reads no validation split from a directory")
        return _load(self.val_reader)


@dataclass(frozen=True)
class ModelEntry(Entry):
    """A built-in model: its target is a factory ``(input_shape, num_outputs, **task.model_options)``.

    Attributes:
        widths: its width options, checked before it is built: ``list`` (a list of widths) or
            ``one`` (one width), each a whole number from 1 to 65536.
    """

    widths: Mapping[str, str] = field(default_factory=dict)


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    """Names of one kind (``selection.scorer``, ``task.dataset``, ...) and their entries."""

    def __init__(self, field_name: str, entry: type[E]) -> None:
        self.field = field_name
        self._entry = entry
        self._entries: dict[str, E] = {}

    def add(self, name: str, target: str, summary: str, **details: Any) -> None:
        """Register ``name``; ``details`` are the fields of this registry's entry type."""
        if name in self._entries:
            raise ValueError(f"{self.field}: {name!r} is registered twice")
        self._entries[name] = self._entry(name, target, summary, **details)

    def get(self, name: str) -> E:
        try:
            return self._entries[name]
        except KeyError:
            raise TuneBudgetError(self.unknown(name)) from None

    def unknown(self, name: Any) -> str:
        return f"{self.field}: unknown name {name!r}; use one of {', '.join(self._entries)}"

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries.values())


SCORERS = Registry("selection.scorer", SelectionEntry)
SCORERS.add("loss", "tunebudget.selection.scorers:LossScorer",
            "per-sample training loss (from the training forward pass: no extra pass)")
SCORERS.add("margin", "tunebudget.selection.scorers:MarginScorer",
            "minus the minimal margin score (z1 - z2) / ||w1 - w2|| (Weinstein et al. 2019)", needs_classes=True)
SCORERS.add("entropy", "tunebudget.selection.scorers:EntropyScorer", "entropy of the softmax", needs_classes=True)
SCORERS.add("random", "tunebudget.selection.scorers:RandomScorer", "uniform noise (the control)")
SCORERS.add("assistant", "tunebudget.selection.scorers:AssistantScorer",
            "a small model's predicted chance that the loss is above the mean (AutoAssist, NeurIPS 2019)")
SCORERS.add("small_loss", "tunebudget.selection.scorers:SmallLossScorer",
            "minus the per-sample training loss: the lowest-loss samples rank first, the likely-clean ones "
            "under label noise (co-teaching's small-loss trick, Han et al. 2018; no extra pass)")
SCORERS.add("reducible", "tunebudget.selection.reducible:ReducibleLossScorer",
            "training loss minus the irreducible loss of a model trained on held-out data (RHO-LOSS, ICML 2022)",
            reads={"il_budget", "il_holdout"})

STRATEGIES = Registry("selection.strategy", SelectionEntry)
STRATEGIES.add("full", "tunebudget.selection.strategies:Full", "every sample, reshuffled each epoch")
STRATEGIES.add("rs2", "tunebudget.selection.strategies:RS2",
               "a fresh uniform subset each epoch, without replacement across epochs (the control)", reads=PHASE_FIELDS)
STRATEGIES.add("topk", "tunebudget.selection.strategies:TopK",
               "the most important share, re-ranked every rerank_every epochs (Khan et al. 2024)",
               reads=PHASE_FIELDS | {"scorer", "rerank_every", "rescore"})
STRATEGIES.add("sample", "tunebudget.selection.strategies:Sample",
               "draws in proportion to importance with 1/(N p) weights and a uniform floor",
               reads=PHASE_FIELDS | {"scorer", "rerank_every", "rescore", "floor"})
STRATEGIES.add("infobatch", "tunebudget.selection.strategies:InfoBatch",
               "prune below-mean-score samples at random, weight the kept ones (InfoBatch, ICLR 2024)",
               reads=PHASE_FIELDS | {"scorer", "rescore"})
STRATEGIES.add("online", "tunebudget.selection.strategies:Online",
               "each step scores batch_size/ratio candidates and trains on the batch_size best "
               "(Selective-Backprop 2019, RHO-LOSS 2022)", reads=PHASE_FIELDS | {"scorer"})

DATASETS = Registry("task.dataset", DataSetEntry)
DATASETS.add("fashion_mnist", "tunebudget.data.idx:fashion_mnist",
             "Zalando's 28x28 clothing images: the IDX gz files in task.root, $TUNEBUDGET_DATA or Debian's "
             "dataset-fashion-mnist location",
             val_layout="val-images-idx3-ubyte.gz and val-labels-idx1-ubyte.gz (IDX gz, as the training files)",
             val_reader="tunebudget.data.idx:fashion_mnist_val")
DATASETS.add("digits", "tunebudget.data.flat:digits", "scikit-learn's bundled 8x8 digits (no download)")
DATASETS.add("diabetes", "tunebudget.data.flat:diabetes",
             "scikit-learn's bundled diabetes progression, 442 samples of 10 features (regression, no download)",
             kind="regression")
DATASETS.add("synthetic", "tunebudget.data.flat:synthetic",
             "seeded Gaussian classes plus a share of easy near-duplicates (data_options: n_samples, dim, "
             "classes, noise, redundant)", takes_options=True)
DATASETS.add("synthetic_regression", "tunebudget.data.flat:synthetic",
             "seeded regression targets on the same inputs (the same data_options)", kind="regression",
             takes_options=True)
DATASETS.add("mnist", "tunebudget.data.vision:mnist", "torchvision's MNIST from a local task.root")
DATASETS.add("cifar10", "tunebudget.data.vision:cifar10", "torchvision's CIFAR-10 from a local task.root")
DATASETS.add("imagefolder", "tunebudget.data.vision:imagefolder",
             "images laid out as ROOT/<class>/<image> in a local task.root, one class per folder",
             val_layout="one folder per class, named as under task.root",
             val_reader="tunebudget.data.vision:imagefolder_val")

MODELS = Registry("task.model", ModelEntry)
MODELS.add("mlp", "tunebudget.models:MLP", "flatten, hidden ReLU layers (model_options: hidden), a linear head",
           widths={"hidden": "list"})
MODELS.add("cnn", "tunebudget.models:SmallCNN",
           "two strided conv blocks for 28-32 px images, CPU-friendly (model_options: width, hidden)",
           widths={"width": "one", "hidden": "one"})
MODELS.add("resnet18", "tunebudget.models:resnet18", "torchvision's ResNet-18 with a 3x3 stem for 28-32 px inputs")
