"""BudgetTrainer: spend a budget with a policy. The loop and nothing else.

The trainer never imports Ray, Optuna or MLflow: it calls ``on_eval(metrics)`` at every
validation (a Tune trainable or the CLI plugs in there; returning True stops the run) and
``on_progress(p)`` now and then for a progress bar.

Per step, in a fixed order: read budget progress → stop at the deadline → end the epoch if
the selection phase changed → maybe validate (clock paused) → set the LR from progress → (online
selection: score the candidates, keep the best) → forward, backward, step → let the scorer learn
and record the scores the forward pass produced → tick the clock.

The trainer knows scorers and strategies only through their protocols
(:mod:`tunebudget.selection.base`): which one runs is the policy's business.
"""

from __future__ import annotations

import contextlib
import copy
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
from tunebudget.policy import BudgetPolicy, BudgetSpec
from tunebudget.registry import SCORERS
from tunebudget.schedules import lr_multiplier
from tunebudget.selection import Batch, EpochPlan, Scorer, ScoringContext, Selector, build_scorer

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
        self.candidates = 0  # samples scored by online selection's candidate passes
        self.mislabelled = torch.zeros((), dtype=torch.long, device=device)  # trained samples a noise regime changed
        self.selection_seconds = 0.0
        self.share = 1.0

    def train_loss(self) -> float:
        value = float(self.loss_sum) / max(self.loss_count, 1)  # sync point
        self.loss_sum.zero_()
        self.loss_count = 0
        return value


