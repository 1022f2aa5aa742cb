"""Flat data sets held in memory: scikit-learn's digits and diabetes, and seeded generated data (``synthetic``,
``synthetic_regression``) with options ``n_samples``, ``dim``, ``classes``, ``noise`` and ``redundant``
(the share of easy near-duplicate samples)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tunebudget.data.base import Arrays, holdout
from tunebudget.errors import TuneBudgetError
from tunebudget.policy import TaskSpec


def digits(task: TaskSpec, seed: int) -> Arrays:
    """scikit-learn's bundled 8x8 digits (no download), a fifth held out as the test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    return holdout(x, y, test_share=0.2, seed=seed)


def diabetes(task: TaskSpec, seed: int) -> Arrays:
    """scikit-learn's bundled diabetes progression data (442 patients, 10 features; no download), a
    regression task; a fifth held out as the test split."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    return holdout(bunch.data.astype(np.float32), bunch.target.astype(np.float32), test_share=0.2, seed=seed)


SYNTHETIC_DEFAULTS = {"n_samples": 6000, "dim": 32, "classes": 4, "noise": 1.0, "redundant": 0.5}


def _synthetic_options(task: TaskSpec) -> dict[str, Any]:
    unknown = sorted(set(task.data_options) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise TuneBudgetError(
            f"task.data_options: unknown option {unknown[0]!r} for {task.dataset}; "
            f"valid options are {', '.join(SYNTHETIC_DEFAULTS)}"
        )
    opts = {**SYNTHETIC_DEFAULTS, **task.data_options}
    for key in ("n_samples", "dim", "classes"):
        if not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < 2:
            raise TuneBudgetError(f"task.data_options.{key}: must be an integer of at least 2 (got {opts[key]!r})")
    for key, hi in (("noise", 100.0), ("redundant", 0.99)):
        if not isinstance(opts[key], (int, float)) or not 0 <= opts[key] <= hi:
            raise TuneBudgetError(f"task.data_options.{key}: must be a number in [0, {hi}] (got {opts[key]!r})")
    return opts


def synthetic(task: TaskSpec, seed: int) -> Arrays:
    """Gaussian classes plus a share of easy, redundant samples close to their class centre.

    The hard samples lie near the boundaries between class centres; the redundant ones are
    near-copies of the centres and teach little after the first epoch: a data set on which
    selective sampling ought to help.
    """
    o = _synthetic_options(task)
    rng = np.random.default_rng(seed + 7)
    n, dim, k = o["n_samples"], o["dim"], o["classes"]
    n_easy = int(n * o["redundant"])
    if task.kind == "regression":
        w = rng.normal(size=dim) / np.sqrt(dim)
        x = rng.normal(size=(n, dim))
        x[:n_easy] = rng.normal(scale=0.05, size=(n_easy, dim)) + x[0]
        y = np.tanh(x @ w) * 2 + 0.5 * np.sin(3 * x[:, 0]) + 0.1 * o["noise"] * rng.normal(size=n)
        return holdout(x.astype(np.float32), y.astype(np.float32), 0.2, seed)
    centres = rng.normal(scale=2.0, size=(k, dim))
    y = rng.integers(0, k, size=n)
    x = centres[y] + o["noise"] * rng.normal(size=(n, dim))
    x[:n_easy] = centres[y[:n_easy]] + 0.05 * rng.normal(size=(n_easy, dim))
    return holdout(x.astype(np.float32), y.astype(np.int64), 0.2, seed)
