"""A trained model, saved to a directory and loaded back: the result of a run taken home.

``tunebudget train POLICY --save DIR`` (or :func:`save_trained`) writes:

* ``weights.pt``: the model's ``state_dict`` (CPU tensors; ``torch.load(path, weights_only=True)``);
* ``preprocess.pt``: the standardisation the trainer fitted on the training split (``input_mean``,
  ``input_std``; for regression ``target_mean``, ``target_std``), tensors only;
* ``policy.yaml``: the resolved policy the model was trained with (its ``task`` names the model
  factory and its options);
* ``model.json``: what is needed to rebuild and use the model (format version, tunebudget version,
  input shape, number of outputs, task kind, the SHA-256 of the two tensor files) and the run's test
  metrics.

The directory is written next to its final place and renamed into it, so an interrupted save leaves
nothing half-written. :func:`load_trained` rebuilds the model from the policy's ``task.model`` (a
built-in or your ``package.module:factory``, which must be importable), loads the weights and returns
it in eval mode with a :class:`Preprocess` that turns raw inputs, as your data set gives them, into
what the model saw in training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import BudgetPolicy, load_policy

#: Bumped when the layout of a saved directory changes; load_trained reads this version only.
SAVE_FORMAT = 1
FILES = ("weights.pt", "preprocess.pt", "policy.yaml", "model.json")


def check_save_dir(path: str | os.PathLike[str], flag: str = "--save") -> Path:
    """A directory ``save_trained`` can create: absent or empty, its parent writable. Checked before
    training, so a result that cannot be saved is never trained for nothing."""
    from tunebudget.util import check_writable_dir

    d = Path(path).expanduser()
    if str(path).strip() == "":
        raise TuneBudgetError(f"{flag}: empty; give a directory to create, e.g. {flag} model/")
    if d.exists() and not d.is_dir():
        raise TuneBudgetError(f"{flag} {path}: is a file; give a new directory to hold the model")
    if d.is_dir() and any(d.iterdir()):
        raise TuneBudgetError(f"{flag} {path}: the directory exists and is not empty; give a new directory "
                              "(nothing is overwritten)")
    check_writable_dir(d.resolve().parent, f"{flag} {path}")
    return d


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_trained(path: str | os.PathLike[str], model: Any, data: Any, policy: BudgetPolicy,
                 test: Optional[dict[str, float]] = None) -> Path:
    """Write ``model`` (its state), ``data``'s standardisation and ``policy`` to the new directory ``path``.

    Args:
        path: a directory that does not exist yet (or is empty).
        model: the trained ``nn.Module`` (a ``torch.compile``'d one is saved as its original module).
        data: the :class:`~tunebudget.data.DataBundle` it was trained on.
        policy: the policy it was trained with.
        test: the run's test metrics, recorded in ``model.json``.
    """
    import torch

    from tunebudget.version import __version__

    d = check_save_dir(path, "save")
    module = getattr(model, "_orig_mod", model)
    state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
    prep = {k: getattr(data, k).detach().cpu() for k in ("input_mean", "input_std", "target_mean", "target_std")
            if getattr(data, k) is not None}
    prep["input_scale"] = torch.tensor(float(data.input_scale))
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=d.parent))
    try:
        torch.save(state, tmp / "weights.pt")
        torch.save(prep, tmp / "preprocess.pt")
        (tmp / "policy.yaml").write_text(policy.to_yaml())
        info = {"format": SAVE_FORMAT, "tunebudget_version": __version__, "kind": data.kind,
                "input_shape": list(data.input_shape), "num_outputs": data.num_outputs,
                "model": policy.task.model, "model_options": policy.task.model_options,
                "dataset": policy.task.dataset, "test": test or {}, "parameters": sum(v.numel() for v in state.values()),
                "sha256": {f: _sha256(tmp / f) for f in ("weights.pt", "preprocess.pt")}}
        (tmp / "model.json").write_text(json.dumps(info, indent=2))
        if d.is_dir():
            d.rmdir()  # empty: checked above
        os.replace(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return d


@dataclass
class Preprocess:
    """Raw inputs, in the data set's own units (0-255 for 8-bit images, uint8 or float), to what the
    model saw in training: a channel added to ``(N, H, W)`` images, then
    ``(x * scale - input_mean) / input_std``.

    Call it on a numpy array or a tensor of a batch; it returns a float tensor."""

    input_shape: tuple[int, ...]
    mean: Any
    std: Any
    scale: float = 1.0

    def __call__(self, x: Any) -> Any:
        import numpy as np
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
        t = t.float()
        if len(self.input_shape) == 3 and t.dim() == 3:
            t = t.unsqueeze(1)
        if tuple(t.shape[1:]) != self.input_shape:
            raise TuneBudgetError(f"preprocess: inputs of shape {tuple(t.shape)}; the model takes (N, "
                                  f"{', '.join(map(str, self.input_shape))})")
        return (t * self.scale - self.mean) / self.std


@dataclass
class Trained:
    """A model loaded by :func:`load_trained`: ``model`` (eval mode, on the CPU), ``preprocess`` for raw
    inputs, the ``policy`` it was trained with and ``info`` (``model.json``)."""

    model: Any
    preprocess: Preprocess
    policy: BudgetPolicy
    info: dict[str, Any]
    #: Regression: the training targets' mean and std, to give predictions in the targets' own units.
    target: Optional[tuple[float, float]] = None

    def predict(self, x: Any) -> Any:
        """Class indices (classification) or values in the targets' own units (regression) for raw inputs."""
        import torch

        with torch.no_grad():
            out = self.model(self.preprocess(x))
        if self.target is None:
            return out.argmax(1)
        mean, std = self.target
        return out.squeeze(1) * std + mean


def load_trained(path: str | os.PathLike[str]) -> Trained:
    """Load a model saved by ``tunebudget train --save`` (or :func:`save_trained`).

    Every problem (a missing file, another format version, a file that does not match its recorded
    hash, weights that do not fit the model) is a :class:`TuneBudgetError` naming the directory.

    Example:
        >>> trained = load_trained("model/")                       # doctest: +SKIP
        >>> trained.predict(raw_test_images)[:5]                  # doctest: +SKIP
        tensor([9, 2, 1, 1, 6])
    """
    import torch

    from tunebudget.models import build_model

    d = Path(path).expanduser()
    if not d.is_dir():
        raise TuneBudgetError(f"load_trained {path}: no such directory; give a directory written by "
                              "'tunebudget train --save DIR'")
    missing = [f for f in FILES if not (d / f).is_file()]
    if missing:
        raise TuneBudgetError(f"load_trained {path}: {missing[0]} is missing; this is not a complete saved model "
                              "(save it again with 'tunebudget train --save DIR')")
    try:
        info = json.loads((d / "model.json").read_text())
    except (ValueError, OSError) as exc:
        raise TuneBudgetError(f"load_trained {path}: model.json cannot be read ({exc}); save the model again") from None
    if not isinstance(info, dict) or info.get("format") != SAVE_FORMAT:
        got = info.get("format") if isinstance(info, dict) else None
        raise TuneBudgetError(f"load_trained {path}: saved in format {got!r} (tunebudget "
                              f"{info.get('tunebudget_version', '?') if isinstance(info, dict) else '?'}); this "
                              f"tunebudget reads format {SAVE_FORMAT}: load it with the version that saved it")
    for name, digest in (info.get("sha256") or {}).items():
        if _sha256(d / name) != digest:
            raise TuneBudgetError(f"load_trained {path}: {name} does not match the hash recorded in model.json "
                                  "(changed or truncated since it was saved); save the model again")
    policy = load_policy(d / "policy.yaml")
    shape, outputs = tuple(info["input_shape"]), int(info["num_outputs"])
    model = build_model(policy.task, shape, outputs)
    try:
        state = torch.load(d / "weights.pt", map_location="cpu", weights_only=True)
        prep = torch.load(d / "preprocess.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, KeyError, EOFError, OSError) as exc:
        raise TuneBudgetError(f"load_trained {path}: the weights do not load into {policy.task.model} "
                              f"({str(exc).splitlines()[0][:200]}); save the model again") from None
    model.eval()
    target = (float(prep["target_mean"].reshape(-1)[0]), float(prep["target_std"].reshape(-1)[0])) \
        if "target_mean" in prep else None
    scale = float(prep["input_scale"]) if "input_scale" in prep else 1.0
    return Trained(model, Preprocess(shape, prep["input_mean"], prep["input_std"], scale), policy, info, target)


def standardised_module(model: Any, data: Any) -> Any:
    """``model`` with the input standardisation in front (``(x * scale - mean) / std``, a channel added to
    ``(N, H, W)`` images): takes raw inputs in the data set's own units, as float32. What is logged as
    the MLflow model, so that ``mlflow.pyfunc.load_model(uri).predict(raw_inputs)`` works."""
    import torch

    class Standardised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = getattr(model, "_orig_mod", model)
            self.register_buffer("mean", data.input_mean.detach().cpu().clone())
            self.register_buffer("std", data.input_std.detach().cpu().clone())
            self.scale = float(data.input_scale)
            self.image = len(data.input_shape) == 3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.image and x.dim() == 3:
                x = x.unsqueeze(1)
            return self.model((x.float() * self.scale - self.mean) / self.std)

    return Standardised().eval()


def raw_inputs(data: Any, x: Any) -> Any:
    """Standardised inputs of ``data`` back in the data set's own units (an input example for MLflow)."""
    return (x.detach().cpu() * data.input_std + data.input_mean) / data.input_scale
