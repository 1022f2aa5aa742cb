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
from tunebudget.util import IMPORT_FIX, with_working_dir_on_path


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


def _import_factory(spec: str, field: str = "task.model") -> Callable[..., Any]:
    """The callable ``spec`` (``package.module:factory``) names; any failure to import it is a
    one-line TuneBudgetError naming ``field``. Shared by models and data sets (tunebudget.data):
    both import in the process that trains. The module is found on PYTHONPATH or in the working
    directory; a local sweep's Ray workers find it the same way (Ray adds the driver's working
    directory to their sys.path and they inherit its PYTHONPATH)."""
    module_name, _, attr = spec.partition(":")
    with_working_dir_on_path()
    fix = IMPORT_FIX
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # not found, or the user's module failed (or exited) while imported
        parts = module_name.split(".")
        not_found = isinstance(exc, ModuleNotFoundError) and exc.name in {
            ".".join(parts[: i + 1]) for i in range(len(parts))}
        if not_found:
            raise TuneBudgetError(f"{field}: cannot import {spec!r} ({_first_line(exc)}); {fix}") from None
        raise TuneBudgetError(f"{field}: cannot import {spec!r}: importing {module_name} raised "
                              f"{type(exc).__name__}: {_first_line(exc)}; fix the module (or install what it "
                              "imports) so that it imports") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise TuneBudgetError(f"{field}: cannot import {spec!r} (module {module_name} has no attribute {attr!r}); "
                              "give 'package.module:factory' of a callable it defines")
    if not callable(factory):
        raise TuneBudgetError(f"{field}: {spec!r} is not callable; give a function or class")
    return factory


def _first_line(exc: BaseException) -> str:
    """An exception's message on one line (a multi-line message keeps its first line)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def check_options(factory: Callable[..., Any], options: dict[str, Any], field: str, owner: str,
                  skip: int = 0) -> None:
    """``options`` against the keyword parameters of ``factory`` after its first ``skip`` (a model
    factory's input_shape and num_outputs): an unknown name (unless it takes ``**kwargs``) or a
    missing required one is a one-line error naming ``field``. Shared by model and data options."""
    try:
        params = list(inspect.signature(factory).parameters.values())[skip:]
    except (TypeError, ValueError):  # no signature to check against (a builtin, say): the call will tell
        return
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    bad = [k for k in options if k not in known]
    if bad and not takes_kwargs:
        raise TuneBudgetError(f"{field}: unknown option {bad[0]!r} for {owner}; valid options are "
                              f"{', '.join(known) or 'none'}")
    missing = [p.name for p in params if p.name in known and p.default is p.empty and p.name not in options]
    if missing:
        raise TuneBudgetError(f"{field}: {owner} needs option {missing[0]!r} (it has no default); "
                              f"set {field}.{missing[0]}")


def build_model(task: TaskSpec, input_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """Build the task's model; unknown options are a clear error, not a TypeError."""
    factory = BUILTIN.get(task.model) or _import_factory(task.model)
    check_options(factory, task.model_options, "task.model_options", f"model {task.model}", skip=2)
    if task.model in BUILTIN:
        _check_widths(task.model, task.model_options)
        try:
            return factory(tuple(input_shape), num_outputs, **task.model_options)
        except (RuntimeError, MemoryError) as exc:  # e.g. an allocation far beyond this machine's memory
            raise TuneBudgetError(f"task.model_options: {task.model} with {task.model_options} and {num_outputs} "
                                  f"outputs cannot be built ({type(exc).__name__}: {_first_line(exc)}); use smaller "
                                  "widths") from None
    return _user_model(task.model, factory, tuple(input_shape), num_outputs, task.model_options)


#: The built-in models' width options: a list of widths (mlp hidden) or one width.
_WIDTHS = {("mlp", "hidden"): "list", ("cnn", "width"): "one", ("cnn", "hidden"): "one"}
_MAX_WIDTH = 65536


def _check_widths(model: str, options: dict[str, Any]) -> None:
    """Widths are whole numbers from 1 to 65536 (a negative, fractional or 1e9-wide layer is an
    error here, not a torch traceback or an attempt to allocate hundreds of GB)."""
    def ok(w: Any) -> bool:
        return isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= _MAX_WIDTH

    for name, value in options.items():
        kind = _WIDTHS.get((model, name))
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
                              f"{_first_line(exc)}; fix the factory") from None
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
                              f"{type(exc).__name__}: {_first_line(exc)}; make the model accept the task's "
                              "inputs (input_shape is passed to the factory)") from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (2, num_outputs):
        got = f"outputs of shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise TuneBudgetError(f"task.model: {spec} gives {got} for a batch of 2; the task needs ({2}, {num_outputs}) "
                              f"(one output per class, or 1 for regression: num_outputs is passed to the factory)")
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
