"""The search and confirm stages: Tune runs the trials, Optuna proposes the searched ones; their
results become rows and candidates, and the checks that say when a sweep cannot yield a result.
"""


from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ray.tune.stopper import Stopper

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import BudgetPolicy
from tunebudget.spaces import SearchSpace
from tunebudget.sweep.callbacks import INTERRUPTED, SweepCallback, label_key
from tunebudget.sweep.halving import FIDELITY
from tunebudget.sweep.plan import Plan
from tunebudget.sweep.race import Race
from tunebudget.sweep.records import Candidate, Outcome, TrialRow, TrialStatus
from tunebudget.sweep.worker import trainable

log = logging.getLogger(__name__)




CONFIRM_SEED_BASE = 1000


class SweepInterrupted(Exception):
    """The driver was interrupted; finished trials are logged, ``--resume`` continues."""


def finished(trial_result: Any) -> bool:
    return Outcome.of(trial_result.metrics).finished


def _make_sampler(plan: Plan) -> Any:
    import optuna

    if plan.sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=plan.sweep.seed)
    if plan.sweep.sampler == "gp":
        return optuna.samplers.GPSampler(seed=plan.sweep.seed)
    return optuna.samplers.TPESampler(seed=plan.sweep.seed, n_startup_trials=max(4, min(10, plan.sweep.trials // 3)))


def _scheduler(plan: Plan) -> Any:
    if plan.sweep.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    budget = float(plan.base.budget.seconds or 60.0)
    # time_total_s includes validation and set-up; give trials room beyond the budget itself
    return ASHAScheduler(time_attr="time_total_s", metric=plan.metric, mode=plan.mode, max_t=budget * 3,
                         grace_period=max(1.0, budget * 0.3), reduction_factor=3)


def _trainable(plan: Plan) -> Any:
    from ray import tune

    fn = tune.with_parameters(trainable, base=plan.base, threads=plan.threads, metric=plan.metric, mode=plan.mode)
    return tune.with_resources(fn, {"cpu": plan.cpus, "gpu": plan.gpus})


#: The search stops when this many trials have finished and every one trained too few steps: the
#: budget is too small for the task, and the rest of the trials would say the same.
UNTRAINED_AFTER = 4


class _StopIfUntrainable(Stopper):
    """A Tune stopper: stop everything once the first UNTRAINED_AFTER finished trials all trained
    under MIN_STEPS steps (see all_untrained, which then ends the sweep in one line)."""

    def __init__(self) -> None:
        self.finished: list[bool] = []

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        outcome = Outcome.of(result)
        if outcome.finished:
            self.finished.append(outcome.too_short)
        return False

    def stop_all(self) -> bool:
        return len(self.finished) >= UNTRAINED_AFTER and all(self.finished)


def _run_config(plan: Plan, stage: str, callback: SweepCallback, name: Optional[str] = None,
                guard: Optional[Any] = None) -> Any:
    """``guard``: the search's SlotGuard (searcher.limited), a callback and a stopper both."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.stopper import CombinedStopper
    stopper = _StopIfUntrainable() if stage == "search" else None
    if guard is not None:
        stopper = CombinedStopper(stopper, guard) if stopper else guard
    # CSV and JSON loggers by name: the result grid's metric histories are read from them (Tune's
    # automatic loggers are off, see run_sweep)
    return tune.RunConfig(name=name or stage, storage_path=str(plan.root), verbose=0, stop=stopper,
                          callbacks=[callback, *([guard] if guard else []), CSVLoggerCallback(), JsonLoggerCallback()],
                          failure_config=tune.FailureConfig(max_failures=plan.sweep.max_failures))


def _callback(plan: Plan, stage: str, ids: dict[str, str], labels: dict[str, str], total: int,
              quiet: bool) -> SweepCallback:
    return SweepCallback({"tracking_uri": plan.tracking_uri, "experiment_id": ids["experiment_id"],
                          "parent_id": ids["parent_id"], "plan": plan.to_json(), "stage": stage, "labels": labels,
                          "total": total, "quiet": quiet})


def run_search(plan: Plan, space: SearchSpace, ids: dict[str, str], resume: bool, quiet: bool) -> Any:
    """Stage 2: Optuna proposes, Tune runs; the baselines are enqueued first."""
    import optuna
    from ray import tune
    from tunebudget.sweep.searcher import ResumableOptunaSearch as OptunaSearch  # resumes after a hard kill
    from tunebudget.sweep.searcher import limited

    optuna.logging.set_verbosity(optuna.logging.INFO if log.isEnabledFor(logging.DEBUG) else optuna.logging.WARNING)
    path = plan.root / "search"
    total = plan.sweep.trials + len(space.baselines)
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=_trainable(plan), resume_errored=False)
        return tuner.fit()
    points = space.baseline_points()
    labels = {label_key(p): b.name for p, b in zip(points, space.baselines)}
    if plan.sweep.fidelity == "restart":
        return _run_halving(plan, space, ids, points, labels, quiet)
    searcher = OptunaSearch(space=space.suggest, metric=plan.metric, mode=plan.mode,
                            points_to_evaluate=points or None, sampler=_make_sampler(plan),
                            study_name=plan.name, storage=optuna.storages.RDBStorage(plan.optuna_storage))
    search, guard = limited(searcher, plan.sweep.concurrency)  # its slots kept true to Tune's trials on resume
    tuner = tune.Tuner(
        _trainable(plan),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=total, reuse_actors=True,
                                    time_budget_s=plan.search_seconds, scheduler=_scheduler(plan)),
        run_config=_run_config(plan, "search", _callback(plan, "search", ids, labels, total, quiet), guard=guard),
    )
    return tuner.fit()


def _run_halving(plan: Plan, space: SearchSpace, ids: dict[str, str], points: list[dict[str, Any]],
                 labels: dict[str, str], quiet: bool) -> Any:
    """Stage 2 with restart successive halving: the searcher decides each trial's rung."""
    from ray import tune

    from tunebudget.sweep.halving import RestartHalving, expected_trials, max_trials
    from tunebudget.sweep.searcher import limited

    total = plan.sweep.trials + len(points)  # full-budget trials' worth of compute
    searcher = RestartHalving(space, plan.metric, plan.mode, plan.rungs, plan.sweep.eta, plan.sweep.trials, points,
                              _make_sampler(plan), plan.name, plan.optuna_storage)
    search, guard = limited(searcher, plan.sweep.concurrency)
    tuner = tune.Tuner(
        _trainable(plan),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=max_trials(total, plan.rungs), reuse_actors=True,
                                    time_budget_s=plan.search_seconds),
        run_config=_run_config(plan, "search", _callback(plan, "search", ids, labels,
                                                         expected_trials(total, plan.rungs, plan.sweep.eta), quiet),
                               guard=guard),
    )
    return tuner.fit()


def _user_error(error: Optional[BaseException]) -> Optional[str]:
    """The one-line message of a trial that failed on bad input (a TuneBudgetError raised in the
    worker, which Ray wraps), else None."""
    cause = getattr(error, "cause", error)
    return str(cause).strip().splitlines()[0] if isinstance(cause, TuneBudgetError) and str(cause).strip() else None


def _trial_status(r: Any, plan: Plan) -> TrialStatus:
    if r.error:
        return TrialStatus.ERROR
    if finished(r):
        return TrialStatus.TERMINATED
    if INTERRUPTED.is_set():
        return TrialStatus.INTERRUPTED
    return TrialStatus.STOPPED if plan.sweep.scheduler == "asha" else TrialStatus.CUT


def _curve(r: Any, metric: str) -> list[tuple[float, float]]:
    """A trial's (training seconds, metric) at each validation, from Tune's result history."""
    history = r.metrics_dataframe
    if history is None or metric not in history or "train_seconds" not in history:
        return []
    return list(zip(history["train_seconds"].tolist(), history[metric].tolist()))


def search_rows(grid: Any, plan: Plan, labels: dict[str, str]) -> list[TrialRow]:
    """One row per search trial: id, status, value, baseline name, sampled parameters.

    An early-stopped (ASHA) trial keeps its truncated value: that is what Optuna was told too.
    """
    rows = []
    for r in grid:
        config = r.config or {}
        metrics = r.metrics or {}
        status = _trial_status(r, plan)
        outcome = Outcome.of(metrics)
        value = metrics.get(plan.metric) if status.has_value else None
        fidelity = config.get(FIDELITY) or {}
        rows.append(TrialRow(
            trial_id=metrics.get("trial_id") or Path(r.path).name, status=status, curve=_curve(r, plan.metric),
            value=float(value) if isinstance(value, (int, float)) else None,
            baseline=labels.get(label_key(config), ""), params={k: v for k, v in config.items() if "." in k},
            rung=fidelity.get("rung"), config=fidelity.get("config"), diverged=outcome.diverged,
            too_short=outcome.too_short, steps=int(metrics.get("steps") or 0), error=_user_error(r.error),
            train_seconds=float(metrics.get("train_seconds") or 0.0)))
    return rows


def pick_candidates(rows: list[TrialRow], space: SearchSpace, plan: Plan) -> list[Candidate]:
    """Top-k distinct searched policies, every baseline, and RS2 at the leader's ratio."""
    sign = 1 if plan.mode == "max" else -1
    done = [r for r in rows if r.value is not None and not r.diverged]
    if plan.sweep.fidelity == "restart":  # each configuration by its highest rung: the longest budget it ran
        highest: dict[Optional[str], TrialRow] = {}
        for r in done:
            if r.config not in highest or (r.rung or 0) > (highest[r.config].rung or 0):
                highest[r.config] = r
        done = list(highest.values())
    searched = sorted((r for r in done if not r.baseline), key=lambda r: (-(r.rung or 0), -sign * r.value))
    chosen, seen = [], set()
    for r in searched:
        key = json.dumps(r.params, sort_keys=True, default=str)
        if key not in seen and len(chosen) < plan.sweep.confirm_top:
            seen.add(key)
            chosen.append(Candidate(f"top{len(chosen) + 1}", "searched", r.params, search_value=r.value,
                                    curves=[r.curve]))
    by_name = {r.baseline: r for r in done if r.baseline}
    for b in space.baselines:
        row = by_name.get(b.name)
        chosen.append(Candidate(b.name, "baseline", dict(b.set), search_value=row.value if row else None,
                                curves=[row.curve if row else []]))
    if chosen and chosen[0].kind == "searched":
        leader = space.policy_for(chosen[0].params)
        ratio = leader.selection.ratio  # "auto" (small_loss) has no fixed share for RS2 to copy
        if ratio != "auto" and ratio < 1 and leader.selection.strategy != "rs2":
            chosen.append(Candidate("rs2_at_best_ratio", "baseline",
                                    {"selection.strategy": "rs2", "selection.ratio": leader.selection.ratio}))
    return chosen


def candidate_policy(space: SearchSpace, plan: Plan, c: Candidate, seed: int) -> BudgetPolicy:
    base = plan.base
    overrides = dict(c.params)
    if c.kind == "baseline" and c.name != "rs2_at_best_ratio":
        overrides = dict(next(b.set for b in space.baselines if b.name == c.name))
    return base.with_overrides({**overrides, "seed": seed}, source=f"confirm {c.name}")


def run_confirm(plan: Plan, space: SearchSpace, ids: dict[str, str], candidates: list[Candidate], resume: bool,
                quiet: bool) -> Optional[Race]:
    """Stage 3: the candidates again with fresh seeds, paired (seed k: the same for every candidate).
    ``fixed``: ``confirm_seeds`` each, one Tune run. ``race``: seeds in rounds (one Tune run each, kept
    under ``confirm-round<r>``), candidates the leader beats beyond the noise dropped (:mod:`race`);
    returns the race. Each candidate's values and seeds are filled in."""
    for c in candidates:
        c.curves = []  # the confirmation runs replace the search-stage curves
    if plan.sweep.confirm != "race":
        jobs = [(c, k) for c in candidates for k in range(plan.sweep.confirm_seeds)]
        collect_confirm(_confirm_round(plan, space, ids, jobs, "confirm", None, resume, quiet), candidates, plan)
        return None
    sign = 1.0 if plan.mode == "max" else -1.0
    race = Race(candidates, sign, min(plan.sweep.first_test, max(2, plan.sweep.confirm_seeds)), max(plan.sweep.max_seeds, 2),
                cap=len(candidates) * plan.sweep.confirm_seeds)
    while not INTERRUPTED.is_set():
        jobs = race.next_round()
        if not jobs:
            break
        r = race.round - 1
        grid = _confirm_round(plan, space, ids, jobs, f"confirm-round{r}", r, resume, quiet)
        collect_confirm(grid, candidates, plan)
    return race


def _confirm_round(plan: Plan, space: SearchSpace, ids: dict[str, str], jobs: list[tuple[Candidate, int]], name: str,
                   rnd: Optional[int], resume: bool, quiet: bool) -> Any:
    """One Tune run of confirmation ``jobs`` (candidate, seed index); restored when ``--resume`` finds it."""
    from ray import tune

    path = plan.root / name
    if resume and tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable=_trainable(plan)).fit()
    specs, labels = [], {}
    for c, k in jobs:
        policy = candidate_policy(space, plan, c, CONFIRM_SEED_BASE + k)
        job = {"candidate": c.name, "kind": c.kind, "policy": policy.to_dict(), "seed_index": k, "round": rnd}
        specs.append(job)
        labels[label_key({"job": job})] = c.name
    tuner = tune.Tuner(
        _trainable(plan), param_space={"job": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=plan.sweep.concurrency, reuse_actors=True),
        run_config=_run_config(plan, "confirm", _callback(plan, "confirm", ids, labels, len(specs), quiet), name=name),
    )
    return tuner.fit()


def collect_confirm(grid: Any, candidates: list[Candidate], plan: Plan) -> None:
    """Add each candidate's per-seed values (with their seeds) and validation curves from a confirmation run."""
    by_name = {c.name: c for c in candidates}
    for r in grid:
        job = (r.config or {}).get("job") or {}
        c = by_name.get(job.get("candidate"))
        if c is None or not Outcome.of(r.metrics).usable:
            continue
        c.values.append(float(r.metrics[plan.metric]))
        c.seeds.append(int(job["policy"]["seed"]))
        curve = _curve(r, plan.metric)
        if curve:
            c.curves.append(curve)


@dataclass(frozen=True)
class Refusal:
    """Why a sweep cannot go on: ``why`` for its parent run's verdict tag, ``message`` for the user."""

    why: str
    message: str


def all_failed(plan: Plan, rows: list[TrialRow]) -> Optional[Refusal]:
    """Every trial failed on the same bad input (a model or data set that cannot be built): say so
    in one line rather than go on to a confirmation stage with nothing to confirm."""
    errors = {r.error for r in rows}
    if rows and all(r.status is TrialStatus.ERROR for r in rows) and len(errors) == 1 and None not in errors:
        return Refusal("every trial failed on bad input", f"sweep {plan.name}: every trial failed: {errors.pop()}")
    return None


def all_untrained(plan: Plan, rows: list[TrialRow]) -> Optional[Refusal]:
    """No finished trial trained MIN_STEPS steps: every value is the initialisation's, and a 'best
    policy' would be noise."""
    from tunebudget.trainer import MIN_STEPS, too_short_message

    finished = [r for r in rows if r.status is TrialStatus.TERMINATED and not r.diverged]
    if not finished or not all(r.too_short for r in finished):
        return None
    longest = max(finished, key=lambda r: r.steps)
    message = too_short_message(plan.base.budget, longest.steps, longest.train_seconds)
    return Refusal(f"every trial trained under {MIN_STEPS} steps",
                   f"sweep {plan.name}: every trial was too short; {message}")


def search_efficiency(rows: list[TrialRow], wall: float, slots: int) -> dict[str, float]:
    """How much of the search stage's machine time went into training.

    utilisation = Σ trial training seconds / (stage wall seconds × trial slots). The wall time
    runs from the Tuner's start (trial workers starting included) to its end; validation, the
    test-set evaluation, worker set-up and scheduling count as overhead.
    """
    train = sum(r.train_seconds for r in rows)
    return {"search_wall_seconds": wall, "search_train_seconds": train, "trial_slots": float(slots),
            "search_utilisation": train / (wall * slots) if wall > 0 and slots > 0 else 0.0}
