"""Restart successive halving: the budget itself is the fidelity.

Every trial is a complete run at its rung's budget, with the learning-rate schedule fitted to that
budget (a budget-aware schedule decays to zero when its own budget ends): nothing is truncated, so
a rung's values compare like with like. Rung budgets are ``B/eta^K, ..., B/eta, B`` for the
per-trial budget ``B``. Promotion follows ASHA's rule (Li et al., 2020), asynchronously: whenever a
slot is free, the best configuration in the top ``1/eta`` of the highest rung that has one not yet
promoted goes up a rung; otherwise a new configuration starts at rung 0. A promoted configuration
is retrained from scratch at the larger budget: a policy, not a checkpoint, is what is promoted.

How big a sweep is: the compute of ``trials`` full-budget trials (plus the baselines), counted in
budget units (seconds or sample passes) of the trials started. New configurations are sampled for
as long as that compute lasts, so a slot never waits for a rung to fill or for the last promotions
(with a fixed number of configurations one slot idled through each long top-rung trial at the end:
a quarter of a 2-core sweep's machine time), and a restart sweep spends what a full-budget sweep
of the same ``--trials`` spends, in budget units, to within one rung-0 trial (per-trial overhead
comes on top, and there are more trials), so the two compare at equal compute.

What Optuna learns: one study, told each new configuration's value at rung 0, where every
configuration has a complete result at the same budget. Values of upper rungs are never told to it
as if they were the same objective; they are in MLflow and decide the candidates for the
confirmation stage. (BOHB models the largest rung with enough observations instead; on the sweeps
this tool runs on a few cores, upper rungs hold a handful of configurations, too few for TPE, so
such a model would be the rung-0 model nearly always.)
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from typing import Any, Optional

from ray.tune.search import Searcher

from tunebudget.sweep.records import Outcome

#: The config key of a trial's fidelity: ``{"rung": k, "amount": budget, "config": id}``.
FIDELITY = "fidelity"


def rung_budgets(budget: float, eta: int, min_budget: float) -> list[float]:
    """``[B/eta^K, ..., B/eta, B]`` with the smallest at least ``min_budget``."""
    if not min_budget > 0 or min_budget > budget:
        raise ValueError(f"min_budget must be in (0, {budget:g}] (got {min_budget:g})")
    k = int(math.floor(math.log(budget / min_budget, eta) + 1e-9))
    return [budget / eta ** (k - i) for i in range(k + 1)]


@dataclass
class Ladder:
    """ASHA's promotion rule over restart rungs, and the compute it may spend: a pure object (no
    Optuna, no Tune), so the rule is tested alone.

    ``results[k]`` holds the finished values at rung ``k`` by configuration id; ``promoted[k]`` the
    configurations that left rung ``k``. :meth:`next` says what a free slot runs and commits its
    budget; ``cap`` is in budget units (seconds or sample passes).
    """

    rungs: list[float]
    eta: int
    cap: float
    #: 1 when higher values are better, -1 when lower are
    sign: int = 1
    committed: float = 0.0
    results: list[dict[str, float]] = field(default_factory=list)
    promoted: list[set[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.results = self.results or [{} for _ in self.rungs]
        self.promoted = self.promoted or [set() for _ in self.rungs]

    def left(self) -> float:
        """Budget units the sweep may still start (a float's rounding does not cost a trial)."""
        return self.cap - self.committed + 1e-9 * self.cap

    def promotable(self, left: float = math.inf) -> Optional[tuple[str, int]]:
        """The configuration to promote now, and the rung it leaves (None: start a new one); only
        to a rung whose budget fits in ``left``."""
        for k in reversed(range(len(self.rungs) - 1)):
            if self.rungs[k + 1] > left:
                continue
            done = self.results[k]
            top = sorted(done, key=lambda c: -self.sign * done[c])[: len(done) // self.eta]
            for config_id in top:
                if config_id not in self.promoted[k]:
                    return config_id, k
        return None

    def next(self) -> Optional[tuple[Optional[str], int]]:
        """What a free slot runs: ``(config, rung)`` for a promotion, ``(None, 0)`` for a new
        configuration, None when not even a rung-0 trial fits. The rung's budget is committed."""
        left = self.left()
        promote = self.promotable(left)
        if promote is not None:
            config_id, k = promote
            self.promoted[k].add(config_id)
            job: tuple[Optional[str], int] = (config_id, k + 1)
        elif self.rungs[0] <= left:
            job = (None, 0)
        else:
            return None
        self.committed += self.rungs[job[1]]
        return job

    def record(self, config_id: str, rung: int, value: float) -> None:
        """A finished, valid result (failed, diverged or cut trials are never recorded)."""
        self.results[rung][config_id] = float(value)


class RestartHalving(Searcher):
    """A Tune searcher running asynchronous successive halving with restarts over an Optuna study.

    The sweep may start trials whose rung budgets add up to ``(trials + len(points)) * B``, the
    compute of that many full-budget trials. ``points``, the baselines, start at rung 0 first, like
    any configuration. A free slot takes a promotion that fits in what is left, else a new
    configuration if a rung-0 trial fits; when neither does the searcher is finished (the running
    trials end as usual). The rule is the :class:`Ladder`'s; this class adds the study and Tune.
    """

    def __init__(self, space: Any, metric: str, mode: str, rungs: list[float], eta: int, trials: int,
                 points: list[dict[str, Any]], sampler: Any, study_name: str, storage: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space, self.trials = space, trials
        self.points = [dict(p) for p in points]
        self.sampler, self.study_name, self.storage = sampler, study_name, storage
        self.params: dict[str, dict[str, Any]] = {}  # config id -> sampled parameters
        self.optuna_number: dict[str, int] = {}  # config id -> its Optuna trial (rung 0)
        self.live: dict[str, tuple[str, int]] = {}  # Tune trial id -> (config id, rung)
        self.started = 0  # configurations started at rung 0
        self.total = trials + len(points)  # full-budget trials' worth of compute
        #: the promotion rule, the rungs and eta, and the compute spent: the searcher adds Optuna and Tune
        self.ladder = Ladder(list(rungs), eta, self.total * rungs[-1], 1 if mode == "max" else -1)
        self._study: Any = None

    @property
    def rungs(self) -> list[float]:
        return self.ladder.rungs

    # ---- Optuna --------------------------------------------------------------------------
    @property
    def study(self) -> Any:
        if self._study is None:
            import optuna

            self._study = optuna.create_study(
                study_name=self.study_name, storage=optuna.storages.RDBStorage(self.storage),
                sampler=self.sampler, direction="maximize" if self.mode == "max" else "minimize",
                load_if_exists=True)
        return self._study

    def _new_config(self) -> tuple[str, dict[str, Any]]:
        point = self.points.pop(0) if self.points else None
        if point is not None:
            self.study.enqueue_trial(point, skip_if_exists=False)
        trial = self.study.ask()
        self.space.suggest(trial)
        config_id = f"c{self.started}"
        self.started += 1
        self.optuna_number[config_id] = trial.number
        return config_id, dict(trial.params)

    # ---- Tune ------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> Optional[dict[str, Any]]:
        job = self.ladder.next()
        if job is None:  # not even a rung-0 trial fits: nothing will (the running trials still end as usual)
            return Searcher.FINISHED
        config_id, rung = job
        if config_id is None:
            config_id, params = self._new_config()
            self.params[config_id] = params
        self.live[trial_id] = (config_id, rung)
        return {**self.params[config_id],
                FIDELITY: {"rung": rung, "amount": self.rungs[rung], "config": config_id,
                           "top": rung == len(self.rungs) - 1}}

    def on_trial_complete(self, trial_id: str, result: Optional[dict[str, Any]] = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        config_id, rung = self.live.pop(trial_id)
        value = (result or {}).get(self.metric) if not error else None
        outcome = Outcome.of(result)
        ok = isinstance(value, (int, float)) and math.isfinite(value) and outcome.usable \
            and not outcome.too_short
        if ok:
            self.ladder.record(config_id, rung, float(value))
        if rung == 0 and config_id in self.optuna_number:
            import optuna

            number = self.optuna_number.pop(config_id)
            # skip_if_finished: after a hard kill, Tune re-runs a trial the study already has finished
            if ok:
                self.study.tell(number, float(value), skip_if_finished=True)
            else:
                self.study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    def forget(self, trial_id: str) -> None:
        """A trial suggested that Tune never ran (a torn snapshot, see searcher.SlotGuard): closed as
        failed; the compute the ladder charged for it stays spent."""
        if trial_id in self.live:
            self.on_trial_complete(trial_id, None, error=True)

    # ---- resume ----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_study"] = None  # reloaded from its storage by name
        return state

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__getstate__(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            state = pickle.load(fh)
        if "ladder" not in state:  # saved before the rule was a Ladder: its fields were the searcher's
            state = _ladder_from_legacy(state, self.rungs, self.ladder.eta, 1 if self.mode == "max" else -1)
        self.__dict__.update(state)


def _ladder_from_legacy(state: dict[str, Any], rungs: list[float], eta: int, sign: int) -> dict[str, Any]:
    """A searcher state saved before the Ladder (results, promoted, cap, committed as its own fields;
    before compute sizing, no cap or committed: every trial started was a new configuration or a
    promotion) as one with a Ladder."""
    state = dict(state)
    results, promoted = state.pop("results"), state.pop("promoted")
    rungs, eta = state.pop("rungs", rungs), state.pop("eta", eta)  # the Ladder's now
    cap = state.pop("cap", None)
    committed = state.pop("committed", None)
    if cap is None:
        cap = state["total"] * rungs[-1]
        committed = state["started"] * rungs[0] + sum(len(p) * rungs[k + 1] for k, p in enumerate(promoted[:-1]))
    state["ladder"] = Ladder(list(rungs), eta, cap, sign, committed, results, promoted)
    return state


def expected_trials(full_trials: int, rungs: list[float], eta: int) -> int:
    """About how many trials a restart sweep with the compute of ``full_trials`` full-budget trials
    runs (for progress): a configuration reaches rung ``k`` with probability ``eta^-k``."""
    per_config = sum(b / eta ** k for k, b in enumerate(rungs))  # expected budget units
    return max(1, round(full_trials * rungs[-1] / per_config * sum(eta ** -k for k in range(len(rungs)))))


def max_trials(full_trials: int, rungs: list[float]) -> int:
    """The most trials the compute of ``full_trials`` full-budget trials can start: all at rung 0."""
    return int(full_trials * rungs[-1] // rungs[0]) + 1
