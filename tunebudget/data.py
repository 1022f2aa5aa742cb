"""Data sets as tensors resident on the training device; a batch is an index lookup.

Every data set is loaded once, split with a fixed seed into train / validation / test,
normalised with statistics of the training split, and moved to the device. The trainer
then draws batches as ``x[idx]`` for an index tensor ``idx``: selective sampling is just
choosing that index tensor.

Sources:

* ``fashion_mnist``: the IDX gz files (``train-images-idx3-ubyte.gz`` …) from ``task.root``,
  ``$TUNEBUDGET_DATA``, or Debian's ``dataset-fashion-mnist`` location
  (``/usr/share/datasets/fashion-mnist``). Nothing is downloaded.
* ``digits``: scikit-learn's bundled 8x8 digits (no download).
* ``synthetic`` / ``synthetic_regression``: seeded generated data with options ``n_samples``,
  ``dim``, ``classes``, ``noise`` and ``redundant`` (share of easy near-duplicate samples).
  Regression targets are standardised with the training split's mean and std.
* ``mnist``, ``cifar10``, ``imagefolder``: torchvision data sets from a local ``task.root``
  (``download=False``: a missing root is a clear error, never a hanging download).
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import TaskSpec

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor
    #: Which labels a label-noise regime changed (training split only; None: no noise applied).
    noisy: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, rows: torch.Tensor | slice) -> "Split":
        """The samples ``rows`` (an index tensor or a slice), noise mask included."""
        return Split(self.x[rows], self.y[rows], None if self.noisy is None else self.noisy[rows])


@dataclass
class DataBundle:
    """Train / validation / test tensors on one device, plus what a model needs to know."""

    train: Split
    val: Split
    test: Split
    kind: str  # "classification" | "regression"
    num_outputs: int  # classes, or 1 for regression
    input_shape: tuple[int, ...]  # per sample, e.g. (1, 28, 28) or (64,)
    name: str

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def to(self, device: torch.device, channels_last: bool = False) -> "DataBundle":
        def move(s: Split) -> Split:
            x = s.x.to(device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return Split(x, s.y.to(device), None if s.noisy is None else s.noisy.to(device))

        return DataBundle(move(self.train), move(self.val), move(self.test), self.kind,
                          self.num_outputs, self.input_shape, self.name)


# ---- raw sources: each returns (train_x, train_y, test_x, test_y) as numpy arrays -------------

@functools.lru_cache(maxsize=8)
def _gunzip(path: Path, mtime_ns: int) -> bytes:
    """Decompressed file contents, kept per process: a sweep worker that runs many trials (new
    seeds in the confirmation stage reload the data) decompresses each file once."""
    with gzip.open(path, "rb") as fh:
        return fh.read()


def _read_idx(path: Path) -> np.ndarray:
    raw = _gunzip(path, path.stat().st_mtime_ns)
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def find_fashion_mnist(root: str | None) -> Path:
    """The directory of Fashion-MNIST's four IDX gz files: ``task.root`` if set, else
    ``$TUNEBUDGET_DATA`` if set, else Debian's location. The first one given is the only one
    looked at (a wrong explicit path is an error, not a silent fallback)."""
    chosen = root or os.environ.get("TUNEBUDGET_DATA") or DEBIAN_FASHION_MNIST
    field = "task.root" if root else ("TUNEBUDGET_DATA" if os.environ.get("TUNEBUDGET_DATA") else "task.root")
    d = Path(chosen)
    missing = [f for f in FASHION_MNIST_FILES.values() if not (d / f).is_file()]
    if missing:
        raise TuneBudgetError(
            f"{field}: Fashion-MNIST not found in {d} (missing {missing[0]}); install it with "
            "'apt-get install -y dataset-fashion-mnist', or point task.root / TUNEBUDGET_DATA "
            "at a directory holding the four IDX gz files"
        )
    return d


def _fashion_mnist(task: TaskSpec, seed: int) -> tuple[np.ndarray, ...]:
    d = find_fashion_mnist(task.root)
    arrays = {k: _read_idx(d / f) for k, f in FASHION_MNIST_FILES.items()}
    return arrays["train_x"][:, None], arrays["train_y"], arrays["test_x"][:, None], arrays["test_y"]


def _digits(task: TaskSpec, seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    return _holdout(x, y, test_share=0.2, seed=seed)


def _holdout(x: np.ndarray, y: np.ndarray, test_share: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed + 1_000_003)
    order = rng.permutation(len(x))
    n_test = int(round(len(x) * test_share))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


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


def _synthetic(task: TaskSpec, seed: int) -> tuple[np.ndarray, ...]:
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
        return _holdout(x.astype(np.float32), y.astype(np.float32), 0.2, seed)
    centres = rng.normal(scale=2.0, size=(k, dim))
    y = rng.integers(0, k, size=n)
    x = centres[y] + o["noise"] * rng.normal(size=(n, dim))
    x[:n_easy] = centres[y[:n_easy]] + 0.05 * rng.normal(size=(n_easy, dim))
    return _holdout(x.astype(np.float32), y.astype(np.int64), 0.2, seed)


def _torchvision(task: TaskSpec, seed: int) -> tuple[np.ndarray, ...]:
    import torchvision

    if not task.root:
        raise TuneBudgetError(
            f"task.root: {task.dataset} needs a local directory with the data set "
            "(tunebudget never downloads); set task.root"
        )
    root = Path(task.root)
    if not root.is_dir():
        raise TuneBudgetError(f"task.root: directory {root} does not exist; point it at the {task.dataset} data")
    try:
        if task.dataset == "imagefolder":
            return _imagefolder(torchvision, root, seed)
        cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[task.dataset]
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except RuntimeError as exc:
        raise TuneBudgetError(
            f"task.root: {task.dataset} not found under {root} ({exc}); "
            "place the torchvision files there (tunebudget never downloads)"
        ) from None

    def arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(ds.data)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return x, np.asarray(ds.targets, dtype=np.int64)

    return (*arrays(train), *arrays(test))


def _imagefolder(torchvision: Any, root: Path, seed: int) -> tuple[np.ndarray, ...]:
    ds = torchvision.datasets.ImageFolder(str(root))
    xs = [np.asarray(ds.loader(p).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1) for p, _ in ds.samples]
    if len({x.shape for x in xs}) > 1:
        raise TuneBudgetError(f"task.root: images under {root} differ in size; resize them to one size first")
    x = np.stack(xs)
    y = np.asarray([t for _, t in ds.samples], dtype=np.int64)
    return _holdout(x, y, 0.2, seed)


SOURCES: dict[str, Callable[[TaskSpec, int], tuple[np.ndarray, ...]]] = {
    "fashion_mnist": _fashion_mnist,
    "digits": _digits,
    "synthetic": _synthetic,
    "synthetic_regression": _synthetic,
    "mnist": _torchvision,
    "cifar10": _torchvision,
    "imagefolder": _torchvision,
}


# ---- assembly ------------------------------------------------------------------------------

def _to_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def load_data(task: TaskSpec, seed: int = 0, device: torch.device | str = "cpu") -> DataBundle:
    """Load, split (fixed seed), normalise and move a data set to ``device``."""
    if task.dataset not in SOURCES:
        raise TuneBudgetError(f"task.dataset: unknown data set {task.dataset!r}; use one of {', '.join(SOURCES)}")
    if task.dataset not in ("synthetic", "synthetic_regression") and task.data_options:
        raise TuneBudgetError(
            f"task.data_options: {task.dataset} takes no options (got {sorted(task.data_options)}); remove them"
        )
    train_x, train_y, test_x, test_y = SOURCES[task.dataset](task, seed)
    xtr, xte = _to_float(train_x), _to_float(test_x)
    ytr, yte = torch.from_numpy(np.ascontiguousarray(train_y)), torch.from_numpy(np.ascontiguousarray(test_y))
    regression = task.kind == "regression"
    ytr, yte = (ytr.float(), yte.float()) if regression else (ytr.long(), yte.long())

    n_val = task.val_size if isinstance(task.val_size, int) and task.val_size >= 1 else int(len(xtr) * task.val_size)
    if not 1 <= n_val < len(xtr):
        raise TuneBudgetError(
            f"task.val_size: {task.val_size} leaves no training data out of {len(xtr)} samples; "
            f"use fewer than {len(xtr)} (or a share below 1)"
        )
    order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed + 17))
    val_idx, tr_idx = order[:n_val], order[n_val:]
    x_train, x_val = xtr[tr_idx], xtr[val_idx]
    y_train = ytr[tr_idx]
    num_outputs = 1 if regression else int(max(int(ytr.max()), int(yte.max())) + 1)
    x_train, y_train, noisy = apply_regime(x_train, y_train, task, seed, num_outputs)

    dims = [0, 2, 3] if x_train.dim() == 4 else [0]
    mean, std = x_train.mean(dim=dims, keepdim=True), x_train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    x_train.sub_(mean).div_(std)  # in place: both are fresh copies made by the indexing above
    x_val.sub_(mean).div_(std)
    y_val = ytr[val_idx]
    if regression:  # standardised targets: an MSE of 1 is what predicting the mean scores
        y_mean, y_std = y_train.mean(), y_train.std().clamp_min(1e-6)
        y_train, y_val, yte = (y_train - y_mean) / y_std, (y_val - y_mean) / y_std, (yte - y_mean) / y_std
    bundle = DataBundle(
        train=Split(x_train, y_train, noisy),
        val=Split(x_val, y_val),
        test=Split((xte - mean) / std, yte),
        kind=task.kind,
        num_outputs=num_outputs,
        input_shape=tuple(x_train.shape[1:]),
        name=task.dataset,
    )
    dev = torch.device(device)
    return bundle.to(dev, channels_last=dev.type == "cuda")


# ---- data regimes (training split only) ----------------------------------------------------------

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


def augment_batch(x: torch.Tensor, gen: torch.Generator | None = None, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and random translation by up to ``pad`` pixels, on the device.

    Whole-batch operations (one flip and one shift drawn per sample), no loop over samples.
    """
    n, c, h, w = x.shape
    flip = torch.rand(n, device=x.device, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device, generator=gen)
    rows = (dy + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(n, c, h, w + 2 * pad)
    cols = (dx + torch.arange(w, device=x.device).view(1, 1, 1, w)).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)
