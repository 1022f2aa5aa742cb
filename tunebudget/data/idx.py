"""Fashion-MNIST from its IDX gz files (``train-images-idx3-ubyte.gz`` ...): found in ``task.root``,
``$TUNEBUDGET_DATA`` or Debian's ``dataset-fashion-mnist`` location (``/usr/share/datasets/fashion-mnist``).
Nothing is downloaded."""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from tunebudget.data.base import Arrays
from tunebudget.errors import TuneBudgetError
from tunebudget.policy import DEBIAN_FASHION_MNIST, TaskSpec
from tunebudget.registry import DATASETS

FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


@functools.lru_cache(maxsize=8)
def _gunzip(path: Path, mtime_ns: int) -> bytes:
    """Decompressed file contents, kept per process: a sweep worker that runs many trials (new
    seeds in the confirmation stage reload the data) decompresses each file once."""
    with gzip.open(path, "rb") as fh:
        return fh.read()


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions; a file that is not one (not gzip,
    truncated, a wrong header) is a one-line TuneBudgetError naming it."""
    fix = "replace it (re-install with 'apt-get install --reinstall dataset-fashion-mnist')"
    try:
        raw = _gunzip(path, path.stat().st_mtime_ns)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise TuneBudgetError(f"{path}: not a readable gzip file ({exc}); {fix}") from None
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise TuneBudgetError(f"{path}: not an IDX file of {ndim}-dimensional unsigned bytes (its header is "
                              f"{raw[:4].hex() or 'empty'}, expected 000008{ndim:02x}); {fix}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    size, have = math.prod(dims), len(raw) - 4 - 4 * ndim
    if have != size:
        raise TuneBudgetError(f"{path}: {'truncated' if have < size else 'has trailing bytes'}: the header says "
                              f"{'x'.join(map(str, dims))} = {size} bytes, the file holds {have}; {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def find_fashion_mnist(root: str | None) -> Path:
    """The directory of Fashion-MNIST's four IDX gz files: ``task.root`` if set, else
    ``$TUNEBUDGET_DATA`` if set, else Debian's location. The first one given is the only one
    looked at (a wrong explicit path is an error, not a silent fallback)."""
    chosen = root or os.environ.get("TUNEBUDGET_DATA") or DEBIAN_FASHION_MNIST
    field = "task.root" if root else ("TUNEBUDGET_DATA" if os.environ.get("TUNEBUDGET_DATA") else "task.root")
    d = Path(chosen).expanduser()
    missing = [f for f in FASHION_MNIST_FILES.values() if not (d / f).is_file()]
    if missing:
        raise TuneBudgetError(
            f"{field}: Fashion-MNIST not found in {d} (missing {missing[0]}); install it with "
            "'apt-get install -y dataset-fashion-mnist', or point task.root / TUNEBUDGET_DATA "
            "at a directory holding the four IDX gz files"
        )
    return d


def fashion_mnist(task: TaskSpec, seed: int) -> Arrays:
    """The training and test splits of Fashion-MNIST (uint8 images, one channel)."""
    d = find_fashion_mnist(task.root)
    arrays = {k: _read_idx(d / f, 3 if k.endswith("_x") else 1) for k, f in FASHION_MNIST_FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise TuneBudgetError(f"{d}: Fashion-MNIST's {split} images and labels differ in count "
                                  f"({len(arrays[f'{split}_x'])} vs {len(arrays[f'{split}_y'])}); replace the files")
    return arrays["train_x"][:, None], arrays["train_y"], arrays["test_x"][:, None], arrays["test_y"]


def fashion_mnist_val(task: TaskSpec, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The validation split in ``task.val_root`` (``root``): two IDX gz files, as the training files."""
    images, labels = root / "val-images-idx3-ubyte.gz", root / "val-labels-idx1-ubyte.gz"
    for f in (images, labels):
        if not f.is_file():
            raise TuneBudgetError(f"task.val_root: {f.name} not found in {root}; put the validation split there as "
                                  f"{DATASETS.get(task.dataset).val_layout}")
    x, y = _read_idx(images, 3)[:, None], _read_idx(labels, 1)
    if len(x) != len(y):
        raise TuneBudgetError(f"task.val_root: {root} holds {len(x)} validation images but {len(y)} labels; "
                              "give one label per image")
    return x, y
