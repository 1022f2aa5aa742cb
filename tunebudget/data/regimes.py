"""Data regimes, applied to the training split only (validation and test stay as given): a subset, a
long tail, label noise and duplicates, each seeded (see :func:`apply_regime`)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import TaskSpec


def _rng(seed: int, step: str) -> np.random.Generator:
    return np.random.default_rng([seed, sum(map(ord, step)), 4242])


def apply_regime(x: torch.Tensor, y: torch.Tensor, task: TaskSpec, seed: int,
                 num_classes: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The task's data regime applied to a training split, in this order: ``train_subset`` (a
    random subset), ``imbalance`` (a long tail), ``label_noise`` (wrong labels), ``duplicates``
    (repeated samples, a copy keeping its sample's label). Seeded by ``seed``; validation and test
    splits are never touched. Returns the new inputs, labels and, when labels were changed, a
    mask of the changed ones.

    * ``train_subset``: a count, or a share if below 1.
    * ``imbalance`` ρ: class ``c`` keeps ``n_c = n_max · ρ^(-c / (C - 1))`` of its samples, the
      exponential profile of CIFAR-LT (Cui et al. 2019); ``n_max`` is the largest head size that
      every class can supply, so the first class has exactly ρ times the samples of the last.
    * ``label_noise`` r with ``noise_kind``: exactly ``round(r · n)`` samples get another label;
      ``symmetric`` draws it uniformly among the other classes, ``pairs`` uses the class whose mean
      training input is closest (the confusable class: shirt for T-shirt in Fashion-MNIST).
    * ``duplicates`` f: ``round(n / f)`` distinct samples, each repeated ``k ~ Geometric(1/f)``
      times (mean f, at least once), so a few samples appear many times and the size stays ≈ n.
    """
    n = len(x)
    if task.train_subset is not None:
        k = task.train_subset if isinstance(task.train_subset, int) else int(round(n * task.train_subset))
        if not 1 <= k <= n:
            raise TuneBudgetError(f"task.train_subset: {task.train_subset} of {n} training samples is not a "
                                  f"subset; use a count from 1 to {n} or a share below 1")
        keep = torch.from_numpy(_rng(seed, "subset").permutation(n)[:k])
        x, y = x[keep], y[keep]
    if task.imbalance > 1:
        x, y = _long_tail(x, y, task.imbalance, num_classes, seed)
    noisy = None
    if task.label_noise > 0:
        y, noisy = _noisy_labels(x, y, task.label_noise, task.noise_kind, num_classes, seed)
    if task.duplicates > 1:
        rng = _rng(seed, "duplicates")
        distinct = torch.from_numpy(rng.permutation(len(x))[: max(1, int(round(len(x) / task.duplicates)))])
        copies = torch.from_numpy(rng.geometric(1.0 / task.duplicates, size=len(distinct)))
        rows = distinct.repeat_interleave(copies)
        x, y = x[rows], y[rows]
        noisy = None if noisy is None else noisy[rows]
    return x, y, noisy


def _long_tail(x: torch.Tensor, y: torch.Tensor, ratio: float, num_classes: int,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.bincount(y, minlength=num_classes).tolist()
    share = [ratio ** (-c / max(num_classes - 1, 1)) for c in range(num_classes)]
    n_max = min(n / s for n, s in zip(counts, share) if n > 0)  # the head size every class can supply
    order = torch.from_numpy(_rng(seed, "imbalance").permutation(len(x)))
    keep = []
    for c in range(num_classes):
        members = order[y[order] == c]
        keep.append(members[: max(1, int(round(n_max * share[c])))])
    rows = torch.cat(keep)
    return x[rows], y[rows]


def _noisy_labels(x: torch.Tensor, y: torch.Tensor, rate: float, kind: str, num_classes: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = _rng(seed, "label_noise")
    n = len(y)
    flip = torch.from_numpy(rng.permutation(n)[: int(round(rate * n))])
    new = y.clone()
    if kind == "symmetric":
        shift = torch.from_numpy(rng.integers(1, num_classes, size=len(flip)))
        new[flip] = (y[flip] + shift) % num_classes  # any class but the true one, uniformly
    else:
        flat = x.flatten(1).float()
        means = torch.stack([flat[y == c].mean(0) if (y == c).any() else torch.full_like(flat[0], float("inf"))
                             for c in range(num_classes)])
        dist = torch.cdist(means.nan_to_num(float("inf")), means.nan_to_num(float("inf")))
        dist.fill_diagonal_(float("inf"))
        partner = dist.nan_to_num(float("inf")).argmin(1)
        new[flip] = partner[y[flip]]
    noisy = torch.zeros(n, dtype=torch.bool)
    noisy[flip] = True
    return new, noisy
