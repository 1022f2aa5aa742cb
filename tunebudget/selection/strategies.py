"""Strategies: from scores to the samples of an epoch (or of a step).

* ``full``: every sample, reshuffled each epoch.
* ``rs2``: a fresh uniform subset of ``ratio``·N each epoch, without replacement across epochs
  (RS2, the control every method must beat). It never reads scores, so the trainer keeps none.
* ``topk``: the ``ratio`` most important samples, re-ranked every ``rerank_every`` epochs
  (Khan et al. 2024, "Accelerating Deep Learning with Fixed Time Budget").
* ``sample``: ``ratio``·N draws with replacement in proportion to importance (mixed with a
  uniform ``floor``), each weighted ``1 / (N p_i)`` so the expected gradient is the full-data one.
* ``infobatch``: each epoch, prune at random a share ``1 - ratio`` of the samples whose score is
  below the mean and weight the kept ones ``1 / ratio`` (InfoBatch, ICLR 2024,
  https://arxiv.org/abs/2303.04947).
* ``online``: each step draws ``batch_size / ratio`` candidates, scores them with a fresh
  forward-only pass and trains on the ``batch_size`` best (Selective-Backprop, Jiang et al. 2019,
  https://arxiv.org/abs/1910.00762; RHO-LOSS, Mindermann et al. 2022, https://arxiv.org/abs/2206.07137).
"""

from __future__ import annotations

import torch

from tunebudget.selection.base import EpochPlan, Strategy


def _nan_first(scores: torch.Tensor) -> torch.Tensor:
    """Never-scored samples (NaN) rank first."""
    return torch.where(torch.isnan(scores), torch.full_like(scores, float("inf")), scores)


class Full(Strategy):
    def plan(self, share: float, scores: torch.Tensor) -> EpochPlan:
        return EpochPlan(self.perm(self.n), None, "select", 1.0)


class RS2(Strategy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._queue = torch.empty(0, dtype=torch.long, device=self.device)

    def plan(self, share: float, scores: torch.Tensor) -> EpochPlan:
        k = self.kept(share)
        if self._queue.numel() < k:
            fresh = self.perm(self.n)
            seen = torch.isin(fresh, self._queue)
            # top up from a new permutation, avoiding repeats within this epoch
            self._queue = torch.cat([self._queue, fresh[~seen], fresh[seen]])
        order, self._queue = self._queue[:k], self._queue[k:]
        return EpochPlan(order, None, "select", k / self.n)


class _Ranked(Strategy):
    """Ranks every ``rerank_every`` epochs (or when the kept count changes); plans in between."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._k = -1
        self._since = 0

    def rank_due(self, share: float) -> bool:
        return self._k != self.kept(share) or self._since >= self.spec.rerank_every

    def plan(self, share: float, scores: torch.Tensor) -> EpochPlan:
        if self.rank_due(share):
            self._k, self._since = self.kept(share), 0
            self.rank(_nan_first(scores), self._k)
        self._since += 1
        return self.draw(self._k)

    def rank(self, scores: torch.Tensor, k: int) -> None:
        raise NotImplementedError

    def draw(self, k: int) -> EpochPlan:
        raise NotImplementedError


class TopK(_Ranked):
    _kept: torch.Tensor

    def rank(self, scores: torch.Tensor, k: int) -> None:
        self._kept = scores.topk(k).indices

    def draw(self, k: int) -> EpochPlan:
        return EpochPlan(self._kept[self.perm(k)], None, "select", k / self.n)


class Sample(_Ranked):
    _probs: torch.Tensor
    _weights: torch.Tensor

    def rank(self, scores: torch.Tensor, k: int) -> None:
        # p_i = (1 - floor) * s_i / sum(s) + floor / N, s shifted to be >= 0
        finite = torch.isfinite(scores)
        base = scores.masked_fill(~finite, 0.0)
        top = base.max() if finite.any() else torch.tensor(1.0, device=self.device)
        lo = base.min()
        s = torch.where(finite, base - lo, top - lo).clamp_min(0)
        total = s.sum()
        floor = self.spec.floor if total > 0 else 1.0
        probs = (1 - floor) * s / total.clamp_min(1e-12) + floor / self.n
        self._probs = probs / probs.sum()
        self._weights = 1.0 / (self.n * self._probs)

    def draw(self, k: int) -> EpochPlan:
        order = torch.multinomial(self._probs, k, replacement=True, generator=self.gen)
        return EpochPlan(order, self._weights, "select", k / self.n)


class InfoBatch(Strategy):
    def rank_due(self, share: float) -> bool:
        return True  # every epoch re-reads the scores

    def plan(self, share: float, scores: torch.Tensor) -> EpochPlan:
        known = ~torch.isnan(scores)
        mean = scores[known].mean() if known.any() else torch.tensor(0.0, device=self.device)
        well_learned = known & (scores < mean)
        draw = torch.rand(self.n, device=self.device, generator=self.gen)
        keep = ~well_learned | (draw < share)
        weights = torch.ones(self.n, device=self.device)
        weights[well_learned] = 1.0 / share
        kept = keep.nonzero().squeeze(1)
        return EpochPlan(kept[self.perm(kept.numel())], weights, "select", kept.numel() / self.n)


class Online(Strategy):
    def plan(self, share: float, scores: torch.Tensor) -> EpochPlan:
        return EpochPlan(self.perm(self.n), None, "select", share, online=True)

    def choose(self, candidates: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
        if candidates.numel() <= k:
            return candidates
        return candidates[scores.topk(k).indices]
