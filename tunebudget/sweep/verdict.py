"""The last stage: the verdict, the best policy, the summary and plots onto the parent run.
"""


from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tunebudget import names
from tunebudget.errors import TuneBudgetError
from tunebudget.policy import BudgetPolicy, policy_from_dict
from tunebudget.spaces import SearchSpace
from tunebudget.sweep.plan import Plan
from tunebudget.sweep.stages import candidate_policy, fail_parent
from tunebudget.tracking import POLICY_TAG, Tracker

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    name: str
    parent_id: str
    experiment: str
    best_policy: BudgetPolicy
    verdict: Any
    candidates: list[Any]
    rows: list[dict[str, Any]]
    summary_md: str


def best_policy(space: SearchSpace, plan: Plan, best: Any) -> BudgetPolicy:
    """The winner as a policy to replay: the candidate's settings with the sweep's base seed, and
    the torch threads its trials ran with (unless the space set them)."""
    policy = candidate_policy(space, plan, best, int(plan.base.get("seed", 0)))
    if policy.training.threads is None and plan.gpus == 0:
        policy = policy.with_overrides({"training.threads": plan.threads}, "the sweep's threads per trial")
    return policy


def _concurrency(plan: Plan, slots: Optional[int]) -> str:
    """How many trials ran at once: the slots the cluster had, and the limit asked for if larger."""
    if slots is None or slots >= plan.concurrency:
        return f"{plan.concurrency} concurrent"
    return f"{slots} concurrent ({plan.concurrency} asked; the cluster fits {slots})"


def finalize(plan: Plan, space: SearchSpace, tracker: Tracker, ids: dict[str, str], rows: list[dict[str, Any]],
             candidates: list[Any], efficiency: Optional[dict[str, float]] = None,
             slots: Optional[int] = None, race: Any = None) -> SweepOutcome:
    """Stage 4: verdict, best policy, summary and plots onto the parent run; the parent finishes."""
    import tempfile

    from tunebudget import report

    v = report.verdict(candidates, plan.mode, plan.metric, plan.min_effect)
    if v.best is None:
        fail_parent(plan, tracker, ids, "no finished trials")
        raise TuneBudgetError(f"sweep {plan.name}: no trial finished, so there is no best policy; "
                              "see the failed runs in MLflow (tunebudget ui)")
    best = best_policy(space, plan, v.best).with_overrides({"name": f"{space.name}-best"})
    meta = {"sweep": plan.name, "space": f"{plan.space_path} (sha256 {space.file_hash})",
            "trials": f"{plan.trials} searched + {len(space.baselines)} baselines, {_concurrency(plan, slots)}",
            "budget per trial": f"{best.budget.amount:g} {best.budget.kind}",
            "confirmation": race.describe() if race is not None else
            f"top {plan.confirm_top} and baselines × {plan.confirm_seeds} seeds",
            "sampler": plan.sampler, "scheduler": plan.scheduler}
    correlations = report.rank_correlations(rows) if plan.fidelity == "restart" else []
    if plan.fidelity == "restart":
        unit = policy_from_dict(plan.base).budget.kind
        meta["fidelity"] = (f"restart successive halving, eta {plan.eta}, rungs "
                            + ", ".join(f"{b:g}" for b in plan.rungs) + f" {unit}")
        for c in correlations:
            meta[f"rank correlation, rung {c['low']} vs {c['high']}"] = (
                f"Spearman {c['spearman']:.2f}, Kendall {c['kendall']:.2f} over {c['n']} policies"
                if c["n"] >= 3 and math.isfinite(c["spearman"]) else f"{c['n']} shared policies: too few to rank")
    if efficiency:
        meta["search utilisation"] = (f"{efficiency['search_utilisation']:.2f} (Σ training "
                                      f"{efficiency['search_train_seconds']:.0f} s / ({efficiency['search_wall_seconds']:.0f} s "
                                      f"wall × {efficiency['trial_slots']:g} slots))")
    summary = report.summary_markdown(space.name, plan.metric, plan.mode, candidates, v, rows, meta)
    parent = ids["parent_id"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / names.BEST_POLICY).write_text(best.to_yaml())
        (out / names.SUMMARY_MD).write_text(summary)
        summary_json = _summary_json(plan, v, candidates, rows)
        if race is not None:
            summary_json["race"] = {"rounds": race.round, "runs": race.runs, "cap": race.cap, "dropped": race.dropped}
        (out / names.SUMMARY_JSON).write_text(json.dumps(summary_json, indent=2, default=str))
        report.plot_history(rows, plan.metric, plan.mode, out / names.OPTIMIZATION_HISTORY)
        report.plot_curves(candidates, plan.metric, out / names.VALIDATION_VS_TIME)
        if correlations:
            report.plot_rank_correlations(correlations, plan.rungs, policy_from_dict(plan.base).budget.kind,
                                          plan.metric, out / names.RANK_CORRELATION)
        importances = _importances(plan)
        if importances:
            report.plot_importance(importances, out / names.PARAM_IMPORTANCE)
        for path in sorted(out.iterdir()):
            tracker.log_file(parent, path)
    metrics = {"best_mean": v.best.mean, "best_std": v.best.std, "n_trials": len(rows),
               "n_failed": sum(r["status"] == "ERROR" for r in rows), **(efficiency or {})}
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
    tracker.log_metrics(parent, metrics)
    tracker.set_tags(parent, {names.VERDICT_TAG: v.text[:5000], "beats_baseline": str(v.beats).lower(), "verdict_test": v.test,
                              "best_candidate": v.best.name, "best_policy_digest": best.digest(),
                              POLICY_TAG: json.dumps(best.to_dict(), separators=(",", ":"))})
    tracker.finish(parent, "FINISHED")
    return SweepOutcome(plan.name, parent, plan.experiment, best, v, candidates, rows, summary)


def _importances(plan: Plan) -> dict[str, float]:
    import optuna

    from tunebudget.report import param_importances

    try:
        study = optuna.load_study(study_name=plan.name, storage=plan.optuna_storage)
    except Exception:  # noqa: BLE001 - a missing study only costs the importance plot
        return {}
    return param_importances(study)


def _summary_json(plan: Plan, v: Any, candidates: list[Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    pair = v.paired
    return {"sweep": plan.name, "metric": plan.metric, "mode": plan.mode, "verdict": v.text, "beats": v.beats,
            "best": v.best.name if v.best else None, "test": v.test,
            "compared": [v.challenger.name if v.challenger else (v.best.name if v.best else None),
                         v.best_baseline.name if v.best_baseline else None],
            "paired": None if pair is None else {"n": pair.n, "diff": pair.diff, "ci": [pair.low, pair.high],
                                                 "p_t": pair.p, "p_wilcoxon": pair.p_wilcoxon},
            "candidates": [{"name": c.name, "kind": c.kind, "params": c.params, "values": c.values, "seeds": c.seeds,
                            "mean": c.mean, "std": c.std, "search_value": c.search_value} for c in candidates],
            "trials": rows}
