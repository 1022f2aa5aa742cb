"""The Python API: train a model with a budget policy, and take it home.

Example (digits: seconds on a CPU):
    >>> import tunebudget
    >>> policy = tunebudget.policy_from_dict({"task": {"dataset": "digits", "model": "mlp", "val_size": 200},
    ...     "budget": {"seconds": None, "samples": 20000}, "selection": {"strategy": "rs2", "ratio": 0.5}})
    >>> result = tunebudget.train(policy, device="cpu")
    >>> result.status, result.test["accuracy"] > 0.8, type(result.model).__name__
    ('completed', True, 'MLP')

Your own arrays (the forms ``task.dataset: package.module:factory`` may return) and your own module:
    >>> import numpy as np, torch
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(600, 5)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    >>> net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> mine = tunebudget.train(policy.with_overrides({"task.val_size": 100}),
    ...                         data=(x[:500], y[:500], x[500:], y[500:]), model=net, device="cpu")
    >>> mine.model is net, mine.test["accuracy"] > 0.9
    (True, True)
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

from tunebudget.policy import BudgetPolicy, load_policy, policy_from_dict


def train(policy: Union[BudgetPolicy, dict, str, os.PathLike], *, data: Any = None, model: Any = None,
          device: str = "auto", threads: Optional[int] = None,
          on_eval: Optional[Callable[[dict[str, Any]], Optional[bool]]] = None) -> Any:
    """Train with ``policy`` and return the :class:`~tunebudget.trainer.TrainResult`: ``.model`` is the
    trained ``nn.Module``, ``.summary()`` what ``tunebudget train --json`` writes, ``.save(DIR)`` what
    ``--save DIR`` writes (:func:`tunebudget.load_trained` reads it back).

    Args:
        policy: a :class:`BudgetPolicy`, a policy (or search-space) file, or a mapping of sections.
        data: your data instead of the policy's ``task.dataset``, in a form a data factory may return
            (``(train_x, train_y, test_x, test_y)`` arrays or tensors, ``(train, test)`` Datasets, or a
            mapping of either, with an optional ``num_classes`` and validation split); the policy's
            ``task.kind``, data regime and ``val_size`` apply to it.
        model: your own ``nn.Module`` instead of ``task.model``; it is trained in place.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch CPU threads (default: the policy's ``training.threads``).
        on_eval: called with the metrics of every validation; return True to stop early.

    A run whose budget trains fewer than 5 steps says so in ``result.too_short``; bad input raises
    :class:`~tunebudget.errors.TuneBudgetError` naming the field.
    """
    from tunebudget.data import load_data
    from tunebudget.trainer import BudgetTrainer, resolve_device

    if isinstance(policy, dict):
        policy = policy_from_dict(policy)
    elif not isinstance(policy, BudgetPolicy):
        policy = load_policy(policy)
    bundle = load_data(policy.task, policy.seed, resolve_device(device), given=data) if data is not None else None
    return BudgetTrainer(policy, device=device, data=bundle, on_eval=on_eval, threads=threads, model=model).run()