def carve(split: Split, share: float, seed: int) -> tuple[Split, Optional[Split]]:
    """Split off a random ``share`` of ``split`` (a scorer's holdout); the rest stays for training."""
    if share <= 0:
        return split, None
    n = len(split)
    k = int(round(n * share))
    if not 1 <= k < n:
        raise TuneBudgetError(f"selection.il_holdout: {share} of {n} training samples leaves nothing on one side; "
                              "use a share that keeps samples on both sides, or 0")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 29)).to(split.x.device)
    return split.subset(order[k:]), split.subset(order[:k])


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
        self._given_model = model
        self._model_template = copy.deepcopy(model) if model is not None else None
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
        self.model = self._build_model()
        self.head = final_linear(self.model, self.data.num_outputs)
        self.optimizer = self._build_optimizer(self.model)
        self.gen = torch.Generator(device=self.device).manual_seed(policy.seed)
        self.clock = self._build_clock()
        self.scorer, self.train, self.holdout = self._build_scorer()
        self.selector = Selector(policy.selection, len(self.train), self.device, self.gen)
        self.compile_seconds = 0.0

    # ---- set-up ---------------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        if self._given_model is not None:  # your module first, then untrained copies of it
            model, self._given_model = self._given_model, None
            model = model.to(self.device)
        elif self._model_template is not None:
            model = copy.deepcopy(self._model_template).to(self.device)
        else:
            model = build_model(self.policy.task, self.data.input_shape, self.data.num_outputs).to(self.device)
        if self.device.type == "cuda" and self.data.is_image:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        t = self.policy.training
        fused = {"fused": True} if self.device.type == "cuda" else {}
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if t.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum,
                                   nesterov=t.nesterov and t.momentum > 0, **fused)
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.momentum, 0.999), **fused)

    def _build_clock(self) -> BudgetClock:
        if self.device.type != "cuda":
            return BudgetClock(self.policy.budget)
        return BudgetClock(self.policy.budget, sync=torch.cuda.synchronize, sync_every=SYNC_EVERY["cuda"],
                           event=lambda: torch.cuda.Event(enable_timing=True))

    def _build_scorer(self) -> tuple[Optional[Scorer], Split, Optional[Split]]:
        """The policy's scorer (None for strategies that read no scores) and the training split
        the main model trains on (less the scorer's holdout, if it asks for one)."""
        spec = self.policy.selection
        if not spec.scores:
            return None, self.data.train, None
        share = SCORERS.get(spec.scorer).load().holdout_share(spec)
        train, holdout = carve(self.data.train, share, self.policy.seed)
        ctx = ScoringContext(spec, train, self.data.num_outputs, self.data.input_shape, self.device, self.gen,
                             head=lambda: self.head.weight.detach() if self.head is not None else None,
                             fitter=_ScorerModels(self), holdout=holdout)
        return build_scorer(ctx), train, holdout

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
        train = self.train
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

    def evaluate(self, split: Split) -> dict[str, float]:
        """Loss and accuracy (classification) or MSE (regression) on a split, in eval mode."""
        loss_sum, correct = 0.0, 0
        for idx, out, losses in self.forward_chunks(split):
            loss_sum += float(losses.sum())
            if not self.regression:
                correct += int((out.argmax(1) == split.y[idx]).sum())
        n = max(len(split), 1)
        if self.regression:
            return {"loss": loss_sum / n, "mse": loss_sum / n}
        return {"loss": loss_sum / n, "accuracy": correct / n}

    def _refresh_scores(self) -> None:
        """Fresh scores of every training sample (charged): a forward-only pass of the main model,
        or the scorer alone when it needs none."""
        assert self.scorer is not None
        train = self.train
        with self.clock.scoring():
            if self.scorer.needs_forward:
                for idx, out, losses in self.forward_chunks(train):
                    self.selector.observe(idx, self.scorer.score(Batch(idx, train.x[idx], train.y[idx], out, losses)))
                self.clock.charge_scoring(len(train))
            else:
                for idx in torch.arange(len(train), device=self.device).split(self.eval_chunk):
                    self.selector.observe(idx, self.scorer.score(Batch(idx, train.x[idx], train.y[idx])))

    def _rescore_due(self, p: float) -> bool:
        """Fresh scores of all samples before this epoch: when a re-rank is due and either the
        policy asks for a scoring pass, the scorer refreshes cheaply, or ``ratio: auto`` is about to
        estimate the noise rate from them."""
        if self.scorer is None or not self.selector.needs_rescore(p):
            return False
        # ratio auto estimates the noise from fresh losses: an epoch's training losses mix early, poor models'
        return self.policy.selection.rescore or self.scorer.cheap_refresh or self.selector.estimating

    @torch.no_grad()
    def _choose_online(self, cand: torch.Tensor, share: float, stats: _Stats) -> torch.Tensor:
        """Online selection: score the candidates with a forward-only pass (charged) and keep the best."""
        assert self.scorer is not None
        k = min(self.policy.training.batch_size, max(1, math.ceil(cand.numel() * share)))
        train = self.train
        with self.clock.scoring():
            batch = Batch(cand, train.x[cand], train.y[cand])
            if self.scorer.needs_forward:
                self.model.eval()
                batch.logits = self._forward(batch.x)
                batch.losses = self._per_sample_loss(batch.logits, batch.y)
                self.model.train()
                self.clock.charge_scoring(cand.numel())
            chosen = self.selector.choose(cand, self.scorer.score(batch), k)
        stats.candidates += cand.numel()
        return chosen

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
        if self.scorer is not None:
            with self.clock.charged("il"):
                self.scorer.prepare()
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
            self._set_lr(lr_multiplier(t.schedule, p, t.lr_warmup) * t.lr)
            if plan.online:
                idx = self._choose_online(idx, plan.share, stats)
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
        if self.scorer is not None:
            batch = Batch(idx, xb, yb, out.detach(), losses.detach())
            self.scorer.update(batch)
            self.selector.observe(idx, self.scorer.score(batch))
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

    def _set_lr(self, lr: float, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        for group in (optimizer or self.optimizer).param_groups:
            group["lr"] = lr

    def _validate(self, stats: _Stats, final: bool = False) -> dict[str, Any]:
        train_loss = stats.train_loss()
        split, k = self.data.val, self.policy.budget.eval_samples
        if k and not final and k < len(split):  # the validation split is already a random draw
            split = split.subset(slice(0, k))
        with self.clock.paused():
            val = self.evaluate(split)
            kept = self.best is not None and self.best.offer(
                {"progress": self.clock.progress(), "step": stats.steps, **{f"val_{k}": v for k, v in val.items()}})
        train_s = self.clock.train_seconds()
        scoring_s = self.clock.scoring_seconds
        metrics = {
            "progress": self.clock.progress(),
            "train_seconds": train_s,
            "eval_seconds": self.clock.eval_seconds,
            "scoring_seconds": scoring_s,
            "scoring_share": scoring_s / train_s if train_s > 0 else 0.0,
            "il_seconds": self.clock.seconds_in("il"),
            "selection_seconds": stats.selection_seconds,
            "train_loss": train_loss,
            "samples_seen": self.clock.samples_trained,
            "candidates_scored": stats.candidates,
            "distinct_samples": int(stats.seen.sum()),
            "kept_share": stats.share,
            "epoch": stats.epochs,
            "lr": self.optimizer.param_groups[0]["lr"],
            "throughput": self.clock.samples_trained / train_s if train_s > 0 else 0.0,
            "final": final,
        }
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
        train_s = self.clock.train_seconds()
        scoring_s = self.clock.scoring_seconds
        budget = self.policy.budget
        result_stats = {
            "limit": budget.kind,
            "budget_seconds": budget.seconds,
            "budget_samples": budget.samples,
            "budget_use": budget.use,
            "unspent_share": self.clock.unspent_share(),
            "train_seconds": train_s,
            "overshoot_seconds": self.clock.overshoot_seconds(),
            "eval_seconds": self.clock.eval_seconds,
            "test_seconds": test_seconds,
            "scoring_seconds": scoring_s,
            "scoring_share": scoring_s / train_s if train_s > 0 else 0.0,
            "il_seconds": self.clock.seconds_in("il"),
            "selection_seconds": stats.selection_seconds,
            "compile_seconds": self.compile_seconds,
            "samples_seen": self.clock.samples_trained,
            "sample_passes_charged": self.clock.samples_used,
            "candidates_scored": stats.candidates,
            "distinct_samples": int(stats.seen.sum()),
            "mislabelled_share": (int(stats.mislabelled) / max(self.clock.samples_trained, 1)
                                  if self.train.noisy is not None else None),
            "noise_estimate": self.selector.noise_estimate,
            "train_size": len(self.train),
            "val_size": len(self.data.val),
            "val_source": self.data.val_source,
            "holdout_size": len(self.holdout) if self.holdout is not None else 0,
            "steps": stats.steps,
            "epochs": stats.epochs,
            "device_syncs": self.clock.syncs,
            "throughput": self.clock.samples_trained / train_s if train_s > 0 else 0.0,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "parameters": count_parameters(self.model),
            "policy_digest": self.policy.digest(),
        }
        result_stats.update(self._keep_best_stats())
        return TrainResult(status, self.policy, test, val, history, result_stats, model=self.model, data=self.data)

    def _keep_best_stats(self) -> dict[str, Any]:
        if self.best is None:
            return {}
        kept = self.best.metrics
        return {"kept_progress": kept.get("progress"), "kept_step": kept.get("step"),
                "keep_best_bytes": self.best.nbytes, "keep_best_seconds": self.best.seconds,
                "keep_best_copies": self.best.copies}


class _ScorerModels:
    """The trainer's :class:`~tunebudget.selection.base.Fitter`: models a scorer trains for itself
    (the reducible scorer's irreducible-loss models), on the run's budget.

    A model has the task's architecture and the policy's optimizer, learning rate and batch size,
    with the LR decaying linearly to zero over its own share of the budget (wall-clock seconds or
    sample passes, the kind the run uses). Its sample passes are charged to the run's budget.
    """

    def __init__(self, trainer: BudgetTrainer) -> None:
        self.t = trainer

    def fit(self, split: Split, share: float) -> nn.Module:
        t, spec = self.t, self.t.policy.budget
        sub = BudgetClock(BudgetSpec(seconds=spec.seconds * share if spec.seconds else None,
                                     samples=spec.samples * share if spec.samples else None,
                                     scoring_cost=spec.scoring_cost, use=spec.use))
        model = t._build_model()
        model.train()
        opt = t._build_optimizer(model)
        bs = t.policy.training.batch_size
        sub.start()
        while not sub.exhausted():
            for idx in torch.randperm(len(split), device=t.device, generator=t.gen).split(bs):
                p = sub.progress()
                if p >= 1.0:
                    break
                t._set_lr(lr_multiplier("linear", p) * t.policy.training.lr, opt)
                loss = t._per_sample_loss(t._forward(split.x[idx], model), split.y[idx]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sub.charge(idx.numel())
        t.clock.charge_passes(sub.samples_used)
        return model

    def losses(self, model: nn.Module, split: Split) -> torch.Tensor:
        out = torch.cat([losses.float() for _, _, losses in self.t.forward_chunks(split, model)])
        self.t.clock.charge_scoring(len(split))
        return out


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
