"""The one training loop of helper models: the irreducible-loss models and the assistant.

A :class:`Learner` is a model, its optimizer and its loss; :meth:`Learner.step` is one optimizer
step on one batch, the only place a helper model takes a gradient step. :func:`fit_within`
trains a learner epoch after epoch until its own clock is spent (the irreducible-loss models);
the assistant takes one :meth:`~Learner.step` per training step of the main model.
:class:`HelperModels` is the :class:`~tunebudget.selection.base.Fitter` the selection layer
hands a scorer: models like the main one, trained through :func:`fit_within` on a share of
the run's budget, everything charged to the run's clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from tunebudget.budget import BudgetClock
from tunebudget.policy import BudgetSpec
from tunebudget.schedules import lr_multiplier
from tunebudget.selection.base import Passes

if TYPE_CHECKING:  # pragma: no cover
    from tunebudget.data import Split


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class Learner:
    """A helper model's training: ``loss(forward(x), target)`` (a scalar) stepped by ``optimizer``."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.forward, self.optimizer, self.loss = forward, optimizer, loss

    def step(self, x: torch.Tensor, target: torch.Tensor) -> None:
        """One optimizer step on the batch ``(x, target)`` (with grad, whatever the caller's mode)."""
        with torch.enable_grad():
            loss = self.loss(self.forward(x), target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def fit_within(learner: Learner, split: "Split", clock: BudgetClock, batch_size: int, lr: float,
               gen: torch.Generator) -> None:
    """Train ``learner`` on ``split`` in shuffled epochs until ``clock`` is spent, the LR decaying
    linearly from ``lr`` to zero over the clock's budget; every sample pass is charged to it."""
    clock.start()
    while not clock.exhausted():
        for idx in torch.randperm(len(split), device=gen.device, generator=gen).split(batch_size):
            p = clock.progress()
            if p >= 1.0:
                break
            set_lr(learner.optimizer, lr_multiplier("linear", p) * lr)
            learner.step(split.x[idx], split.y[idx])
            clock.charge(idx.numel())


class HelperModels:
    """The :class:`~tunebudget.selection.base.Fitter` of a run: models a scorer trains for itself.

    A model has the task's architecture and the policy's optimizer, learning rate and batch size
    (``passes.new_model``, ``passes.new_optimizer``), with the LR decaying linearly to zero over its
    own share of the budget (wall-clock seconds or sample passes, the kind the run uses). Its sample
    passes are charged to the run's ``clock``.
    """

    def __init__(self, passes: Passes, budget: BudgetSpec, lr: float, batch_size: int, clock: BudgetClock,
                 gen: torch.Generator) -> None:
        self.passes, self.budget, self.lr, self.batch_size = passes, budget, lr, batch_size
        self.clock, self.gen = clock, gen

    def fit(self, split: "Split", share: float) -> torch.nn.Module:
        spec = self.budget
        sub = BudgetClock(BudgetSpec(seconds=spec.seconds * share if spec.seconds else None,
                                     samples=spec.samples * share if spec.samples else None,
                                     scoring_cost=spec.scoring_cost, use=spec.use))
        model = self.passes.new_model()
        model.train()
        learner = Learner(lambda x: self.passes.forward(x, model), self.passes.new_optimizer(model),
                          lambda out, y: self.passes.loss(out, y).mean())
        fit_within(learner, split, sub, self.batch_size, self.lr, self.gen)
        self.clock.charge_passes(sub.samples_used)
        return model

    def losses(self, model: torch.nn.Module, split: "Split") -> torch.Tensor:
        out = torch.cat([losses.float() for _, _, losses in self.passes.chunks(split, model)])
        self.clock.charge_scoring(len(split))
        return out
