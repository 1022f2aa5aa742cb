"""Your own data: ``task.dataset: package.module:factory`` (see :func:`user_data`), or the data handed
to :func:`tunebudget.train` as ``data=``: checked, with one-line errors naming ``task.dataset``, and
turned into :class:`~tunebudget.data.bundle.RawData`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tunebudget.data.base import to_float
from tunebudget.data.bundle import RawData
from tunebudget.errors import TuneBudgetError
from tunebudget.factory import check_options, first_line, import_factory
from tunebudget.policy import TaskSpec

log = logging.getLogger(__name__)

#: Keys of a factory's mapping of arrays; ``num_classes`` may come with either form, and a trusted
#: validation split (``val_x`` and ``val_y``, or ``val``) too.
ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y")


DATASET_KEYS = ("train", "test")


VAL_KEYS = {ARRAY_KEYS: ("val_x", "val_y"), DATASET_KEYS: ("val",)}


_RETURNS = ("return (train_x, train_y, test_x, test_y) arrays or tensors, (train, test) torch Datasets "
            "of (x, y) pairs, or a mapping of either (plus an optional num_classes, and val_x and val_y "
            "or val for a validation split of your own)")


def user_data(task: TaskSpec) -> RawData:
    """Your own data: ``task.dataset: package.module:factory``, called as ``factory(**task.data_options)``.

    The factory returns the training and test data in one of these forms:

    * ``(train_x, train_y, test_x, test_y)``, or a mapping with those keys: numpy arrays or torch
      tensors. Inputs are flat, ``(N, F)``, or images, ``(N, C, H, W)`` or ``(N, H, W)`` (one channel
      is added); uint8 inputs are divided by 255 like the built-in images. Targets are ``(N,)``.
    * ``(train, test)``, or a mapping with keys ``train`` and ``test``: map-style torch Datasets
      (``__len__`` and ``__getitem__``) whose items are ``(x, y)`` pairs, x a tensor or array of one
      shape, y a number. They are read once into tensors.

    A mapping may add ``num_classes`` (default: the largest label + 1) and a validation split of
    its own (``val_x`` and ``val_y``, or ``val`` beside Datasets), used as given instead of one carved
    out of the training split: a small set with trusted labels when the training labels are noisy.
    Classification targets (``task.kind``, default classification) are integer labels 0 … C-1;
    regression targets (``task.kind: regression``) are numbers. Anything else is a one-line
    TuneBudgetError naming ``task.dataset``.
    """
    spec = task.dataset
    factory = import_factory(spec, "task.dataset")
    check_options(factory, task.data_options, "task.data_options", f"data set {task.dataset}")
    try:
        out = factory(**task.data_options)
    except TuneBudgetError:
        raise
    except (Exception, SystemExit) as exc:  # the user's code failed: one line, the traceback under -v
        log.debug("task.dataset %s raised", spec, exc_info=True)
        raise TuneBudgetError(f"task.dataset: {spec} raised {type(exc).__name__}: {first_line(exc)}; fix the "
                              "factory or its task.data_options (run with -v for the traceback)") from exc
    return parse_own_data(out, task.kind, spec)


def parse_own_data(out: Any, kind: str, spec: str = "your data") -> RawData:
    """Your data in one of the forms :func:`user_data` describes (a factory's return value, or what
    :func:`tunebudget.train` is given as ``data=``), checked and turned into tensors; ``spec`` names it
    in the one-line errors."""
    num_classes, val = None, None
    if isinstance(out, Mapping):
        keys = set(out)
        form = DATASET_KEYS if set(DATASET_KEYS) <= keys else ARRAY_KEYS
        val_keys = VAL_KEYS[form]
        unknown = sorted(map(str, keys - set(form) - set(val_keys) - {"num_classes"}))
        given_val = keys & set(val_keys)
        if unknown or not set(form) <= keys or given_val not in (set(), set(val_keys)):
            what = (f"unknown key {unknown[0]!r}" if unknown else
                    f"keys {sorted(map(str, keys))}" if not set(form) <= keys else
                    f"{sorted(given_val)[0]} without {sorted(set(val_keys) - given_val)[0]}")
            raise TuneBudgetError(f"task.dataset: {spec} returned a mapping with {what}; give keys "
                                  f"{', '.join(ARRAY_KEYS)} (plus val_x, val_y) or {', '.join(DATASET_KEYS)} "
                                  "(plus val), and an optional num_classes")
        num_classes = _num_classes(out.get("num_classes"), spec)
        parts: tuple[Any, ...] = tuple(out[k] for k in form)
        val = tuple(out[k] for k in val_keys) if given_val else None
    elif isinstance(out, (tuple, list)) and len(out) in (2, 4):
        parts = tuple(out)
    else:
        got = f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
        raise TuneBudgetError(f"task.dataset: {spec} returned {got}; {_RETURNS}")
    splits = ("train", "test", "val") if val else ("train", "test")
    if len(parts) == 2:
        arrays = [_read_dataset(d, n, spec) for d, n in zip((*parts, *(val or ())), splits)]
    else:
        flat = (*parts, *(val or ()))
        arrays = [(_array(flat[2 * i], f"{n}_x", spec), _array(flat[2 * i + 1], f"{n}_y", spec))
                  for i, n in enumerate(splits)]
    xs = [_inputs(x, f"{n}_x", spec) for (x, _), n in zip(arrays, splits)]
    for x, n in zip(xs[1:], splits[1:]):
        if x.shape[1:] != xs[0].shape[1:]:
            raise TuneBudgetError(f"task.dataset: {spec} returned train and {n} inputs of different shapes per "
                                  f"sample ({tuple(xs[0].shape[1:])} and {tuple(x.shape[1:])}); make them the same")
    ys = [_targets(y, n, len(x), kind, spec) for (_, y), x, n in zip(arrays, xs, splits)]
    if kind == "classification":
        top = int(max(ys[0].max(), ys[1].max()))
        if num_classes is not None and top >= num_classes:
            raise TuneBudgetError(f"task.dataset: {spec} returned label {top} but num_classes {num_classes}; "
                                  f"labels must be 0 … {num_classes - 1}")
        if (num_classes or top + 1) < 2:
            raise TuneBudgetError(f"task.dataset: {spec} returned labels of one class only; a classification "
                                  "task needs two or more (or set task.kind: regression)")
        if val and int(ys[2].max()) >= (num_classes or top + 1):
            raise TuneBudgetError(f"task.dataset: {spec} returned label {int(ys[2].max())} in val_y, outside the "
                                  f"classes 0 … {(num_classes or top + 1) - 1} of the training and test labels; "
                                  "give validation labels of those classes (or num_classes)")
    raw = RawData(xs[0], ys[0], xs[1], ys[1], num_classes, input_scale=1 / 255 if arrays[0][0].dtype == np.uint8 else 1.0)
    if val:
        raw.val_x, raw.val_y = xs[2], ys[2]
    return raw


def _num_classes(value: Any, spec: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 2:
        return int(value)
    raise TuneBudgetError(f"task.dataset: {spec} returned num_classes {value!r}; give an integer of at least 2 "
                          "(or leave it out: the largest label + 1)")


def _array(value: Any, name: str, spec: str) -> np.ndarray:
    """A returned array or tensor as a numpy array of numbers."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64)
                 else value).numpy()
    if not isinstance(value, np.ndarray):
        raise TuneBudgetError(f"task.dataset: {spec} returned {name} as a {type(value).__name__}; "
                              "give a numpy array or a torch tensor")
    if value.dtype.kind not in "biuf":
        raise TuneBudgetError(f"task.dataset: {spec} returned {name} of dtype {value.dtype}; give numbers "
                              "(encode class names as integer labels 0 … C-1)")
    if value.ndim == 0 or len(value) == 0:
        raise TuneBudgetError(f"task.dataset: {spec} returned {name} with no samples (shape {value.shape}); "
                              "return at least one sample in each split")
    return value


