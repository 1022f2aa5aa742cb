"""The data's records: :class:`RawData` as a source gives it, :class:`Split` and :class:`DataBundle`
as the trainer gets them (tensors resident on the training device), and a bundle's digest."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Optional

import torch


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


def digest(bundle: DataBundle) -> str:
    """A short content hash of what a run trains and validates on (MLflow's dataset digest): the shapes,
    every label, and up to 10,000 evenly spaced training and validation inputs, so that two runs
    share a digest exactly when they saw the same split, subset, noise draw and standardisation
    (the hash of a sample keeps it well under a second for 55k images)."""
    h = hashlib.sha256()
    for split in (bundle.train, bundle.val):
        step = max(1, len(split) // 10_000)
        h.update(repr((tuple(split.x.shape), tuple(split.y.shape))).encode())
        h.update(split.y.detach().cpu().contiguous().numpy().tobytes())
        h.update(split.x[::step].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]
