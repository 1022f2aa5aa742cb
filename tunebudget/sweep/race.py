"""The confirmation race: seeds in rounds, losers dropped, the freed runs spent where it is close.

Every candidate (the top searched policies and every baseline) runs confirmation seed 0, then 1, ...
in rounds. From round ``first_test`` on, before each round, the leader (the best mean so far) is
compared with every other candidate still in the race on the seeds both ran (paired: seed k is the
same data split, subset, noise draw and initialisation for all); a candidate the leader beats beyond
the noise (the paired difference's 95% interval above zero) leaves the race. Its runs stay in the
verdict; it gets no more seeds. The runs it would have had go to more seeds for those still in
contention, up to ``max_seeds`` each, in whole rounds (every candidate left runs the round's seed,
so those left share their seeds and their means compare like with like) for as long as a whole round
fits in the compute of the fixed confirmation (``candidates x confirm_seeds`` runs), or until one
candidate is left.

So a baseline leaves only after the leader was compared with it, the verdict stays paired, and a
hopeless candidate costs ``first_test`` runs instead of ``confirm_seeds``. The decisions depend only
on the results, so a resumed sweep replays them and continues with the same round (irace's racing,
Lopez-Ibanez et al. 2016; SMAC's intensification, Hutter et al. 2011; here with paired t-tests).

Example:
    >>> from tunebudget.sweep.records import Candidate
    >>> a, b, c = (Candidate(n, k, {}) for n, k in (("top1", "searched"), ("full", "baseline"),
    ...                                              ("bad", "baseline")))
    >>> race = Race([a, b, c], sign=1.0, first_test=2, max_seeds=4, cap=9)
    >>> value = {"top1": [0.90, 0.91], "full": [0.905, 0.90], "bad": [0.50, 0.52]}
    >>> for rnd in range(2):
    ...     for cand, k in race.next_round():
    ...         cand.values.append(value[cand.name][k])
    ...         cand.seeds.append(k)
    >>> [(c.name, k) for c, k in race.next_round()]      # 'bad' is beaten: its runs go to the others
    [('top1', 2), ('full', 2)]
    >>> race.dropped["bad"]["round"], race.runs
    (2, 8)
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from tunebudget.sweep.report import Paired, paired
from tunebudget.sweep.records import Candidate


class Race:
    """Which candidate runs which confirmation seed next.

    Args:
        candidates: the confirmation's candidates; their ``values``/``seeds`` are filled by the caller
            after each round.
        sign: 1 when higher is better, -1 when lower is.
        first_test: rounds (seeds) before the first elimination.
        max_seeds: most seeds any candidate gets.
        cap: most runs in all (the fixed confirmation's ``candidates x confirm_seeds``).
    """

    def __init__(self, candidates: Sequence[Candidate], sign: float, first_test: int, max_seeds: int, cap: int) -> None:
        if first_test < 2:
            raise ValueError(f"first_test must be at least 2 (a paired test needs two seeds), got {first_test}")
        self.candidates = list(candidates)
        self.sign = sign
        self.first_test = first_test
        self.max_seeds = max_seeds
        self.cap = cap
        self.alive = list(self.candidates)
        self.given: dict[str, int] = {c.name: 0 for c in self.candidates}
        self.dropped: dict[str, dict[str, Any]] = {}
        self.round = 0
        self.runs = 0

    def _mean(self, c: Candidate) -> float:
        return self.sign * c.mean if c.values else float("-inf")

    def leader(self) -> Optional[Candidate]:
        return max(self.alive, key=self._mean, default=None)

    def _eliminate(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        for c in list(self.alive):
            if c is leader:
                continue
            pair = paired(leader.by_seed(), c.by_seed(), self.sign)
            if pair is not None and pair.beats:
                self.alive.remove(c)
                self.dropped[c.name] = {"round": self.round, "by": leader.name, "seeds": pair.n,
                                        "diff": pair.diff, "low": pair.low, "high": pair.high}

    def next_round(self) -> list[tuple[Candidate, int]]:
        """The next round's ``(candidate, seed index)`` runs; empty when the race is over."""
        if self.round >= self.first_test:
            self._eliminate()
        if self.round >= self.first_test and len(self.alive) <= 1:
            return []
        ready = [c for c in self.alive if self.given[c.name] < self.max_seeds]
        if len(ready) > self.cap - self.runs:  # only whole rounds: the candidates left share their seeds,
            return []                          # so their means (the verdict's ranking) compare like with like
        jobs = [(c, self.given[c.name]) for c in ready]
        for c, _ in jobs:
            self.given[c.name] += 1
        self.runs += len(jobs)
        if jobs:
            self.round += 1
        return jobs

    def describe(self) -> str:
        """One line for the summary: rounds, runs against the cap, who left when and why."""
        out = [f"race: {self.round} rounds, {self.runs} runs of {self.cap} allowed (first test after "
               f"{self.first_test} seeds, at most {self.max_seeds} each)"]
        for name, d in self.dropped.items():
            pair = Paired(d["seeds"], d["diff"], d["low"], d["high"], math.nan, math.nan)
            out.append(f"'{name}' left before round {d['round'] + 1}, beaten by '{d['by']}' "
                       f"({self.sign * d['diff']:+.4f}, {pair.interval(self.sign)}, {d['seeds']} paired seeds)")
        return "; ".join(out)
