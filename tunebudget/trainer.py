"""BudgetTrainer: spend a budget with a policy. The loop and nothing else.

The trainer never imports Ray, Optuna or MLflow: it calls ``on_eval(metrics)`` at every
validation (a Tune trainable or the CLI plugs in there; returning True stops the run) and
``on_progress(p)`` now and then for a progress bar.

Per step, in a fixed order: read budget progress → stop at the deadline → end the epoch if
the selection phase changed → maybe validate (clock paused) → set the LR from progress → (online
selection: score the candidates, keep the best) → forward, backward, step → let the scorer learn
and record the scores the forward pass produced → tick the clock.

The selection rules (the holdout carve, when to rescore, the online choice, the scorer's helper
models) live in the selection layer: the trainer asks
:class:`tunebudget.selection.SampleSelection` for an epoch's plan or a step's choice and lends
it its model's passes and the clock; which scorer runs is the policy's business.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunebudget.budget import BudgetClock
from tunebudget.data import DataBundle, Split, augment_batch, load_data
from tunebudget.errors import TuneBudgetError
from tunebudget.models import ModelSource, count_parameters, final_linear
from tunebudget.policy import BudgetPolicy, BudgetSpec, TrainingSpec
from tunebudget.schedules import lr_multiplier
from tunebudget.selection import EpochPlan, Passes, SampleSelection, Scorer
from tunebudget.selection.fit import set_lr

log = logging.getLogger(__name__)

#: Forward-only chunk sizes (validation, test, scoring passes). On a CPU, small chunks keep the
#: activations in cache. Small CNN, one thread, two processes at once as in a sweep (70 s of
#: alternating runs on the 2-vCPU VM): 256 -> 15.3-15.9k/s, 512 -> 15.7-16.2k/s, 1024 -> 11.4k/s,
#: and 2048 ran at half the speed of 512 on its own.
EVAL_CHUNK = {"cpu": 512, "cuda": 4096}
#: On a GPU the clock waits for the device (and the loss is checked for NaN) every this many
#: steps, not at every step: the host stays at most this many steps ahead of the device.
SYNC_EVERY = {"cuda": 16}


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


#: A run that trains fewer optimizer steps than this is refused (train) or excluded (sweep):
#: its accuracy is the initialisation's, whatever the policy.
MIN_STEPS = 5


@dataclass
class TrainResult:
    """What a run produced; ``summary()`` is what ``--json`` writes."""

    status: str  # completed | diverged | stopped
    policy: BudgetPolicy
    test: dict[str, float]
    val: dict[str, float]
    history: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    #: The trained ``nn.Module`` (with ``training.keep_best``: the kept weights) and the data bundle it
    #: was trained on (its standardisation prepares new inputs); not part of the summary.
    model: Optional[nn.Module] = field(default=None, repr=False)
    data: Optional[DataBundle] = field(default=None, repr=False)

    def save(self, path: str) -> Any:
        """Save the model, its input standardisation and the policy to the new directory ``path``
        (see :mod:`tunebudget.saved`; :func:`tunebudget.load_trained` loads it back)."""
        from tunebudget.saved import save_trained

        if self.model is None or self.data is None:
            raise TuneBudgetError("save: this result holds no model (a diverged run, or one read back from JSON)")
        return save_trained(path, self.model, self.data, self.policy, self.test)

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, **self.stats, "test": self.test, "val": self.val,
                "history": self.history, "policy": self.policy.to_dict()}

    @property
    def too_short(self) -> bool:
        """The budget ran out within MIN_STEPS optimizer steps: the result says nothing about the policy."""
        return self.status == "completed" and int(self.stats.get("steps", 0)) < MIN_STEPS


def too_short_message(budget: Any, steps: int, train_seconds: float) -> str:
    """The one-line error for a budget that trains fewer than MIN_STEPS steps."""
    return (f"budget: {budget.amount:g} {budget.kind} trained only {steps} optimizer step(s) "
            f"({train_seconds:.2f} s), under {MIN_STEPS}: the result says nothing about the policy; "
            "give a larger budget (budget.seconds, --budget)")


class _Stats:
    """Counters of one run (device tensors are read only at validation: no per-step sync)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.seen = torch.zeros(n, dtype=torch.bool, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.loss_count = 0
        self.steps = 0
        self.epochs = 0
        self.mislabelled = torch.zeros((), dtype=torch.long, device=device)  # trained samples a noise regime changed
        self.share = 1.0

    def train_loss(self) -> float:
        value = float(self.loss_sum) / max(self.loss_count, 1)  # sync point
        self.loss_sum.zero_()
        self.loss_count = 0
        return value


class BestWeights:
    """The best validated weights of a run (``training.keep_best``): a copy of the model's state,
    refreshed in place at each validation that improves ``metric`` (the first of equal values wins).

    Args:
        model: the model whose ``state_dict`` is kept (buffers included).
        metric: the validation metric compared, e.g. ``val_accuracy``.
        mode: ``max`` or ``min``.

    Example:
        >>> from torch import nn
        >>> best = BestWeights(nn.Linear(2, 2), "val_accuracy", "max")
        >>> best.offer({"val_accuracy": 0.5, "progress": 0.2}), best.offer({"val_accuracy": 0.4, "progress": 0.4})
        (True, False)
        >>> best.metrics["progress"], best.nbytes
        (0.2, 24)
    """

    def __init__(self, model: nn.Module, metric: str, mode: str) -> None:
        self.model, self.metric, self.sign = model, metric, 1.0 if mode == "max" else -1.0
        self.state: Optional[dict[str, torch.Tensor]] = None
        self.metrics: dict[str, Any] = {}
        self.seconds = 0.0
        self.copies = 0

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in (self.state or {}).values())

    def offer(self, metrics: dict[str, Any]) -> bool:
        """Keep the model's weights if ``metrics`` beats the kept ones; True when it did."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        if self.metrics and self.sign * value <= self.sign * self.metrics[self.metric]:
            return False
        t0 = time.perf_counter()
        with torch.no_grad():
            if self.state is None:
                self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                for k, v in self.model.state_dict().items():
                    self.state[k].copy_(v)
        if any(v.is_cuda for v in self.state.values()):
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        self.copies += 1
        self.metrics = dict(metrics)
        return True

    def restore(self) -> None:
        """Put the kept weights back into the model."""
        if self.state is not None:
            self.model.load_state_dict(self.state)


@dataclass
class Spent:
    """What a run has spent so far: the part that every validation's metrics and the final stats share."""

    train_seconds: float
    eval_seconds: float
    scoring_seconds: float
    scoring_share: float
    il_seconds: float
    selection_seconds: float
    samples_seen: int
    candidates_scored: int
    distinct_samples: int
    throughput: float

    @classmethod
    def now(cls, clock: BudgetClock, selection: SampleSelection, seen: torch.Tensor) -> "Spent":
        train_s, scoring_s = clock.train_seconds(), clock.scoring_seconds
        return cls(train_seconds=train_s, eval_seconds=clock.eval_seconds, scoring_seconds=scoring_s,
                   scoring_share=scoring_s / train_s if train_s > 0 else 0.0, il_seconds=clock.seconds_in("il"),
                   selection_seconds=selection.seconds, samples_seen=clock.samples_trained,
                   candidates_scored=selection.candidates, distinct_samples=int(seen.sum()),  # sync point
                   throughput=clock.samples_trained / train_s if train_s > 0 else 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def build_optimizer(model: nn.Module, t: TrainingSpec, device: torch.device) -> torch.optim.Optimizer:
    """The policy's optimizer over ``model`` (no weight decay on biases and norms; fused on a GPU)."""
    fused = {"fused": True} if device.type == "cuda" else {}
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0, **fused)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.momentum, 0.999), **fused)


