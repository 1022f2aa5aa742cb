"""Which samples get a gradient: scorers, strategies and the phases around them.

* :mod:`~tunebudget.selection.base`: the two extension points, :class:`Scorer` and
  :class:`Strategy`, and what passes between them and the trainer.
* :mod:`~tunebudget.selection.scorers`: loss, margin (MMS), entropy, random, assistant.
* :mod:`~tunebudget.selection.reducible`: reducible loss (RHO-LOSS) with its held-out model(s).
* :mod:`~tunebudget.selection.strategies`: full, rs2, topk, sample, infobatch, online.
* :mod:`~tunebudget.selection.phases`: :class:`Selector`, warm-up / shrink / final full data
  around any strategy.
* :mod:`~tunebudget.selection.rules`: :class:`SampleSelection`, selection's side of one training
  run (the holdout carve, rescoring, online choice): what the trainer asks.
* :mod:`~tunebudget.selection.fit`: the one training loop of helper models (irreducible-loss
  models, the assistant).

The names live in :mod:`tunebudget.registry` (the only list of them).
"""

from tunebudget.registry import SCORERS, STRATEGIES
from tunebudget.selection.base import Batch, EpochPlan, Fitter, Passes, Scorer, ScoringContext, Strategy
from tunebudget.selection.fit import HelperModels, Learner
from tunebudget.selection.phases import Selector
from tunebudget.selection.rules import SampleSelection, build_scorer, carve
from tunebudget.selection.scorers import Assistant, entropy_scores, margin_scores

__all__ = ["SCORERS", "STRATEGIES", "Assistant", "Batch", "EpochPlan", "Fitter", "HelperModels", "Learner", "Passes",
           "SampleSelection", "Scorer", "ScoringContext", "Selector", "Strategy", "build_scorer", "carve",
           "entropy_scores", "margin_scores"]
