"""Model registry: ``mlp``, ``cnn``, ``resnet18`` and any ``package.module:factory``.

Every factory is called as ``factory(input_shape, num_outputs, **task.model_options)`` and
returns an ``nn.Module`` mapping a batch to ``(batch, num_outputs)`` (a regression task has
one output). Built-in models end in a linear layer named ``head``; the margin scorer uses its
weight rows (see :func:`final_linear`).
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import TaskSpec


class MLP(nn.Module):
    """Flatten, then ``hidden`` ReLU layers, then a linear ``head``."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, hidden: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class SmallCNN(nn.Module):
    """A CPU-friendly CNN for 28-32 px images: two strided conv blocks, then a linear ``head``.

    conv(3x3, stride 2, ``width``) → BN → ReLU → conv(3x3, stride 2, 2·``width``) → BN → ReLU
    → flatten → linear(``hidden``) → ReLU → linear ``head``. Strided convolutions instead of
    max-pooling: about twice the throughput on a CPU for the same accuracy at small budgets.
    """

    def __init__(self, input_shape: Sequence[int], num_outputs: int, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise TuneBudgetError(f"task.model cnn needs image inputs (C, H, W), got shape {tuple(input_shape)}; use mlp")
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(hidden, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.features(x)))


def resnet18(input_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """torchvision's ResNet-18 adapted to 28-32 px inputs: 3x3 stem, stride 1, no max-pool."""
    import torchvision

    if len(input_shape) != 3:
        raise TuneBudgetError(f"task.model resnet18 needs image inputs (C, H, W), got shape {tuple(input_shape)}")
    model = torchvision.models.resnet18(weights=None, num_classes=num_outputs)
    model.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": SmallCNN, "resnet18": resnet18}


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise TuneBudgetError(
            f"task.model: cannot import {spec!r} ({exc}); give 'package.module:factory' of an importable callable"
        ) from None
    if not callable(factory):
        raise TuneBudgetError(f"task.model: {spec!r} is not callable; give a function or class")
    return factory


def build_model(task: TaskSpec, input_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """Build the task's model; unknown options are a clear error, not a TypeError."""
    factory = BUILTIN.get(task.model) or _import_factory(task.model)
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    known = [n for n in list(params)[2:] if params[n].kind is not params[n].VAR_KEYWORD]
    bad = [k for k in task.model_options if k not in known]
    if bad and not takes_kwargs:
        raise TuneBudgetError(
            f"task.model_options: unknown option {bad[0]!r} for model {task.model}; "
            f"valid options are {', '.join(known) or 'none'}"
        )
    model = factory(tuple(input_shape), num_outputs, **task.model_options)
    if not isinstance(model, nn.Module):
        raise TuneBudgetError(f"task.model: {task.model} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def final_linear(model: nn.Module, num_outputs: int) -> nn.Linear | None:
    """The final linear layer producing the logits (``head``, ``fc``, or the last nn.Linear).

    Returns None when there is none with ``num_outputs`` outputs; the margin scorer then falls
    back to the plain logit margin.
    """
    for name in ("head", "fc"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Linear) and layer.out_features == num_outputs:
            return layer
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1] if last and last[-1].out_features == num_outputs else None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: nn.Module) -> dict[str, Any]:
    return {"class": type(model).__name__, "parameters": count_parameters(model)}
