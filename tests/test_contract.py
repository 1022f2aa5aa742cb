"""Every registered scorer, strategy, data set and model keeps the same contract (parametrized over the
registries, so a new entry is tested the moment it is registered)."""

from __future__ import annotations

import inspect

import pytest
import torch
from pydantic import ValidationError

from tunebudget.data import load_data
from tunebudget.errors import TuneBudgetError
from tunebudget.models import build_model, final_linear
from tunebudget.policy import SelectionSpec, TaskSpec, policy_from_dict
from tunebudget.registry import DATASETS, MODELS, SCORERS, STRATEGIES
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


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_data_set_loads_or_says_in_one_line_where_its_files_go(name, tmp_path, monkeypatch):
    """With no files given (task.root unset, TUNEBUDGET_DATA an empty directory) a registered data set
    either loads as its entry says (kind, classes) or is one line naming where its files go."""
    entry = DATASETS.get(name)
    assert (entry.val_layout is None) == (entry.val_reader is None), "a val_root layout needs its reader"
    assert callable(entry.load()) and (entry.val_reader is None or callable(entry.load_val()))
    options = {"data_options": {"n_samples": 400}} if entry.takes_options else {}
    task = TaskSpec(dataset=name, model="mlp", val_size=0.1, **options)
    assert task.kind == entry.kind and not task.user_data
    if not entry.takes_options:
        with pytest.raises(TuneBudgetError, match=f"^task.data_options: {name} takes no options"):
            load_data(task.model_copy(update={"data_options": {"n_samples": 400}}))
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("TUNEBUDGET_DATA", str(tmp_path / "empty"))
    try:
        bundle = load_data(task)
    except TuneBudgetError as exc:
        assert str(exc).startswith(("task.root: ", "TUNEBUDGET_DATA: ")) and "\n" not in str(exc), str(exc)
        return
    assert bundle.kind == entry.kind and bundle.name == name and len(bundle.train) > len(bundle.val) > 0
    if entry.kind == "classification":
        assert bundle.num_outputs >= 2 and bundle.train.y.dtype == torch.long
        assert int(bundle.train.y.max()) < bundle.num_outputs
    else:
        assert bundle.num_outputs == 1 and bundle.train.y.is_floating_point()


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_for_images_and_checks_its_widths(name):
    entry = MODELS.get(name)
    assert set(entry.widths) <= set(inspect.signature(entry.load()).parameters), "widths name real options"
    model = build_model(TaskSpec(model=name), (1, 28, 28), 10)
    assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert final_linear(model, 10) is not None  # the margin scorer's weight rows
    for option in entry.widths:
        with pytest.raises(TuneBudgetError, match=f"^task.model_options.{option}: -1; give"):
            build_model(TaskSpec(model=name, model_options={option: -1}), (1, 28, 28), 10)


def test_the_names_a_policy_accepts_are_the_registered_ones():
    for registry, field in ((DATASETS, "dataset"), (MODELS, "model")):
        with pytest.raises(ValidationError, match=f"task.{field}: unknown .* use one of "
                                                   f"{', '.join(registry.names())} or 'package.module:factory'"):
            TaskSpec(**{field: "no_such_name"})
        for name in registry.names():
            assert getattr(TaskSpec(**{field: name}), field) == name
