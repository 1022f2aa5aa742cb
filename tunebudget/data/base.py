"""What the sources share: the arrays a built-in source returns, the seeded test holdout for a
source that brings no test split, and arrays as float tensors.

Example:
    >>> import numpy as np
    >>> train_x, train_y, test_x, test_y = holdout(np.arange(10.0)[:, None], np.arange(10), 0.2, seed=0)
    >>> len(train_x), len(test_x)
    (8, 2)
"""

from __future__ import annotations

import numpy as np
import torch

#: What a built-in source returns: ``(train_x, train_y, test_x, test_y)`` as numpy arrays.
Arrays = tuple[np.ndarray, ...]


def holdout(x: np.ndarray, y: np.ndarray, test_share: float, seed: int) -> Arrays:
    """``test_share`` of the samples as a test split, drawn with ``seed``; the rest for training."""
    rng = np.random.default_rng(seed + 1_000_003)
    order = rng.permutation(len(x))
    n_test = int(round(len(x) * test_share))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def to_float(x: np.ndarray) -> torch.Tensor:
    """An array as a float tensor; uint8 inputs are divided by 255 like the built-in images."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()
