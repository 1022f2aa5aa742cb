"""The verdict of a sweep (paired statistics over its candidates) and its plots and tables: PNG
files and a markdown summary, from the sweep's records (:mod:`tunebudget.sweep.records`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from tunebudget.sweep.records import Candidate, TrialRow

#: Optuna's parameter-importance evaluator used in reports (Optuna 5 defaults to PED-ANOVA too;
#: we name it explicitly so the plot says what it measured).
IMPORTANCE_EVALUATOR = "PED-ANOVA"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Verdict:
    best: Optional[Candidate]
    best_baseline: Optional[Candidate]
    diff: float
    p_value: float
    beats: bool
    text: str
    #: The paired comparison on shared seeds (None: unpaired, judged by Welch's test).
    paired: Optional["Paired"] = None
    #: ``paired`` or ``welch``: the test the verdict rests on.
    test: str = "welch"
    #: When the best is a baseline: the best searched policy, compared with it in ``paired``.
    challenger: Optional[Candidate] = None


def verdict(candidates: Sequence[Candidate], mode: str, metric: str, min_effect: float = 0.0) -> Verdict:
    """Does the best confirmed policy beat the best baseline beyond the seed noise?

    When the two ran on at least two shared seeds (the confirmation stage gives every candidate the
    same seeds), the verdict is **paired**: the per-seed differences, their mean with a 95% confidence
    interval, a one-sided paired t-test and the Wilcoxon signed-rank test as a check; "beats" means the
    whole interval lies above ``min_effect`` (in the metric's units, better-is-positive). Otherwise
    (values without seeds, or no shared seeds) it falls back to Welch's test: the difference of the
    means is larger than the larger of the two standard deviations and Welch's one-sided p < 0.05.
    With fewer than two seeds on either side no claim is made.
    """
    sign = 1.0 if mode == "max" else -1.0
    scored = [c for c in candidates if c.values]
    best = max(scored, key=lambda c: sign * c.mean, default=None)
    baselines = [c for c in scored if c.kind == "baseline"]
    best_base = max(baselines, key=lambda c: sign * c.mean, default=None)
    if best is None or best_base is None:
        return Verdict(best, best_base, float("nan"), float("nan"), False,
                       "No verdict: the baselines or the candidates have no finished confirmation runs.")
    if best is best_base:
        return _baseline_wins(scored, best_base, sign, metric)
    means = f"{metric} {best.mean:.4f} ± {best.std:.4f} vs {best_base.mean:.4f} ± {best_base.std:.4f}"
    better = "higher" if mode == "max" else "lower"
    bar = f" by more than {min_effect:g}" if min_effect else ""
    pair = paired(best.by_seed(), best_base.by_seed(), sign)
    if pair is not None:  # differences shown as measured (best - baseline), the interval too
        beats = pair.low > min_effect
        text = (f"{best.name!r} {'beats' if beats else 'does not beat'} the best baseline {best_base.name!r}{bar} "
                f"beyond the seed noise: {means} ({sign * pair.diff:+.4f}, {better} is better; "
                f"{pair.as_measured(sign)}).")
        return Verdict(best, best_base, pair.diff, pair.p, beats, text, pair, "paired")
    diff, p, beats = beyond_noise(best, best_base, sign)
    beats = beats and diff > min_effect
    enough = len(best.values) > 1 and len(best_base.values) > 1
    text = (f"{best.name!r} {'beats' if beats else 'does not beat'} the best baseline {best_base.name!r}{bar} beyond "
            f"the seed noise: {means} ({best.mean - best_base.mean:+.4f}, {better} is better; Welch one-sided "
            f"p = {p:.3f}, unpaired: {len(best.values)} vs {len(best_base.values)} seeds, none shared).")
    if not enough:
        text += " Too few seeds to judge: use --confirm-seeds 3 or more."
    return Verdict(best, best_base, diff, p, beats, text)


def _baseline_wins(scored: Sequence[Candidate], best_base: Candidate, sign: float, metric: str) -> Verdict:
    """The best confirmed policy is a baseline: say so, with how far the best searched policy is from
    it (paired on their shared seeds when there are two or more: the difference and its interval)."""
    text = (f"No searched policy beats the baselines: the best confirmed policy is the baseline "
            f"{best_base.name!r} ({metric} {best_base.mean:.4f} ± {best_base.std:.4f})")
    searched = [c for c in scored if c.kind != "baseline"]
    top = max(searched, key=lambda c: sign * c.mean, default=None)
    pair = paired(top.by_seed(), best_base.by_seed(), sign) if top is not None else None
    if top is None or pair is None:
        return Verdict(best_base, best_base, 0.0, float("nan"), False, text + ".")
    text += (f"; the best searched policy {top.name!r} is {sign * pair.diff:+.4f} from it ({metric} {top.mean:.4f} ± "
             f"{top.std:.4f}; {pair.as_measured(sign)}).")
    return Verdict(best_base, best_base, pair.diff, pair.p, False, text, pair, "paired", challenger=top)


def beyond_noise(a: Candidate, b: Candidate, sign: float = 1.0) -> tuple[float, float, bool]:
    """``(difference, p, beats)``: does ``a`` beat ``b`` beyond the seed noise? The difference
    (signed so that positive is better) must exceed both standard deviations and Welch's one-sided
    t-test must give p < 0.05, with at least two values on each side."""
    diff = sign * (a.mean - b.mean)
    p = _welch_p(a.values, b.values, sign)
    enough = len(a.values) > 1 and len(b.values) > 1
    return diff, p, bool(enough and diff > max(a.std, b.std) and p < 0.05)


@dataclass
class Paired:
    """The paired comparison of two policies run on the same seeds (seed k: the same split, subset,
    label noise and initialisation for both): the per-seed differences, signed so that positive is
    better, their mean with a two-sided 95% t confidence interval, the one-sided paired t-test and,
    as a check that needs no normality, the one-sided Wilcoxon signed-rank test."""

    n: int
    diff: float
    low: float
    high: float
    p: float
    p_wilcoxon: float

    @property
    def beats(self) -> bool:
        """The whole interval lies above zero (at least two seeds)."""
        return self.n >= 2 and self.low > 0

    def interval(self, sign: float) -> str:
        """The 95% interval in the metric's own direction (``sign`` -1: lower is better, so the
        difference was signed to make positive better, and is shown negated back)."""
        low, high = sorted((sign * self.low, sign * self.high))
        return f"95% CI [{low:+.4f}, {high:+.4f}]"

    def as_measured(self, sign: float) -> str:
        """The verdict's clause: the interval in the metric's own direction, and the two tests."""
        return (f"paired over {self.n} seeds: {self.interval(sign)} of the difference, one-sided "
                f"paired t-test p = {self.p:.3f}, Wilcoxon p = {self.p_wilcoxon:.3f}")

    def text(self, scale: float = 1.0, unit: str = "") -> str:
        return (f"{self.diff * scale:+.2f}{unit} [95% CI {self.low * scale:+.2f}, {self.high * scale:+.2f}], "
                f"paired t p = {self.p:.3f}, Wilcoxon p = {self.p_wilcoxon:.3f}, {self.n} paired seeds")


def paired(a: dict[Any, float], b: dict[Any, float], sign: float = 1.0) -> Optional[Paired]:
    """Compare ``a`` with ``b`` (values by seed) on the seeds both have; None with fewer than two.

    Example:
        >>> r = paired({0: 0.90, 1: 0.91, 2: 0.92}, {0: 0.88, 1: 0.90, 2: 0.90})
        >>> round(r.diff, 3), r.n, r.beats
        (0.017, 3, True)
    """
    from scipy import stats

    seeds = [k for k in a if k in b]
    if len(seeds) < 2:
        return None
    d = [sign * (a[k] - b[k]) for k in seeds]
    mean = statistics.fmean(d)
    sd = statistics.stdev(d)
    if sd == 0:
        p = 0.0 if mean > 0 else 1.0
        return Paired(len(d), mean, mean, mean, p, p)
    half = float(stats.t.ppf(0.975, len(d) - 1)) * sd / math.sqrt(len(d))
    p = float(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)
    nonzero = [x for x in d if x != 0]
    w = float(stats.wilcoxon(nonzero, alternative="greater").pvalue) if nonzero else 1.0
    return Paired(len(d), mean, mean - half, mean + half, p, w)


def _welch_p(a: Sequence[float], b: Sequence[float], sign: float) -> float:
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    from scipy import stats

    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
        return 0.0 if sign * (statistics.fmean(a) - statistics.fmean(b)) > 0 else 1.0
    res = stats.ttest_ind(a, b, equal_var=False, alternative="greater" if sign > 0 else "less")
    return float(res.pvalue) if not math.isnan(res.pvalue) else 1.0


# ---- tables ------------------------------------------------------------------------------------

def summary_markdown(space_name: str, metric: str, mode: str, candidates: Sequence[Candidate],
                     v: Verdict, search_rows: Sequence[TrialRow], meta: dict[str, Any]) -> str:
    sign = 1 if mode == "max" else -1
    lines = [f"# Sweep summary: {space_name}", ""]
    lines += [f"- {k}: {val}" for k, val in meta.items()]
    lines += ["", "## Verdict", "", v.text, "", f"## Confirmation ({metric}, mean ± std over seeds)", "",
              "| policy | kind | mean | std | seeds | search value | parameters |", "|---|---|---|---|---|---|---|"]
    for c in sorted(candidates, key=lambda c: -sign * c.mean if c.values else math.inf):
        sv = f"{c.search_value:.4f}" if c.search_value is not None else ""
        params = ", ".join(f"{k}={_fmt(val)}" for k, val in c.params.items())
        lines.append(f"| {c.name} | {c.kind} | {c.mean:.4f} | {c.std:.4f} | {len(c.values)} | {sv} | {params} |")
    rungs = any(r.rung is not None for r in search_rows)  # a restart sweep: say each trial's rung
    rung_head, rung_rule = ("rung | policy | ", "---|---|") if rungs else ("", "")
    lines += ["", f"## Search trials ({len(search_rows)})", "",
              f"| trial | status | {rung_head}{metric} | baseline | parameters |", f"|---|---|{rung_rule}---|---|---|"]
    for r in search_rows:
        value = r.value
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "—"
        params = ", ".join(f"{k}={_fmt(val)}" for k, val in r.params.items())
        rung = f"{r.rung} | {r.config} | " if rungs else ""
        lines.append(f"| {r.trial_id} | {r.status} | {rung}{shown} | {r.baseline or ''} | "
                     f"{params} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- plots -------------------------------------------------------------------------------------

def plot_history(rows: Sequence[TrialRow], metric: str, mode: str, path: Path) -> Path:
    """The search's optimisation history: each trial's value and the best so far."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys, best, best_y = [], [], [], None
    for i, r in enumerate(rows):
        value = r.value
        if not isinstance(value, float) or not math.isfinite(value):
            continue
        xs.append(i)
        ys.append(value)
        better = best_y is None or (value > best_y if mode == "max" else value < best_y)
        best_y = value if better else best_y
        best.append(best_y)
    colours = ["tab:orange" if rows[i].baseline else "tab:blue" for i in xs]
    ax.scatter(xs, ys, c=colours, s=25, label="trial (orange: baseline)")
    ax.plot(xs, best, color="black", lw=1, label="best so far")
    ax.set(xlabel="trial (in start order)", ylabel=metric, title="Optimisation history")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_importance(importances: dict[str, float], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(importances) + 1)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(xlabel=f"importance ({IMPORTANCE_EVALUATOR}, Optuna)", title="Parameter importance")
    return _save(fig, path)


