"""Scores and epoch plans: MMS by brute force, kept shares, warm-up, InfoBatch unbiasedness."""

from __future__ import annotations

import itertools

import pytest
import torch

from tunebudget.policy import SelectionSpec
from tunebudget.selection import Batch, ScoringContext, Selector, build_scorer, entropy_scores, margin_scores

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


def scorer(name, head=None, n=3):
    from tunebudget.data import Split

    spec = SelectionSpec(strategy="topk", ratio=0.5, scorer=name)
    train = Split(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long))
    ctx = ScoringContext(spec, train, 3, (2,), CPU, torch.Generator().manual_seed(0), head=lambda: head)
    return build_scorer(ctx)


def test_importance_orders():
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.3, 0.3, 0.3]])
    losses = torch.tensor([0.1, 2.0, 1.0])
    batch = Batch(torch.arange(3), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), logits, losses)
    assert scorer("loss").score(batch).argmax() == 1
    assert scorer("margin", torch.eye(3)).score(batch)[[0, 1]].argmax() == 1  # the closer call
    assert scorer("entropy").score(batch).argmax() == 2
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
    sel = selector(n, strategy=strategy, ratio=0.4, **({"floor": 0.2} if strategy == "sample" else {}))
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


# ---- reducible loss and online selection -------------------------------------------------------------


def _noisy_digits_run(selection: dict, **task):
    from tunebudget.trainer import BudgetTrainer

    from conftest import tiny_policy
    from tunebudget.policy import policy_from_dict

    policy = policy_from_dict(tiny_policy(task={"label_noise": 0.2, **task}, selection=selection,
                                          budget={"samples": 20000}))
    trainer = BudgetTrainer(policy, device="cpu")
    return trainer, trainer.run()


def _scores_of_every_sample(trainer) -> torch.Tensor:
    train = trainer.train
    idx = torch.arange(len(train))
    with torch.no_grad():
        out = trainer.model(train.x)
        losses = torch.nn.functional.cross_entropy(out, train.y, reduction="none")
    return trainer.scorer.score(Batch(idx, train.x, train.y, out, losses)), losses


@pytest.mark.parametrize("il_holdout", [0.0, 0.2])
def test_reducible_score_keeps_mislabelled_samples_out_where_the_loss_lets_them_in(il_holdout):
    """20% of the digits' training labels are wrong. Online selection by the plain loss trains mostly
    on them (the highest losses are the wrong labels); by the reducible loss, with irreducible-loss
    models that had 30% of the budget, it trains on fewer of them than uniform sampling would."""
    reducible = {"strategy": "online", "scorer": "reducible", "ratio": 0.5, "il_budget": 0.3, "il_holdout": il_holdout}
    trainer, result = _noisy_digits_run(reducible)
    assert result.status == "completed" and result.stats["il_seconds"] > 0
    assert result.stats["holdout_size"] == round(il_holdout * 1238)
    noisy = trainer.train.noisy
    assert noisy is not None and 0.15 < float(noisy.float().mean()) < 0.25
    by_reducible = result.stats["mislabelled_share"]
    _, by_loss = _noisy_digits_run({"strategy": "online", "scorer": "loss", "ratio": 0.5})
    assert by_loss.stats["mislabelled_share"] > 0.3
    assert by_reducible < 0.15, by_reducible
    # at the end, the reducible score ranks the wrong labels lower than the loss does
    scores, losses = _scores_of_every_sample(trainer)
    top = int(0.3 * len(scores))
    assert noisy[scores.topk(top).indices].float().mean() < noisy[losses.topk(top).indices].float().mean() / 2


class _RecordingTrainer:
    """A real BudgetTrainer whose training steps record how many samples they trained on."""

    @staticmethod
    def make(policy):
        from tunebudget.trainer import BudgetTrainer

        class Recording(BudgetTrainer):
            sizes: list = []

            def _step(self, idx, weights, smoothing, stats):
                self.sizes.append((idx.numel(), self.selector.phase(self.clock.progress())))
                return super()._step(idx, weights, smoothing, stats)

        trainer = Recording(policy, device="cpu")
        trainer.sizes = []
        return trainer


@pytest.mark.parametrize("scorer", ["loss", "reducible", "assistant"])
def test_online_trains_on_batch_size_of_each_steps_candidates_and_charges_them(scorer):
    from conftest import tiny_policy
    from tunebudget.policy import policy_from_dict

    policy = policy_from_dict(tiny_policy(selection={"strategy": "online", "scorer": scorer, "ratio": 0.25},
                                          training={"batch_size": 32}))
    trainer = _RecordingTrainer.make(policy)
    result = trainer.run()
    s = result.stats
    n = len(trainer.train)
    candidates_per_step = 32 * 4
    full_steps = n // candidates_per_step  # the epoch's last, partial candidate chunk keeps a quarter of it
    sizes = [size for size, phase in trainer.sizes]
    assert all(phase == "select" for _, phase in trainer.sizes)
    assert sizes.count(32) >= len(sizes) * full_steps / (full_steps + 1) - 1
    assert all(size == 32 or size == -(-(n % candidates_per_step) // 4) for size in sizes)
    assert s["samples_seen"] == sum(sizes)
    # the candidate pass is charged at scoring_cost when it runs the main model (the assistant needs none)
    forward = scorer != "assistant"
    assert s["candidates_scored"] >= 4 * s["samples_seen"] - candidates_per_step
    il = s["sample_passes_charged"] - s["samples_seen"] - forward * s["candidates_scored"] / 3
    if scorer == "reducible":  # the IL models' training (il_budget of the budget) and their one pass
        share = policy.selection.il_budget
        assert share * 6000 <= il <= share * 6000 + n / 3 + 2 * 32 + 1e-6
    else:
        assert il == pytest.approx(0.0, abs=1e-6)
    assert result.test["accuracy"] > 0.6
