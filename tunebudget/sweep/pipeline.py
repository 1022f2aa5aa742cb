"""One sweep, start to end: ``run_sweep`` (the plan, preflight, the lock, the parent run) and
:class:`Sweep`, whose methods are the stages (search → confirm → verdict, each saved so that
``--resume`` continues where it stopped) and whose :meth:`Sweep.fail` is the one way a sweep's
parent run ends FAILED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tunebudget.errors import TuneBudgetError
from tunebudget.names import METRIC_TAG, MODE_TAG, ROLE_SWEEP, ROLE_TAG, SWEEP_NAME_TAG, VERDICT_TAG
from tunebudget.options import SweepOptions
from tunebudget.spaces import SearchSpace
from tunebudget.sweep.callbacks import INTERRUPTED, label_key
from tunebudget.sweep.plan import Plan, capacity_note, idle_round_note, ladder_note, make_plan, trial_slots
from tunebudget.sweep.preflight import preflight
from tunebudget.sweep.race import Race
from tunebudget.sweep.records import Candidate, TrialRow, TrialStatus
from tunebudget.sweep.resume import as_json, read_state, resume_or_start, resume_plan, save_state, sweep_lock
from tunebudget.sweep.stages import (
    SweepInterrupted,
    all_failed,
    all_untrained,
    pick_candidates,
    run_confirm,
    run_search,
    search_efficiency,
    search_rows,
)
from tunebudget.sweep.verdict import SweepOutcome, judge, publish
from tunebudget.tracking import Tracker
from tunebudget.util import git_commit

log = logging.getLogger(__name__)


def start_parent(tracker: Tracker, plan: Plan, space: SearchSpace, resources: dict[str, float]) -> dict[str, str]:
    """The sweep's MLflow parent run: its plan as params, provenance and cluster as tags."""
    import ray

    exp_id = tracker.experiment_id(plan.experiment)
    base = plan.base
    tags = {ROLE_TAG: ROLE_SWEEP, SWEEP_NAME_TAG: plan.name, "space_file": plan.space_path,
            "space_hash": space.file_hash, "git_commit": git_commit(Path(plan.space_path).resolve().parent),
            "ray_address": plan.address or "local", "ray_cluster": json.dumps(resources, sort_keys=True),
            "device": "cuda" if plan.gpus > 0 else "cpu", "budget": f"{base.budget.amount:g} {base.budget.kind}",
            METRIC_TAG: plan.metric, MODE_TAG: plan.mode, "ray_version": ray.__version__}
    params = plan.params()
    params.update({f"base.{k}": v for k, v in base.flat().items()})
    parent = tracker.start_run(exp_id, f"sweep-{plan.name}", tags, params)
    return {"experiment_id": exp_id, "parent_id": parent}


