"""Scorers computed from one forward pass of the main model, and the learned assistant.

* ``loss``: the per-sample training loss (reused from the training forward pass: no extra pass).
* ``margin``: the minimal margin score of Weinstein et al. (https://arxiv.org/abs/1911.06996),
  ``MMS = (z1 - z2) / ||w1 - w2||`` for the top-two logits and the final linear layer's weight
  rows of those two classes; small margins are important, so the score is ``-MMS``. Without a
  final linear layer it falls back to the plain logit margin ``-(z1 - z2)``.
* ``entropy``: the entropy of the softmax.
* ``small_loss``: minus the per-sample training loss, so that the *lowest*-loss samples rank
  first: under label noise a network learns the clean samples before it memorises the wrong
  ones, so the small-loss ones are likely clean (co-teaching, Han et al. 2018,
  https://arxiv.org/abs/1804.06872; MentorNet's self-paced curriculum, Jiang et al. 2018). With
  ``topk`` (epoch level) or ``online`` (per batch), ``ratio`` is the kept share ``1 - tau``;
  ``delayed shrinking`` (``shrink_span``) is co-teaching's ramp of ``tau`` from 0, and ``ratio: auto``
  estimates the noise rate from the losses (:func:`estimate_noise`).
* ``random``: uniform noise (the control).
* ``assistant``: the predicted probability, from a small model trained alongside the main one,
  that the sample's loss is above the running mean (see :class:`Assistant`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from tunebudget.selection.base import Batch, Scorer, ScoringContext
from tunebudget.selection.fit import Learner


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


class LossScorer(Scorer):
    def score(self, batch: Batch) -> torch.Tensor:
        assert batch.losses is not None
        return batch.losses.detach().float()


class MarginScorer(Scorer):
    def score(self, batch: Batch) -> torch.Tensor:
        assert batch.logits is not None
        return -margin_scores(batch.logits.detach(), self.ctx.head())


class EntropyScorer(Scorer):
    def score(self, batch: Batch) -> torch.Tensor:
        assert batch.logits is not None
        return entropy_scores(batch.logits.detach())


class SmallLossScorer(Scorer):
    def score(self, batch: Batch) -> torch.Tensor:
        assert batch.losses is not None
        return -batch.losses.detach().float()


#: ``ratio: auto`` never drops more than this share of the samples, whatever the estimate says.
MAX_NOISE_ESTIMATE = 0.8


def estimate_noise(losses: torch.Tensor, seed: int = 0) -> float:
    """The share of samples that a two-component Gaussian mixture on their losses puts in the
    high-loss component: an estimate of the label-noise rate (DivideMix, Li et al. 2020,
    https://arxiv.org/abs/2002.07394, fits the same mixture to split clean from noisy samples).

    The losses are scaled to [0, 1] first, as DivideMix does; never-scored samples (NaN) are left
    out. The mixture is scikit-learn's ``GaussianMixture``. Clean data has no second mode, but the
    mixture still finds one in its tail of hard samples, so the estimate is not 0 there: measure
    before trusting it (README, Small noisy data). Capped at :data:`MAX_NOISE_ESTIMATE`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> clean, noisy = torch.rand(700, generator=g) * 0.3, 2 + torch.rand(300, generator=g)
        >>> round(estimate_noise(torch.cat([clean, noisy])), 2)
        0.3
    """
    from sklearn.mixture import GaussianMixture

    x = losses[torch.isfinite(losses)].double().cpu().numpy()
    if x.size < 10 or x.max() - x.min() <= 1e-12:
        return 0.0
    x = ((x - x.min()) / (x.max() - x.min())).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=20, tol=1e-2, reg_covar=5e-4, random_state=seed).fit(x)
    high = int(gmm.means_.argmax())
    share = float((gmm.predict_proba(x)[:, high] > 0.5).mean())
    return min(share, MAX_NOISE_ESTIMATE)


class RandomScorer(Scorer):
    needs_forward = False

    def score(self, batch: Batch) -> torch.Tensor:
        return torch.rand(batch.idx.shape[0], device=batch.idx.device, generator=self.ctx.gen)


class Assistant:
    """A small model that predicts which samples are worth a gradient (AutoAssist-style).

    Zhang et al., "AutoAssist: A Framework to Accelerate Training of Deep Neural Networks",
    NeurIPS 2019 (https://arxiv.org/abs/1905.03381). A logistic regression on cheap features
    (the input average-pooled to at most 8x8 per channel, plus the one-hot label) is trained
    alongside the main model, one SGD step per training batch, to predict whether a sample's
    loss is above the running mean loss. Its predicted probability is the sample's importance.

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
        self.learner = Learner(lambda f: self.linear(f).squeeze(1), self.opt, F.binary_cross_entropy_with_logits)
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
        self.learner.step(self.features(x, y), target)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Predicted probability that each sample's loss is above the running mean."""
        out = [torch.sigmoid(self.linear(self.features(xb, yb)).squeeze(1))
               for xb, yb in zip(x.split(chunk), y.split(chunk))]
        return torch.cat(out)


class AssistantScorer(Scorer):
    """The :class:`Assistant`'s prediction. It needs no forward pass of the main model, so
    re-scoring every sample at each re-rank is cheap, and online selection with it filters
    candidates before any main-model work (AutoAssist's filter-before-backward). Its training and
    scoring run inside the wall-clock budget; a sample budget does not charge them."""

    needs_forward = False
    cheap_refresh = True

    def __init__(self, ctx: ScoringContext) -> None:
        super().__init__(ctx)
        self.assistant = Assistant(ctx.input_shape, ctx.num_outputs, ctx.device)

    def score(self, batch: Batch) -> torch.Tensor:
        return self.assistant.predict(batch.x, batch.y)

    def update(self, batch: Batch) -> None:
        assert batch.losses is not None
        self.assistant.update(batch.x, batch.y, batch.losses)
