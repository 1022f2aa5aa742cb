"""The phase wrapper around any strategy: warm-up, delayed shrinking, selection, final full data."""

from __future__ import annotations

from typing import Optional

import torch

from tunebudget.policy import SelectionSpec
from tunebudget.registry import STRATEGIES
from tunebudget.selection.base import EpochPlan, Strategy
from tunebudget.selection.scorers import estimate_noise


class Selector:
    """Keeps the importance scores of all training samples and plans each epoch.

    The first ``warmup`` share of the budget and the last ``final_full`` share train on all
    data; in between, the strategy named by ``spec.strategy`` plans epochs at the kept share
    (ramped from 1 down to ``ratio`` over ``shrink_span`` after warm-up: delayed shrinking).

    Args:
        spec: the policy's selection section.
        n: number of training samples.
        device: where the scores and index tensors live (the training device).
        gen: random generator on ``device`` (seeded by the trainer).

    Example:
        >>> import torch
        >>> sel = Selector(SelectionSpec(strategy="rs2", ratio=0.5, warmup=0.2), 10, torch.device("cpu"),
        ...                torch.Generator().manual_seed(0))
        >>> sel.plan(0.1).phase, sel.plan(0.5).order.numel()
        ('warmup', 5)
    """

    def __init__(self, spec: SelectionSpec, n: int, device: torch.device, gen: torch.Generator) -> None:
        self.spec = spec
        self.n = n
        self.device = device
        self.gen = gen
        self.strategy: Strategy = STRATEGIES.get(spec.strategy).load()(spec, n, device, gen)
        #: Importance of each sample; NaN until the sample has been scored (then it ranks first).
        #: Empty for strategies that never read scores (rs2, full): no bookkeeping for them.
        self.scores = torch.full((n if spec.scores else 0,), float("nan"), device=device)
        #: The kept share in the selection phase; for ``ratio: auto`` (small_loss) None until the
        #: noise rate is estimated from the scores (minus the losses) at the end of warm-up.
        self.ratio: Optional[float] = None if spec.ratio == "auto" else float(spec.ratio)
        self.noise_estimate: Optional[float] = None

    # ---- phases ----
    def phase(self, p: float) -> str:
        s = self.spec
        if not s.selective:
            return "full"
        if p < s.warmup:
            return "warmup"
        if s.final_full > 0 and p >= 1.0 - s.final_full:
            return "final"
        return "select"

    def share(self, p: float) -> float:
        """Target kept share at progress ``p`` (1 outside the selection phase)."""
        s = self.spec
        if self.phase(p) != "select":
            return 1.0
        if self.ratio is None:
            self.noise_estimate = estimate_noise(-self.scores, self.gen.initial_seed() % 2**32)
            self.ratio = max(1.0 - self.noise_estimate, 1.0 / self.n)
        if s.shrink_span > 0:
            t = min(1.0, (p - s.warmup) / s.shrink_span)
            return 1.0 - t * (1.0 - self.ratio)
        return self.ratio

    # ---- scores ----
    @property
    def uses_scores(self) -> bool:
        return self.spec.scores

    def observe(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        """Record fresh scores of the samples ``idx`` (a no-op for strategies that read none)."""
        if self.uses_scores:
            self.scores[idx] = scores.to(self.scores.dtype)

    @property
    def estimating(self) -> bool:
        """``ratio: auto`` whose noise rate is not estimated yet (at the first selection plan)."""
        return self.ratio is None

    def needs_rescore(self, p: float) -> bool:
        """Whether the next epoch re-reads the scores (so a fresh scoring pass, if asked for, is due)."""
        if self.phase(p) != "select" or not self.uses_scores:
            return False
        # ratio auto, not yet estimated: the first selection plan ranks (and estimates, from fresh scores)
        return self.ratio is None or self.strategy.rank_due(self.share(p))

    # ---- plans ----
    def plan(self, p: float) -> EpochPlan:
        """The index tensor (and loss weights) of the next epoch at progress ``p``."""
        phase = self.phase(p)
        if phase in ("warmup", "final"):
            return EpochPlan(self.strategy.perm(self.n), None, phase, 1.0)
        plan = self.strategy.plan(self.share(p), self.scores)  # full: Full.plan, every sample
        plan.phase = phase
        return plan

    def choose(self, candidates: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
        """Online selection: the ``k`` of ``candidates`` to train on, given their fresh scores."""
        return self.strategy.choose(candidates, scores, k)
