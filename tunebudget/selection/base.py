"""The two extension points of selection: a :class:`Scorer` and a :class:`Strategy`.

A **scorer** turns what the trainer saw of some samples (their ids, inputs, labels, and, if it
needs them, the main model's logits and per-sample losses) into importance scores, higher =
more important. It may keep state (per-sample ids, a holdout model), learn from every training
step (:meth:`Scorer.update`) and spend budget once before training (:meth:`Scorer.prepare`),
through the :class:`Fitter` it is handed (:class:`tunebudget.selection.fit.HelperModels`, built from
the :class:`Passes` the trainer lends): everything it does is charged to the budget.

A **strategy** turns the scores of all samples into an :class:`EpochPlan`: the index tensor of
one epoch, optional per-sample loss weights, and, for online selection, the share of each
step's candidates to train on. Warm-up, delayed shrinking and the final full-data phase wrap
every strategy (:class:`tunebudget.selection.phases.Selector`); a strategy only sees the kept
share it should aim for.

Names map to implementations in :mod:`tunebudget.registry`, the only list of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator, Optional, Protocol

import torch

from tunebudget.policy import SelectionSpec

if TYPE_CHECKING:  # pragma: no cover
    from tunebudget.data import Split


@dataclass
class Batch:
    """Samples the trainer has in hand: ids into the training split, inputs, labels, and the main
    model's outputs and per-sample losses when the scorer needs them (else None)."""

    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    logits: Optional[torch.Tensor] = None
    losses: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class Passes:
    """What the trainer lends the selection layer: its model's passes, never the model itself.

    Attributes:
        forward: ``forward(x, model=None)``: logits of the main model (or of ``model``), in float.
        loss: ``loss(logits, targets)``: per-sample losses (no label smoothing).
        chunks: ``chunks(split, model=None)``: ``(ids, logits, per-sample losses)`` of ``split``
            chunk by chunk, in eval mode and without grad.
        candidates: ``candidates(x, y)``: ``(logits, per-sample losses)`` of the main model in
            eval mode (online selection's candidate pass; the caller holds no grad).
        new_model: an untrained model like the main one (a helper model's start).
        new_optimizer: ``new_optimizer(model)``: the policy's optimizer over ``model``.
    """

    forward: Callable[..., torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    chunks: Callable[..., Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
    candidates: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    new_model: Callable[[], torch.nn.Module]
    new_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]


class Fitter(Protocol):
    """What a scorer that trains models of its own is handed (all of it charged):
    :class:`tunebudget.selection.fit.HelperModels` in the trainer."""

    def fit(self, split: "Split", share: float) -> torch.nn.Module:
        """A fresh model of the task's architecture trained on ``split`` for ``share`` of the budget."""

    def losses(self, model: torch.nn.Module, split: "Split") -> torch.Tensor:
        """Per-sample losses of ``model`` on ``split`` (a charged forward-only pass)."""


@dataclass
class ScoringContext:
    """What a scorer may use. ``train`` is the split the main model trains on; ``holdout`` is the
    share of the training split the scorer asked to keep for itself (:meth:`Scorer.holdout_share`)."""

    spec: SelectionSpec
    train: "Split"
    num_outputs: int
    input_shape: tuple[int, ...]
    device: torch.device
    gen: torch.Generator
    head: Callable[[], Optional[torch.Tensor]]  # the final linear layer's weight, read when scoring
    fitter: Optional[Fitter] = None
    holdout: Optional["Split"] = None


class Scorer(ABC):
    """Per-sample importance. Subclasses implement :meth:`score`; the rest is optional.

    Class attributes:
        needs_forward: scores are computed from the main model's logits and losses (so a
            scoring pass or an online candidate pass runs the main model forward, charged at
            ``budget.scoring_cost``). False for a scorer with its own cheap model (assistant).
        cheap_refresh: rescoring all samples costs next to nothing, so it is done at every
            re-rank whatever ``selection.rescore`` says.
    """

    needs_forward: ClassVar[bool] = True
    cheap_refresh: ClassVar[bool] = False

    def __init__(self, ctx: ScoringContext) -> None:
        self.ctx = ctx

    @classmethod
    def holdout_share(cls, spec: SelectionSpec) -> float:
        """Share of the training split this scorer keeps for itself (the main model never trains on it)."""
        return 0.0

    def prepare(self) -> None:
        """Called once after the clock starts, before the first step: budget spent here is charged."""

    @abstractmethod
    def score(self, batch: Batch) -> torch.Tensor:
        """Importance of each sample of ``batch`` (1-D, higher = more important), without grad."""

    def update(self, batch: Batch) -> None:
        """Called after every training step with that step's samples, logits and losses."""


@dataclass
class EpochPlan:
    """What one epoch trains on.

    Attributes:
        order: sample ids in training order (for online selection: in candidate order).
        weights: per-sample loss weights indexed by sample id, or None (all 1).
        phase: ``full`` | ``warmup`` | ``select`` | ``final``.
        share: the kept share of the data (online: of each step's candidates).
        online: each step draws ``batch_size / share`` candidates from ``order``, scores them and
            trains on the ``batch_size`` best (see :meth:`Strategy.choose`).
    """

    order: torch.Tensor
    weights: Optional[torch.Tensor]
    phase: str
    share: float
    online: bool = False


class Strategy(ABC):
    """Turns scores into epoch plans. Subclasses implement :meth:`plan`.

    Args:
        spec: the policy's selection section (validated: the fields this strategy reads are in
            its registry entry).
        n: number of training samples.
        device: where index tensors live (the training device).
        gen: the run's random generator on ``device``.
    """

    def __init__(self, spec: SelectionSpec, n: int, device: torch.device, gen: torch.Generator) -> None:
        self.spec = spec
        self.n = n
        self.device = device
        self.gen = gen

    def rank_due(self, share: float) -> bool:
        """Whether the next plan re-reads the scores (so a refresh, if any, should come first)."""
        return False

    @abstractmethod
    def plan(self, share: float, scores: torch.Tensor) -> EpochPlan:
        """The next epoch's plan at a target kept share. ``scores`` holds every sample's last
        score, NaN for a sample never scored."""

    def choose(self, candidates: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
        """Online selection: the ``k`` candidates to train on (only called for online plans)."""
        raise NotImplementedError(f"{type(self).__name__} does not select online")

    # ---- helpers for subclasses ----
    def perm(self, m: int) -> torch.Tensor:
        return torch.randperm(m, device=self.device, generator=self.gen)

    def kept(self, share: float) -> int:
        """The number of samples a share keeps (at least one)."""
        return max(1, min(self.n, int(round(share * self.n))))
