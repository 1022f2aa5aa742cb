"""Selection's side of one training run: the rules the trainer asks, never which scorer runs.

:class:`SampleSelection` carves a scorer's holdout off the training split, builds the policy's
scorer and :class:`~tunebudget.selection.phases.Selector`, and answers the trainer's three
questions: what does the next epoch train on (:meth:`~SampleSelection.plan`, rescoring every
sample first when a re-rank is due), which of a step's candidates get a gradient
(:meth:`~SampleSelection.choose`), and, after each training step, what the scorer learns and
records from it (:meth:`~SampleSelection.learn`). The trainer lends what it takes: its model's
passes (:class:`~tunebudget.selection.base.Passes`) and the budget clock, which every pass here
is charged to.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Optional

import torch

from tunebudget.budget import BudgetClock
from tunebudget.errors import TuneBudgetError
from tunebudget.policy import BudgetPolicy
from tunebudget.registry import SCORERS
from tunebudget.selection.base import Batch, EpochPlan, Passes, Scorer, ScoringContext
from tunebudget.selection.fit import HelperModels
from tunebudget.selection.phases import Selector

if TYPE_CHECKING:  # pragma: no cover
    from tunebudget.data import DataBundle, Split


def build_scorer(ctx: ScoringContext) -> Scorer:
    """The scorer named by ``ctx.spec.scorer``."""
    return SCORERS.get(ctx.spec.scorer).load()(ctx)


def carve(split: "Split", share: float, seed: int) -> tuple["Split", Optional["Split"]]:
    """Split off a random ``share`` of ``split`` (a scorer's holdout); the rest stays for training."""
    if share <= 0:
        return split, None
    n = len(split)
    k = int(round(n * share))
    if not 1 <= k < n:
        raise TuneBudgetError(f"selection.il_holdout: {share} of {n} training samples leaves nothing on one side; "
                              "use a share that keeps samples on both sides, or 0")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 29)).to(split.x.device)
    return split.subset(order[k:]), split.subset(order[:k])


class SampleSelection:
    """Which samples of ``data.train`` get a gradient under ``policy.selection``.

    Args:
        policy: the run's policy (its selection, budget, seed, learning rate and batch size).
        data: the run's data bundle; ``train`` (below) is its training split less the holdout.
        gen: the run's random generator on the training device.
        clock: the run's budget clock: scoring passes and helper models are charged to it.
        passes: the trainer's model passes.
        head: the main model's final linear weight (or None), read when scoring.
        chunk: the chunk size of a scoring pass over every sample.

    Attributes:
        scorer: the policy's scorer (None for strategies that read no scores).
        selector: the phases and strategy around the scores.
        train, holdout: the split the main model trains on, and the scorer's holdout (or None).
        candidates: samples scored by online selection's candidate passes.
        seconds: time spent planning epochs (re-ranking, shuffling).
    """

    def __init__(self, policy: BudgetPolicy, data: "DataBundle", gen: torch.Generator, clock: BudgetClock,
                 passes: Passes, head: Callable[[], Optional[torch.Tensor]], chunk: int) -> None:
        spec, t = policy.selection, policy.training
        self.spec, self.clock, self.passes, self.chunk = spec, clock, passes, chunk
        self.batch_size = t.batch_size
        self.scorer: Optional[Scorer] = None
        self.train, self.holdout = data.train, None
        device = data.train.x.device
        if spec.scores:
            share = SCORERS.get(spec.scorer).load().holdout_share(spec)
            self.train, self.holdout = carve(data.train, share, policy.seed)
            fitter = HelperModels(passes, policy.budget, t.lr, t.batch_size, clock, gen)
            self.scorer = build_scorer(ScoringContext(
                spec, self.train, data.num_outputs, data.input_shape, device, gen, head=head, fitter=fitter,
                holdout=self.holdout))
        self.selector = Selector(spec, len(self.train), device, gen)
        self.candidates = 0
        self.seconds = 0.0

    @property
    def noise_estimate(self) -> Optional[float]:
        return self.selector.noise_estimate

    def prepare(self) -> None:
        """The scorer's work before the first step (its helper models), charged as ``il``."""
        if self.scorer is not None:
            with self.clock.charged("il"):
                self.scorer.prepare()

    # ---- epochs -------------------------------------------------------------------------------
    def plan(self, p: float) -> EpochPlan:
        """The next epoch's plan at budget progress ``p`` (fresh scores of every sample first, if due)."""
        if self._rescore_due(p):
            self._refresh_scores()
        t0 = time.perf_counter()
        plan = self.selector.plan(p)
        self.seconds += time.perf_counter() - t0
        return plan

    def _rescore_due(self, p: float) -> bool:
        """Fresh scores of all samples before this epoch: when a re-rank is due and either the
        policy asks for a scoring pass, the scorer refreshes cheaply, or ``ratio: auto`` is about to
        estimate the noise rate from them."""
        if self.scorer is None or not self.selector.needs_rescore(p):
            return False
        # ratio auto estimates the noise from fresh losses: an epoch's training losses mix early, poor models'
        return self.spec.rescore or self.scorer.cheap_refresh or self.selector.estimating

    def _refresh_scores(self) -> None:
        """Fresh scores of every training sample (charged): a forward-only pass of the main model,
        or the scorer alone when it needs none."""
        assert self.scorer is not None
        train, observe, score = self.train, self.selector.observe, self.scorer.score
        with self.clock.scoring():
            if self.scorer.needs_forward:
                for idx, out, losses in self.passes.chunks(train):
                    observe(idx, score(Batch(idx, train.x[idx], train.y[idx], out, losses)))
                self.clock.charge_scoring(len(train))
            else:
                for idx in torch.arange(len(train), device=train.x.device).split(self.chunk):
                    observe(idx, score(Batch(idx, train.x[idx], train.y[idx])))

    # ---- steps --------------------------------------------------------------------------------
    @torch.no_grad()
    def choose(self, cand: torch.Tensor, share: float) -> torch.Tensor:
        """Online selection: score the candidates ``cand`` (a forward-only pass of the main model,
        charged, when the scorer reads it) and keep the best ``share`` of them, at most a batch."""
        assert self.scorer is not None
        k = min(self.batch_size, max(1, math.ceil(cand.numel() * share)))
        train = self.train
        with self.clock.scoring():
            batch = Batch(cand, train.x[cand], train.y[cand])
            if self.scorer.needs_forward:
                batch.logits, batch.losses = self.passes.candidates(batch.x, batch.y)
                self.clock.charge_scoring(cand.numel())
            chosen = self.selector.choose(cand, self.scorer.score(batch), k)
        self.candidates += cand.numel()
        return chosen

    def learn(self, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
              losses: torch.Tensor) -> None:
        """After a training step on ``idx``: the scorer learns from it and its scores are recorded."""
        if self.scorer is None:
            return
        batch = Batch(idx, x, y, logits.detach(), losses.detach())
        self.scorer.update(batch)
        self.selector.observe(idx, self.scorer.score(batch))
