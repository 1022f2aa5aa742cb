"""BudgetTrainer: spend a budget with a policy. The loop and nothing else.

The trainer never imports Ray, Optuna or MLflow: it calls ``on_eval(metrics)`` at every
validation (a Tune trainable or the CLI plugs in there; returning True stops the run) and
``on_progress(p)`` now and then for a progress bar.

Per step, in a fixed order: read budget progress → stop at the deadline → end the epoch if
the selection phase changed → set the LR from progress → maybe validate (clock paused) →
forward, backward, step → record the scores the forward pass produced.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunebudget.budget import BudgetClock
from tunebudget.data import DataBundle, Split, augment_batch, load_data
from tunebudget.errors import TuneBudgetError
from tunebudget.models import build_model, count_parameters, final_linear
from tunebudget.policy import BudgetPolicy
from tunebudget.schedules import lr_multiplier
from tunebudget.selection import Assistant, EpochPlan, Selector, importance

log = logging.getLogger(__name__)

#: Forward-only chunk sizes (validation, test, scoring passes). On a CPU, small chunks keep the
#: activations in cache. Small CNN, one thread, two processes at once as in a sweep (70 s of
#: alternating runs on the 2-vCPU VM): 256 -> 15.3-15.9k/s, 512 -> 15.7-16.2k/s, 1024 -> 11.4k/s,
#: and 2048 ran at half the speed of 512 on its own.
EVAL_CHUNK = {"cpu": 512, "cuda": 4096}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise TuneBudgetError(f"--device: unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TuneBudgetError("--device cuda: no CUDA GPU is visible on this machine; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    """What a run produced; ``summary()`` is what ``--json`` writes."""

    status: str  # completed | diverged | stopped
    policy: BudgetPolicy
    test: dict[str, float]
    val: dict[str, float]
    history: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, **self.stats, "test": self.test, "val": self.val,
                "history": self.history, "policy": self.policy.to_dict()}


class _Stats:
    """Counters of one run (device tensors are read only at validation: no per-step sync)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.seen = torch.zeros(n, dtype=torch.bool, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.loss_count = 0
        self.steps = 0
        self.epochs = 0
        self.selection_seconds = 0.0
        self.share = 1.0

    def train_loss(self) -> float:
        value = float(self.loss_sum) / max(self.loss_count, 1)  # sync point
        self.loss_sum.zero_()
        self.loss_count = 0
        return value


class BudgetTrainer:
    """Trains ``policy.task`` under ``policy.budget`` the way ``policy.selection`` says.

    Args:
        policy: the recipe.
        device: ``auto``, ``cpu`` or ``cuda``.
        data: a preloaded bundle (else the task's data set is loaded onto the device).
        on_eval: called with a metrics dict at each validation; return True to stop.
        on_progress: called with budget progress in [0, 1] about every 0.5% of the budget.
        threads: torch CPU threads for this run (None leaves torch's default).

    Example:
        >>> from tunebudget.policy import BudgetPolicy
        >>> policy = BudgetPolicy.model_validate({"task": {"dataset": "digits", "model": "mlp",
        ...     "val_size": 200}, "budget": {"seconds": 2}})
        >>> BudgetTrainer(policy, device="cpu").run().status
        'completed'
    """

    def __init__(
        self,
        policy: BudgetPolicy,
        device: str = "auto",
        data: Optional[DataBundle] = None,
        on_eval: Optional[Callable[[dict[str, Any]], Optional[bool]]] = None,
        on_progress: Optional[Callable[[float], None]] = None,
        threads: Optional[int] = None,
    ) -> None:
        self.policy = policy
        self.device = resolve_device(device)
        self.eval_chunk = EVAL_CHUNK.get(self.device.type, 1024)
        if threads:
            torch.set_num_threads(threads)
        seed_everything(policy.seed)
        self.data = data.to(self.device, self.device.type == "cuda") if data else load_data(
            policy.task, policy.seed, self.device)
        self.on_eval = on_eval or (lambda m: None)
        self.on_progress = on_progress or (lambda p: None)
        self.regression = self.data.kind == "regression"
        self.model = self._build_model()
        self.head = final_linear(self.model, self.data.num_outputs)
        self.optimizer = self._build_optimizer()
        self.gen = torch.Generator(device=self.device).manual_seed(policy.seed)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        self.clock = BudgetClock(policy.budget, sync=sync)
        self.selector = Selector(policy.selection, len(self.data.train), self.device, self.gen)
        self.assistant = Assistant(self.data.input_shape, self.data.num_outputs, self.device) \
            if policy.selection.scorer == "assistant" and policy.selection.selective else None
        self.compile_seconds = 0.0

    # ---- set-up ---------------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        model = build_model(self.policy.task, self.data.input_shape, self.data.num_outputs).to(self.device)
        if self.device.type == "cuda" and self.data.is_image:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _build_optimizer(self) -> torch.optim.Optimizer:
        t = self.policy.training
        fused = {"fused": True} if self.device.type == "cuda" else {}
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if t.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum,
                                   nesterov=t.nesterov and t.momentum > 0, **fused)
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.momentum, 0.999), **fused)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.model(x).float()
        return self.model(x)

    def _per_sample_loss(self, out: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(out.squeeze(1), y, reduction="none")
        return F.cross_entropy(out, y, reduction="none", label_smoothing=smoothing)

    def _maybe_compile(self) -> None:
        """torch.compile and warm it up *before* the clock starts (compile time is not charged).

        Every graph the timed loop needs is built here: training (forward + backward) and
        evaluation/scoring (forward, eval mode), each with a dynamic batch dimension, so that an
        epoch's short last batch, a selected subset's odd size or the last evaluation chunk never
        triggers a recompile inside the clock (on an H100 one such recompile cost 1.3 s of a 2 s
        budget). The timed loop then runs with the ``eager_on_recompile`` stance: a shape nobody
        foresaw runs eagerly rather than compiling on the budget's time.
        """
        if not self.policy.training.compile:
            return
        t0 = time.perf_counter()
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model = torch.compile(self.model)
        train = self.data.train
        n = min(self.policy.training.batch_size, len(train))
        xb, yb = train.x[:n].clone(), train.y[:n]
        torch._dynamo.maybe_mark_dynamic(xb, 0)
        self.model.train()
        self._per_sample_loss(self._forward(xb), yb).mean().backward()
        self.model.eval()
        with torch.no_grad():
            xe = train.x[: min(self.eval_chunk, len(train))].clone()
            torch._dynamo.maybe_mark_dynamic(xe, 0)
            self._forward(xe)
        self.model.zero_grad(set_to_none=True)
        getattr(self.model, "_orig_mod", self.model).load_state_dict(state)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.compile_seconds = time.perf_counter() - t0

    def _timed_stance(self):
        """The compiler's stance inside the clock: no compiling on the budget's time."""
        if self.policy.training.compile and hasattr(torch.compiler, "set_stance"):
            return torch.compiler.set_stance("eager_on_recompile")
        return contextlib.nullcontext()

    # ---- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: Split) -> dict[str, float]:
        """Loss and accuracy (classification) or MSE (regression) on a split, in eval mode."""
        self.model.eval()
        loss_sum, correct = 0.0, 0
        chunk = self.eval_chunk
        for xb, yb in zip(split.x.split(chunk), split.y.split(chunk)):
            out = self._forward(xb)
            loss_sum += float(self._per_sample_loss(out, yb).sum())
            if not self.regression:
                correct += int((out.argmax(1) == yb).sum())
        self.model.train()
        n = max(len(split), 1)
        if self.regression:
            return {"loss": loss_sum / n, "mse": loss_sum / n}
        return {"loss": loss_sum / n, "accuracy": correct / n}

    @torch.no_grad()
    def _scoring_pass(self) -> None:
        """A forward-only pass over all training samples to refresh their scores (charged)."""
        self.model.eval()
        train = self.data.train
        with self.clock.scoring():
            for start in range(0, len(train), self.eval_chunk):
                idx = torch.arange(start, min(start + self.eval_chunk, len(train)), device=self.device)
                out = self._forward(train.x[idx])
                losses = self._per_sample_loss(out, train.y[idx])
                self.selector.observe(idx, self._importance(out, losses))
        self.clock.charge_scoring(len(train))
        self.model.train()

    def _rescore_due(self, p: float) -> bool:
        """Fresh scores of all samples before this epoch: the assistant's, or a scoring pass."""
        if self.selector.phase(p) != "select":
            return False
        if self.assistant is not None:  # cheap: every re-rank, and every epoch for infobatch
            return self.selector.needs_rescore(p) or self.policy.selection.strategy == "infobatch"
        return self.policy.selection.rescore and self.selector.needs_rescore(p)

    def _refresh_scores(self) -> None:
        if self.assistant is None:
            self._scoring_pass()
            return
        train = self.data.train
        with self.clock.scoring():
            self.selector.observe(torch.arange(len(train), device=self.device), self.assistant.predict(train.x, train.y))

    def _importance(self, out: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        weight = self.head.weight.detach() if self.head is not None else None
        return importance(self.policy.selection.scorer, out.detach(), losses.detach(), weight, self.gen)

    # ---- the loop -------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train until the budget is spent (or the loss diverges, or ``on_eval`` says stop)."""
        self._maybe_compile()
        self.model.train()
        stats = _Stats(len(self.data.train), self.device)
        history: list[dict[str, Any]] = []
        evals = _EvalSchedule(self.policy.budget.eval_every)
        self.clock.start()
        status = "completed"
        with self._timed_stance():
            while status == "completed" and not self.clock.exhausted():
                plan = self._plan_epoch(stats)
                status = self._run_epoch(plan, stats, evals, history)
        self.clock.stop()
        self.on_progress(self.clock.progress())
        if status == "completed" or status == "stopped":
            history.append(self._validate(stats, final=True))
        return self._finish(status, stats, history)

    def _plan_epoch(self, stats: _Stats) -> EpochPlan:
        p = self.clock.progress()
        if self._rescore_due(p):
            self._refresh_scores()
        t0 = time.perf_counter()
        plan = self.selector.plan(p)
        stats.selection_seconds += time.perf_counter() - t0
        stats.share = plan.share
        stats.epochs += 1
        return plan

    def _run_epoch(self, plan: EpochPlan, stats: _Stats, evals: "_EvalSchedule", history: list) -> str:
        t = self.policy.training
        train = self.data.train
        smoothing = 0.0 if self.regression else t.label_smoothing
        ticks = int(self.clock.progress() * 200)
        for idx in plan.order.split(t.batch_size):
            p = self.clock.progress()
            if p >= 1.0 or self.selector.phase(p) != plan.phase:
                return "completed"
            if evals.due(p):
                metrics = self._validate(stats)
                history.append(metrics)
                if self.on_eval(metrics):
                    return "stopped"
                if not math.isfinite(metrics["train_loss"]):
                    return "diverged"
            self._set_lr(lr_multiplier(t.schedule, p, t.lr_warmup) * t.lr)
            loss = self._step(train, idx, plan.weights, smoothing, stats)
            if not math.isfinite(loss):
                return "diverged"
            if int(p * 200) != ticks:
                ticks = int(p * 200)
                self.on_progress(p)
        return "completed"

    def _step(self, train: Split, idx: torch.Tensor, weights: Optional[torch.Tensor],
              smoothing: float, stats: _Stats) -> float:
        xb, yb = train.x[idx], train.y[idx]
        if self.policy.task.augment and xb.dim() == 4:
            xb = augment_batch(xb, self.gen)
        out = self._forward(xb)
        losses = self._per_sample_loss(out, yb, smoothing)
        loss = (losses * weights[idx]).mean() if weights is not None else losses.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.assistant is not None:
            self.assistant.update(xb, yb, losses)
        elif self.policy.selection.selective:
            self.selector.observe(idx, self._importance(out, losses))
        stats.seen[idx] = True
        stats.loss_sum += losses.detach().sum()
        stats.loss_count += idx.numel()
        stats.steps += 1
        self.clock.charge(idx.numel())
        # NaN check: one sync per step on CUDA; on the CPU the value is already there.
        return float(loss.detach()) if self.device.type == "cpu" or stats.steps % 16 == 0 else 0.0

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _validate(self, stats: _Stats, final: bool = False) -> dict[str, Any]:
        train_loss = stats.train_loss()
        split, k = self.data.val, self.policy.budget.eval_samples
        if k and not final and k < len(split):  # the validation split is already a random draw
            split = Split(split.x[:k], split.y[:k])
        with self.clock.paused():
            val = self.evaluate(split)
        train_s = self.clock.train_seconds()
        metrics = {
            "progress": self.clock.progress(),
            "train_seconds": train_s,
            "eval_seconds": self.clock.eval_seconds,
            "scoring_seconds": self.clock.scoring_seconds,
            "scoring_share": self.clock.scoring_seconds / train_s if train_s > 0 else 0.0,
            "selection_seconds": stats.selection_seconds,
            "train_loss": train_loss,
            "samples_seen": self.clock.samples_trained,
            "distinct_samples": int(stats.seen.sum()),
            "kept_share": stats.share,
            "epoch": stats.epochs,
            "lr": self.optimizer.param_groups[0]["lr"],
            "throughput": self.clock.samples_trained / train_s if train_s > 0 else 0.0,
            "final": final,
        }
        metrics.update({f"val_{k}": v for k, v in val.items()})
        return metrics

    def _finish(self, status: str, stats: _Stats, history: list[dict[str, Any]]) -> TrainResult:
        t0 = time.perf_counter()
        test = self.evaluate(self.data.test) if status != "diverged" else {}
        test_seconds = time.perf_counter() - t0
        train_s = self.clock.train_seconds()
        budget = self.policy.budget
        result_stats = {
            "limit": budget.kind,
            "budget_seconds": budget.seconds,
            "budget_samples": budget.samples,
            "train_seconds": train_s,
            "eval_seconds": self.clock.eval_seconds,
            "test_seconds": test_seconds,
            "scoring_seconds": self.clock.scoring_seconds,
            "scoring_share": self.clock.scoring_seconds / train_s if train_s > 0 else 0.0,
            "selection_seconds": stats.selection_seconds,
            "compile_seconds": self.compile_seconds,
            "samples_seen": self.clock.samples_trained,
            "sample_passes_charged": self.clock.samples_used,
            "distinct_samples": int(stats.seen.sum()),
            "train_size": len(self.data.train),
            "steps": stats.steps,
            "epochs": stats.epochs,
            "throughput": self.clock.samples_trained / train_s if train_s > 0 else 0.0,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "parameters": count_parameters(self.model),
            "policy_digest": self.policy.digest(),
        }
        val = {k[4:]: v for k, v in history[-1].items() if k.startswith("val_")} if history else {}
        return TrainResult(status, self.policy, test, val, history, result_stats)


class _EvalSchedule:
    """Validation every ``every`` share of the budget (never at p = 0)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.next = every

    def due(self, p: float) -> bool:
        if p + 1e-12 < self.next or self.next >= 1.0 - 1e-9:
            return False
        while self.next <= p + 1e-12:
            self.next += self.every
        return True


def primary_metric(kind: str) -> tuple[str, str]:
    """The default metric and mode for a task kind: accuracy (max) or MSE (min)."""
    return ("val_accuracy", "max") if kind == "classification" else ("val_mse", "min")
