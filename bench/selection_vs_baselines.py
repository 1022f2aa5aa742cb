"""Does selective sampling beat the baselines at a fixed budget? Fashion-MNIST, several seeds.

Every policy trains the same model on the same data for the same wall-clock budget; budgets
and policies alternate seed by seed so drift of the machine hits all of them alike. Policies:
full data + linear decay (Budgeted Training, the reference), full data + step decay, RS2 at the
same ratio, top-k by loss, by minimal margin (MMS) and by entropy, InfoBatch, the assistant, and
optionally the best policy of a sweep (``--best best_policy.yaml``).

Output (``--out``, default ``bench/results/<device>``): ``selection_vs_baselines.md`` (test
accuracy mean ± std per budget; the time to reach the reference's final validation accuracy as a
speedup; the scoring share), ``accuracy_vs_budget.png`` and ``accuracy_vs_time.png``; the same is
logged to MLflow (experiment ``bench_selection_vs_baselines``, local store unless
``--tracking-uri``). ``--samples N`` adds a noise-free view: the same policies under a
deterministic budget of N sample passes (one seed is enough: same seed, same result).

Usage:
    python bench/selection_vs_baselines.py                           # CPU: 10 and 30 s, 3 seeds (~25 min)
    python bench/selection_vs_baselines.py --budgets 10,30,60 --seeds 3 --headline-seeds 5
    python bench/selection_vs_baselines.py --device cuda --model resnet18 --budgets 15,30,60,120
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RATIO = 0.5
POLICIES: dict[str, dict] = {
    "full_linear": {"training": {"schedule": "linear"}, "selection": {"strategy": "full"}},
    "full_step": {"training": {"schedule": "step"}, "selection": {"strategy": "full"}},
    "rs2": {"selection": {"strategy": "rs2", "ratio": RATIO}},
    "topk_loss": {"selection": {"strategy": "topk", "scorer": "loss", "ratio": RATIO, "warmup": 0.2,
                                "rerank_every": 2, "final_full": 0.1}},
    "topk_mms": {"selection": {"strategy": "topk", "scorer": "margin", "ratio": RATIO, "warmup": 0.2,
                               "rerank_every": 2, "final_full": 0.1}},
    "topk_entropy": {"selection": {"strategy": "topk", "scorer": "entropy", "ratio": RATIO, "warmup": 0.2,
                                   "rerank_every": 2, "final_full": 0.1}},
    "infobatch": {"selection": {"strategy": "infobatch", "scorer": "loss", "ratio": RATIO, "final_full": 0.125}},
    "assistant": {"selection": {"strategy": "sample", "scorer": "assistant", "ratio": RATIO, "warmup": 0.2,
                                "final_full": 0.1}},
}
REFERENCE = "full_linear"


def make_policy(base, name: str, overrides: dict, budget: float, seed: int, kind: str = "seconds"):
    from tunebudget.policy import policy_from_dict

    data = base.to_dict()
    for section, values in overrides.items():
        data[section] = {**data[section], **values}
    data["budget"] = {**data["budget"], "seconds": budget if kind == "seconds" else None,
                      "samples": budget if kind == "samples" else None}
    data["seed"] = seed
    data["name"] = name
    return policy_from_dict(data, name)


def reach_time(history: list[dict], target: float, kind: str) -> float | None:
    """First training second (or sample pass) at which the validation accuracy reached ``target``."""
    for h in history:
        if h.get("val_accuracy", 0.0) >= target:
            return h["train_seconds"] if kind == "seconds" else h["samples_seen"]
    return None


def run_grid(args, base, policies: dict, budgets: list[float], kind: str, data) -> list[dict]:
    from tunebudget.trainer import BudgetTrainer

    rows = []
    for budget in budgets:
        seeds = args.headline_seeds if budget == args.headline_budget and kind == "seconds" else args.seeds
        for seed in range(seeds):
            for name, overrides in policies.items():
                if seed >= args.seeds and name not in (REFERENCE, args.headline):
                    continue
                policy = make_policy(base, name, overrides, budget, seed, kind)
                result = BudgetTrainer(policy, device=args.device, data=data).run()
                s = result.stats
                rows.append({"policy": name, "budget": budget, "kind": kind, "seed": seed, "status": result.status,
                             "test_accuracy": result.test.get("accuracy", float("nan")),
                             "val_accuracy": result.val.get("accuracy", float("nan")),
                             "scoring_share": s["scoring_share"], "train_seconds": s["train_seconds"],
                             "history": [{k: h[k] for k in ("train_seconds", "samples_seen", "val_accuracy")}
                                         for h in result.history]})
                print(f"  {kind} {budget:g} seed {seed} {name:13s} test {rows[-1]['test_accuracy']:.4f} "
                      f"({s['train_seconds']:.1f} s)", file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict], budgets: list[float], kind: str, names: list[str]) -> tuple[str, dict]:
    unit = "s" if kind == "seconds" else "sample passes"
    lines = [f"| policy | {' | '.join(f'{b:g} {unit}' for b in budgets)} | speedup to reach {REFERENCE} "
             f"(at {budgets[-1]:g}) | scoring share |", "|---" * (len(budgets) + 3) + "|"]
    table: dict = {}
    for name in names:
        cells = []
        for b in budgets:
            acc = [r["test_accuracy"] for r in rows if r["policy"] == name and r["budget"] == b]
            mean, std = statistics.fmean(acc), (statistics.stdev(acc) if len(acc) > 1 else 0.0)
            table[(name, b)] = (mean, std, len(acc))
            cells.append(f"{mean * 100:.2f} ± {std * 100:.2f} (n={len(acc)})")
        last = budgets[-1]
        ref_final = statistics.fmean(r["val_accuracy"] for r in rows if r["policy"] == REFERENCE and r["budget"] == last)
        times = [reach_time(r["history"], ref_final, kind) for r in rows if r["policy"] == name and r["budget"] == last]
        reached = [t for t in times if t is not None]
        speed = (f"{last / statistics.fmean(reached):.2f}x ({len(reached)}/{len(times)} runs reached it)"
                 if reached else f"not reached (0/{len(times)})")
        share = statistics.fmean(r["scoring_share"] for r in rows if r["policy"] == name)
        lines.append(f"| {name} | {' | '.join(cells)} | {speed} | {share * 100:.2f}% |")
    return "\n".join(lines), table


def plot(rows: list[dict], budgets: list[float], names: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(names):
        means = [statistics.fmean(r["test_accuracy"] for r in rows if r["policy"] == name and r["budget"] == b)
                 for b in budgets]
        ax.plot(budgets, [m * 100 for m in means], marker="o", label=name, ls="--" if "full" in name or name == "rs2" else "-")
    ax.set(xlabel="budget (s)", ylabel="test accuracy (%)", title="Accuracy vs budget (mean over seeds)", xscale="log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p1 = out / "accuracy_vs_budget.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    last = budgets[-1]
    for i, name in enumerate(names):
        for j, r in enumerate(x for x in rows if x["policy"] == name and x["budget"] == last):
            xs = [h["train_seconds"] for h in r["history"]]
            ys = [h["val_accuracy"] * 100 for h in r["history"]]
            ax.plot(xs, ys, color=f"C{i % 10}", lw=1, alpha=0.8, label=name if j == 0 else None)
    ax.set(xlabel="training seconds", ylabel="validation accuracy (%)", title=f"Validation accuracy vs time ({last:g} s budget)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p2 = out / "accuracy_vs_time.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces/fashion_mnist_cnn.yaml"), help="base policy")
    ap.add_argument("--model", help="override task.model (e.g. resnet18 on a GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budgets", default="10,30", help="comma-separated seconds")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--headline-budget", type=float, default=30.0)
    ap.add_argument("--headline-seeds", type=int, default=5, help="seeds of the reference and --headline at that budget")
    ap.add_argument("--headline", default="topk_loss", help="the selective policy given the extra headline seeds")
    ap.add_argument("--best", help="a best_policy.yaml from a sweep: its selection and training sections join the table")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--samples", type=float, help="also run a deterministic budget of this many sample passes (1 seed)")
    ap.add_argument("--out", help="output directory (default bench/results/<device>)")
    ap.add_argument("--tracking-uri", help="MLflow store (default ./mlflow)")
    args = ap.parse_args()

    import torch

    from tunebudget.data import load_data
    from tunebudget.policy import load_policy
    from tunebudget.trainer import BudgetTrainer, resolve_device

    base = load_policy(args.space)
    if args.model:
        base = base.with_overrides({"task.model": args.model})
    base = base.with_overrides({"budget.eval_samples": None})
    device = resolve_device(args.device)
    args.device = str(device)
    names = [n.strip() for n in args.policies.split(",")]
    policies = {n: POLICIES[n] for n in names}
    if args.best:
        best = load_policy(args.best)
        policies["sweep_best"] = {"training": best.training.model_dump(), "selection": best.selection.model_dump()}
        names.append("sweep_best")
    budgets = [float(b) for b in args.budgets.split(",")]
    hw = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    out = Path(args.out or ROOT / "bench" / "results" / ("gpu" if device.type == "cuda" else "cpu"))
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(base.task, 0, device)
    # one discarded run first: the first run in a process pays one-off costs (thread pools, kernels)
    BudgetTrainer(make_policy(base, "warmup", {}, min(budgets[0], 3.0), 0), device=args.device, data=data).run()
    t0 = time.time()
    rows = run_grid(args, base, policies, budgets, "seconds", data)
    text, _ = summarise(rows, budgets, "seconds", names)
    md = [f"# Selection vs baselines: {base.task.dataset}/{base.task.model} on {hw}", "",
          f"Command: `python bench/selection_vs_baselines.py {' '.join(sys.argv[1:])}`  ",
          f"Test accuracy (%) mean ± std over seeds; ratio {RATIO} for the selective policies; "
          f"speedup = budget / time for the validation accuracy to reach {REFERENCE}'s final value.", "", text]
    if args.samples:
        srows = run_grid(argparse.Namespace(**{**vars(args), "seeds": 1, "headline_seeds": 1}), base, policies,
                         [args.samples], "samples", data)
        stext, _ = summarise(srows, [args.samples], "samples", names)
        md += ["", f"## Deterministic budget ({args.samples:g} sample passes, seed 0: no machine noise)", "", stext]
        rows += srows
    md += ["", f"Wall time of the benchmark: {time.time() - t0:.0f} s."]
    (out / "selection_vs_baselines.md").write_text("\n".join(md) + "\n")
    (out / "selection_vs_baselines.json").write_text(json.dumps(rows))
    pngs = plot([r for r in rows if r["kind"] == "seconds"], budgets, names, out)
    print("\n".join(md))
    log_to_mlflow(args, out, pngs, hw)
    return 0


def log_to_mlflow(args, out: Path, pngs: list[Path], hw: str) -> None:
    from tunebudget.tracking import Tracker

    tracker = Tracker(args.tracking_uri)
    exp = tracker.experiment_id("bench_selection_vs_baselines")
    run = tracker.start_run(exp, f"selection-vs-baselines-{time.strftime('%Y%m%d-%H%M%S')}",
                            {"hardware": hw, "command": " ".join(sys.argv)}, {"budgets": args.budgets, "seeds": args.seeds})
    for path in [out / "selection_vs_baselines.md", out / "selection_vs_baselines.json", *pngs]:
        tracker.log_file(run, path)
    tracker.finish(run)


if __name__ == "__main__":
    sys.exit(main())
