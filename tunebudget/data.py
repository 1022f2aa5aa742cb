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
* ``package.module:factory``: your own data, see :func:`user_data`.

Inputs are standardised with the training split's mean and std, per feature (flat data) or per
channel (images); a feature constant in the training split is only centred (see :func:`standardise`).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import logging
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from tunebudget.errors import TuneBudgetError
from tunebudget.models import _first_line, _import_factory, check_options
from tunebudget.policy import DEBIAN_FASHION_MNIST, VAL_ROOT_LAYOUT, TaskSpec

log = logging.getLogger(__name__)

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
    #: ``carved`` out of the training split (task.val_size), or ``given`` by the data's source
    #: (task.val_root, or a factory's val_x / val_y): used as is.
    val_source: str = "carved"
    #: The standardisation fitted on the training split, to prepare new inputs as these were: inputs
    #: become ``(x * input_scale - input_mean) / input_std``, regression targets
    #: ``(y - target_mean) / target_std``. Kept on the CPU.
    input_mean: Optional[torch.Tensor] = None
    input_std: Optional[torch.Tensor] = None
    target_mean: Optional[torch.Tensor] = None
    target_std: Optional[torch.Tensor] = None
    #: Raw inputs (in the data set's own units: 0-255 for 8-bit images) times this, before the mean and std.
    input_scale: float = 1.0

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def to(self, device: torch.device, channels_last: bool = False) -> "DataBundle":
        def move(s: Split) -> Split:
            x = s.x.to(device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return Split(x, s.y.to(device), None if s.noisy is None else s.noisy.to(device))

        return dataclasses.replace(self, train=move(self.train), val=move(self.val), test=move(self.test))


# ---- raw sources: each returns (train_x, train_y, test_x, test_y) as numpy arrays -------------

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


def _fashion_mnist(task: TaskSpec, seed: int) -> tuple[np.ndarray, ...]:
    d = find_fashion_mnist(task.root)
    arrays = {k: _read_idx(d / f, 3 if k.endswith("_x") else 1) for k, f in FASHION_MNIST_FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise TuneBudgetError(f"{d}: Fashion-MNIST's {split} images and labels differ in count "
                                  f"({len(arrays[f'{split}_x'])} vs {len(arrays[f'{split}_y'])}); replace the files")
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
    root = Path(task.root).expanduser()
    if root.is_file():
        raise TuneBudgetError(f"task.root: {root} is a file; point it at the directory holding the {task.dataset} data")
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
    """One class per sub-directory of ``root``; every image must load and have one size."""
    x, y, classes = _read_image_folder(torchvision, root, "task.root")
    if len(classes) < 2:
        raise TuneBudgetError(f"task.root: {root} holds one class folder ({classes[0]}); a classifier needs "
                              "at least two: add a folder per class")
    return _holdout(x, y, 0.2, seed)


def _read_image_folder(torchvision: Any, root: Path, field: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images of ``ROOT/<class>/<image>`` as uint8 ``(N, 3, H, W)``, labels, and the class names."""
    from PIL import UnidentifiedImageError

    try:
        ds = torchvision.datasets.ImageFolder(str(root))
    except FileNotFoundError as exc:  # no class folders, or class folders without images
        raise TuneBudgetError(f"{field}: {root} holds no images in class folders ({_first_line(exc)}); "
                              "lay it out as ROOT/<class>/<image>.png with at least two classes") from None
    xs = []
    for path, _ in ds.samples:
        try:
            xs.append(np.asarray(ds.loader(path).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:  # PIL's errors for broken files
            raise TuneBudgetError(f"{field}: {path} is not a readable image ({_first_line(exc)}); "
                                  "remove or replace it") from None
    if len({x.shape for x in xs}) > 1:
        raise TuneBudgetError(f"{field}: images under {root} differ in size; resize them to one size first")
    return np.stack(xs), np.asarray([t for _, t in ds.samples], dtype=np.int64), list(ds.classes)


def _given_val(task: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    """The validation split in ``task.val_root`` (see :data:`VAL_ROOT_LAYOUT`), inputs and labels."""
    root = Path(str(task.val_root)).expanduser()
    if not root.is_dir():
        raise TuneBudgetError(f"task.val_root: directory {root} does not exist; point it at a directory holding "
                              f"{VAL_ROOT_LAYOUT[task.dataset]}")
    if task.dataset == "imagefolder":
        import torchvision

        classes = sorted(e.name for e in os.scandir(Path(str(task.root)).expanduser()) if e.is_dir())
        x, y, names = _read_image_folder(torchvision, root, "task.val_root")
        strange = sorted(set(names) - set(classes))
        if strange:
            raise TuneBudgetError(f"task.val_root: {root} has class folder {strange[0]!r}, which task.root does not "
                                  f"({', '.join(classes)}); give validation images of the training classes")
        return x, np.asarray([classes.index(names[i]) for i in y], dtype=np.int64)
    images, labels = root / "val-images-idx3-ubyte.gz", root / "val-labels-idx1-ubyte.gz"
    for f in (images, labels):
        if not f.is_file():
            raise TuneBudgetError(f"task.val_root: {f.name} not found in {root}; put the validation split there as "
                                  f"{VAL_ROOT_LAYOUT[task.dataset]}")
    x, y = _read_idx(images, 3)[:, None], _read_idx(labels, 1)
    if len(x) != len(y):
        raise TuneBudgetError(f"task.val_root: {root} holds {len(x)} validation images but {len(y)} labels; "
                              "give one label per image")
    return x, y


SOURCES: dict[str, Callable[[TaskSpec, int], tuple[np.ndarray, ...]]] = {
    "fashion_mnist": _fashion_mnist,
    "digits": _digits,
    "synthetic": _synthetic,
    "synthetic_regression": _synthetic,
    "mnist": _torchvision,
    "cifar10": _torchvision,
    "imagefolder": _torchvision,
}


# ---- your own data: task.dataset "package.module:factory" -------------------------------------

#: Keys of a factory's mapping of arrays; ``num_classes`` may come with either form, and a trusted
#: validation split (``val_x`` and ``val_y``, or ``val``) too.
ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y")
DATASET_KEYS = ("train", "test")
VAL_KEYS = {ARRAY_KEYS: ("val_x", "val_y"), DATASET_KEYS: ("val",)}
_RETURNS = ("return (train_x, train_y, test_x, test_y) arrays or tensors, (train, test) torch Datasets "
            "of (x, y) pairs, or a mapping of either (plus an optional num_classes, and val_x and val_y "
            "or val for a validation split of your own)")


@dataclass
class RawData:
    """A data set as loaded, before the validation carve: float inputs, int64 or float32 targets, and
    the validation split the source gave (None: carved out of the training split)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: Optional[int] = None
    val_x: Optional[torch.Tensor] = None
    val_y: Optional[torch.Tensor] = None
    #: What raw inputs were multiplied by to become these (1/255 for uint8 sources, else 1).
    input_scale: float = 1.0


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
    factory = _import_factory(spec, "task.dataset")
    check_options(factory, task.data_options, "task.data_options", f"data set {task.dataset}")
    try:
        out = factory(**task.data_options)
    except TuneBudgetError:
        raise
    except (Exception, SystemExit) as exc:  # the user's code failed: one line, the traceback under -v
        log.debug("task.dataset %s raised", spec, exc_info=True)
        raise TuneBudgetError(f"task.dataset: {spec} raised {type(exc).__name__}: {_first_line(exc)}; fix the "
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
                                  f"{_first_line(exc)}; fix the Dataset's __getitem__ (run with -v for the "
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
    t = _to_float(x.astype(np.float32) if x.dtype.kind == "b" else x)
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


# ---- assembly ------------------------------------------------------------------------------

def _to_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def _load_raw(task: TaskSpec, seed: int, given: Any = None) -> RawData:
    """The task's data set as tensors (a built-in source, or your own factory; or ``given``, your data
    handed over directly), with the validation split its source gives, if any."""
    if given is not None:
        raw = given if isinstance(given, RawData) else parse_own_data(given, task.kind, "data")
    elif task.dataset not in SOURCES and task.user_data:
        raw = user_data(task)
    else:
        if task.dataset not in SOURCES:
            raise TuneBudgetError(f"task.dataset: unknown data set {task.dataset!r}; use one of {', '.join(SOURCES)} "
                                  "or 'package.module:factory' (your own data)")
        if task.dataset not in ("synthetic", "synthetic_regression") and task.data_options:
            raise TuneBudgetError(
                f"task.data_options: {task.dataset} takes no options (got {sorted(task.data_options)}); remove them"
            )
        train_x, train_y, test_x, test_y = SOURCES[task.dataset](task, seed)
        raw = RawData(_to_float(train_x), torch.from_numpy(np.ascontiguousarray(train_y)),
                      _to_float(test_x), torch.from_numpy(np.ascontiguousarray(test_y)),
                      input_scale=1 / 255 if train_x.dtype == np.uint8 else 1.0)
        if task.val_root:
            val_x, val_y = _given_val(task)
            if len(val_x) == 0 or val_x.shape[1:] != train_x.shape[1:]:
                raise TuneBudgetError(f"task.val_root: its validation inputs have shape {val_x.shape}, the training "
                                      f"inputs {train_x.shape[1:]} per sample; give at least one sample of that shape")
            raw.val_x, raw.val_y = _to_float(val_x), torch.from_numpy(np.ascontiguousarray(val_y))
    cast = (lambda t: t.float()) if task.kind == "regression" else (lambda t: t.long())
    raw.train_y, raw.test_y = cast(raw.train_y), cast(raw.test_y)
    if raw.val_y is not None:
        raw.val_y = cast(raw.val_y)
    return raw


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


def digest(bundle: DataBundle) -> str:
    """A short content hash of what a run trains and validates on (MLflow's dataset digest): the shapes,
    every label, and up to 10,000 evenly spaced training and validation inputs, so that two runs
    share a digest exactly when they saw the same split, subset, noise draw and standardisation
    (the hash of a sample keeps it well under a second for 55k images)."""
    import hashlib

    h = hashlib.sha256()
    for split in (bundle.train, bundle.val):
        step = max(1, len(split) // 10_000)
        h.update(repr((tuple(split.x.shape), tuple(split.y.shape))).encode())
        h.update(split.y.detach().cpu().contiguous().numpy().tobytes())
        h.update(split.x[::step].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


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
