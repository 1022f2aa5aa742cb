"""The confirmation race: the rules on their own (no Ray), then a real sweep raced, interrupted in the
middle of the race and resumed, with no seed run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, run_cli
from tunebudget.sweep.records import Candidate
from tunebudget.sweep.race import Race

pytestmark = pytest.mark.filterwarnings("ignore")


def play(race: Race, value, rounds: int = 100) -> list[list[tuple[str, int]]]:
    """Run the race with ``value(name, seed)`` as each run's result; the rounds as (name, seed) lists."""
    out = []
    for _ in range(rounds):
        jobs = race.next_round()
        if not jobs:
            break
        out.append([(c.name, k) for c, k in jobs])
        for c, k in jobs:
            c.values.append(value(c.name, k))
            c.seeds.append(k)
    return out


def candidates(*names: str) -> list[Candidate]:
    return [Candidate(n, "baseline" if n.startswith("base") else "searched", {}) for n in names]


NOISE = [0.004, -0.003, 0.001, -0.002, 0.003, 0.0, -0.004, 0.002, -0.001, 0.0]


def test_a_hopeless_candidate_leaves_after_the_first_test_and_its_runs_go_to_the_rest():
    cands = candidates("top1", "base_full", "base_bad")
    mean = {"top1": 0.900, "base_full": 0.899, "base_bad": 0.60}
    race = Race(cands, 1.0, first_test=3, max_seeds=10, cap=15)  # 3 candidates x 5 seeds
    rounds = play(race, lambda n, k: mean[n] + NOISE[k] * (2 if n == "top1" else 1))
    assert [len(r) for r in rounds[:3]] == [3, 3, 3]  # everyone, for the first three seeds
    assert race.dropped["base_bad"]["by"] == "top1" and race.dropped["base_bad"]["seeds"] == 3
    assert all("base_bad" not in dict(r) for r in rounds[3:])
    assert race.runs == 15 and len(cands[0].values) == len(cands[1].values) == 6  # 3 + the 6 freed runs
    assert len(cands[2].values) == 3


def test_the_race_never_passes_its_cap_or_max_seeds_and_is_the_fixed_one_when_it_cannot_drop():
    cands = candidates("top1", "base_a", "base_b")
    race = Race(cands, 1.0, first_test=3, max_seeds=4, cap=30)
    play(race, lambda n, k: 0.9 + NOISE[k] * (1 + len(n) % 3))  # all tied: nobody can be dropped
    assert not race.dropped and all(len(c.values) == 4 for c in cands) and race.runs == 12
    cands = candidates("top1", "base_a", "base_b", "base_c")
    race = Race(cands, 1.0, first_test=3, max_seeds=10, cap=4 * 3)  # cap = first_test rounds: fixed
    rounds = play(race, lambda n, k: {"top1": 0.9, "base_a": 0.5}.get(n, 0.89) + NOISE[k])
    assert len(rounds) == 3 and race.runs == 12


def test_a_round_that_does_not_fit_the_cap_is_not_started():
    """Only whole rounds: 11 runs allowed for 3 tied candidates is 3 rounds (9 runs), not a fourth
    round for two of them, which would leave the three on different seeds."""
    cands = candidates("top1", "base_a", "base_b")
    race = Race(cands, 1.0, first_test=3, max_seeds=10, cap=11)
    play(race, lambda n, k: 0.9 + NOISE[k] * (1 + len(n) % 3))
    assert race.runs == 9 and all(c.seeds == [0, 1, 2] for c in cands)


def test_lower_is_better_and_the_leader_is_never_dropped():
    cands = candidates("top1", "base_mse")
    race = Race(cands, -1.0, first_test=2, max_seeds=5, cap=10)
    play(race, lambda n, k: (0.10 if n == "top1" else 0.30) + NOISE[k])
    assert list(race.dropped) == ["base_mse"] and race.leader().name == "top1"
    assert "'base_mse' left before round 3, beaten by 'top1' (-0.2" in race.describe()


