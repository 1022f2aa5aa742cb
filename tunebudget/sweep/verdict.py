"""The last stage: :func:`judge` reaches the verdict and what the parent run will get (pure),
:func:`publish` writes it there (the best policy, the summary, the plots, metrics and tags).
"""


from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tunebudget import names
from tunebudget.sweep import report
from tunebudget.policy import BudgetPolicy
from tunebudget.sweep.report import Verdict
from tunebudget.spaces import SearchSpace
from tunebudget.sweep.plan import Plan
from tunebudget.sweep.race import Race
from tunebudget.sweep.records import Candidate, TrialRow, TrialStatus
from tunebudget.sweep.stages import candidate_policy
from tunebudget.tracking import POLICY_TAG, Tracker

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    name: str
    parent_id: str
    experiment: str
    best_policy: BudgetPolicy
    verdict: Verdict
    candidates: list[Candidate]
    rows: list[TrialRow]
    summary_md: str


@dataclass
class Judgement:
    """What the last stage concludes, before anything is written: the verdict, the policy to
    replay, the summary (markdown and JSON) and the parent run's metrics and tags."""

    verdict: Verdict
    best: BudgetPolicy
    summary_md: str
    summary_json: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    #: restart sweeps: how the rungs rank the configurations they share (else empty)
    correlations: list[dict[str, Any]]


def best_policy(space: SearchSpace, plan: Plan, best: Candidate) -> BudgetPolicy:
    """The winner as a policy to replay: the candidate's settings with the sweep's base seed, and
    the torch threads its trials ran with (unless the space set them)."""
    policy = candidate_policy(space, plan, best, plan.base.seed)
    if policy.training.threads is None and plan.gpus == 0:
        policy = policy.with_overrides({"training.threads": plan.threads}, "the sweep's threads per trial")
    return policy


def _concurrency(plan: Plan, slots: Optional[int]) -> str:
    """How many trials ran at once: the slots the cluster had, and the limit asked for if larger."""
    if slots is None or slots >= plan.sweep.concurrency:
        return f"{plan.sweep.concurrency} concurrent"
    return f"{slots} concurrent ({plan.sweep.concurrency} asked; the cluster fits {slots})"


def judge(plan: Plan, space: SearchSpace, rows: list[TrialRow], candidates: list[Candidate],
          efficiency: Optional[dict[str, float]] = None, slots: Optional[int] = None,
          race: Optional[Race] = None) -> Optional[Judgement]:
    """Stage 4, the thinking half: the verdict and all that the parent run will get; None when no
    candidate finished (there is no best policy). Writes nothing."""
    v = report.verdict(candidates, plan.mode, plan.metric, plan.sweep.min_effect)
    if v.best is None:
        return None
    best = best_policy(space, plan, v.best).with_overrides({"name": f"{space.name}-best"})
    correlations = report.rank_correlations(rows) if plan.sweep.fidelity == "restart" else []
    meta = _meta(plan, space, best, efficiency or {}, slots, race, correlations)
    summary_json = _summary_json(plan, v, candidates, rows)
    if race is not None:
        summary_json["race"] = {"rounds": race.round, "runs": race.runs, "cap": race.cap, "dropped": race.dropped}
    tags = {names.VERDICT_TAG: v.text[:5000], names.BEATS_TAG: str(v.beats).lower(), names.VERDICT_TEST_TAG: v.test,
            names.BEST_CANDIDATE_TAG: v.best.name, names.BEST_DIGEST_TAG: best.digest(),
            POLICY_TAG: json.dumps(best.to_dict(), separators=(",", ":"))}
    return Judgement(v, best, report.summary_markdown(space.name, plan.metric, plan.mode, candidates, v, rows, meta),
                     summary_json, _metrics(v, rows, efficiency or {}, race, correlations), tags, correlations)


def _meta(plan: Plan, space: SearchSpace, best: BudgetPolicy, efficiency: dict[str, float], slots: Optional[int],
          race: Optional[Race], correlations: list[dict[str, Any]]) -> dict[str, str]:
    """The summary's header: what the sweep ran, on what, and how its parts went."""
    meta = {"sweep": plan.name, "space": f"{plan.space_path} (sha256 {space.file_hash})",
            "trials": f"{plan.sweep.trials} searched + {len(space.baselines)} baselines, {_concurrency(plan, slots)}",
            "budget per trial": f"{best.budget.amount:g} {best.budget.kind}",
            "confirmation": race.describe() if race is not None else
            f"top {plan.sweep.confirm_top} and baselines × {plan.sweep.confirm_seeds} seeds",
            "sampler": plan.sweep.sampler, "scheduler": plan.sweep.scheduler}
    if plan.sweep.fidelity == "restart":
        meta["fidelity"] = (f"restart successive halving, eta {plan.sweep.eta}, rungs "
                            + ", ".join(f"{b:g}" for b in plan.rungs) + f" {plan.base.budget.kind}")
        for c in correlations:
            meta[f"rank correlation, rung {c['low']} vs {c['high']}"] = (
                f"Spearman {c['spearman']:.2f}, Kendall {c['kendall']:.2f} over {c['n']} policies"
                if c["n"] >= 3 and math.isfinite(c["spearman"]) else f"{c['n']} shared policies: too few to rank")
    if efficiency:
        meta["search utilisation"] = (f"{efficiency['search_utilisation']:.2f} (Σ training "
                                      f"{efficiency['search_train_seconds']:.0f} s / ({efficiency['search_wall_seconds']:.0f} s "
                                      f"wall × {efficiency['trial_slots']:g} slots))")
    return meta


