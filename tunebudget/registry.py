"""The one list of names per kind: selection scorers and strategies.

A registry maps a name (what a policy file says) to an :class:`Entry`: where the
implementation lives (``module:Class``, imported only when a trainer needs it, so that policy
validation never imports torch), a one-line summary (used in error messages and docs) and the
policy fields the implementation reads. Policy validation, error messages, ``--help`` texts
and the contract tests all read these registries; nothing else lists the names.

Adding a scorer or a strategy is: a class in :mod:`tunebudget.selection` (a subclass of
``Scorer`` or ``Strategy``) and one ``add`` call here.

Example:
    >>> STRATEGIES.get("topk").reads >= {"scorer", "rerank_every"}
    True
    >>> "reducible" in SCORERS
    True
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from tunebudget.errors import TuneBudgetError

#: Selection fields every selective strategy reads: how much is kept and when.
PHASE_FIELDS = frozenset({"ratio", "warmup", "final_full", "shrink_span"})


@dataclass(frozen=True)
class Entry:
    """One registered implementation.

    Attributes:
        name: what a policy file says.
        target: ``"package.module:Class"`` of the implementation.
        summary: one line for error messages and docs.
        reads: ``selection.*`` fields it uses beyond ``strategy`` (a field it does not read
            must keep its default: a policy that sets it is rejected, not silently accepted).
        needs_classes: a scorer that needs class scores (not valid for regression tasks).
    """

    name: str
    target: str
    summary: str
    reads: frozenset[str] = field(default_factory=frozenset)
    needs_classes: bool = False

    def load(self) -> Any:
        """The implementation class (imports its module)."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry:
    """Names of one kind (``selection.scorer`` or ``selection.strategy``) and their entries."""

    def __init__(self, field_name: str) -> None:
        self.field = field_name
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: str, summary: str, reads: frozenset[str] | set[str] = frozenset(),
            needs_classes: bool = False) -> None:
        if name in self._entries:
            raise ValueError(f"{self.field}: {name!r} is registered twice")
        self._entries[name] = Entry(name, target, summary, frozenset(reads), needs_classes)

    def get(self, name: str) -> Entry:
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

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())


SCORERS = Registry("selection.scorer")
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

STRATEGIES = Registry("selection.strategy")
STRATEGIES.add("full", "tunebudget.selection.strategies:Full", "every sample, reshuffled each epoch")
STRATEGIES.add("rs2", "tunebudget.selection.strategies:RS2",
               "a fresh uniform subset each epoch, without replacement across epochs (the control)", PHASE_FIELDS)
STRATEGIES.add("topk", "tunebudget.selection.strategies:TopK",
               "the most important share, re-ranked every rerank_every epochs (Khan et al. 2024)",
               PHASE_FIELDS | {"scorer", "rerank_every", "rescore"})
STRATEGIES.add("sample", "tunebudget.selection.strategies:Sample",
               "draws in proportion to importance with 1/(N p) weights and a uniform floor",
               PHASE_FIELDS | {"scorer", "rerank_every", "rescore", "floor"})
STRATEGIES.add("infobatch", "tunebudget.selection.strategies:InfoBatch",
               "prune below-mean-score samples at random, weight the kept ones (InfoBatch, ICLR 2024)",
               PHASE_FIELDS | {"scorer", "rescore"})
STRATEGIES.add("online", "tunebudget.selection.strategies:Online",
               "each step scores batch_size/ratio candidates and trains on the batch_size best "
               "(Selective-Backprop 2019, RHO-LOSS 2022)", PHASE_FIELDS | {"scorer"})