def run_sweep(space: SearchSpace, opts: SweepOptions) -> SweepOutcome:
    """Preflight, search, confirm, verdict. Raises SweepInterrupted on Ctrl-C (resumable)."""
    import ray

    from tunebudget.progress import err_console, starting

    if opts.resume_or_start:
        opts = resume_or_start(space, opts)  # raises SweepFinished once it has finished: nothing to run
    plan, state = resume_plan(space, opts) if opts.resume else (make_plan(space, opts), {})
    budget = plan.base.budget
    what = (f"sweep {plan.name}: {'resuming; ' if opts.resume else ''}{plan.sweep.trials} searched trials + "
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
    # Tune snapshots the experiment every >= 10 s by default: a driver killed outright (SIGKILL, a lost
    # pod) then loses the trials started since, and the resume runs and logs them again under new
    # ids. Every second, a trial is in the snapshot (by its id) before it can finish.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    INTERRUPTED.clear()
    previous_term = _sigterm_as_interrupt()
    sweep = Sweep(plan, space, opts, tracker, state)
    try:
        with sweep_lock(plan.root):
            sweep.open(resources)
            return sweep.run()
    except KeyboardInterrupt:  # a second Ctrl-C, or SIGTERM outside a stage: still resumable once started
        if sweep.state:
            raise SweepInterrupted(plan.name) from None
        raise
    except (TuneBudgetError, SweepInterrupted):
        raise
    except Exception as exc:  # a bug or a failure nobody foresaw: the parent run says so, not RUNNING
        if sweep.state and sweep.state.get("stage") not in ("finished", "failed"):
            with contextlib.suppress(Exception):
                sweep.fail(f"stopped by {type(exc).__name__}: {str(exc)[:200]}")
        raise
    finally:
        _restore_sigterm(previous_term)
        ray.shutdown()


@dataclass
class Sweep:
    """One sweep as it runs: its plan, its space, the tracker, and its saved state (the stage it is
    at, the parent run's ids, the search rows). Each stage is a method; ``fail`` ends it."""

    plan: Plan
    space: SearchSpace
    opts: SweepOptions
    tracker: Tracker
    #: the state file's content ({} until the parent run exists)
    state: dict[str, Any]

    @property
    def ids(self) -> dict[str, str]:
        return {"experiment_id": self.state["experiment_id"], "parent_id": self.state["parent_id"]}

    def open(self, resources: dict[str, float]) -> None:
        """Under the lock: refuse a name taken, check the storage, create the parent run (a new sweep),
        print the notes on the cluster's size."""
        from tunebudget.cluster import check_shared_storage
        from tunebudget.progress import err_console

        plan = self.plan
        if not self.opts.resume and read_state(plan.root) is not None:
            raise TuneBudgetError(f"--name {plan.name}: a sweep of that name exists under {plan.storage}; continue "
                                  "it with --resume, or give another --name")
        check_shared_storage(plan.storage)
        # saved, so that the verdict says how many trials ran at once after a resume too
        slots = trial_slots(plan, resources)
        if not self.state:
            with self.tracker.writing(f"cannot create the sweep's parent run in experiment {plan.experiment!r}"):
                ids = start_parent(self.tracker, plan, self.space, resources)
            self.state = save_state(plan, stage="search", space=as_json(self.space.raw), slots=slots, **ids)
        else:
            self.state = save_state(plan, slots=slots)
        baselines = len(self.space.baselines)
        notes = [note for note in (capacity_note(plan, resources), idle_round_note(plan, baselines, resources),
                                   ladder_note(plan, baselines)) if note]
        if not self.opts.quiet and self.state.get("stage") == "search":
            for note in notes:
                err_console.print(note, highlight=False, soft_wrap=True)

    def run(self) -> SweepOutcome:
        """Search, confirm, verdict, from the stage the state says (a resumed sweep skips what is done)."""
        t0 = time.perf_counter()
        resume = self.opts.resume
        if self.state.get("stage") == "search":
            rows = self.search(resume)
            resume = False
        else:
            rows = [TrialRow.from_json(r) for r in self.state["rows"]]
        candidates, race = self.confirm(rows, resume)
        log.info("confirm stage done after %.1f s", time.perf_counter() - t0)
        outcome = self.finish(rows, candidates, race)
        log.info("verdict and artifacts done after %.1f s", time.perf_counter() - t0)
        return outcome

    def search(self, resume: bool) -> list[TrialRow]:
        """Stage 2: the search; its rows, saved with the state, or the sweep refused in one line."""
        plan, space = self.plan, self.space
        labels = {label_key(p): b.name for p, b in zip(space.baseline_points(), space.baselines)}
        t0 = time.perf_counter()
        grid = run_search(plan, space, self.ids, resume, self.opts.quiet)
        wall = time.perf_counter() - t0
        log.info("search stage done in %.1f s", wall)
        rows = search_rows(grid, plan, labels)
        if INTERRUPTED.is_set() or any(r.status is TrialStatus.INTERRUPTED for r in rows):
            raise SweepInterrupted(plan.name)
        for refusal in (all_failed(plan, rows), all_untrained(plan, rows)):
            if refusal is not None:
                self.fail(refusal.why)
                raise TuneBudgetError(refusal.message)
        # a resumed search ran in two sittings: its wall time here is only the second one
        efficiency = {} if resume else search_efficiency(rows, wall, self.state.get("slots", plan.sweep.concurrency))
        self.state = save_state(plan, stage="confirm", rows=[r.to_json() for r in rows], efficiency=efficiency)
        return rows

    def confirm(self, rows: list[TrialRow], resume: bool) -> tuple[list[Candidate], Optional[Race]]:
        """Stage 3: the candidates with fresh paired seeds (none: each keeps its search value)."""
        candidates = pick_candidates(rows, self.space, self.plan)
        if self.plan.sweep.confirm_seeds <= 0 or not candidates:
            for c in candidates:
                c.values = [c.search_value] if c.search_value is not None else []
            return candidates, None
        race = run_confirm(self.plan, self.space, self.ids, candidates, resume, self.opts.quiet)
        if INTERRUPTED.is_set():
            raise SweepInterrupted(self.plan.name)
        return candidates, race

    def finish(self, rows: list[TrialRow], candidates: list[Candidate], race: Optional[Race]) -> SweepOutcome:
        """Stage 4: the verdict, published on the parent run; the sweep is finished."""
        plan = self.plan
        j = judge(plan, self.space, rows, candidates, self.state.get("efficiency") or {},
                  slots=self.state.get("slots", plan.sweep.concurrency), race=race)
        if j is None:
            self.fail("no finished trials")
            raise TuneBudgetError(f"sweep {plan.name}: no trial finished, so there is no best policy; "
                                  "see the failed runs in MLflow (tunebudget ui)")
        publish(plan, self.tracker, self.ids["parent_id"], j, candidates, rows)
        save_state(plan, stage="finished")
        return SweepOutcome(plan.name, self.ids["parent_id"], plan.experiment, j.best, j.verdict, candidates, rows,
                            j.summary_md)

    def fail(self, why: str) -> None:
        """The sweep cannot go on: its parent run ends FAILED with ``why`` (not left RUNNING), and
        ``--resume`` refuses it rather than re-running what fails again."""
        parent = self.state["parent_id"]
        self.tracker.set_tags(parent, {VERDICT_TAG: why})
        self.tracker.finish(parent, "FAILED")
        self.state = save_state(self.plan, stage="failed")


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