def _metrics(v: Verdict, rows: list[TrialRow], efficiency: dict[str, float], race: Optional[Race],
             correlations: list[dict[str, Any]]) -> dict[str, float]:
    """The parent run's metrics: the best and the baseline, the paired test, the race, the rungs."""
    metrics = {"best_mean": v.best.mean, "best_std": v.best.std, "n_trials": len(rows),
               "n_failed": sum(r.status is TrialStatus.ERROR for r in rows), **efficiency}
    if race is not None:
        metrics.update({"race_rounds": race.round, "race_runs": race.runs, "race_cap": race.cap,
                        "race_dropped": len(race.dropped)})
    for c in correlations:
        if c["n"] >= 3:
            pair = f"r{c['low']}_r{c['high']}"
            metrics.update({f"rank_spearman_{pair}": c["spearman"], f"rank_kendall_{pair}": c["kendall"],
                            f"rank_shared_{pair}": c["n"]})
    if v.best_baseline is not None:
        metrics.update({"baseline_mean": v.best_baseline.mean, "baseline_std": v.best_baseline.std,
                        "diff_vs_baseline": v.diff, "p_value": v.p_value})
        if v.paired is not None:
            metrics.update({"diff_ci_low": v.paired.low, "diff_ci_high": v.paired.high,
                            "p_wilcoxon": v.paired.p_wilcoxon, "paired_seeds": v.paired.n})
    return metrics


def publish(plan: Plan, tracker: Tracker, parent: str, j: Judgement, candidates: list[Candidate],
            rows: list[TrialRow]) -> None:
    """Stage 4, the writing half: the best policy, the summary and the plots onto the parent run,
    then its metrics and tags; the parent run finishes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / names.BEST_POLICY).write_text(j.best.to_yaml())
        (out / names.SUMMARY_MD).write_text(j.summary_md)
        (out / names.SUMMARY_JSON).write_text(json.dumps(j.summary_json, indent=2, default=str))
        report.plot_history(rows, plan.metric, plan.mode, out / names.OPTIMIZATION_HISTORY)
        report.plot_curves(candidates, plan.metric, out / names.VALIDATION_VS_TIME)
        if j.correlations:
            report.plot_rank_correlations(j.correlations, plan.rungs, plan.base.budget.kind,
                                          plan.metric, out / names.RANK_CORRELATION)
        importances = _importances(plan)
        if importances:
            report.plot_importance(importances, out / names.PARAM_IMPORTANCE)
        for path in sorted(out.iterdir()):
            tracker.log_file(parent, path)
    tracker.log_metrics(parent, j.metrics)
    tracker.set_tags(parent, j.tags)
    tracker.finish(parent, "FINISHED")


def _importances(plan: Plan) -> dict[str, float]:
    import optuna

    from tunebudget.sweep.report import param_importances

    try:
        study = optuna.load_study(study_name=plan.name, storage=plan.optuna_storage)
    except Exception:  # noqa: BLE001 - a missing study only costs the importance plot
        return {}
    return param_importances(study)


def _summary_json(plan: Plan, v: Verdict, candidates: list[Candidate], rows: list[TrialRow]) -> dict[str, Any]:
    pair = v.paired
    return {"sweep": plan.name, "metric": plan.metric, "mode": plan.mode, "verdict": v.text, "beats": v.beats,
            "best": v.best.name if v.best else None, "test": v.test,
            "compared": [v.challenger.name if v.challenger else (v.best.name if v.best else None),
                         v.best_baseline.name if v.best_baseline else None],
            "paired": None if pair is None else {"n": pair.n, "diff": pair.diff, "ci": [pair.low, pair.high],
                                                 "p_t": pair.p, "p_wilcoxon": pair.p_wilcoxon},
            "candidates": [{"name": c.name, "kind": c.kind, "params": c.params, "values": c.values, "seeds": c.seeds,
                            "mean": c.mean, "std": c.std, "search_value": c.search_value} for c in candidates],
            "trials": [r.to_json() for r in rows]}
