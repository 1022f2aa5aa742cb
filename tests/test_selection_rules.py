"""The selection layer's side of a run, driven without a BudgetTrainer: the rules it owns
(rescoring, online choice, what a step teaches the scorer) and the one helper-model loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_policy
from tunebudget.budget import BudgetClock
from tunebudget.data import load_data
from tunebudget.policy import policy_from_dict
from tunebudget.selection import HelperModels, Learner, Passes, SampleSelection

CPU = torch.device("cpu")


def _parts(selection: dict):
    """A policy, its data, a clock, and the passes of a plain linear model (no trainer)."""
    policy = policy_from_dict(tiny_policy(selection=selection))
    data = load_data(policy.task, policy.seed, CPU)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(data.train.x[0].numel(), data.num_outputs))

    def forward(x, m=None):
        return (model if m is None else m)(x)

    def chunks(split, m=None):
        with torch.no_grad():
            for idx in torch.arange(len(split)).split(100):
                out = forward(split.x[idx], m)
                yield idx, out, F.cross_entropy(out, split.y[idx], reduction="none")

    def candidates(x, y):
        out = forward(x)
        return out, F.cross_entropy(out, y, reduction="none")

    passes = Passes(forward=forward, loss=lambda out, y: F.cross_entropy(out, y, reduction="none"), chunks=chunks,
                    candidates=candidates, new_model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(
                        data.train.x[0].numel(), data.num_outputs)),
                    new_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    clock = BudgetClock(policy.budget)
    gen = torch.Generator().manual_seed(0)
    return policy, data, clock, passes, gen, model


def test_a_due_rescore_scores_every_sample_and_charges_the_pass():
    policy, data, clock, passes, gen, model = _parts(
        {"strategy": "topk", "scorer": "loss", "ratio": 0.5, "warmup": 0.2, "rescore": True})
    sel = SampleSelection(policy, data, gen, clock, passes, head=lambda: None, chunk=100)
    n = len(sel.train)
    clock.start()
    assert sel.plan(0.1).phase == "warmup" and clock.samples_used == 0  # warm-up reads no scores
    plan = sel.plan(0.5)
    assert clock.samples_used == pytest.approx(n / 3)  # one forward-only pass at scoring_cost
    assert torch.isfinite(sel.selector.scores).all()
    # the plan keeps the half of the samples with the highest loss under the model
    with torch.no_grad():
        losses = F.cross_entropy(model(data.train.x), data.train.y, reduction="none")
    assert set(plan.order.tolist()) == set(losses.topk(round(n / 2)).indices.tolist())


def test_online_choice_keeps_the_highest_scored_candidates_and_a_step_teaches_the_scorer():
    policy, data, clock, passes, gen, model = _parts({"strategy": "online", "scorer": "loss", "ratio": 0.25})
    sel = SampleSelection(policy, data, gen, clock, passes, head=lambda: None, chunk=100)
    clock.start()
    cand = torch.arange(256)
    chosen = sel.choose(cand, 0.25)
    with torch.no_grad():
        losses = F.cross_entropy(model(data.train.x[cand]), data.train.y[cand], reduction="none")
    assert set(chosen.tolist()) == set(losses.topk(64).indices.tolist())  # batch_size 64 of 256
    assert sel.candidates == 256 and clock.samples_used == pytest.approx(256 / 3)
    idx = chosen[:8]
    out = model(data.train.x[idx])
    sel.learn(idx, data.train.x[idx], data.train.y[idx], out, F.cross_entropy(out, data.train.y[idx], reduction="none"))
    assert torch.allclose(sel.selector.scores[idx], F.cross_entropy(out, data.train.y[idx], reduction="none"))


def test_no_scores_means_no_scorer_and_no_holdout():
    policy, data, clock, passes, gen, _ = _parts({"strategy": "rs2", "ratio": 0.5})
    sel = SampleSelection(policy, data, gen, clock, passes, head=lambda: None, chunk=100)
    assert sel.scorer is None and sel.holdout is None and sel.train is data.train


def test_reducible_holdout_is_carved_once_and_the_main_model_never_sees_it():
    policy, data, clock, passes, gen, _ = _parts({"strategy": "online", "scorer": "reducible", "ratio": 0.5,
                                                  "il_holdout": 0.2})
    sel = SampleSelection(policy, data, gen, clock, passes, head=lambda: None, chunk=100)
    n = len(data.train)
    assert len(sel.holdout) == round(0.2 * n) and len(sel.train) + len(sel.holdout) == n
    assert len(sel.selector.scores) == len(sel.train)


def test_helper_models_train_on_their_share_of_a_sample_budget_and_charge_it():
    policy, data, clock, passes, gen, _ = _parts({"strategy": "full"})
    clock.start()
    fitter = HelperModels(passes, policy.budget, lr=0.1, batch_size=64, clock=clock, gen=gen)
    with torch.no_grad():
        before = float(F.cross_entropy(passes.new_model()(data.val.x), data.val.y))
    model = fitter.fit(data.train, 0.25)
    assert 1500 <= clock.samples_used < 1500 + 64  # its share, stopped within one batch
    with torch.no_grad():
        assert float(F.cross_entropy(model(data.val.x), data.val.y)) < before * 0.5  # it learnt
    losses = fitter.losses(model, data.val)
    assert losses.shape == (len(data.val),)
    assert clock.samples_used >= 1500 + len(data.val) / 3  # the scoring pass is charged too


def test_a_learner_step_is_one_optimizer_step_even_under_no_grad():
    lin = nn.Linear(3, 1)
    learner = Learner(lambda x: lin(x).squeeze(1), torch.optim.SGD(lin.parameters(), lr=0.5), F.mse_loss)
    x, y = torch.randn(32, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(32)
    with torch.no_grad():
        first = float(F.mse_loss(lin(x).squeeze(1), y))
        for _ in range(20):
            learner.step(x, y)
        assert float(F.mse_loss(lin(x).squeeze(1), y)) < first / 10
