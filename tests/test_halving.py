"""Restart successive halving: rung budgets, ASHA's promotion rule, what Optuna is told, and a real
restart sweep (local Ray, sqlite MLflow) whose runs carry their rung and whose parent run carries
the rank correlations between rungs."""

from __future__ import annotations

import math
import signal

import pytest
import yaml

from conftest import ROOT, run_cli, write_yaml

pytestmark = pytest.mark.filterwarnings("ignore")


def test_rung_budgets():
    from tunebudget.sweep.halving import rung_budgets

    assert [round(b, 3) for b in rung_budgets(18, 3, 2)] == [2.0, 6.0, 18.0]
    assert [round(b, 3) for b in rung_budgets(18, 3, 2.5)] == [6.0, 18.0]  # never below the smallest asked
    assert rung_budgets(10, 2, 10) == [10.0]
    with pytest.raises(ValueError):
        rung_budgets(10, 3, 11)


class _Space:
    """A one-parameter define-by-run space (what SearchSpace.suggest does, on a float)."""

    def suggest(self, trial):
        trial.suggest_float("training.lr", 0.01, 1.0, log=True)


def _searcher(tmp_path, trials=9, points=()):
    import optuna

    from tunebudget.sweep.halving import RestartHalving

    return RestartHalving(_Space(), "val_accuracy", "max", [1.0, 3.0, 9.0], 3, trials, list(points),
                          optuna.samplers.RandomSampler(seed=0), "s", f"sqlite:///{tmp_path / 'o.db'}")


def test_asha_promotion_rule_and_what_optuna_learns(tmp_path):
    """Serially (one slot): every promotion takes a configuration that is, at that moment, in the top
    1/eta of its rung and not yet promoted; the top rung is reached; Optuna's study holds exactly
    the rung-0 values, never an upper rung's."""
    from ray.tune.search import Searcher

    s = _searcher(tmp_path, points=[{"training.lr": 0.1}])
    value = {}  # a policy's quality: higher lr is better here, and longer budgets add a little
    seen, n = [], 0
    while True:
        config = s.suggest(f"t{n}")
        if config == Searcher.FINISHED:
            break
        assert config is not None  # one slot: nothing is ever running when it is asked
        f = config["fidelity"]
        if f["rung"] > 0:  # ASHA's rule, checked against what was known when it was promoted
            below = sorted((v for (c, r), v in value.items() if r == f["rung"] - 1), reverse=True)
            assert value[(f["config"], f["rung"] - 1)] in below[: len(below) // 3]
            assert (f["config"], f["rung"]) not in value  # promoted once
        assert f["amount"] == [1.0, 3.0, 9.0][f["rung"]] and f["top"] == (f["rung"] == 2)
        v = config["training.lr"] + 0.01 * f["rung"]
        value[(f["config"], f["rung"])] = v
        seen.append((f["config"], f["rung"]))
        s.on_trial_complete(f"t{n}", {"val_accuracy": v, "finished": 1})
        n += 1
    rungs = [r for _, r in seen]
    # the compute of 9 + 1 full-budget trials (9 units each), all of it: rung budgets 1, 3, 9
    assert sum([1.0, 3.0, 9.0][r] for r in rungs) == 90 and s.ladder.left() < 1
    assert rungs.count(0) > 10  # more configurations than full-budget trials: that is the point
    assert rungs.count(0) // 3 - 1 <= rungs.count(1) < rungs.count(0) and rungs.count(2) >= 1
    assert seen[0] == ("c0", 0)  # the baseline first
    assert not s.live and s.ladder.committed == 90  # it finished with nothing running, the compute spent
    study = s.study
    told = sorted(t.value for t in study.trials)
    assert told == sorted(v for (c, r), v in value.items() if r == 0)  # rung 0 only
    assert study.trials[0].params == {"training.lr": 0.1}


def test_with_trials_running_at_once_no_slot_waits_and_the_compute_is_spent(tmp_path):
    """Three slots, trials ending out of order: every ask gets a trial until not even a rung-0
    trial fits (never None: a slot does not wait for a promotion), and the trials started add up
    to the compute of 9 + 1 full-budget trials, no more."""
    import random

    from ray.tune.search import Searcher

    s = _searcher(tmp_path, points=[{"training.lr": 0.1}])
    rng, running, n, amounts = random.Random(0), [], 0, []
    while True:
        while len(running) < 3:
            config = s.suggest(f"t{n}")
            assert config is not None
            if config == Searcher.FINISHED:
                break
            running.append((f"t{n}", config))
            amounts.append(config["fidelity"]["amount"])
            n += 1
        if not running:
            break
        trial_id, config = running.pop(rng.randrange(len(running)))  # any of them may end first
        s.on_trial_complete(trial_id, {"val_accuracy": config["training.lr"] + rng.gauss(0, 0.05), "finished": 1})
    assert sum(amounts) == 90 and s.ladder.committed == 90 and not s.live
    assert 3.0 in amounts and 9.0 in amounts  # promotions happened, up to the top rung


def test_rung_trial_counts_for_budgets_that_do_not_divide():
    from tunebudget.sweep.halving import expected_trials, max_trials, rung_budgets

    for budget in (7, 13, 20, 0.1, 1e5):
        rungs = rung_budgets(budget, 3, budget / 9)
        most = 10 * 9  # every trial at rung 0
        assert max_trials(10, rungs) >= most  # Tune's num_samples never stops a sweep early
        assert 10 < expected_trials(10, rungs, 3) < most


def test_a_searcher_saved_before_compute_sizing_resumes(tmp_path):
    """A pickle without the compute fields: what it started is counted, and it goes on."""
    import pickle

    s = _searcher(tmp_path, trials=4)
    for i in range(4):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"val_accuracy": 0.1 * i, "finished": 1})
    state = s.__getstate__()  # as it was pickled then: the rule's fields on the searcher, no cap or committed
    ladder = state.pop("ladder")
    state.update(results=ladder.results, promoted=ladder.promoted, rungs=ladder.rungs, eta=ladder.eta)
    with open(tmp_path / "old.pkl", "wb") as fh:
        pickle.dump(state, fh)
    again = _searcher(tmp_path, trials=4)
    again.restore(str(tmp_path / "old.pkl"))
    assert again.ladder.cap == 4 * 9.0 and again.ladder.committed == s.ladder.committed
    assert again.suggest("t4") is not None