def build_clock(budget: BudgetSpec, device: torch.device) -> BudgetClock:
    """The budget clock; on a GPU it waits for the device every SYNC_EVERY steps and times with events."""
    if device.type != "cuda":
        return BudgetClock(budget)
    return BudgetClock(budget, sync=torch.cuda.synchronize, sync_every=SYNC_EVERY["cuda"],
                       event=lambda: torch.cuda.Event(enable_timing=True))


def warm_compiled(model: nn.Module, train: Split, batch_size: int, chunk: int,
                  forward: Callable[[torch.Tensor, nn.Module], torch.Tensor],
                  loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[nn.Module, float]:
    """``torch.compile(model)``, with every graph the timed loop needs built now, before the clock;
    and the seconds that took.

    Training (forward + backward) and evaluation/scoring (forward, eval mode) are each built with
    a dynamic batch dimension, so that an epoch's short last batch, a selected subset's odd size or
    the last evaluation chunk never triggers a recompile inside the clock (on an H100 one such
    recompile cost 1.3 s of a 2 s budget). The weights come back as they were.
    """
    t0 = time.perf_counter()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = torch.compile(model)
    n = min(batch_size, len(train))
    xb, yb = train.x[:n].clone(), train.y[:n]
    torch._dynamo.maybe_mark_dynamic(xb, 0)
    compiled.train()
    loss(forward(xb, compiled), yb).mean().backward()
    compiled.eval()
    with torch.no_grad():
        xe = train.x[: min(chunk, len(train))].clone()
        torch._dynamo.maybe_mark_dynamic(xe, 0)
        forward(xe, compiled)
    compiled.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    if xb.is_cuda:
        torch.cuda.synchronize()
    return compiled, time.perf_counter() - t0


def evaluate_chunks(chunks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], split: Split,
                    regression: bool) -> dict[str, float]:
    """Loss and accuracy (classification) or MSE (regression) of ``split`` from its ``(ids, logits,
    per-sample losses)`` chunks."""
    loss_sum, correct = 0.0, 0
    for idx, out, losses in chunks:
        loss_sum += float(losses.sum())
        if not regression:
            correct += int((out.argmax(1) == split.y[idx]).sum())
    n = max(len(split), 1)
    if regression:
        return {"loss": loss_sum / n, "mse": loss_sum / n}
    return {"loss": loss_sum / n, "accuracy": correct / n}


