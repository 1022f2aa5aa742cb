"""Sweeps with a real local Ray (2 CPUs), a real sqlite MLflow store and real training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli

pytestmark = pytest.mark.filterwarnings("ignore")


def space_file(tmp: Path, trials: int = 4, samples: float = 4000, **sweep) -> Path:
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": None, "samples": samples, "eval_every": 0.25}
    data["sweep"].update({"trials": trials, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 2, **sweep})
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def client(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}")


def runs_of(tmp: Path, experiment: str = "digits_mlp"):
    c = client(tmp)
    exp = c.get_experiment_by_name(experiment)
    return c, c.search_runs([exp.experiment_id], max_results=1000) if exp else []


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    space = space_file(tmp)
    proc = run_cli("sweep", str(space), "--cpus-per-trial", "0.5", "--quiet", cwd=tmp, timeout=900)
    return tmp, proc


def test_sweep_finishes_with_a_verdict(finished_sweep):
    tmp, proc = finished_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Verdict" in proc.stdout and "Best policy" in proc.stdout
    assert "Traceback" not in proc.stderr
    # confirmation seed k is the same for every candidate: the verdict is paired over them, also when a
    # baseline wins (the best searched policy's difference from it, with its interval)
    assert "paired over 2 seeds: 95% CI" in proc.stdout


def test_store_holds_one_parent_and_a_child_per_trial(finished_sweep):
    tmp, _ = finished_sweep
    c, runs = runs_of(tmp)
    parents = [r for r in runs if r.data.tags.get("tunebudget_role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["space_hash"] and parent.data.tags["budget"] == "4000 samples"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    search = [r for r in children if r.data.tags["stage"] == "search"]
    confirm = [r for r in children if r.data.tags["stage"] == "confirm"]
    assert len(search) == 4 + 2  # trials + baselines
    assert len({r.data.tags["trial_id"] for r in children}) == len(children)  # no duplicates
    assert {r.data.tags.get("baseline") for r in search} >= {"full_linear", "rs2_half"}
    # confirmation: top-1 and the two baselines, plus RS2 at the winner's ratio exactly when the winner
    # selects a fraction by score (not full data, not RS2 itself), x 2 seeds
    top1 = [r for r in confirm if r.data.tags["candidate"] == "top1"]
    assert len(top1) == 2
    selects = float(top1[0].data.params["selection.ratio"]) < 1 and \
        top1[0].data.params["selection.strategy"] != "rs2"
    assert len(confirm) == 2 * (3 + selects)
    assert sum(r.data.tags["candidate"] == "rs2_at_best_ratio" for r in confirm) == 2 * selects
    assert all(r.data.tags.get("confirm") == "true" for r in confirm)
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.params["training.lr"] and r.data.params["selection.strategy"]
        assert "test_accuracy" in r.data.metrics
        assert r.data.tags["device"] == "cpu" and r.data.tags["ray_node_id"]
        history = c.get_metric_history(r.info.run_id, "val_accuracy")
        assert len(history) >= 3
        steps = [m.step for m in history]
        assert steps == sorted(steps)  # step = elapsed training milliseconds
    # every run's data as an MLflow dataset input; common random numbers: the search stage's trials all
    # train on the base seed's data, and confirmation seed k on the same data for every candidate
    digests = {r.info.run_id: [i.dataset.digest for i in r.inputs.dataset_inputs] for r in children}
    assert all(len(d) == 1 and len(d[0]) == 12 for d in digests.values())
    assert all(r.inputs.dataset_inputs[0].dataset.name == "digits" for r in children)
    assert len({digests[r.info.run_id][0] for r in search}) == 1
    by_seed: dict[str, set] = {}
    for r in confirm:
        by_seed.setdefault(r.data.params["seed"], set()).add(digests[r.info.run_id][0])
    assert len(by_seed) == 2 and all(len(d) == 1 for d in by_seed.values())
    assert len({d for ds in by_seed.values() for d in ds} | {digests[search[0].info.run_id][0]}) == 3
    eff = parent.data.metrics  # the sweep's own record of how much of its time went into training
    assert 0.0 < eff["search_utilisation"] <= 1.0 and eff["trial_slots"] == 2
    assert eff["search_train_seconds"] == pytest.approx(sum(
        r.data.metrics["train_seconds"] for r in search if "train_seconds" in r.data.metrics), rel=1e-6)
    assert eff["search_utilisation"] == pytest.approx(
        eff["search_train_seconds"] / (eff["search_wall_seconds"] * eff["trial_slots"]))
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"best_policy.yaml", "summary.md", "optimization_history.png", "validation_vs_time.png"} <= artifacts
    if (os.cpu_count() or 1) <= 2 * 2:  # preflight.preload_workers: a local Ray prestarts torch-loaded workers
        # and the trials run in them (preflight.take_prestarted_workers): every trial, the first on each
        # worker too, ran in a process that started before the sweep's parent run did. (worker_warm
        # would say 1 either way: Ray preloads in every worker it starts, prestarted or not.)
        assert all(r.data.metrics["worker_started_at"] * 1000 < parent.info.start_time for r in search)


def test_baselines_are_evaluated_with_their_own_settings(finished_sweep):
    tmp, _ = finished_sweep
    _, runs = runs_of(tmp)
    base = {r.data.tags["baseline"]: r for r in runs if r.data.tags.get("baseline")}
    assert base["full_linear"].data.params["selection.strategy"] == "full"
    assert base["full_linear"].data.params["training.lr"] == "0.1"  # the base policy's, not a random draw
    assert base["rs2_half"].data.params["selection.ratio"] == "0.5"


def test_concurrency_limit_holds(finished_sweep):
    """cpus-per-trial 0.5 lets Ray fit 4 trials on 2 CPUs; the limit of 2 must hold anyway."""
    tmp, _ = finished_sweep
    _, runs = runs_of(tmp)
    spans = [(r.info.start_time, r.info.end_time) for r in runs if r.data.tags.get("stage") == "search"]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda t: (t[0], t[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    # the limit is what is tested: trials of 4000 samples take ~0.2 s, so on a loaded machine two of
    # them do not always overlap (peak 1), but more than 2 at once would be the limit broken
    assert 1 <= peak <= 2


def test_export_then_train_replays_the_best_policy(finished_sweep):
    tmp, _ = finished_sweep
    out = tmp / "best_policy.yaml"
    proc = run_cli("export", "digits_mlp", "-o", str(out), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    policy = yaml.safe_load(out.read_text())
    assert policy["name"] == "digits_mlp-best" and policy["budget"]["samples"] == 4000
    assert policy["training"]["threads"] == 1  # what the trials ran with (--cpus-per-trial 0.5: one thread)
    result = tmp / "replay.json"
    proc = run_cli("train", str(out), "--json", str(result), "--quiet", "--save", str(tmp / "model"), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    replay = json.loads(result.read_text())
    assert replay["test"]["accuracy"] > 0.8 and replay["threads"] == 1
    # ... and take the model home: loaded in a fresh process, it predicts the replay's test accuracy
    check = ("import json, sys, tunebudget\n"
             "from tunebudget.data import _load_raw\n"
             "t = tunebudget.load_trained(sys.argv[1])\n"
             "raw = _load_raw(t.policy.task, t.policy.seed)\n"  # digits as sklearn gives them
             "print((t.predict(raw.test_x) == raw.test_y).double().mean().item())\n")
    proc = subprocess.run([sys.executable, "-c", check, str(tmp / "model")], capture_output=True, text=True,
                          timeout=300, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout) == pytest.approx(replay["test"]["accuracy"], abs=1e-9)
    proc = run_cli("train", str(out), "--json", str(result), "--quiet", "--threads", "2", cwd=tmp)
    assert proc.returncode == 0 and json.loads(result.read_text())["threads"] == 2


def test_report_writes_plots_and_summary(finished_sweep):
    tmp, _ = finished_sweep
    proc = run_cli("report", "digits_mlp", "-o", str(tmp / "report"), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    files = {p.name for p in (tmp / "report").iterdir()}
    assert {"summary.md", "optimization_history.png", "best_policy.yaml"} <= files
    assert "## Verdict" in (tmp / "report" / "summary.md").read_text()


def test_export_of_an_unknown_experiment_exits_2(finished_sweep):
    tmp, _ = finished_sweep
    proc = run_cli("export", "no_such_experiment", "-o", str(tmp / "x.yaml"), cwd=tmp)
    assert proc.returncode == 2 and "no_such_experiment" in proc.stderr
    assert not (tmp / "x.yaml").exists()


def test_outputs_that_cannot_be_written_and_finished_resumes_are_one_line(finished_sweep):
    tmp, _ = finished_sweep
    (tmp / "a_file").write_text("")
    under_a_file = tmp / "a_file" / "x"
    cases = [
        (("report", "digits_mlp", "-o", str(tmp / "a_file")), "report -o", "is a file"),
        (("report", "no_such_sweep"), "report no_such_sweep:", "no experiment"),
        (("export", "digits_mlp", "-o", str(under_a_file / "p.yaml")), "export -o", "cannot write"),
        (("train", str(ROOT / "search_spaces/digits_mlp.yaml"), "--json", str(under_a_file / "r.json")),
         "--json", "cannot write"),
    ]
    _, runs = runs_of(tmp)
    name = next(r.data.tags["sweep_name"] for r in runs if r.data.tags.get("tunebudget_role") == "sweep")
    cases.append((("sweep", str(tmp / "space.yaml"), "--resume", "--name", name), "--resume --name", "has finished"))
    for args, start, fragment in cases:
        proc = run_cli(*args, cwd=tmp)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert proc.stderr.startswith(f"tunebudget: error: {start}") and proc.stderr.count("\n") == 1, proc.stderr
        assert fragment in proc.stderr, proc.stderr
    _, after = runs_of(tmp)
    assert len(after) == len(runs)  # nothing re-run or re-logged


def _wait_for_finished_children(tmp: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        if (tmp / "ray_results" / "resumable" / "tunebudget_sweep.json").exists():  # the store is set up
            try:
                _, runs = runs_of(tmp)
            except Exception:  # noqa: BLE001 - the store is being created
                runs = []
            if sum(r.info.status == "FINISHED" and r.data.tags.get("stage") == "search" for r in runs) >= n:
                return
        time.sleep(1.0)
    raise AssertionError("the sweep did not finish trials in time")


def interrupt_sweep(tmp: Path, space: Path, after: int, *flags: str, sig: int = signal.SIGINT) -> str:
    """Start ``sweep SPACE --name resumable``, send ``sig`` (Ctrl-C by default) once ``after`` search
    trials have finished; assert it stopped as interrupted (exit 130, the resume command printed)
    and return its stderr."""
    cmd = [sys.executable, "-m", "tunebudget", "sweep", str(space), "--name", "resumable", "--quiet", *flags]
    proc = subprocess.Popen(cmd, cwd=tmp, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_finished_children(tmp, after, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "--resume --name resumable" in err and "SIGTERM received" not in err, err[-3000:]
    return err


def test_interrupted_sweep_resumes_without_duplicates(tmp_path):
    space = space_file(tmp_path, trials=6, samples=20000)
    err = interrupt_sweep(tmp_path, space, 2, "--confirm-seeds", "0")
    assert "--resume" in err
    _, before = runs_of(tmp_path)
    finished_before = {r.data.tags["trial_id"]: r.info.run_id for r in before
                       if r.info.status == "FINISHED" and r.data.tags.get("stage") == "search"}
    assert 2 <= len(finished_before) < 8

    # a resume that would silently change the sweep is refused, in one line, before anything runs
    changed = run_cli("sweep", str(space), "--resume", "--name", "resumable", "--trials", "50", cwd=tmp_path)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr[-2000:]
    assert "--trials 50 differs" in changed.stderr
    original = space.read_text()
    edited = yaml.safe_load(original)
    edited["search"]["training.lr"]["high"] = 2.0
    space.write_text(yaml.safe_dump(edited, sort_keys=False))
    changed = run_cli("sweep", str(space), "--resume", "--name", "resumable", cwd=tmp_path)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr[-2000:]
    assert "search.training.lr.high changed" in changed.stderr
    space.write_text(original + "# a comment changes nothing the sweep reads\n")

    again = run_cli("sweep", str(space), "--resume", "--name", "resumable", "--quiet", cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    _, after = runs_of(tmp_path)
    parents = [r for r in after if r.data.tags.get("tunebudget_role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # the search ran in two sittings: no utilisation figure rather than one from half the wall time
    assert "search_utilisation" not in parents[0].data.metrics
    search = [r for r in after if r.data.tags.get("stage") == "search"]
    trial_ids = [r.data.tags["trial_id"] for r in search]
    assert len(trial_ids) == len(set(trial_ids)) == 6 + 2  # every trial once
    assert all(r.info.status == "FINISHED" for r in search)
    for trial_id, run_id in finished_before.items():  # finished runs were kept, not re-logged
        assert {r.info.run_id for r in search if r.data.tags["trial_id"] == trial_id} == {run_id}


@pytest.mark.slow  # a whole sweep for one printed line: test_idle_last_round_note checks the note itself
def test_sweep_prints_the_idle_round_note(tmp_path):
    """1 searched + 2 baselines on 2 slots: the CLI says so, on one line, and the sweep still runs."""
    space = space_file(tmp_path, trials=1, samples=1000)
    proc = run_cli("sweep", str(space), "--confirm-seeds", "0", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: 3 trials (1 searched + 2 baselines) on 2 slots: the last round runs 1 and leaves 1 "
                     "idle for a whole trial; --trials 2 fills every round"], proc.stderr[-2000:]


def test_idle_last_round_note(tmp_path):
    """Equal-length trials that do not fill the last round leave slots idle: the sweep says so."""
    from tunebudget.spaces import load_space
    from tunebudget.sweep import SweepOptions, idle_round_note, make_plan

    space = load_space(space_file(tmp_path, trials=3))  # 3 searched + 2 baselines
    two_cpus = {"CPU": 2.0}
    note = idle_round_note(make_plan(space, SweepOptions()), len(space.baselines), two_cpus)
    assert note and "5 trials" in note and "leaves 1 idle" in note and "--trials 2 or 4" in note
    assert idle_round_note(make_plan(space, SweepOptions(trials=4)), 2, two_cpus) is None
    assert idle_round_note(make_plan(space, SweepOptions()), 2, {"CPU": 1.0}) is None  # one slot: nothing idles
    assert idle_round_note(make_plan(space, SweepOptions(scheduler="asha")), 2, two_cpus) is None
    # 3 slots (concurrency 3, cluster of 4 CPUs): 5 trials leave 1 idle in the last round
    note = idle_round_note(make_plan(space, SweepOptions(concurrency=3)), 2, {"CPU": 4.0})
    assert note and "leaves 1 idle" in note and "--trials 1 or 4" in note


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_fill_every_round(path):
    """The shipped defaults never leave a slot idle for the last trial's whole budget."""
    from tunebudget.spaces import load_space
    from tunebudget.sweep import SweepOptions, idle_round_note, make_plan

    space = load_space(path)
    plan = make_plan(space, SweepOptions())
    assert idle_round_note(plan, len(space.baselines), {"CPU": 64.0, "GPU": 8.0}) is None
