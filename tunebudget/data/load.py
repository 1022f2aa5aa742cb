"""Assembly: a data set as loaded (a registered source, your own factory, or your data handed over)
becomes a :class:`~tunebudget.data.bundle.DataBundle`: the validation split carved with a fixed seed
(or the one the source gives), the task's data regime applied to the training split, inputs (and
regression targets) standardised with the training split's statistics, everything moved to the device.

Inputs are standardised per feature (flat data) or per channel (images); a feature constant in the
training split is only centred (see :func:`standardise`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunebudget.data.base import to_float
from tunebudget.data.bundle import DataBundle, RawData, Split
from tunebudget.data.own import parse_own_data, user_data
from tunebudget.data.regimes import apply_regime
from tunebudget.errors import TuneBudgetError
from tunebudget.policy import TaskSpec
from tunebudget.registry import DATASETS, DataSetEntry


def _load_raw(task: TaskSpec, seed: int, given: Any = None) -> RawData:
    """The task's data set as tensors (a built-in source, or your own factory; or ``given``, your data
    handed over directly), with the validation split its source gives, if any."""
    if given is not None:
        raw = given if isinstance(given, RawData) else parse_own_data(given, task.kind, "data")
    elif task.dataset not in DATASETS and task.user_data:
        raw = user_data(task)
    else:
        raw = _builtin(task, seed)
    cast = (lambda t: t.float()) if task.kind == "regression" else (lambda t: t.long())
    raw.train_y, raw.test_y = cast(raw.train_y), cast(raw.test_y)
    if raw.val_y is not None:
        raw.val_y = cast(raw.val_y)
    return raw


def _builtin(task: TaskSpec, seed: int) -> RawData:
    """A registered data set's source, and the validation split in ``task.val_root`` if set."""
    if task.dataset not in DATASETS:
        raise TuneBudgetError(f"task.dataset: unknown data set {task.dataset!r}; use one of "
                              f"{', '.join(DATASETS.names())} or 'package.module:factory' (your own data)")
    entry = DATASETS.get(task.dataset)
    if not entry.takes_options and task.data_options:
        raise TuneBudgetError(
            f"task.data_options: {task.dataset} takes no options (got {sorted(task.data_options)}); remove them"
        )
    train_x, train_y, test_x, test_y = entry.load()(task, seed)
    raw = RawData(to_float(train_x), torch.from_numpy(np.ascontiguousarray(train_y)),
                  to_float(test_x), torch.from_numpy(np.ascontiguousarray(test_y)),
                  input_scale=1 / 255 if train_x.dtype == np.uint8 else 1.0)
    if task.val_root:
        val_x, val_y = _given_val(task, entry)
        if len(val_x) == 0 or val_x.shape[1:] != train_x.shape[1:]:
            raise TuneBudgetError(f"task.val_root: its validation inputs have shape {val_x.shape}, the training "
                                  f"inputs {train_x.shape[1:]} per sample; give at least one sample of that shape")
        raw.val_x, raw.val_y = to_float(val_x), torch.from_numpy(np.ascontiguousarray(val_y))
    return raw


def _given_val(task: TaskSpec, entry: DataSetEntry) -> tuple[np.ndarray, np.ndarray]:
    """The validation split in ``task.val_root`` (laid out as the data set's entry says), inputs and labels."""
    root = Path(str(task.val_root)).expanduser()
    if not root.is_dir():
        raise TuneBudgetError(f"task.val_root: directory {root} does not exist; point it at a directory holding "
                              f"{entry.val_layout}")
    return entry.load_val()(task, root)


