"""The trainable: what runs in a Ray worker for one trial (a BudgetTrainer run, reporting
each validation). Data sets are cached per worker process.
"""


from __future__ import annotations

import json
import logging
import time
from typing import Any

from tunebudget.policy import BudgetPolicy, policy_from_dict
from tunebudget.sweep.halving import FIDELITY
from tunebudget.sweep.records import Outcome

log = logging.getLogger(__name__)


_DATA_CACHE: dict[str, Any] = {}


def _cached_data(policy: BudgetPolicy, device: str) -> tuple[Any, str]:
    """Data sets are loaded (and their content digest computed) once per worker process and reused by
    the trials it runs."""
    from tunebudget.data import load_data
    from tunebudget.trainer import resolve_device

    dev = resolve_device(device)
    key = json.dumps([policy.task.model_dump(mode="json"), policy.seed, str(dev)], sort_keys=True)
    if key not in _DATA_CACHE:
        from tunebudget.data import digest

        _DATA_CACHE.clear()
        bundle = load_data(policy.task, policy.seed, dev)
        _DATA_CACHE[key] = (bundle, digest(bundle))
    return _DATA_CACHE[key]


def trial_policy(config: dict[str, Any], base: BudgetPolicy) -> BudgetPolicy:
    """The policy a trial trains: a confirmation job's full policy, or base + sampled params."""
    job = config.get("job")
    if job:
        return policy_from_dict(job["policy"], f"confirm job {job['candidate']}")
    params = {k: v for k, v in config.items() if "." in k}
    fidelity = config.get(FIDELITY)
    if fidelity:  # a rung of restart successive halving: the whole policy, at the rung's budget
        params[f"budget.{base.budget.kind}"] = float(fidelity["amount"])
        if not fidelity.get("top"):  # a lower rung's value is its final validation: no periodic ones
            params["budget.eval_every"] = 1.0
    return base.with_overrides(params, source="trial parameters")


def _process_started_at() -> float:
    """When this worker process started (wall clock): before the sweep's parent run if Ray
    prestarted it."""
    import psutil  # a Ray dependency

    return psutil.Process().create_time()


def trainable(config: dict[str, Any], base: BudgetPolicy, threads: int, metric: str, mode: str) -> None:
    """Ray Tune function trainable: one BudgetTrainer run, reporting each validation."""
    entered = time.time()
    import socket
    import sys

    warm = "torch._dynamo" in sys.modules  # imported before the trial: a preloaded worker, or a reused one

    import ray
    import torch
    from ray import tune

    from tunebudget.trainer import BudgetTrainer

    torch.set_num_threads(threads)
    policy = trial_policy(config, base)
    device = "cuda" if torch.cuda.is_available() and tune.get_context().get_trial_resources() \
        .required_resources.get("GPU", 0) > 0 else "cpu"
    data, data_digest = _cached_data(policy, device)

    def on_eval(metrics: dict[str, Any]) -> None:
        tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    fidelity = config.get(FIDELITY)
    # the test split is evaluated only where it is used: a full-budget trial, or the top rung
    trainer = BudgetTrainer(policy, device=device, data=data, on_eval=on_eval, threads=threads,
                            evaluate_test=not fidelity or bool(fidelity.get("top")))  # the CPU share wins
    setup_seconds = time.time() - entered  # imports, data (cached per worker), model: not training
    result = trainer.run()
    final = {k: v for k, v in (result.history[-1] if result.history else {}).items() if isinstance(v, (int, float))}
    final.update({f"val_{k}": v for k, v in result.val.items()})  # with keep_best: the kept weights
    final.update({f"test_{k}": v for k, v in result.test.items()})
    final.update({k: v for k, v in result.stats.items() if isinstance(v, (int, float)) and v is not None})
    final["setup_seconds"] = setup_seconds
    final["trial_started_at"] = entered  # wall clock, for the sweep-efficiency benchmark's timeline
    final["worker_warm"] = int(warm)
    final["worker_started_at"] = _process_started_at()
    # a trial that ran to its end says so (an interrupted one never reports this)
    final.update(Outcome(finished=True, diverged=result.status == "diverged", too_short=result.too_short).metrics())
    final["node_id"] = ray.get_runtime_context().get_node_id()  # where it ran (tagged in MLflow)
    final["hostname"] = socket.gethostname()
    final["device"] = str(result.stats.get("device", device))
    final["data_digest"] = data_digest  # the driver logs it as the run's MLflow dataset input
    final["test_size"] = len(data.test)
    if result.status == "diverged" or metric not in final or result.too_short:
        final[metric] = 0.0 if mode == "max" else 1e12  # the worst value: diverged (or untrained) policies lose
    tune.report(final)