def test_a_race_replays_the_same_rounds_from_the_same_results():
    """What --resume relies on: the decisions are a function of the results."""
    value = {"top1": 0.91, "base_a": 0.90, "base_b": 0.7, "top2": 0.905}

    def result(n: str, k: int) -> float:
        return value[n] + NOISE[(k + sum(map(ord, n))) % len(NOISE)]

    race = Race(candidates(*value), 1.0, 3, 10, 20)
    first = play(race, result)
    again = play(Race(candidates(*value), 1.0, 3, 10, 20), result)
    assert first == again and sum(map(len, first)) <= 20 and len(first) > 5
    # whole rounds only: every candidate in the last round ran every round's seed (a shared set)
    last = {n for n, _ in first[-1]}
    assert race.alive and {c.name for c in race.alive} <= last
    assert all(c.seeds == list(range(len(first))) for c in race.candidates if c.name in last)


# ---- a real sweep raced, interrupted mid-race, resumed ----------------------------------------------

def race_space(tmp) -> "os.PathLike":
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": None, "samples": 4000, "eval_every": 0.5}
    data["sweep"].update({"trials": 2, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 5, "first_test": 3,
                          "max_seeds": 6, "confirm": "race"})
    # a baseline no seed can rescue: the race should drop it after its first three seeds
    data["baselines"] = [b for b in data["baselines"] if b["name"] == "full_linear"] + [
        {"name": "hopeless", "set": {"selection.strategy": "full", "training.lr": 0.02, "training.schedule": "step"}}]
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def confirm_runs(tmp):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("digits_mlp")
    runs = c.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return c, runs


def test_a_raced_sweep_interrupted_mid_race_resumes_without_running_a_seed_twice(tmp_path):
    space = race_space(tmp_path)
    cmd = [sys.executable, "-m", "tunebudget", "sweep", str(space), "--name", "resumable", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:  # interrupt once the second round has started (round 1 has a finished run)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            # the store is read only once round 1's Tune run exists: opening a store the sweep is still
            # creating would race its schema migration
            if (tmp_path / "ray_results" / "resumable" / "confirm-round1").exists():
                try:
                    _, runs = confirm_runs(tmp_path)
                except Exception:  # noqa: BLE001 - the store is being written
                    runs = []
                if any(r.data.tags.get("round") == "1" and r.info.status == "FINISHED" for r in runs):
                    break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    again = run_cli("sweep", str(space), "--resume", "--name", "resumable", "--quiet", cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "race:" in again.stdout and "paired over" in again.stdout and "95% CI" in again.stdout

    c, runs = confirm_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("tunebudget_role") == "sweep"]
    confirm = [r for r in runs if r.data.tags.get("stage") == "confirm"]
    assert all(r.info.status == "FINISHED" for r in confirm)
    pairs = [(r.data.tags["candidate"], r.data.tags["seed"]) for r in confirm]
    assert len(pairs) == len(set(pairs)), sorted(pairs)  # no seed of a candidate run twice
    m = parent.data.metrics
    assert len(confirm) == m["race_runs"] <= m["race_cap"] == 5 * len({p[0] for p in pairs})
    per = {name: sorted(int(s) for n, s in pairs if n == name) for name in {p[0] for p in pairs}}
    assert all(seeds == list(range(1000, 1000 + len(seeds))) for seeds in per.values())  # seed k in order
    # rounds tag every run; every candidate ran the first three rounds
    assert {r.data.tags["round"] for r in confirm} >= {"0", "1", "2"}
    assert all(len(s) >= 3 for s in per.values())
    # the hopeless baseline left after three seeds, and its runs went to the others
    assert len(per["hopeless"]) == 3 and m["race_dropped"] >= 1
    # its 2 freed runs: a sixth seed for each of the other two (unless the race settled those two first)
    assert max(map(len, per.values())) == 6 or m["race_dropped"] == 2
