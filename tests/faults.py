"""A model factory that injects faults into sweep trials (used through task.model).

``faults`` maps a call number (the n-th model built across all workers, counted with files in
``$TUNEBUDGET_FAULT_DIR``) to a fault:

* ``raise``: the trial raises, and so does every retry of the same trial (a real bug);
* ``kill``: the worker process SIGKILLs itself once (a crashed node); the retry runs clean;
* ``nan``: the model's weights are NaN, so the first loss is NaN (a diverging policy).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from tunebudget.models import MLP


def _next_call(folder: Path) -> int:
    i = 0
    while True:
        try:
            os.close(os.open(folder / f"call-{i}", os.O_CREAT | os.O_EXCL))
            return i
        except FileExistsError:
            i += 1


def faulty_mlp(input_shape, num_outputs, faults=None, hidden=(64,)):
    from ray import tune

    folder = Path(os.environ["TUNEBUDGET_FAULT_DIR"])
    trial = tune.get_context().get_trial_id()
    sticky = folder / f"raise-{trial}"
    if sticky.exists():
        raise RuntimeError(f"injected fault in trial {trial} (again)")
    mode = (faults or {}).get(str(_next_call(folder)))
    if mode == "raise":
        sticky.touch()
        raise RuntimeError(f"injected fault in trial {trial}")
    if mode == "kill":
        (folder / f"killed-{trial}").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    model = MLP(input_shape, num_outputs, hidden)
    if mode == "nan":
        (folder / f"nan-{trial}").touch()
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    return model