def _read_dataset(ds: Any, name: str, spec: str) -> tuple[np.ndarray, np.ndarray]:
    """A map-style Dataset of (x, y) pairs read into two arrays."""
    if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) == 2:
        return _array(ds.tensors[0], f"{name} x", spec), _array(ds.tensors[1], f"{name} y", spec)
    if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
        raise TuneBudgetError(f"task.dataset: {spec} returned {name} as a {type(ds).__name__}, not a map-style "
                              f"torch Dataset (with __len__ and __getitem__); {_RETURNS}")
    if len(ds) == 0:
        raise TuneBudgetError(f"task.dataset: {spec} returned an empty {name} Dataset; return at least one "
                              "sample in each split")
    xs, ys = [], []
    for i in range(len(ds)):
        try:
            item = ds[i]
        except (Exception, SystemExit) as exc:  # the user's Dataset failed: one line, the traceback under -v
            log.debug("task.dataset %s: %s[%d] raised", spec, name, i, exc_info=True)
            raise TuneBudgetError(f"task.dataset: {spec}: {name}[{i}] raised {type(exc).__name__}: "
                                  f"{first_line(exc)}; fix the Dataset's __getitem__ (run with -v for the "
                                  "traceback)") from exc
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TuneBudgetError(f"task.dataset: {spec}: {name}[{i}] is a {type(item).__name__}, not an (x, y) "
                                  "pair; make __getitem__ return (input, target)")
        x, y = item
        if type(x).__module__.startswith("PIL"):
            raise TuneBudgetError(f"task.dataset: {spec}: {name}[{i}] holds a PIL image; give tensors "
                                  "(e.g. transform=torchvision.transforms.ToTensor())")
        xs.append(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
        ys.append(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y))
        if xs[-1].shape != xs[0].shape:
            raise TuneBudgetError(f"task.dataset: {spec}: {name}[{i}] has input shape {xs[-1].shape}, "
                                  f"{name}[0] {xs[0].shape}; give every sample the same shape")
        if ys[-1].size != 1:
            raise TuneBudgetError(f"task.dataset: {spec}: {name}[{i}] has a target of shape {ys[-1].shape}; "
                                  "give one number (a class label or a value) per sample")
    return _array(np.stack(xs), f"{name} x", spec), _array(np.stack(ys).reshape(-1), f"{name} y", spec)