def plot_curves(candidates: Sequence[Candidate], metric: str, path: Path) -> Path:
    """Validation metric against training time for the confirmed policies (one line per seed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, c in enumerate(candidates):
        colour = f"C{i % 10}"
        for j, curve in enumerate(c.curves):
            if curve:
                xs, ys = zip(*curve)
                ax.plot(xs, ys, color=colour, lw=1, alpha=0.8, ls="--" if c.kind == "baseline" else "-",
                        label=f"{c.name} ({c.kind})" if j == 0 else None)
    ax.set(xlabel="training seconds (validation not charged)", ylabel=metric,
           title="Validation metric vs training time (confirmation runs)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=7)
    return _save(fig, path)


def rank_correlations(rows: Sequence[TrialRow]) -> list[dict[str, Any]]:
    """For each pair of rungs, how well the short budget ranks the configurations the long one
    also ran: Spearman's rho and Kendall's tau over the shared configurations (``n`` of them;
    NaN with fewer than 3). ``rows`` are search rows with ``rung``, ``config`` and ``value``."""
    from scipy import stats

    by_rung: dict[int, dict[str, float]] = {}
    for r in rows:
        value = r.value
        if r.rung is None or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or r.diverged or r.too_short:
            continue
        by_rung.setdefault(int(r.rung), {})[r.config] = float(value)
    out = []
    rungs = sorted(by_rung)
    for i, lo in enumerate(rungs):
        for hi in rungs[i + 1:]:
            shared = sorted(set(by_rung[lo]) & set(by_rung[hi]))
            a, b = [by_rung[lo][c] for c in shared], [by_rung[hi][c] for c in shared]
            if len(shared) >= 3 and len(set(a)) > 1 and len(set(b)) > 1:
                rho, tau = float(stats.spearmanr(a, b)[0]), float(stats.kendalltau(a, b)[0])
            else:
                rho = tau = float("nan")
            out.append({"low": lo, "high": hi, "n": len(shared), "spearman": rho, "kendall": tau,
                        "pairs": list(zip(a, b))})
    return out


def plot_rank_correlations(correlations: Sequence[dict[str, Any]], budgets: Sequence[float], unit: str,
                           metric: str, path: Path) -> Path:
    """"Does a short budget predict the long one?": each shared configuration's value at the
    shorter rung against the longer, per pair of rungs, with the rank correlations."""
    plt = _pyplot()
    pairs = [c for c in correlations if c["n"]] or list(correlations)
    fig, axes = plt.subplots(1, max(1, len(pairs)), figsize=(4.2 * max(1, len(pairs)), 4), squeeze=False)
    for ax, c in zip(axes[0], pairs):
        if c["pairs"]:
            xs, ys = zip(*c["pairs"])
            ax.scatter(xs, ys, s=25, color="tab:blue")
        ax.set(xlabel=f"{metric} at {budgets[c['low']]:g} {unit} (rung {c['low']})",
               ylabel=f"{metric} at {budgets[c['high']]:g} {unit} (rung {c['high']})",
               title=f"n={c['n']}  Spearman {c['spearman']:.2f}  Kendall {c['kendall']:.2f}"
               if math.isfinite(c["spearman"]) else f"n={c['n']}: too few to rank")
    fig.suptitle("Does a short budget predict the long one?")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def param_importances(study: Any) -> dict[str, float]:
    """Optuna parameter importances with the PED-ANOVA evaluator ({} when it cannot say)."""
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():  # "some regimes have less than 2 trials" on small sweeps
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except Exception:  # noqa: BLE001 - too few trials, a single value, conditional params...
        return {}
