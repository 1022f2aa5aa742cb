"""BudgetTrainer's throughput against a bare PyTorch loop, measured in the same run.

The bare loop is what a careful user would write by hand: the same model, data tensors on the
same device, batch size, optimizer and loss, batches as slices of an on-device randperm, and
nothing else (no clock, no LR schedule, no scores, no validation). Each policy is then run
through BudgetTrainer for the same number of seconds; the runs alternate (bare, trainer, bare,
...) so that drift of the machine hits both sides alike, and the median of the repeats is used.

Printed per policy:

* ``throughput ratio`` = trainer samples/s ÷ bare-loop samples/s (the target is >= 0.95 on CPU);
* ``bookkeeping share`` = share of the budget spent on selection beyond training: the time in
  epoch planning and scoring passes, plus the per-step cost of recording scores, estimated as
  ``1 - ratio(policy) / ratio(full data)`` (the target is <= 3% with reused scores);
* ``planning+scoring share``: the part of it the trainer times directly (epoch planning, scoring
  passes, irreducible-loss models), a share of the same run's training time and so free of the
  machine's drift;
* for online selection, ``candidate ratio`` = candidates scored per second ÷ bare-loop samples/s
  (each trained sample costs a training pass plus 1/ratio forward-only candidate passes);
* ``syncs/step``: how often the clock waited for the device (on a GPU: once every 16 steps).

Each ratio is taken over a back-to-back pair (bare loop, then trainer) and the median over pairs is
printed: the speed of a shared VM drifts, and both sides of a pair see the same drift.

Usage:
    python bench/trainer_overhead.py                      # Fashion-MNIST CNN, CPU, 10 s runs, 3 repeats
    python bench/trainer_overhead.py --seconds 5 --repeats 2 --dataset digits --model mlp
    python bench/trainer_overhead.py --device cuda --model resnet18   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tunebudget.data import load_data  # noqa: E402
from tunebudget.models import build_model  # noqa: E402
from tunebudget.policy import policy_from_dict  # noqa: E402
from tunebudget.trainer import BudgetTrainer, resolve_device, seed_everything  # noqa: E402

POLICIES = {
    "full": {"strategy": "full"},
    "topk-loss": {"strategy": "topk", "scorer": "loss", "ratio": 0.5, "rerank_every": 1},
    "topk-margin": {"strategy": "topk", "scorer": "margin", "ratio": 0.5, "rerank_every": 1},
    "sample-entropy": {"strategy": "sample", "scorer": "entropy", "ratio": 0.5},
    "infobatch": {"strategy": "infobatch", "scorer": "loss", "ratio": 0.5},
    "rs2": {"strategy": "rs2", "ratio": 0.5},
    "topk-assistant": {"strategy": "topk", "scorer": "assistant", "ratio": 0.5, "rerank_every": 1},
    "topk-rescore": {"strategy": "topk", "scorer": "loss", "ratio": 0.5, "rerank_every": 3, "rescore": True},
    "online-loss": {"strategy": "online", "scorer": "loss", "ratio": 0.5},
    "online-reducible": {"strategy": "online", "scorer": "reducible", "ratio": 0.5},
}


def bare_loop(policy, data, device: torch.device, seconds: float) -> float:
    """Samples per second of a hand-written loop with the same model and data."""
    seed_everything(policy.seed)
    t = policy.training
    model = build_model(policy.task, data.input_shape, data.num_outputs).to(device)
    if device.type == "cuda" and data.is_image:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                          weight_decay=t.weight_decay, **({"fused": True} if device.type == "cuda" else {}))
    x, y = data.train.x, data.train.y
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seen = 0
    sync()
    start = time.perf_counter()
    while True:
        for idx in torch.randperm(len(x), device=device).split(t.batch_size):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += idx.numel()
            if seen % (t.batch_size * 8) < t.batch_size:
                sync()
                if time.perf_counter() - start >= seconds:
                    return seen / (time.perf_counter() - start)


def trainer_run(policy, data, device: torch.device) -> dict:
    result = BudgetTrainer(policy, device=str(device), data=data).run()
    s = result.stats
    return {"throughput": s["throughput"], "selection_seconds": s["selection_seconds"],
            "scoring_seconds": s["scoring_seconds"] + s["il_seconds"], "train_seconds": s["train_seconds"],
            "candidates": s["candidates_scored"] / s["train_seconds"], "syncs": s["device_syncs"] / max(s["steps"], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset of " + ",".join(POLICIES))
    ap.add_argument("--json", help="also write the figures as JSON here")
    args = ap.parse_args()

    device = resolve_device(args.device)
    names = [n.strip() for n in args.policies.split(",")]
    base = {"task": {"dataset": args.dataset, "model": args.model, "val_size": 1000},
            "budget": {"seconds": args.seconds, "eval_every": 1.0},
            "training": {"batch_size": args.batch_size}}
    policies = {n: policy_from_dict({**base, "selection": POLICIES[n]}) for n in names}
    data = load_data(policies[names[0]].task, 0, device)
    print(f"# trainer overhead: {args.dataset}/{args.model} on {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
          f"{args.seconds:g} s runs, median of {args.repeats}", flush=True)

    bare: list[float] = []
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(args.repeats):
        for n in names:
            bare.append(bare_loop(policies[n], data, device, args.seconds))
            runs[n].append(trainer_run(policies[n], data, device))
            runs[n][-1]["ratio"] = runs[n][-1]["throughput"] / bare[-1]  # a pair measured back to back
            runs[n][-1]["candidate_ratio"] = runs[n][-1]["candidates"] / bare[-1]
            print(f"  repeat {rep + 1}: {n:15s} bare {bare[-1]:8.0f}/s  trainer {runs[n][-1]['throughput']:8.0f}/s",
                  file=sys.stderr, flush=True)
    # Ratios are taken per back-to-back pair, then the median: a machine whose speed drifts (shared
    # VMs do, by 2-3x here) moves both sides of a pair alike.
    full_ratio = statistics.median(r["ratio"] for r in runs[names[0]])
    rows = []
    print("\n| policy | samples/s | throughput ratio vs bare loop (median of pairs) | bookkeeping share | "
          "planning+scoring share | candidate ratio | syncs/step |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        tp = statistics.median(r["throughput"] for r in runs[n])
        ratio = statistics.median(r["ratio"] for r in runs[n])
        planning = statistics.median((r["selection_seconds"] + r["scoring_seconds"]) / r["train_seconds"] for r in runs[n])
        book = max(0.0, 1 - ratio / full_ratio) if n != names[0] else 0.0
        cand = statistics.median(r["candidate_ratio"] for r in runs[n])
        syncs = statistics.median(r["syncs"] for r in runs[n])
        rows.append({"policy": n, "throughput": tp, "ratio": ratio, "bookkeeping_share": book,
                     "planning_share": planning, "candidate_ratio": cand, "syncs_per_step": syncs,
                     "pairs": [r["ratio"] for r in runs[n]]})
        print(f"| {n} | {tp:.0f} | {ratio:.3f} | {book * 100:.1f}% | {planning * 100:.2f}% | "
              f"{f'{cand:.3f}' if cand else '—'} | {syncs:.3f} |")
    print(f"\nbare loop: median {statistics.median(bare):.0f} samples/s, range {min(bare):.0f}-{max(bare):.0f} "
          f"over {len(bare)} runs (the spread is the machine's, not the code's)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "bare": bare, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
