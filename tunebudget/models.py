"""Models: the built-in ones (registered in :data:`tunebudget.registry.MODELS`) and any ``package.module:factory``.

Every factory is called as ``factory(input_shape, num_outputs, **task.model_options)`` and
returns an ``nn.Module`` mapping a batch to ``(batch, num_outputs)`` (a regression task has
one output). Built-in models end in a linear layer named ``head``; the margin scorer uses its
weight rows (see :func:`final_linear`).
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from tunebudget.errors import TuneBudgetError
from tunebudget.factory import check_options, first_line, import_factory
from tunebudget.policy import TaskSpec
from tunebudget.registry import MODELS, ModelEntry


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


def build_model(task: TaskSpec, input_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """Build the task's model; unknown options are a clear error, not a TypeError."""
    entry = MODELS.get(task.model) if task.model in MODELS else None
    factory = entry.load() if entry else import_factory(task.model)
    check_options(factory, task.model_options, "task.model_options", f"model {task.model}", skip=2)
    if entry is None:
        return _user_model(task.model, factory, tuple(input_shape), num_outputs, task.model_options)
    _check_widths(entry, task.model_options)
    try:
        return factory(tuple(input_shape), num_outputs, **task.model_options)
    except (RuntimeError, MemoryError) as exc:  # e.g. an allocation far beyond this machine's memory
        raise TuneBudgetError(f"task.model_options: {task.model} with {task.model_options} and {num_outputs} "
                              f"outputs cannot be built ({type(exc).__name__}: {first_line(exc)}); use smaller "
                              "widths") from None


#: The most a built-in model's width option may be.
_MAX_WIDTH = 65536


def _check_widths(entry: ModelEntry, options: dict[str, Any]) -> None:
    """Widths are whole numbers from 1 to 65536 (a negative, fractional or 1e9-wide layer is an
    error here, not a torch traceback or an attempt to allocate hundreds of GB)."""
    def ok(w: Any) -> bool:
        return isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= _MAX_WIDTH

    for name, value in options.items():
        kind = entry.widths.get(name)
        if kind == "list" and not (isinstance(value, list) and all(ok(w) for w in value)):
            raise TuneBudgetError(f"task.model_options.{name}: {value!r}; give a list of layer widths, whole "
                                  f"numbers from 1 to {_MAX_WIDTH} (e.g. [256, 128]; [] for none)")
        if kind == "one" and not ok(value):
            raise TuneBudgetError(f"task.model_options.{name}: {value!r}; give a whole number from 1 to {_MAX_WIDTH}")


def _user_model(spec: str, factory: Callable[..., Any], input_shape: tuple[int, ...], num_outputs: int,
                options: dict[str, Any]) -> nn.Module:
    """Call a user's model factory and check what it built with one forward pass on a batch of
    two zero inputs (on the CPU, before the clock starts): every failure is one line naming task.model."""
    try:
        inspect.signature(factory).bind(input_shape, num_outputs, **options)
    except TypeError as exc:
        raise TuneBudgetError(f"task.model: {spec} cannot be called as factory(input_shape, num_outputs, "
                              f"**model_options) ({exc}); give it those parameters") from None
    try:
        model = factory(input_shape, num_outputs, **options)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code: report it, do not crash (or exit)
        raise TuneBudgetError(f"task.model: {spec}{input_shape, num_outputs} raised {type(exc).__name__}: "
                              f"{first_line(exc)}; fix the factory") from None
    if not isinstance(model, nn.Module):
        raise TuneBudgetError(f"task.model: {spec} returned {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise TuneBudgetError(f"task.model: {spec} built a {type(model).__name__} with no trainable parameters; "
                              "return a model with parameters to train")
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *input_shape))
    except Exception as exc:  # noqa: BLE001
        raise TuneBudgetError(f"task.model: {spec}'s forward pass on inputs of shape {(2, *input_shape)} raised "
                              f"{type(exc).__name__}: {first_line(exc)}; make the model accept the task's "
                              "inputs (input_shape is passed to the factory)") from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (2, num_outputs):
        got = f"outputs of shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise TuneBudgetError(f"task.model: {spec} gives {got} for a batch of 2; the task needs ({2}, {num_outputs}) "
                              f"(one output per class, or 1 for regression: num_outputs is passed to the factory)")
    return model


class ModelSource:
    """A run's models: your module first (moved to ``device``), then untrained copies of it as given;
    else the task's model, built afresh at each call. ``channels_last`` for images on a GPU.

    Example:
        >>> from tunebudget.policy import TaskSpec
        >>> source = ModelSource(None, TaskSpec(dataset="digits", model="mlp"), (64,), 10, torch.device("cpu"))
        >>> a, b = source(), source()
        >>> a is not b, count_parameters(a) == count_parameters(b)
        (True, True)
    """

    def __init__(self, given: Optional[nn.Module], task: TaskSpec, input_shape: Sequence[int], num_outputs: int,
                 device: torch.device, channels_last: bool = False) -> None:
        self.given, self.template = given, copy.deepcopy(given) if given is not None else None
        self.task, self.input_shape, self.num_outputs = task, tuple(input_shape), num_outputs
        self.device, self.channels_last = device, channels_last

    def __call__(self) -> nn.Module:
        if self.given is not None:
            model, self.given = self.given.to(self.device), None
        elif self.template is not None:
            model = copy.deepcopy(self.template).to(self.device)
        else:
            model = build_model(self.task, self.input_shape, self.num_outputs).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
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