def _carve(raw: RawData, task: TaskSpec, seed: int) -> tuple[torch.Tensor, torch.Tensor, Split]:
    """Training inputs and labels (fresh copies: normalised in place later) and the validation split:
    the one the source gave, else ``task.val_size`` samples carved out of the training split."""
    if raw.val_x is not None and raw.val_y is not None:
        return raw.train_x.clone(), raw.train_y.clone(), Split(raw.val_x.clone(), raw.val_y.clone())
    n = len(raw.train_x)
    n_val = task.val_size if isinstance(task.val_size, int) and task.val_size >= 1 else int(n * task.val_size)
    if not 1 <= n_val <= n // 2:  # more held out than trained on is a mistake, not a design
        raise TuneBudgetError(
            f"task.val_size: {task.val_size} holds out {n_val} of {n} training samples for validation, "
            f"{'none' if n_val < 1 else 'more than half'}; use 1 to {n // 2} (or a share up to 0.5)"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 17))
    val_idx, tr_idx = order[:n_val], order[n_val:]
    return raw.train_x[tr_idx], raw.train_y[tr_idx], Split(raw.train_x[val_idx], raw.train_y[val_idx])


def load_data(task: TaskSpec, seed: int = 0, device: torch.device | str = "cpu", given: Any = None) -> DataBundle:
    """Load, split (fixed seed), normalise and move a data set to ``device``. ``given``: your data in a
    form :func:`user_data` accepts, used instead of ``task.dataset`` (the task's regime and val_size apply)."""
    raw = _load_raw(task, seed, given)
    regression = task.kind == "regression"
    x_train, y_train, val = _carve(raw, task, seed)
    num_outputs = 1 if regression else raw.num_classes or int(max(int(raw.train_y.max()), int(raw.test_y.max())) + 1)
    if not regression and int(val.y.max()) >= num_outputs:
        raise TuneBudgetError(f"task.val_root: the validation labels include {int(val.y.max())}, outside the classes "
                              f"0 … {num_outputs - 1} of the training and test splits; give validation samples of "
                              "those classes")
    x_train, y_train, noisy = apply_regime(x_train, y_train, task, seed, num_outputs)

    mean, std = standardise(x_train, [0, 2, 3] if x_train.dim() == 4 else [0])
    x_train.sub_(mean).div_(std)  # in place: fresh copies made by the carve
    val.x.sub_(mean).div_(std)
    y_test = raw.test_y
    y_mean = y_std = None
    if regression:  # standardised targets: an MSE of 1 is what predicting the mean scores
        y_mean, y_std = standardise(y_train, [0])
        y_train, val.y, y_test = (y_train - y_mean) / y_std, (val.y - y_mean) / y_std, (y_test - y_mean) / y_std
    bundle = DataBundle(
        train=Split(x_train, y_train, noisy),
        val=val,
        test=Split((raw.test_x - mean) / std, y_test),
        kind=task.kind,
        num_outputs=num_outputs,
        input_shape=tuple(x_train.shape[1:]),
        name=task.dataset,
        val_source="given" if raw.val_x is not None else "carved",
        input_mean=mean, input_std=std, target_mean=y_mean, target_std=y_std, input_scale=raw.input_scale,
    )
    dev = torch.device(device)
    return bundle.to(dev, channels_last=dev.type == "cuda")


def standardise(x: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``x`` over ``dims`` (kept), to compute ``(x - mean) / std``.

    A feature constant in ``x`` (spread within float rounding of its size, or one sample) gets
    std 1: centred, not scaled. Dividing by a clamped std of ~0 instead turned a value that is
    constant in the training split but not elsewhere into ~1e6 in validation or test (on digits a
    pixel that is 0 in every training image and 1 in one validation image).
    """
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True) if x.numel() > x[0].numel() else torch.zeros_like(mean)
    # max |x| as max(max, -min): x.abs() would copy the whole split (0.65 s on Fashion-MNIST's 55k images)
    size = torch.maximum(x.amax(dim=dims, keepdim=True), -x.amin(dim=dims, keepdim=True))
    constant = ~(std > 1e-5 * size)  # NaN-safe; 0 <= 0 for an all-zero feature
    return mean, torch.where(constant, torch.ones_like(std), std)
