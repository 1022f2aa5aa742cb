"""Which samples get a gradient: per-sample importance scores and epoch plans.

**Scores** (higher = more important), computed from logits the trainer already has:

* ``loss``: the per-sample training loss (reused from the training forward pass: no extra pass).
* ``margin``: the minimal margin score of Weinstein et al. (https://arxiv.org/abs/1911.06996),
  ``MMS = (z1 - z2) / ||w1 - w2||`` for the top-two logits and the final linear layer's weight
  rows of those two classes; small margins are important, so the score is ``-MMS``. Without a
  final linear layer it falls back to the plain logit margin ``-(z1 - z2)``.
* ``entropy``: the entropy of the softmax.
* ``random``: uniform noise (the control).
* ``assistant``: the predicted probability, from a small model trained alongside the main one,
  that the sample's loss is above the running mean (see :class:`Assistant`).

**Strategies** turn scores into the index tensor of one epoch (and per-sample loss weights):

* ``full``: every sample, reshuffled each epoch.
* ``topk``: the ``ratio`` most important samples, re-ranked every ``rerank_every`` epochs
  (Khan et al. 2024, "Accelerating Deep Learning with Fixed Time Budget").
* ``sample``: ``ratio``·N draws with replacement in proportion to importance (mixed with a
  uniform ``floor``), each weighted ``1 / (N p_i)`` so the expected gradient is the full-data one.
* ``infobatch``: each epoch, prune at random a share ``1 - ratio`` of the samples whose score is
  below the mean and weight the kept ones ``1 / ratio`` (InfoBatch, ICLR 2024,
  https://arxiv.org/abs/2303.04947); full data in the last ``final_full`` share of the budget.
* ``rs2``: a fresh uniform subset of ``ratio``·N each epoch, without replacement across epochs
  (RS2, the control every method must beat).

Every strategy trains on all data in the first ``warmup`` share and the last ``final_full``
share of the budget; ``shrink_span`` ramps the kept share from 1 down to ``ratio`` after warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from tunebudget.policy import SelectionSpec

# ---- scores --------------------------------------------------------------------------------


def margin_scores(logits: torch.Tensor, head_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """The minimal margin score ``(z1 - z2) / ||w1 - w2||`` of each row of ``logits``.

    Args:
        logits: ``(batch, classes)``, at least two classes.
        head_weight: the final linear layer's weight ``(classes, features)``, or None for the
            plain logit margin ``z1 - z2``.
    """
    top, idx = logits.float().topk(2, dim=1)
    gap = top[:, 0] - top[:, 1]
    if head_weight is None:
        return gap
    w = head_weight.float()
    norm = (w[idx[:, 0]] - w[idx[:, 1]]).norm(dim=1).clamp_min(1e-12)
    return gap / norm


def entropy_scores(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def importance(
    scorer: str,
    logits: torch.Tensor,
    losses: torch.Tensor,
    head_weight: Optional[torch.Tensor] = None,
    gen: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Per-sample importance (higher = more important) from one forward pass, without grad."""
    if scorer == "loss":
        return losses.float()
    if scorer == "margin":
        return -margin_scores(logits, head_weight)
    if scorer == "entropy":
        return entropy_scores(logits)
    if scorer == "random":
        return torch.rand(losses.shape[0], device=losses.device, generator=gen)
    raise ValueError(f"selection.scorer: unknown scorer {scorer!r}")


# ---- epoch plans -----------------------------------------------------------------------------


@dataclass
class EpochPlan:
    """What one epoch trains on."""

    order: torch.Tensor  # sample indices in training order
    weights: Optional[torch.Tensor]  # per-sample loss weights indexed by sample id, or None (all 1)
    phase: str  # "warmup" | "select" | "final"
    share: float  # target kept share of the data set