def _inputs(x: np.ndarray, name: str, spec: str) -> torch.Tensor:
    """Flat ``(N, F)`` or images ``(N, C, H, W)`` / ``(N, H, W)`` as a float tensor."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise TuneBudgetError(f"task.dataset: {spec} returned {name} of shape {x.shape}; give flat inputs "
                              "(N, features) or images (N, C, H, W) or (N, H, W)")
    t = to_float(x.astype(np.float32) if x.dtype.kind == "b" else x)
    if not torch.isfinite(t).all():
        raise TuneBudgetError(f"task.dataset: {spec} returned {name} with NaN or infinite values; "
                              "drop or impute them")
    return t


def _targets(y: np.ndarray, split: str, n: int, kind: str, spec: str) -> torch.Tensor:
    """The ``split``'s targets, one per sample: int64 labels 0 … C-1 (classification) or float32 values
    (regression)."""
    name = f"{split}_y"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise TuneBudgetError(f"task.dataset: {spec} returned {name} of shape {y.shape}; give one target "
                              "per sample, shape (N,)")
    if len(y) != n:
        raise TuneBudgetError(f"task.dataset: {spec} returned {n} {split} inputs but {len(y)} {split} targets; "
                              "give one target per input")
    if kind == "regression":
        t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        if not torch.isfinite(t).all():
            raise TuneBudgetError(f"task.dataset: {spec} returned {name} with NaN or infinite values; "
                                  "drop or impute them")
        return t
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise TuneBudgetError(f"task.dataset: {spec} returned non-integer labels in {name}; give class labels "
                              "0 … C-1 for classification, or set task.kind: regression")
    if y.min() < 0:
        raise TuneBudgetError(f"task.dataset: {spec} returned a negative label ({y.min():g}) in {name}; "
                              "give class labels 0 … C-1")
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
