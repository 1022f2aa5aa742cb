"""Sweeps: Ray Tune runs trials of BudgetTrainer, Optuna proposes policies, MLflow keeps them.

Stages of :func:`run_sweep` (``pipeline.py``, the flow of one sweep in one function):

1. **preflight** (``plan.py``, ``preflight.py``), before anything is written: options resolved
   against the space's ``sweep`` section and checked, the factories' modules found, the tracking
   store, the Ray storage and the Optuna storage checked, Ray started or joined and its resources
   checked (GPUs asked for must exist).
2. **search** (``stages.py``): a Tune ``Tuner`` over the function trainable (``worker.py``, what
   runs in a Ray worker), with ``OptunaSearch`` (define-by-run space, seeded sampler, persistent
   Optuna storage so the study resumes and optuna-dashboard can read it) and the baselines
   enqueued first through ``points_to_evaluate``.
3. **confirm** (``stages.py``): the top-k searched policies and the baselines (plus RS2 at the
   winner's ratio) re-run with fresh seeds, the same ones for every candidate: all at once
   (``fixed``) or as a race in rounds that drops the candidates the leader beats (``race.py``); the
   best policy is chosen on the confirmed mean, not on one lucky trial.
4. **verdict and artifacts** (``verdict.py``): the paired comparison of the best policy with the
   best baseline (``report.verdict``); the parent MLflow run gets the best policy YAML, the summary
   table and the plots; ``tunebudget export`` reads them back.

The driver writes everything to MLflow through a Tune callback (``callbacks.py``; trial workers
never talk to it). A sweep's state lives in ``<storage>/<sweep>/tunebudget_sweep.json``
(``resume.py``), so ``--resume`` finds the same parent run, the same Optuna study and the Tune
experiment to restore.
"""

import importlib
from typing import Any

#: What ``tunebudget.sweep`` hands on, and the module that defines it. Imported on first use, so
#: that ``import tunebudget.sweep.records`` (the report's records) does not start the whole sweep
#: machinery (Ray, the stages) and no import runs in a circle through this package's face.
_EXPORTS = {
    "POLICY_TAG": "tunebudget.names", "Plan": "tunebudget.sweep.plan", "SweepOptions": "tunebudget.options",
    "capacity_note": "tunebudget.sweep.plan", "idle_round_note": "tunebudget.sweep.plan",
    "ladder_note": "tunebudget.sweep.plan", "make_plan": "tunebudget.sweep.plan", "trial_slots": "tunebudget.sweep.plan",
    "run_sweep": "tunebudget.sweep.pipeline", "SweepInterrupted": "tunebudget.sweep.stages",
    "SweepOutcome": "tunebudget.sweep.verdict",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tunebudget.sweep' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