def test_a_searcher_saved_before_the_ladder_resumes_with_its_compute(tmp_path):
    """A pickle from before the rule was a Ladder (its fields on the searcher, cap and committed
    included) resumes with the same results, promotions and compute left."""
    import pickle

    s = _searcher(tmp_path, trials=4)
    for i in range(6):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"val_accuracy": 0.1 * i, "finished": 1})
    state = s.__getstate__()
    ladder = state.pop("ladder")
    state.update(results=ladder.results, promoted=ladder.promoted, cap=ladder.cap, committed=ladder.committed,
                 rungs=ladder.rungs, eta=ladder.eta)
    with open(tmp_path / "old.pkl", "wb") as fh:
        pickle.dump(state, fh)
    again = _searcher(tmp_path, trials=4)
    again.restore(str(tmp_path / "old.pkl"))
    assert again.ladder == s.ladder and again.ladder.left() == s.ladder.left()
    assert again.suggest("t6") is not None and again.ladder.committed > ladder.committed  # and it goes on


def test_the_promotion_rule_alone():
    """The Ladder without Optuna or Tune: the top 1/eta of a rung goes up, best first, once each;
    lower is better when sign is -1; a promotion that does not fit what is left is not made; the
    compute is committed as trials start and nothing starts past the cap."""
    from tunebudget.sweep.halving import Ladder

    lad = Ladder([1.0, 3.0, 9.0], eta=3, cap=20.0)
    assert lad.next() == (None, 0) and lad.committed == 1.0
    for i, v in enumerate([0.5, 0.9, 0.7, 0.6, 0.8, 0.4]):
        lad.record(f"c{i}", 0, v)
    assert lad.next() == ("c1", 1) and lad.next() == ("c4", 1)  # the top 6 // 3 = 2, best first
    assert lad.next() == (None, 0)  # both promoted: a new configuration
    assert lad.promoted[0] == {"c1", "c4"} and lad.committed == 1 + 3 + 3 + 1
    lad.record("c1", 1, 0.95)
    lad.record("c4", 1, 0.93)
    lad.record("c9", 1, 0.90)
    assert lad.promotable() == ("c1", 1)  # 3 results at rung 1: the best goes to rung 2
    assert lad.promotable(left=5.0) is None  # rung 2's 9 units do not fit in 5
    assert lad.next() == ("c1", 2) and lad.committed == 17.0
    assert lad.next() == (None, 0) and lad.next() == (None, 0) and lad.next() == (None, 0)
    assert lad.committed == 20.0 and lad.next() is None  # the cap is spent
    low = Ladder([1.0, 3.0], eta=2, cap=100.0, sign=-1)
    for i, v in enumerate([0.3, 0.1, 0.2, 0.4]):
        low.record(f"c{i}", 0, v)
    assert low.next() == ("c1", 1) and low.next() == ("c2", 1)  # the lowest losses go up


