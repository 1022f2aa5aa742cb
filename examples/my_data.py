"""Bring your own data: factories for ``task.dataset: my_data:<factory>``.

tunebudget imports this module by name, so run it from this directory (``cd examples``) or put
the directory on PYTHONPATH (``PYTHONPATH=examples tunebudget train examples/wine.yaml``); a sweep's
Ray workers find it the same way. Each factory is called as ``factory(**task.data_options)`` and
returns the training and test data; tunebudget carves the validation split out of the training
data, applies the task's data regime, standardises the inputs and trains.

Three forms of return value, one per factory below:

* a mapping ``{"train_x", "train_y", "test_x", "test_y"}`` of numpy arrays or torch tensors
  (plus an optional ``num_classes``): :func:`wine`;
* the tuple ``(train_x, train_y, test_x, test_y)``: :func:`diabetes` (regression: set
  ``task.kind: regression`` in the policy);
* ``(train, test)`` torch Datasets yielding ``(x, y)`` pairs: :func:`digit_images` (8x8 images,
  shape (1, 8, 8) per sample, so ``task.model: cnn`` works too).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def _split(n: int, test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of a seeded train / test split."""
    if not 0 < test_share < 1:
        raise ValueError(f"test_share must be between 0 and 1, got {test_share}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_share))
    return order[n_test:], order[:n_test]


def wine(test_share: float = 0.25, seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's wine data (178 samples, 13 features on very different scales, 3 classes)."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    train, test = _split(len(x), test_share, seed)
    return {"train_x": x[train], "train_y": y[train], "test_x": x[test], "test_y": y[test], "num_classes": 3}


def diabetes(test_share: float = 0.2, seed: int = 0) -> tuple[np.ndarray, ...]:
    """scikit-learn's diabetes data: 442 patients, 10 features, a disease-progression value (regression)."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    train, test = _split(len(x), test_share, seed)
    return x[train], y[train], x[test], y[test]


class DigitImages(Dataset):
    """scikit-learn's 8x8 digits as a map-style Dataset of ``(image (1, 8, 8), label)`` pairs."""

    def __init__(self, rows: np.ndarray) -> None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        self.images = torch.from_numpy(bunch.images[rows]).float().unsqueeze(1) / 16.0
        self.labels = bunch.target[rows]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def digit_images(test_share: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The digits as two torch Datasets (train, test)."""
    train, test = _split(1797, test_share, seed)
    return DigitImages(train), DigitImages(test)
