"""One sweep, start to end: ``run_sweep`` (preflight, parent run, stages) and ``_stages``
(search → confirm → verdict, each saved so that ``--resume`` continues where it stopped).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunebudget.errors import TuneBudgetError
from tunebudget.names import METRIC_TAG, MODE_TAG, ROLE_SWEEP, ROLE_TAG, SWEEP_NAME_TAG
from tunebudget.policy import policy_from_dict
from tunebudget.spaces import SearchSpace
from tunebudget.sweep.callbacks import INTERRUPTED, label_key
from tunebudget.sweep.plan import (
    Plan,
    SweepOptions,
    capacity_note,
    idle_round_note,
    ladder_note,
    make_plan,
    trial_slots,
)
from tunebudget.sweep.preflight import preflight
from tunebudget.sweep.resume import as_json, read_state, resume_or_start, resume_plan, save_state, sweep_lock
from tunebudget.sweep.stages import (
    SweepInterrupted,
    fail_parent,
    pick_candidates,
    refuse_failed,
    refuse_untrained,
    run_confirm,
    run_search,
    search_efficiency,
    search_rows,
)
from tunebudget.sweep.verdict import SweepOutcome, finalize
from tunebudget.tracking import Tracker
from tunebudget.util import git_commit

log = logging.getLogger(__name__)


def start_parent(tracker: Tracker, plan: Plan, space: SearchSpace, resources: dict[str, float]) -> dict[str, str]:
    """The sweep's MLflow parent run: its plan as params, provenance and cluster as tags."""
    import ray

    exp_id = tracker.experiment_id(plan.experiment)
    base = policy_from_dict(plan.base)
    tags = {ROLE_TAG: ROLE_SWEEP, SWEEP_NAME_TAG: plan.name, "space_file": plan.space_path,
            "space_hash": space.file_hash, "git_commit": git_commit(Path(plan.space_path).resolve().parent),
            "ray_address": plan.address or "local", "ray_cluster": json.dumps(resources, sort_keys=True),
            "device": "cuda" if plan.gpus > 0 else "cpu", "budget": f"{base.budget.amount:g} {base.budget.kind}",
            METRIC_TAG: plan.metric, MODE_TAG: plan.mode, "ray_version": ray.__version__}
    params = {f"sweep.{k}": v for k, v in asdict(plan).items() if k != "base"}
    params.update({f"base.{k}": v for k, v in base.flat().items()})
    parent = tracker.start_run(exp_id, f"sweep-{plan.name}", tags, params)
    return {"experiment_id": exp_id, "parent_id": parent}