class BudgetTrainer:
    """Trains ``policy.task`` under ``policy.budget`` the way ``policy.selection`` says.

    Args:
        policy: the recipe.
        device: ``auto``, ``cpu`` or ``cuda``.
        data: a preloaded bundle (else the task's data set is loaded onto the device).
        on_eval: called with a metrics dict at each validation; return True to stop.
        on_progress: called with budget progress in [0, 1] about every 0.5% of the budget.
        threads: torch CPU threads for this run (None: ``policy.training.threads``, else torch's default).
        evaluate_test: evaluate the test split at the end (a sweep's lower rungs skip it: unused).
        model: your own ``nn.Module`` to train instead of ``policy.task.model`` (models a scorer trains
            for itself, such as the irreducible-loss models, are copies of it as given).

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
        evaluate_test: bool = True,
        model: Optional[nn.Module] = None,
    ) -> None:
        self.policy = policy
        self.evaluate_test = evaluate_test
        self.device = resolve_device(device)
        self.eval_chunk = EVAL_CHUNK.get(self.device.type, 1024)
        threads = threads or policy.training.threads
        if threads:
            torch.set_num_threads(threads)
        seed_everything(policy.seed)
        self.data = data.to(self.device, self.device.type == "cuda") if data else load_data(
            policy.task, policy.seed, self.device)
        self.on_eval = on_eval or (lambda m: None)
        self.on_progress = on_progress or (lambda p: None)
        self.regression = self.data.kind == "regression"
        self._new_model = ModelSource(model, policy.task, self.data.input_shape, self.data.num_outputs,
                                      self.device, channels_last=self.device.type == "cuda" and self.data.is_image)
        self.model = self._new_model()
        self.head = final_linear(self.model, self.data.num_outputs)
        self.optimizer = build_optimizer(self.model, policy.training, self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(policy.seed)
        self.clock = build_clock(policy.budget, self.device)
        self.selection = SampleSelection(policy, self.data, self.gen, self.clock, self._passes(), chunk=self.eval_chunk,
                                         head=lambda: self.head.weight.detach() if self.head is not None else None)
        self.train, self.holdout, self.selector = self.selection.train, self.selection.holdout, self.selection.selector
        self.compile_seconds = 0.0

    @property
    def scorer(self) -> Optional[Scorer]:
        """The policy's scorer (None for strategies that read no scores)."""
        return self.selection.scorer

    # ---- set-up ---------------------------------------------------------------------------
    def _passes(self) -> Passes:
        """What the selection layer may run: this trainer's passes, and models and optimizers like its own."""
        return Passes(forward=self._forward, loss=self._per_sample_loss, chunks=self.forward_chunks,
                      candidates=self._candidates, new_model=self._new_model,
                      new_optimizer=lambda model: build_optimizer(model, self.policy.training, self.device))

    def _forward(self, x: torch.Tensor, model: Optional[nn.Module] = None) -> torch.Tensor:
        model = self.model if model is None else model
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(x).float()
        return model(x)

    def _per_sample_loss(self, out: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(out.squeeze(1), y, reduction="none")
        return F.cross_entropy(out, y, reduction="none", label_smoothing=smoothing)

    def _maybe_compile(self) -> None:
        """torch.compile and warm it up *before* the clock starts (compile time is not charged); the
        timed loop then runs with the ``eager_on_recompile`` stance: a shape nobody foresaw runs
        eagerly rather than compiling on the budget's time (see :func:`warm_compiled`)."""
        if self.policy.training.compile:
            self.model, self.compile_seconds = warm_compiled(
                self.model, self.train, self.policy.training.batch_size, self.eval_chunk, self._forward,
                self._per_sample_loss)

    def _timed_stance(self):
        """The compiler's stance inside the clock: no compiling on the budget's time."""
        if self.policy.training.compile and hasattr(torch.compiler, "set_stance"):
            return torch.compiler.set_stance("eager_on_recompile")
        return contextlib.nullcontext()

    # ---- forward-only passes ----------------------------------------------------------------
    @torch.no_grad()
    def forward_chunks(self, split: Split, model: Optional[nn.Module] = None):
        """``(ids, logits, per-sample losses)`` of ``split`` in eval mode, chunk by chunk."""
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(split), self.eval_chunk):
                idx = torch.arange(start, min(start + self.eval_chunk, len(split)), device=self.device)
                out = self._forward(split.x[idx], model)
                yield idx, out, self._per_sample_loss(out, split.y[idx])
        finally:
            model.train(was_training)

    def _candidates(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and per-sample losses of online selection's candidates, in eval mode."""
        self.model.eval()
        logits = self._forward(x)
        losses = self._per_sample_loss(logits, y)
        self.model.train()
        return logits, losses

    def evaluate(self, split: Split) -> dict[str, float]:
        """Loss and accuracy (classification) or MSE (regression) on a split, in eval mode."""
        return evaluate_chunks(self.forward_chunks(split), split, self.regression)

    # ---- the loop -------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train until the budget is spent (or the loss diverges, or ``on_eval`` says stop)."""
        self._maybe_compile()
        self.model.train()
        self.best = BestWeights(self.model, *primary_metric(self.data.kind)) if self.policy.training.keep_best else None
        stats = _Stats(len(self.train), self.device)
        history: list[dict[str, Any]] = []
        evals = _EvalSchedule(self.policy.budget.eval_every)
        self.clock.start()
        self.selection.prepare()
        status = "completed"
        with self._timed_stance():
            while status == "completed" and not self.clock.exhausted():
                plan = self.selection.plan(self.clock.progress())
                stats.share = plan.share
                stats.epochs += 1
                status = self._run_epoch(plan, stats, evals, history)
        self.clock.stop()
        self.on_progress(self.clock.progress())
        if status == "completed" or status == "stopped":
            history.append(self._validate(stats, final=True))
        return self._finish(status, stats, history)

    def _run_epoch(self, plan: EpochPlan, stats: _Stats, evals: "_EvalSchedule", history: list) -> str:
        t = self.policy.training
        smoothing = 0.0 if self.regression else t.label_smoothing
        ticks = int(self.clock.progress() * 200)
        per_step = math.ceil(t.batch_size / plan.share) if plan.online else t.batch_size
        for idx in plan.order.split(per_step):
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
            set_lr(self.optimizer, lr_multiplier(t.schedule, p, t.lr_warmup) * t.lr)
            if plan.online:
                idx = self.selection.choose(idx, plan.share)
            loss = self._step(idx, None if plan.online else plan.weights, smoothing, stats)
            if not math.isfinite(loss):
                return "diverged"
            if int(p * 200) != ticks:
                ticks = int(p * 200)
                self.on_progress(p)
        return "completed"

    def _step(self, idx: torch.Tensor, weights: Optional[torch.Tensor], smoothing: float, stats: _Stats) -> float:
        xb, yb = self.train.x[idx], self.train.y[idx]
        if self.policy.task.augment and xb.dim() == 4:
            xb = augment_batch(xb, self.gen)
        out = self._forward(xb)
        losses = self._per_sample_loss(out, yb, smoothing)
        loss = (losses * weights[idx]).mean() if weights is not None else losses.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.selection.learn(idx, xb, yb, out, losses)
        stats.seen[idx] = True
        if self.train.noisy is not None:
            stats.mislabelled += self.train.noisy[idx].sum()
        stats.loss_sum += losses.detach().sum()
        stats.loss_count += idx.numel()
        stats.steps += 1
        self.clock.charge(idx.numel())
        self.clock.tick()
        # NaN check: on a GPU only every SYNC_EVERY steps (a host sync); on the CPU the value is there
        every = SYNC_EVERY.get(self.device.type, 1)
        return float(loss.detach()) if every == 1 or stats.steps % every == 0 else 0.0

    # ---- what a run reports -----------------------------------------------------------------
    def _validate(self, stats: _Stats, final: bool = False) -> dict[str, Any]:
        train_loss = stats.train_loss()
        split, k = self.data.val, self.policy.budget.eval_samples
        if k and not final and k < len(split):  # the validation split is already a random draw
            split = split.subset(slice(0, k))
        with self.clock.paused():
            val = self.evaluate(split)
            kept = self.best is not None and self.best.offer(
                {"progress": self.clock.progress(), "step": stats.steps, **{f"val_{k}": v for k, v in val.items()}})
        spent = Spent.now(self.clock, self.selection, stats.seen)
        metrics = {"progress": self.clock.progress(), **spent.as_dict(), "train_loss": train_loss,
                   "kept_share": stats.share, "epoch": stats.epochs, "lr": self.optimizer.param_groups[0]["lr"],
                   "final": final}
        if self.best is not None:
            metrics["kept"] = kept
        metrics.update({f"val_{k}": v for k, v in val.items()})
        return metrics

    def _finish(self, status: str, stats: _Stats, history: list[dict[str, Any]]) -> TrainResult:
        val = {k[4:]: v for k, v in history[-1].items() if k.startswith("val_")} if history else {}
        if self.best is not None and self.best.metrics and status != "diverged":
            self.best.restore()  # the kept weights are what is tested and returned
            val = {k[4:]: v for k, v in self.best.metrics.items() if k.startswith("val_")}
        t0 = time.perf_counter()
        test = self.evaluate(self.data.test) if status != "diverged" and self.evaluate_test else {}
        test_seconds = time.perf_counter() - t0
        spent = Spent.now(self.clock, self.selection, stats.seen)
        result_stats = {**budget_stats(self.policy.budget, self.clock), **spent.as_dict(), "test_seconds": test_seconds,
                        "compile_seconds": self.compile_seconds, **self._run_stats(stats),
                        **keep_best_stats(self.best)}
        return TrainResult(status, self.policy, test, val, history, result_stats, model=self.model, data=self.data)

    def _run_stats(self, stats: _Stats) -> dict[str, Any]:
        noisy = self.train.noisy is not None
        return {
            "mislabelled_share": int(stats.mislabelled) / max(self.clock.samples_trained, 1) if noisy else None,
            "noise_estimate": self.selection.noise_estimate,
            "train_size": len(self.train),
            "val_size": len(self.data.val),
            "val_source": self.data.val_source,
            "holdout_size": len(self.holdout) if self.holdout is not None else 0,
            "steps": stats.steps,
            "epochs": stats.epochs,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "parameters": count_parameters(self.model),
            "policy_digest": self.policy.digest(),
        }


def budget_stats(budget: BudgetSpec, clock: BudgetClock) -> dict[str, Any]:
    """The budget a run was given and how it was spent, beyond :class:`Spent`."""
    return {"limit": budget.kind, "budget_seconds": budget.seconds, "budget_samples": budget.samples,
            "budget_use": budget.use, "unspent_share": clock.unspent_share(),
            "overshoot_seconds": clock.overshoot_seconds(), "sample_passes_charged": clock.samples_used,
            "device_syncs": clock.syncs}


def keep_best_stats(best: Optional[BestWeights]) -> dict[str, Any]:
    """What ``training.keep_best`` kept and what keeping it cost (nothing without it)."""
    if best is None:
        return {}
    kept = best.metrics
    return {"kept_progress": kept.get("progress"), "kept_step": kept.get("step"), "keep_best_bytes": best.nbytes,
            "keep_best_seconds": best.seconds, "keep_best_copies": best.copies}


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
