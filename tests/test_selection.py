"""Scores and epoch plans: MMS by brute force, kept shares, warm-up, InfoBatch unbiasedness."""

from __future__ import annotations

import itertools

import pytest
import torch

from tunebudget.policy import SelectionSpec
from tunebudget.selection import Selector, entropy_scores, importance, margin_scores

CPU = torch.device("cpu")


def selector(n=1000, seed=0, **spec) -> Selector:
    return Selector(SelectionSpec(**spec), n, CPU, torch.Generator().manual_seed(seed))


def test_mms_matches_brute_force():
    torch.manual_seed(0)
    weight = torch.randn(7, 5)
    logits = torch.randn(50, 7)
    got = margin_scores(logits, weight)
    for row, value in zip(logits, got):
        # brute force: the two largest logits by sorting, then the distance of their weight rows
        order = sorted(range(7), key=lambda c: -float(row[c]))
        a, b = order[0], order[1]
        expect = (row[a] - row[b]) / torch.linalg.vector_norm(weight[a] - weight[b])
        assert float(value) == pytest.approx(float(expect), rel=1e-5)
    assert torch.all(got >= 0)
    # the plain logit margin without a final linear layer
    plain = margin_scores(logits, None)
    top2 = logits.sort(dim=1, descending=True).values[:, :2]
    assert torch.allclose(plain, top2[:, 0] - top2[:, 1])


def test_importance_orders():
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.3, 0.3, 0.3]])
    losses = torch.tensor([0.1, 2.0, 1.0])
    w = torch.eye(3)
    assert importance("loss", logits, losses).argmax() == 1
    assert importance("margin", logits, losses, w)[[0, 1]].argmax() == 1  # the closer call
    ent = entropy_scores(logits)
    assert ent.argmax() == 2 and float(ent[2]) == pytest.approx(float(torch.log(torch.tensor(3.0))))


@pytest.mark.parametrize("strategy", ["topk", "rs2", "sample"])
def test_kept_share_after_warmup(strategy):
    n, ratio = 1000, 0.3
    sel = selector(n, strategy=strategy, ratio=ratio, warmup=0.2)
    sel.observe(torch.arange(n), torch.rand(n))
    warm = sel.plan(0.1)
    assert warm.phase == "warmup" and sorted(warm.order.tolist()) == list(range(n))
    plan = sel.plan(0.5)
    assert plan.phase == "select"
    assert plan.order.numel() == round(ratio * n)
    if strategy != "sample":  # topk and rs2 train distinct samples
        assert plan.order.unique().numel() == round(ratio * n)


def test_topk_keeps_the_most_important_and_reranks():
    n = 100
    sel = selector(n, strategy="topk", ratio=0.1, rerank_every=2)
    scores = torch.arange(n, dtype=torch.float)
    sel.observe(torch.arange(n), scores)
    first = set(sel.plan(0.5).order.tolist())
    assert first == set(range(90, 100))
    sel.observe(torch.arange(n), -scores)  # the ranking flips
    assert set(sel.plan(0.5).order.tolist()) == first  # re-rank only every 2 epochs
    assert set(sel.plan(0.5).order.tolist()) == set(range(10))


def test_unscored_samples_rank_first():
    sel = selector(10, strategy="topk", ratio=0.2)
    sel.observe(torch.arange(8), torch.ones(8))
    assert set(sel.plan(0.5).order.tolist()) == {8, 9}


def test_rs2_cycles_through_all_data_without_repeats():
    n, ratio = 100, 0.25
    sel = selector(n, strategy="rs2", ratio=ratio)
    seen = [sel.plan(0.5).order for _ in range(4)]
    assert torch.cat(seen).sort().values.tolist() == list(range(n))


def test_delayed_shrinking_ramps_from_one_to_ratio():
    sel = selector(strategy="topk", ratio=0.2, warmup=0.1, shrink_span=0.4)
    assert sel.share(0.05) == 1.0
    assert sel.share(0.3) == pytest.approx(1 - 0.5 * 0.8)
    assert sel.share(0.6) == pytest.approx(0.2)


