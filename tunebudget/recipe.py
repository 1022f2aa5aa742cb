"""A budget policy in your own training loop: the learning-rate multiplier and the samples to train on
next, as the budget is spent.

:class:`Recipe` is built from a policy and the size of your training set. It holds the policy's budget
clock (wall clock or sample passes), its LR schedule and its selection (warm-up, delayed shrinking,
the strategy and the scorer); your loop asks it for index batches, trains on them, and hands back the
per-sample losses (and logits, for the margin and entropy scorers). Everything else stays yours: the
model, the optimizer, the data pipeline, the device.

Example (a plain PyTorch loop; ``examples/own_loop.py`` is a whole one):
    >>> import torch, torch.nn.functional as F
    >>> from tunebudget import Recipe, policy_from_dict
    >>> policy = policy_from_dict({"budget": {"seconds": None, "samples": 2000},
    ...     "selection": {"strategy": "topk", "scorer": "loss", "ratio": 0.5, "warmup": 0.2}})
    >>> x, y = torch.randn(500, 8), torch.randint(0, 3, (500,))
    >>> model = torch.nn.Linear(8, 3)
    >>> opt = torch.optim.SGD(model.parameters(), lr=policy.training.lr)
    >>> recipe = Recipe(policy, n=len(x))
    >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, recipe.lr_lambda)
    >>> for idx in recipe.batches():
    ...     out = model(x[idx])
    ...     losses = F.cross_entropy(out, y[idx], reduction="none")
    ...     opt.zero_grad(); (losses * recipe.weights(idx)).mean().backward(); opt.step()
    ...     recipe.step(idx, losses, out)
    ...     sched.step()
    >>> recipe.done, recipe.samples_trained >= 2000
    (True, True)

Selection that needs more than one forward pass of yours (``rescore``, the ``reducible`` scorer's
irreducible-loss models, the ``assistant``) runs only in tunebudget's own trainer: such a policy is
refused here with a one-line error. ``online`` selection works: :meth:`batches` yields candidates, and
:meth:`choose` (given their losses from a forward-only pass) returns the ones to train on.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional

import torch

from tunebudget.budget import BudgetClock
from tunebudget.errors import TuneBudgetError
from tunebudget.policy import BudgetPolicy
from tunebudget.registry import SCORERS
from tunebudget.schedules import lr_multiplier
from tunebudget.selection import Batch, EpochPlan, ScoringContext, Selector, build_scorer

#: Scorers that need only what a training step gives (losses, logits): the ones a Recipe can run.
OWN_LOOP_SCORERS = ("loss", "small_loss", "margin", "entropy", "random")


class Recipe:
    """The policy's LR and selection for a loop of your own.

    Args:
        policy: a validated policy (its ``budget``, ``training.schedule``/``lr_warmup``/``batch_size``
            and ``selection`` are read; the task is yours).
        n: the number of training samples your loop draws indices from.
        device: where the index tensors live.
        head: a callable returning the final linear layer's weight, for the margin scorer's
            normalised margin (None: the plain logit margin).
    """

    def __init__(self, policy: BudgetPolicy, n: int, device: str | torch.device = "cpu",
                 head: Optional[Any] = None) -> None:
        sel = policy.selection
        if not isinstance(n, int) or n < 1:
            raise TuneBudgetError(f"Recipe: n must be the number of training samples, a positive integer (got {n!r})")
        if sel.scores and sel.scorer not in OWN_LOOP_SCORERS:
            raise TuneBudgetError(f"selection.scorer {sel.scorer!r}: needs tunebudget's trainer (it trains or scores "
                                  f"models of its own); in your own loop use one of {', '.join(OWN_LOOP_SCORERS)}")
        if sel.scores and sel.rescore:
            raise TuneBudgetError("selection.rescore: a scoring pass over all samples runs only in tunebudget's "
                                  "trainer; set it to false in your own loop (scores come from your training steps)")
        self.policy = policy
        self.n = n
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(policy.seed)
        self.clock = BudgetClock(policy.budget)
        self.selector = Selector(sel, n, self.device, self.gen)
        self.scorer = None
        if sel.scores:
            ctx = ScoringContext(sel, None, 0, (), self.device, self.gen,  # type: ignore[arg-type]
                                 head=head or (lambda: None))
            self.scorer = build_scorer(ctx)
        self._plan: Optional[EpochPlan] = None
        self.epochs = 0

    # ---- the schedule ----
    @property
    def progress(self) -> float:
        """Share of the budget spent, in [0, 1] (the clock starts at the first batch)."""
        return self.clock.progress()

    @property
    def done(self) -> bool:
        return self.clock.started and self.clock.exhausted()

    @property
    def samples_trained(self) -> int:
        return self.clock.samples_trained

    def lr_multiplier(self) -> float:
        """The policy's LR multiplier at the current budget progress."""
        t = self.policy.training
        return lr_multiplier(t.schedule, self.progress, t.lr_warmup)

    def lr_lambda(self, _step: int = 0) -> float:
        """For ``torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_lambda)``: the multiplier at the
        current budget progress (LambdaLR's step count is ignored: the budget decides)."""
        return self.lr_multiplier()

    # ---- the samples ----
    def batches(self) -> Iterator[torch.Tensor]:
        """Index batches until the budget is spent: an epoch plan at a time, re-planned when the
        selection phase changes (online: candidate batches for :meth:`choose`)."""
        if not self.clock.started:
            self.clock.start()
        bs = self.policy.training.batch_size
        while not self.clock.exhausted():
            p = self.progress
            self._plan = plan = self.selector.plan(p)
            self.epochs += 1
            per_step = math.ceil(bs / plan.share) if plan.online else bs
            for idx in plan.order.split(per_step):
                p = self.progress
                if p >= 1.0 or self.selector.phase(p) != plan.phase:
                    break
                yield idx

    def sampler(self) -> "torch.utils.data.Sampler[list[int]]":
        """A batch sampler for ``DataLoader(dataset, batch_sampler=recipe.sampler())`` (single-process
        loading: the recipe must see each batch's losses before it plans the next epoch)."""
        recipe = self

        class _Batches(torch.utils.data.Sampler):
            def __iter__(self):
                for idx in recipe.batches():
                    yield idx.tolist()

        return _Batches()

    @property
    def online(self) -> bool:
        """The current plan selects online: pass each candidate batch through :meth:`choose` first."""
        return self._plan is not None and self._plan.online

    def weights(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights of ``idx`` (InfoBatch's 1/ratio, the sample strategy's 1/(N p); else 1)."""
        plan = self._plan
        if plan is None or plan.weights is None or plan.online:
            return torch.ones(len(idx), device=self.device)
        return plan.weights[idx.to(plan.weights.device)]

    def choose(self, candidates: torch.Tensor, losses: torch.Tensor, logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Online selection: the candidates to train on, given their per-sample losses (and logits)
        from a forward-only pass; the pass is charged at ``budget.scoring_cost``."""
        plan = self._plan
        if plan is None or not plan.online:
            return candidates
        assert self.scorer is not None
        k = min(self.policy.training.batch_size, max(1, math.ceil(candidates.numel() * plan.share)))
        scores = self.scorer.score(Batch(candidates, None, None, _detach(logits), _detach(losses)))  # type: ignore[arg-type]
        self.clock.charge_scoring(candidates.numel())
        return self.selector.choose(candidates, scores, k)

    def step(self, idx: torch.Tensor, losses: torch.Tensor, logits: Optional[torch.Tensor] = None) -> None:
        """Hand back a training step: its sample ids and per-sample losses (and logits, for the margin
        and entropy scorers). Charges the budget and records the scores the selection reads."""
        if not self.clock.started:
            self.clock.start()
        self.clock.charge(int(idx.numel()))
        self.clock.tick()
        if self.scorer is not None:
            batch = Batch(idx, None, None, _detach(logits), _detach(losses))  # type: ignore[arg-type]
            self.selector.observe(idx, self.scorer.score(batch))

    @property
    def needs(self) -> set[str]:
        """What :meth:`step` needs besides the losses: ``{"logits"}`` for the margin and entropy scorers."""
        sel = self.policy.selection
        return {"logits"} if sel.scores and SCORERS.get(sel.scorer).needs_classes else set()


def _detach(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach()
