"""On-device augmentation of image batches (``task.augment``)."""

from __future__ import annotations

import torch


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