def test_failed_and_diverged_trials_are_never_promoted(tmp_path):
    s = _searcher(tmp_path, trials=4)
    configs = [s.suggest(f"t{i}") for i in range(3)]
    s.on_trial_complete("t0", {"val_accuracy": float("nan"), "finished": 1})
    s.on_trial_complete("t1", error=True)
    s.on_trial_complete("t2", {"val_accuracy": 0.9, "diverged": 1, "finished": 1})
    s.suggest("t3")
    s.on_trial_complete("t3", {"val_accuracy": 0.99})  # cut by --search-time: never reached its budget
    assert s.ladder.promotable() is None and not s.ladder.results[0]
    assert [t.state.name for t in s.study.trials] == ["FAIL"] * 4
    assert all(c["fidelity"]["rung"] == 0 for c in configs)


def test_searcher_state_survives_a_pickle_round_trip(tmp_path):
    s = _searcher(tmp_path, trials=4)
    s.suggest("t0")
    s.on_trial_complete("t0", {"val_accuracy": 0.5, "finished": 1})
    s.save(str(tmp_path / "ckpt.pkl"))
    again = _searcher(tmp_path, trials=4)
    again.restore(str(tmp_path / "ckpt.pkl"))
    assert again.started == 1 and again.ladder.results[0] == {"c0": 0.5}
    assert len(again.study.trials) == 1  # the same study, reloaded from its storage


def test_bad_fidelity_input_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": None, "samples": 3000}
    space = str(write_yaml(tmp_path / "space.yaml", data))
    for flags, fragment in [(["--fidelity", "restart", "--min-budget", "1e9"], "--min-budget: must be in (0, 3000]"),
                            (["--fidelity", "restart", "--min-budget", "10"], "less than one batch"),
                            (["--fidelity", "restart", "--eta", "1"], "--eta"),
                            (["--fidelity", "restart", "--scheduler", "asha"], "--scheduler asha")]:
        proc = cli("sweep", space, *flags)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def restart_sweep(tmp_path_factory):
    """One restart sweep, stopped by SIGTERM once four search trials have finished (as a batch
    scheduler or `kill` would), then resumed to the end."""
    from test_sweep import interrupt_sweep, runs_of

    tmp = tmp_path_factory.mktemp("restart")
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": None, "samples": 9000, "eval_every": 0.5}
    data["sweep"].update({"trials": 3, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 2,
                          "fidelity": "restart", "eta": 3, "min_budget": 1000})
    space = write_yaml(tmp / "space.yaml", data)
    interrupt_sweep(tmp, space, 4, "--cpus-per-trial", "0.5", sig=signal.SIGTERM)  # a scheduler's kill
    _, before = runs_of(tmp)
    kept = {r.info.run_id for r in before if r.info.status == "FINISHED" and r.data.tags.get("stage") == "search"}
    proc = run_cli("sweep", str(space), "--resume", "--name", "resumable", "--quiet", cwd=tmp, timeout=900)
    return tmp, proc, kept