def test_final_full_share_returns_to_all_data():
    sel = selector(n=50, strategy="infobatch", ratio=0.5, final_full=0.2)
    sel.observe(torch.arange(50), torch.rand(50))
    assert sel.phase(0.7) == "select"
    plan = sel.plan(0.85)
    assert plan.phase == "final" and plan.order.numel() == 50 and plan.weights is None


def test_infobatch_prunes_only_below_mean_and_reweights():
    n = 400
    sel = selector(n, strategy="infobatch", ratio=0.5)
    scores = torch.cat([torch.zeros(200), torch.ones(200)])
    sel.observe(torch.arange(n), scores)
    plan = sel.plan(0.5)
    kept = set(plan.order.tolist())
    assert set(range(200, 400)) <= kept  # above-mean samples are always kept
    assert 60 < len(kept & set(range(200))) < 140  # about half the low-loss ones
    assert torch.all(plan.weights[:200] == 2.0) and torch.all(plan.weights[200:] == 1.0)


@pytest.mark.parametrize("strategy", ["infobatch", "sample"])
def test_reweighting_keeps_the_expected_gradient_of_a_linear_model(strategy):
    """E[sum over the epoch of w_i * grad_i] / |epoch| equals the full-data mean gradient."""
    torch.manual_seed(0)
    n, d = 300, 4
    x, y = torch.randn(n, d), torch.randn(n)
    theta = torch.randn(d)
    grads = 2 * (x @ theta - y)[:, None] * x  # per-sample gradient of the squared error
    losses = (x @ theta - y) ** 2
    full = grads.mean(0)
    sel = selector(n, strategy=strategy, ratio=0.4, floor=0.2)
    sel.observe(torch.arange(n), losses)
    estimates = []
    for _ in range(3000):
        plan = sel.plan(0.5)
        w = plan.weights[plan.order]
        # the trainer averages weighted losses over the batch; over an epoch the expected total is
        # sum_i g_i (infobatch) or k * mean_i g_i (sample): normalise to a mean gradient
        denom = n if strategy == "infobatch" else plan.order.numel()
        estimates.append((w[:, None] * grads[plan.order]).sum(0) / denom)
    mean = torch.stack(estimates).mean(0)
    assert torch.allclose(mean, full, atol=0.03 * float(full.norm()) + 0.02)
    biased = grads[losses > losses.mean()].mean(0)  # what dropping without re-weighting would give
    assert not torch.allclose(biased, full, atol=0.03 * float(full.norm()) + 0.02)


def test_full_strategy_is_a_permutation_every_epoch():
    sel = selector(20)
    for p, _ in itertools.product((0.0, 0.5, 0.99), range(2)):
        plan = sel.plan(p)
        assert plan.phase == "full" and sorted(plan.order.tolist()) == list(range(20))


def test_assistant_learns_which_samples_have_above_mean_loss():
    from tunebudget.selection import Assistant

    torch.manual_seed(0)
    n, d = 2000, 6
    x = torch.randn(n, d)
    y = torch.randint(0, 3, (n,))
    hard = x[:, 0] > 0.5  # the loss depends on a feature the assistant can see
    losses = torch.where(hard, 2.0 + torch.rand(n), 0.2 * torch.rand(n))
    a = Assistant((d,), 3, CPU)
    for _ in range(5):
        for idx in torch.randperm(n).split(64):
            a.update(x[idx], y[idx], losses[idx])
    p = a.predict(x, y)
    assert p[hard].mean() > 0.8 and p[~hard].mean() < 0.2
    # its scores make top-k keep the hard samples
    sel = selector(n, strategy="topk", ratio=float(hard.float().mean()), scorer="assistant")
    sel.observe(torch.arange(n), p)
    kept = sel.plan(0.5).order
    assert hard[kept].float().mean() > 0.9
