"""Image data sets read with torchvision from a local ``task.root`` (``download=False``: a missing root is
a clear error, never a hanging download): ``mnist``, ``cifar10`` and ``imagefolder`` (one class per
sub-directory)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tunebudget.data.base import Arrays, holdout
from tunebudget.errors import TuneBudgetError
from tunebudget.factory import first_line
from tunebudget.policy import TaskSpec


def _from_root(task: TaskSpec, seed: int, read: Callable[[Any, Path, int], Arrays]) -> Arrays:
    """``read(torchvision, root, seed)`` on the task's local root, which must be a directory; a
    torchvision data set not found there is a one-line error naming task.root."""
    import torchvision

    if not task.root:
        raise TuneBudgetError(
            f"task.root: {task.dataset} needs a local directory with the data set "
            "(tunebudget never downloads); set task.root"
        )
    root = Path(task.root).expanduser()
    if root.is_file():
        raise TuneBudgetError(f"task.root: {root} is a file; point it at the directory holding the {task.dataset} data")
    if not root.is_dir():
        raise TuneBudgetError(f"task.root: directory {root} does not exist; point it at the {task.dataset} data")
    try:
        return read(torchvision, root, seed)
    except RuntimeError as exc:
        raise TuneBudgetError(
            f"task.root: {task.dataset} not found under {root} ({exc}); "
            "place the torchvision files there (tunebudget never downloads)"
        ) from None


def _train_test(cls: Any, root: Path) -> Arrays:
    """The train and test splits of a torchvision data set class, images as uint8 ``(N, C, H, W)``."""
    def arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(ds.data)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return x, np.asarray(ds.targets, dtype=np.int64)

    return (*arrays(cls(str(root), train=True, download=False)), *arrays(cls(str(root), train=False, download=False)))


def mnist(task: TaskSpec, seed: int) -> Arrays:
    """torchvision's MNIST files under ``task.root``."""
    return _from_root(task, seed, lambda tv, root, _: _train_test(tv.datasets.MNIST, root))


def cifar10(task: TaskSpec, seed: int) -> Arrays:
    """torchvision's CIFAR-10 files under ``task.root``."""
    return _from_root(task, seed, lambda tv, root, _: _train_test(tv.datasets.CIFAR10, root))


def imagefolder(task: TaskSpec, seed: int) -> Arrays:
    """One class per sub-directory of ``task.root``; every image must load and have one size."""
    return _from_root(task, seed, _imagefolder)


def _imagefolder(torchvision: Any, root: Path, seed: int) -> Arrays:
    x, y, classes = _read_image_folder(torchvision, root, "task.root")
    if len(classes) < 2:
        raise TuneBudgetError(f"task.root: {root} holds one class folder ({classes[0]}); a classifier needs "
                              "at least two: add a folder per class")
    return holdout(x, y, 0.2, seed)


def _read_image_folder(torchvision: Any, root: Path, field: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images of ``ROOT/<class>/<image>`` as uint8 ``(N, 3, H, W)``, labels, and the class names."""
    from PIL import UnidentifiedImageError

    try:
        ds = torchvision.datasets.ImageFolder(str(root))
    except FileNotFoundError as exc:  # no class folders, or class folders without images
        raise TuneBudgetError(f"{field}: {root} holds no images in class folders ({first_line(exc)}); "
                              "lay it out as ROOT/<class>/<image>.png with at least two classes") from None
    xs = []
    for path, _ in ds.samples:
        try:
            xs.append(np.asarray(ds.loader(path).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:  # PIL's errors for broken files
            raise TuneBudgetError(f"{field}: {path} is not a readable image ({first_line(exc)}); "
                                  "remove or replace it") from None
    if len({x.shape for x in xs}) > 1:
        raise TuneBudgetError(f"{field}: images under {root} differ in size; resize them to one size first")
    return np.stack(xs), np.asarray([t for _, t in ds.samples], dtype=np.int64), list(ds.classes)


def imagefolder_val(task: TaskSpec, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The validation split in ``task.val_root`` (``root``): one folder per class, named as under task.root."""
    import torchvision

    classes = sorted(e.name for e in os.scandir(Path(str(task.root)).expanduser()) if e.is_dir())
    x, y, names = _read_image_folder(torchvision, root, "task.val_root")
    strange = sorted(set(names) - set(classes))
    if strange:
        raise TuneBudgetError(f"task.val_root: {root} has class folder {strange[0]!r}, which task.root does not "
                              f"({', '.join(classes)}); give validation images of the training classes")
    return x, np.asarray([classes.index(names[i]) for i in y], dtype=np.int64)