def test_an_interrupted_restart_sweep_resumes_without_duplicates(restart_sweep):
    """Every (configuration, rung) runs once, finished runs are kept, and the ladder completes."""
    from test_sweep import runs_of

    tmp, proc, kept = restart_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, after = runs_of(tmp)
    search = [r for r in after if r.data.tags.get("stage") == "search" and r.info.status == "FINISHED"]
    ladder = [(r.data.tags["config"], r.data.tags["rung"]) for r in search]
    assert len(ladder) == len(set(ladder))  # no configuration ran twice at one rung
    assert kept <= {r.info.run_id for r in search}  # what finished before the interrupt was kept


def test_restart_sweep_runs_rungs_and_reports_rank_correlations(restart_sweep):
    import optuna
    from mlflow.tracking import MlflowClient

    tmp, proc, _ = restart_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restart successive halving, eta 3, rungs 1000, 3000, 9000 samples" in proc.stdout
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits_mlp")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("tunebudget_role") == "sweep")
    assert parent.info.status == "FINISHED"
    search = [r for r in runs if r.data.tags.get("stage") == "search" and r.info.status == "FINISHED"]
    rungs = [int(r.data.tags["rung"]) for r in search]
    # the compute of 3 + 2 (baselines) full-budget trials of 9000 samples, spent to the last rung-0 trial
    assert sum({0: 1000, 1: 3000, 2: 9000}[r] for r in rungs) == 5 * 9000
    assert rungs.count(0) > 5 and 1 <= rungs.count(1) < rungs.count(0) and rungs.count(2) >= 1
    for r in search:  # each run is a complete run at its rung's budget
        budget = {0: 1000, 1: 3000, 2: 9000}[int(r.data.tags["rung"])]
        assert r.data.tags["rung_budget"] == f"{budget:g}" and float(r.data.params["budget.samples"]) == budget
        assert ("test_accuracy" in r.data.metrics) == (r.data.tags["rung"] == "2")  # test only where used
    confirm = [r for r in runs if r.data.tags.get("stage") == "confirm"]
    assert confirm and all(float(r.data.params["budget.samples"]) == 9000 for r in confirm)
    metrics = parent.data.metrics
    assert metrics["rank_shared_r0_r1"] == rungs.count(1) and -1 <= metrics["rank_spearman_r0_r1"] <= 1
    assert math.isfinite(metrics["rank_kendall_r0_r1"])
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "rank_correlation.png" in names
    # `tunebudget report` fetches every artifact the verdict wrote (one list names them: names.py)
    from tunebudget.export import REPORT_FILES

    assert names <= set(REPORT_FILES), names - set(REPORT_FILES)
    out = run_cli("report", parent.info.run_id, "-o", str(tmp / "report"), cwd=tmp)
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp / "report").iterdir()} == names
    study = optuna.load_study(study_name=parent.data.tags["sweep_name"],
                              storage=f"sqlite:///{tmp / 'mlflow' / 'optuna.db'}")
    rung0 = sorted(r.data.metrics["val_accuracy"] for r in search if r.data.tags["rung"] == "0")
    assert sorted(t.value for t in study.trials) == pytest.approx(rung0)  # Optuna saw rung 0 only


def test_a_restart_sweep_too_small_for_its_ladder_gets_a_note():
    """Reaching the top of K+1 rungs takes about 2(K+1) full budgets' worth of compute: below that
    the sweep says so (and how many trials would do)."""
    from tunebudget.spaces import load_space
    from tunebudget.sweep import SweepOptions, ladder_note, make_plan

    space = load_space(ROOT / "search_spaces/digits_mlp.yaml")  # two baselines
    small = make_plan(space, SweepOptions(trials=1, fidelity="restart"))
    note = ladder_note(small, len(space.baselines))
    assert note and "3 full-budget trials" in note and "--trials 4 or more" in note
    assert ladder_note(make_plan(space, SweepOptions(trials=4, fidelity="restart")), 2) is None
    assert ladder_note(make_plan(space, SweepOptions(trials=1)), 2) is None  # full budget: no ladder
