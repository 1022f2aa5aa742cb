"""BudgetTrainer on real (small) data: budgets, warm-up, kept share, determinism, faults."""

from __future__ import annotations

import pytest
import torch

from tunebudget.policy import policy_from_dict
from tunebudget.trainer import BudgetTrainer

from conftest import tiny_policy


def train(**sections):
    return BudgetTrainer(policy_from_dict(tiny_policy(**sections)), device="cpu").run()


def test_full_data_run_learns_digits():
    result = train()
    assert result.status == "completed"
    assert result.test["accuracy"] > 0.85
    s = result.summary()
    # the deterministic budget: sample passes charged within one batch of the budget
    assert 6000 <= s["samples_seen"] < 6000 + 64
    assert s["distinct_samples"] == s["train_size"]
    # validations every quarter of the budget, each at the first step boundary after it
    assert [h["progress"] for h in result.history] == pytest.approx([0.25, 0.5, 0.75, 1.0], abs=64 / 6000)


def test_sample_budget_is_deterministic_for_a_seed():
    a, b = train(), train()
    assert a.test == b.test
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    c = train(seed=1)
    assert c.test != a.test


def test_warmup_trains_on_all_samples_then_the_kept_share():
    result = train(selection={"strategy": "topk", "ratio": 0.25, "warmup": 0.5, "scorer": "margin"},
                   budget={"eval_every": 0.5})
    n = result.stats["train_size"]
    at_half = result.history[0]
    assert at_half["progress"] == pytest.approx(0.5, abs=0.02)
    assert at_half["distinct_samples"] == n  # warm-up saw every sample
    assert result.history[-1]["kept_share"] == pytest.approx(0.25, abs=1 / n)


def test_kept_share_is_honoured_when_the_ranking_is_fixed():
    result = train(selection={"strategy": "topk", "ratio": 0.25, "rerank_every": 1000})
    n = result.stats["train_size"]
    assert abs(result.stats["distinct_samples"] - round(0.25 * n)) <= 64  # within one batch


def test_rescoring_is_charged_to_the_budget():
    plain = train(selection={"strategy": "topk", "ratio": 0.5, "warmup": 0.2})
    fresh = train(selection={"strategy": "topk", "ratio": 0.5, "warmup": 0.2, "rescore": True})
    assert fresh.stats["scoring_seconds"] > 0 and plain.stats["scoring_seconds"] == 0
    # the scoring passes cost budget: fewer training samples in the same sample budget
    assert fresh.stats["samples_seen"] < plain.stats["samples_seen"]
    assert fresh.stats["sample_passes_charged"] >= 6000


def test_wall_clock_deadline_overshoots_by_at_most_a_step():
    result = train(budget={"seconds": 1.5, "samples": None, "eval_every": 0.2})
    s = result.stats
    mean_step = s["train_seconds"] / s["steps"]
    assert s["train_seconds"] >= 1.5
    assert s["train_seconds"] - 1.5 <= 3 * mean_step + 0.05  # generous: one step, plus timer noise
    assert s["eval_seconds"] > 0  # validation is timed, and not charged


def test_regression_task_trains():
    result = BudgetTrainer(policy_from_dict(tiny_policy(
        task={"dataset": "synthetic_regression", "model": "mlp", "val_size": 500,
              "data_options": {"n_samples": 3000, "dim": 8}},
        training={"lr": 0.02, "batch_size": 64})), device="cpu").run()
    assert result.status == "completed"
    # targets are standardised: predicting the mean scores an MSE of about 1
    assert result.test["mse"] < 0.3
    assert result.history[-1]["val_mse"] < result.history[0]["val_mse"]


def test_nan_loss_ends_the_run_as_diverged():
    result = BudgetTrainer(policy_from_dict(tiny_policy(
        task={"dataset": "synthetic_regression", "model": "mlp", "val_size": 500},
        training={"lr": 10.0, "momentum": 0.99, "schedule": "constant"})), device="cpu").run()
    assert result.status == "diverged"
    assert result.stats["samples_seen"] < 6000


def test_on_eval_can_stop_the_run():
    seen = []
    policy = policy_from_dict(tiny_policy())
    result = BudgetTrainer(policy, device="cpu", on_eval=lambda m: seen.append(m) or len(seen) >= 2).run()
    assert result.status == "stopped" and len(seen) == 2
    assert result.history[-1]["final"] and result.stats["samples_seen"] < 6000


def test_augmentation_keeps_shape_and_content():
    from tunebudget.data import augment_batch

    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float).view(2, 1, 6, 6)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=1)
    assert out.shape == x.shape
    # every output value is either padding (0) or a pixel of the same image
    for i in range(2):
        assert set(out[i].flatten().tolist()) <= set(x[i].flatten().tolist()) | {0.0}


@pytest.mark.parametrize("strategy", ["topk", "sample", "infobatch"])
def test_assistant_scorer_trains_and_its_cost_is_charged(strategy):
    result = train(selection={"strategy": strategy, "scorer": "assistant", "ratio": 0.4, "warmup": 0.2},
                   budget={"seconds": 1.5, "samples": None})
    assert result.status == "completed" and result.test["accuracy"] > 0.8
    assert result.stats["scoring_seconds"] > 0  # assistant scoring runs inside the budget


class _NoCompilingOnTheClock(BudgetTrainer):
    """Raises if torch.compile has to build a graph while the budget clock runs."""

    def _timed_stance(self):
        return torch.compiler.set_stance("fail_on_recompile")


@pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"), reason="needs torch >= 2.6")
def test_compiled_run_builds_every_graph_before_the_clock():
    # A selected subset of 37% leaves short last batches of changing sizes, validation and the
    # test split end in short chunks, and scoring passes run in eval mode: each would recompile
    # inside the clock unless warm-up built dynamic-batch graphs for training and evaluation.
    selection = {"strategy": "topk", "ratio": 0.37, "scorer": "loss", "rerank_every": 1, "warmup": 0.2,
                 "rescore": True}
    policy = policy_from_dict(tiny_policy(training={"compile": True}, selection=selection,
                                          budget={"samples": 4000, "eval_every": 0.2}))
    result = _NoCompilingOnTheClock(policy, device="cpu").run()
    assert result.status == "completed" and result.stats["compile_seconds"] > 0
    assert result.stats["epochs"] > 3 and result.test["accuracy"] > 0.5