def run_sweep(space: SearchSpace, opts: SweepOptions) -> SweepOutcome:
    """Preflight, search, confirm, verdict. Raises SweepInterrupted on Ctrl-C (resumable)."""
    import ray

    from tunebudget.progress import err_console, starting

    if opts.resume_or_start:
        opts = resume_or_start(space, opts)  # raises SweepFinished once it has finished: nothing to run
    if opts.resume:
        plan, state = resume_plan(space, opts)
    else:
        plan, state = make_plan(space, opts), {}

    budget = policy_from_dict(plan.base).budget
    what = (f"sweep {plan.name}: {'resuming; ' if opts.resume else ''}{plan.trials} searched trials + "
            f"{len(space.baselines)} baselines, {budget.amount:g} {budget.kind} each")
    # Ray takes seconds to start: a terminal sees a spinner from the first second (it vanishes, so
    # a preflight error stays one line); a log gets one line once Ray is up
    with starting(f"{what}; checking the stores and starting {'Ray at ' + plan.address if plan.address else 'a local Ray'}…",
                  opts.quiet):
        tracker, resources = preflight(plan)
    if not opts.quiet:
        err_console.print(f"{what}; Ray ready ({resources.get('CPU', 0):g} CPUs"
                          + (f", {resources.get('GPU', 0):g} GPUs" if resources.get("GPU") else "") + ")",
                          highlight=False, soft_wrap=True)
    # Tune adds CSV, JSON and TensorBoardX loggers unless told otherwise. The TensorBoardX one imports
    # torch in the driver as the first trial starts (3.3 s of the search stage on 2 cores, ~400 MB of
    # driver memory) to write event files nobody reads: MLflow holds the metrics. Set for restored
    # stages too (Tuner.restore brings back the callbacks of _run_config, not this setting).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    INTERRUPTED.clear()
    previous_term = _sigterm_as_interrupt()
    lock = contextlib.ExitStack()
    try:
        lock.enter_context(sweep_lock(plan.root))
        if not opts.resume and read_state(plan.root) is not None:
            raise TuneBudgetError(f"--name {plan.name}: a sweep of that name exists under {plan.storage}; continue "
                                  "it with --resume, or give another --name")
        from tunebudget.cluster import check_shared_storage

        check_shared_storage(plan.storage)
        if not state:
            with tracker.writing(f"cannot create the sweep's parent run in experiment {plan.experiment!r}"):
                ids = start_parent(tracker, plan, space, resources)
            state = save_state(plan, stage="search", space=as_json(space.raw), **ids)
        ids = {"experiment_id": state["experiment_id"], "parent_id": state["parent_id"]}
        state["slots"] = trial_slots(plan, resources)
        notes = [n for n in (capacity_note(plan, resources), idle_round_note(plan, len(space.baselines), resources),
                             ladder_note(plan, len(space.baselines))) if n]
        if notes and not opts.quiet and state.get("stage") == "search":
            for note in notes:
                err_console.print(note, highlight=False, soft_wrap=True)
        return _stages(plan, space, tracker, ids, state, opts)
    except KeyboardInterrupt:  # a second Ctrl-C, or SIGTERM outside a stage: still resumable once started
        if state:
            raise SweepInterrupted(plan.name) from None
        raise
    except (TuneBudgetError, SweepInterrupted):
        raise
    except Exception as exc:  # a bug or a failure nobody foresaw: the parent run says so, not RUNNING
        if state and state.get("stage") not in ("finished", "failed"):
            with contextlib.suppress(Exception):
                fail_parent(plan, tracker, {"parent_id": state["parent_id"]},
                            f"stopped by {type(exc).__name__}: {str(exc)[:200]}")
        raise
    finally:
        lock.close()
        _restore_sigterm(previous_term)
        ray.shutdown()


def _sigterm_as_interrupt() -> Any:
    """SIGTERM (a scheduler or `kill`) stops the sweep as Ctrl-C does: resumable, with the command
    printed, instead of Ray's crash dump and runs left RUNNING."""
    import signal

    def interrupt(sig: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)  # Tune's (and the callback's) during a stage
        if callable(handler) and handler not in (signal.default_int_handler,):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        return None


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)


def _stages(plan: Plan, space: SearchSpace, tracker: Tracker, ids: dict[str, str], state: dict[str, Any],
            opts: SweepOptions) -> SweepOutcome:
    """Search, confirm, verdict, from the stage the state says (a resumed sweep skips what is done)."""
    resume = opts.resume
    labels = {label_key(p): b.name for p, b in zip(space.baseline_points(), space.baselines)}
    t0 = time.perf_counter()
    if state.get("stage") == "search":
        grid = run_search(plan, space, ids, resume, opts.quiet)
        wall = time.perf_counter() - t0
        log.info("search stage done in %.1f s", wall)
        rows = search_rows(grid, plan, labels)
        if INTERRUPTED.is_set() or any(r["status"] == "INTERRUPTED" for r in rows):
            raise SweepInterrupted(plan.name)
        refuse_failed(plan, tracker, ids, rows)
        refuse_untrained(plan, tracker, ids, rows)
        # a resumed search ran in two sittings: its wall time here is only the second one
        efficiency = {} if resume else search_efficiency(rows, wall, state.get("slots", plan.concurrency))
        state = save_state(plan, stage="confirm", rows=rows, efficiency=efficiency)
        resume = False
    rows = state["rows"]
    candidates = pick_candidates(rows, space, plan)
    race = None
    if plan.confirm_seeds > 0 and candidates:
        race = run_confirm(plan, space, ids, candidates, resume, opts.quiet)
        if INTERRUPTED.is_set():
            raise SweepInterrupted(plan.name)
        log.info("confirm stage done after %.1f s", time.perf_counter() - t0)
    else:
        for c in candidates:
            c.values = [c.search_value] if c.search_value is not None else []
    outcome = finalize(plan, space, tracker, ids, rows, candidates, state.get("efficiency") or {},
                       slots=state.get("slots", plan.concurrency), race=race)
    save_state(plan, stage="finished")
    log.info("verdict and artifacts done after %.1f s", time.perf_counter() - t0)
    return outcome