class Selector:
    """Keeps the importance scores of all training samples and plans each epoch.

    Args:
        spec: the policy's selection section.
        n: number of training samples.
        device: where the scores and index tensors live (the training device).
        gen: random generator on ``device`` (seeded by the trainer).
    """

    def __init__(self, spec: SelectionSpec, n: int, device: torch.device, gen: torch.Generator) -> None:
        self.spec = spec
        self.n = n
        self.device = device
        self.gen = gen
        #: Importance of each sample; NaN until the sample has been scored (then it ranks first).
        self.scores = torch.full((n,), float("nan"), device=device)
        self._kept: Optional[torch.Tensor] = None
        self._weights: Optional[torch.Tensor] = None
        self._probs: Optional[torch.Tensor] = None
        self._kept_k = -1
        self._epochs_since_rank = 0
        self._rs2_perm = torch.empty(0, dtype=torch.long, device=device)

    # ---- phases ----
    def phase(self, p: float) -> str:
        s = self.spec
        if not s.selective or p < s.warmup:
            return "warmup" if s.selective else "full"
        if s.final_full > 0 and p >= 1.0 - s.final_full:
            return "final"
        return "select"

    def share(self, p: float) -> float:
        """Target kept share at progress ``p`` (1 outside the selection phase)."""
        s = self.spec
        if self.phase(p) != "select":
            return 1.0
        if s.shrink_span > 0:
            t = min(1.0, (p - s.warmup) / s.shrink_span)
            return 1.0 - t * (1.0 - s.ratio)
        return s.ratio

    # ---- scores ----
    def observe(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        """Record fresh scores of the samples ``idx`` (from a training or scoring pass)."""
        self.scores[idx] = scores.to(self.scores.dtype)

    def needs_rescore(self, p: float) -> bool:
        """Whether the next epoch re-ranks (so a fresh scoring pass, if asked for, is due)."""
        return self.phase(p) == "select" and self.spec.strategy in ("topk", "sample") and self._rank_due(p)

    def _rank_due(self, p: float) -> bool:
        k = self._k(p)
        return self._kept is None or k != self._kept_k or self._epochs_since_rank >= self.spec.rerank_every

    def _k(self, p: float) -> int:
        return max(1, min(self.n, int(round(self.share(p) * self.n))))

    def _ranked_scores(self) -> torch.Tensor:
        s = self.scores
        return torch.where(torch.isnan(s), torch.full_like(s, float("inf")), s)

    # ---- plans ----
    def plan(self, p: float) -> EpochPlan:
        """The index tensor (and loss weights) of the next epoch at progress ``p``."""
        phase = self.phase(p)
        if phase != "select":
            return EpochPlan(self._perm(self.n), None, phase, 1.0)
        strategy = self.spec.strategy
        k = self._k(p)
        if strategy == "rs2":
            return EpochPlan(self._rs2(k), None, phase, k / self.n)
        if strategy == "infobatch":
            return self._infobatch(p)
        if self._rank_due(p):
            self._rank(k)
        self._epochs_since_rank += 1
        assert self._kept is not None
        if strategy == "topk":
            order = self._kept[self._perm(self._kept.numel())]
        else:  # sample: fresh draws each epoch from the distribution fixed at the last ranking
            assert self._probs is not None
            order = self._kept[torch.multinomial(self._probs, k, replacement=True, generator=self.gen)]
        return EpochPlan(order, self._weights, phase, k / self.n)

    def _perm(self, m: int) -> torch.Tensor:
        return torch.randperm(m, device=self.device, generator=self.gen)

    def _rank(self, k: int) -> None:
        ranked = self._ranked_scores()
        self._kept_k = k
        self._epochs_since_rank = 0
        if self.spec.strategy == "topk":
            self._kept = ranked.topk(k).indices
            self._weights = None
            return
        # sample: p_i = (1 - floor) * s_i / sum(s) + floor / N, s shifted to be >= 0
        finite = torch.isfinite(ranked)
        base = ranked.masked_fill(~finite, 0.0)
        top = base.max() if finite.any() else torch.tensor(1.0, device=self.device)
        lo = base.min()
        s = torch.where(finite, base - lo, top - lo).clamp_min(0)
        total = s.sum()
        floor = self.spec.floor if total > 0 else 1.0
        probs = (1 - floor) * s / total.clamp_min(1e-12) + floor / self.n
        self._probs = probs / probs.sum()
        self._kept = torch.arange(self.n, device=self.device)
        self._weights = 1.0 / (self.n * self._probs)

    def _infobatch(self, p: float) -> EpochPlan:
        keep_prob = self.share(p)
        s = self.scores
        known = ~torch.isnan(s)
        mean = s[known].mean() if known.any() else torch.tensor(0.0, device=self.device)
        well_learned = known & (s < mean)
        draw = torch.rand(self.n, device=self.device, generator=self.gen)
        keep = ~well_learned | (draw < keep_prob)
        weights = torch.ones(self.n, device=self.device)
        weights[well_learned] = 1.0 / keep_prob
        kept = keep.nonzero().squeeze(1)
        order = kept[self._perm(kept.numel())]
        return EpochPlan(order, weights, "select", kept.numel() / self.n)

    def _rs2(self, k: int) -> torch.Tensor:
        if self._rs2_perm.numel() < k:
            fresh = self._perm(self.n)
            # top up from a new permutation, avoiding repeats within this epoch
            rest = fresh[~torch.isin(fresh, self._rs2_perm)]
            self._rs2_perm = torch.cat([self._rs2_perm, rest, fresh[torch.isin(fresh, self._rs2_perm)]])
        out, self._rs2_perm = self._rs2_perm[:k], self._rs2_perm[k:]
        return out


# ---- the learned assistant (AutoAssist) ----------------------------------------------------------


class Assistant:
    """A small model that predicts which samples are worth a gradient (AutoAssist-style).

    Zhang et al., "AutoAssist: A Framework to Accelerate Training of Deep Neural Networks",
    NeurIPS 2019 (https://arxiv.org/abs/1905.03381). A logistic regression on cheap features
    (the input average-pooled to at most 8x8 per channel, plus the one-hot label) is trained
    alongside the main model, one SGD step per training batch, to predict whether a sample's
    loss is above the running mean loss. Its predicted probability is the sample's importance:
    at each re-rank all samples are scored by the assistant instead of by a forward pass of the
    main model. Its training and scoring run inside the budget (wall-clock time; a sample budget
    does not charge them). The selection ``floor`` keeps every sample's chance above zero.

    Args:
        input_shape: per-sample input shape.
        num_classes: classes (1 for regression: the target itself is a feature).
        device: where it lives.
        lr: its SGD learning rate.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, device: torch.device, lr: float = 0.1) -> None:
        self.image = len(input_shape) == 3
        self.num_classes = num_classes
        feat = (input_shape[0] * min(8, input_shape[1]) * min(8, input_shape[2])) if self.image else input_shape[0]
        self.linear = torch.nn.Linear(feat + num_classes, 1).to(device)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)
        self.opt = torch.optim.SGD(self.linear.parameters(), lr=lr, momentum=0.9)
        self.mean_loss: Optional[torch.Tensor] = None

    def features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.image:
            h, w = min(8, x.shape[2]), min(8, x.shape[3])
            x = F.adaptive_avg_pool2d(x.float(), (h, w))
        x = x.float().flatten(1)
        label = F.one_hot(y.long(), self.num_classes).float() if self.num_classes > 1 else y.float().view(-1, 1)
        return torch.cat([x, label], dim=1)

    def update(self, x: torch.Tensor, y: torch.Tensor, losses: torch.Tensor) -> None:
        """One step towards predicting ``loss > running mean`` for this batch."""
        losses = losses.detach().float()
        batch_mean = losses.mean()
        self.mean_loss = batch_mean if self.mean_loss is None else 0.9 * self.mean_loss + 0.1 * batch_mean
        target = (losses > self.mean_loss).float()
        with torch.enable_grad():
            logits = self.linear(self.features(x, y)).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits, target)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Predicted probability that each sample's loss is above the running mean."""
        out = [torch.sigmoid(self.linear(self.features(xb, yb)).squeeze(1))
               for xb, yb in zip(x.split(chunk), y.split(chunk))]
        return torch.cat(out)
