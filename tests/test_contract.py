"""Every registered scorer and strategy keeps the same contract (parametrized over the registries,
so a new entry is tested the moment it is registered)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tunebudget.policy import SelectionSpec, policy_from_dict
from tunebudget.registry import SCORERS, STRATEGIES
from tunebudget.selection import Batch, Scorer, Selector, Strategy
from tunebudget.trainer import BudgetTrainer

from conftest import tiny_policy

CPU = torch.device("cpu")
SCORING = [e.name for e in STRATEGIES if "scorer" in e.reads]
NON_DEFAULT = {"scorer": "random", "ratio": 0.5, "warmup": 0.1, "rerank_every": 3, "rescore": True,
               "final_full": 0.1, "shrink_span": 0.2, "floor": 0.3, "il_budget": 0.3, "il_holdout": 0.2}


def test_registries_cover_every_selection_field_and_load_their_classes():
    assert set(NON_DEFAULT) == set(SelectionSpec.model_fields) - {"strategy"}
    for entry in STRATEGIES:
        assert issubclass(entry.load(), Strategy), entry.name
        assert entry.reads <= set(SelectionSpec.model_fields)
    for entry in SCORERS:
        assert issubclass(entry.load(), Scorer), entry.name
        assert entry.reads <= set(SelectionSpec.model_fields)


def _spec(strategy: str, **extra) -> SelectionSpec:
    base = {} if strategy == "full" else {"ratio": 0.3}
    return SelectionSpec(strategy=strategy, **{**base, **extra})


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_a_field_the_strategy_does_not_read_is_rejected(name):
    reads = STRATEGIES.get(name).reads  # with the loss scorer, which reads nothing more
    for field, value in NON_DEFAULT.items():
        if field in reads:
            continue
        with pytest.raises(ValidationError, match=f"selection.{field}(: .* has no effect| is .* but)"):
            _spec(name, **{field: value})
    if "scorer" in reads:  # a scorer's own fields are read with that scorer only
        for field in SCORERS.get("reducible").reads:
            _spec(name, scorer="reducible", **{field: NON_DEFAULT[field]})


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_plans_valid_epochs(name):
    n = 500
    sel = Selector(_spec(name, **({"warmup": 0.2} if name != "full" else {})), n, CPU,
                   torch.Generator().manual_seed(0))
    sel.observe(torch.arange(n), torch.rand(n))
    if name != "full":
        warm = sel.plan(0.1)
        assert warm.phase == "warmup" and sorted(warm.order.tolist()) == list(range(n))
    for _ in range(4):
        plan = sel.plan(0.5)
        order = plan.order
        assert order.dtype == torch.long and order.dim() == 1 and order.numel() > 0
        assert int(order.min()) >= 0 and int(order.max()) < n
        assert 0 < plan.share <= 1
        if plan.weights is not None:
            assert plan.weights.shape == (n,) and torch.all(plan.weights > 0)
        if plan.online:
            cand = order[:40]
            chosen = sel.choose(cand, torch.rand(40), 12)
            assert chosen.numel() == 12 and set(chosen.tolist()) <= set(cand.tolist())
            assert chosen.unique().numel() == 12
        elif name in ("topk", "rs2", "sample"):
            assert order.numel() == round(plan.share * n)
    assert sel.uses_scores == ("scorer" in STRATEGIES.get(name).reads)


def _train(selection: dict, **sections):
    policy = policy_from_dict(tiny_policy(selection=selection, **sections))
    trainer = BudgetTrainer(policy, device="cpu")
    return trainer, trainer.run()


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy_trains_within_its_sample_budget(strategy):
    selection = {"strategy": strategy} if strategy == "full" else {"strategy": strategy, "ratio": 0.5,
                                                                    "warmup": 0.1, "final_full": 0.1}
    trainer, result = _train(selection)
    s = result.stats
    assert result.status == "completed" and result.test["accuracy"] > 0.7
    # every pass is charged and the run stops within one step of the budget
    assert 6000 <= s["sample_passes_charged"] < 6000 + 64 * 4
    assert (trainer.scorer is None) == (strategy in ("full", "rs2"))  # controls keep no scores


@pytest.mark.parametrize("strategy", SCORING)
@pytest.mark.parametrize("scorer", SCORERS.names())
def test_every_scorer_works_with_every_scoring_strategy(strategy, scorer):
    trainer, result = _train({"strategy": strategy, "scorer": scorer, "ratio": 0.5, "warmup": 0.2})
    assert result.status == "completed" and result.test["accuracy"] > 0.6, (strategy, scorer)
    assert isinstance(trainer.scorer, SCORERS.get(scorer).load())
    assert 6000 <= result.stats["sample_passes_charged"] < 6000 + 64 * 4
    # a scorer's scores: one finite float per sample of the batch
    train = trainer.train
    idx = torch.arange(50)
    with torch.no_grad():
        out = trainer.model(train.x[idx])
        losses = torch.nn.functional.cross_entropy(out, train.y[idx], reduction="none")
    scores = trainer.scorer.score(Batch(idx, train.x[idx], train.y[idx], out, losses))
    assert scores.shape == (50,) and torch.isfinite(scores).all()
