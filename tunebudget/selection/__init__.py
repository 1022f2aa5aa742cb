"""Which samples get a gradient: scorers, strategies and the phases around them.

* :mod:`~tunebudget.selection.base`: the two extension points, :class:`Scorer` and
  :class:`Strategy`, and what passes between them and the trainer.
* :mod:`~tunebudget.selection.scorers`: loss, margin (MMS), entropy, random, assistant.
* :mod:`~tunebudget.selection.reducible`: reducible loss (RHO-LOSS) with its held-out model(s).
* :mod:`~tunebudget.selection.strategies`: full, rs2, topk, sample, infobatch, online.
* :mod:`~tunebudget.selection.phases`: :class:`Selector`, warm-up / shrink / final full data
  around any strategy.

The names live in :mod:`tunebudget.registry` (the only list of them).
"""

from tunebudget.registry import SCORERS, STRATEGIES
from tunebudget.selection.base import Batch, EpochPlan, Fitter, Scorer, ScoringContext, Strategy
from tunebudget.selection.phases import Selector
from tunebudget.selection.scorers import Assistant, entropy_scores, margin_scores


def build_scorer(ctx: ScoringContext) -> Scorer:
    """The scorer named by ``ctx.spec.scorer``."""
    return SCORERS.get(ctx.spec.scorer).load()(ctx)


__all__ = ["SCORERS", "STRATEGIES", "Assistant", "Batch", "EpochPlan", "Fitter", "Scorer", "ScoringContext",
           "Selector", "Strategy", "build_scorer", "entropy_scores", "margin_scores"]
