"""Reducible-loss scoring (RHO-LOSS): train loss minus the irreducible loss of a held-out model.

Mindermann et al., "Prioritized Training on Points that are Learnable, Worth Learning, and Not Yet
Learnt", ICML 2022 (https://arxiv.org/abs/2206.07137). A sample's *irreducible loss* (IL) is its
loss under a model trained on other data: low for a sample that other data explains (learnable),
high for a mislabelled or ambiguous one (not worth learning). The score is the main model's
current loss minus that IL: high for samples that are learnable and not yet learnt, low for noise
(high IL) and for what the model already knows (low loss).

Two ways to get an IL for every training sample, chosen by ``selection.il_holdout``:

* ``0`` (default, holdout-free, as the RHO-LOSS code's ``double_irlomo``): two models, one per
  half of the training split, each scoring the other half. The main model trains on all data.
* ``> 0``: one model on that share of the training split, carved out before training (the main
  model never trains on it) and scoring the rest.

The IL model(s) have the task's architecture and the policy's optimizer with a linear decay, and
train for ``selection.il_budget`` of the run's budget (split between the two models); their
training and the one forward pass over the training split that computes the ILs are charged to
the budget (reported as ``il_seconds``), and the ILs are reused for the rest of the run.
"""

from __future__ import annotations

import torch

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import SelectionSpec
from tunebudget.selection.base import Batch, Scorer, ScoringContext


class ReducibleLossScorer(Scorer):
    def __init__(self, ctx: ScoringContext) -> None:
        super().__init__(ctx)
        if ctx.fitter is None:
            raise TuneBudgetError("selection.scorer reducible: needs a trainer that can fit the irreducible-loss model")
        self.il = torch.zeros(len(ctx.train), device=ctx.device)

    @classmethod
    def holdout_share(cls, spec: SelectionSpec) -> float:
        return spec.il_holdout

    def prepare(self) -> None:
        ctx, fitter = self.ctx, self.ctx.fitter
        assert fitter is not None
        share = ctx.spec.il_budget
        if ctx.holdout is not None:
            model = fitter.fit(ctx.holdout, share)
            self.il = fitter.losses(model, ctx.train)
            return
        n = len(ctx.train)
        order = torch.randperm(n, device=ctx.device, generator=ctx.gen)
        halves = order[: n // 2], order[n // 2:]
        for fit_on, score_on in (halves, halves[::-1]):
            model = fitter.fit(ctx.train.subset(fit_on), share / 2)
            self.il[score_on] = fitter.losses(model, ctx.train.subset(score_on))

    def score(self, batch: Batch) -> torch.Tensor:
        assert batch.losses is not None
        return batch.losses.detach().float() - self.il[batch.idx]
