"""Bad input to `tunebudget sweep` and friends: one line, exit 2, nothing left behind.

Plus property-based tests: no input to the policy or search-space parsers gives a traceback.
"""

from __future__ import annotations

import copy
import sqlite3
import string
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import policy_from_dict
from tunebudget.spaces import load_space

from conftest import ROOT, run_cli, tiny_policy

DIGITS = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())


def space_with(tmp: Path, mutate) -> Path:
    data = copy.deepcopy(DIGITS)
    mutate(data)
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_clean_failure(proc, tmp: Path, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunebudget: error: "), proc.stderr
    for f in fragments:
        assert f in lines[0]
    assert not (tmp / "ray_results").exists()  # no Ray experiment written
    db = tmp / "mlflow" / "mlflow.db"
    if db.exists():  # the store may have been reached, but no run was created
        assert sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 0
    optuna_db = tmp / "mlflow" / "optuna.db"
    if optuna_db.exists():
        assert sqlite3.connect(optuna_db).execute("select count(*) from studies").fetchone()[0] == 0


SPACE_ERRORS = [
    (lambda d: d["search"].__setitem__("training.lr", {"type": "float", "low": 0.5, "high": 0.1}), "inverted"),
    (lambda d: d["search"].__setitem__("training.lr", {"type": "float", "low": 0.1, "high": 0.1}), "empty or inverted"),
    (lambda d: d["search"].__setitem__("training.lr", {"type": "float", "low": 0, "high": 1, "log": True}), "log"),
    (lambda d: d["search"].__setitem__("selection.scorer", {"type": "categorical", "choices": []}), "choices"),
    (lambda d: d["search"].__setitem__("training.lrr", {"type": "float", "low": 0.1, "high": 1}), "training.lrr"),
    (lambda d: d["search"].__setitem__("training.lr", {"type": "uniform", "low": 0.1, "high": 1}), "search.training.lr"),
    (lambda d: d["search"].__setitem__("training.lr", {"type": "float", "low": 0.1, "high": 1, "wen": {}}), "wen"),
    (lambda d: d["search"].__setitem__("selection.final_full", {"type": "float", "low": 0.0, "high": 0.6}),
     "invalid policy"),  # warm-up up to 0.5 plus final_full up to 0.6 can exceed the budget
    (lambda d: d["sweep"].__setitem__("trails", 5), "sweep.trails"),
    (lambda d: d["sweep"].__setitem__("trials", 0), "sweep.trials"),
    (lambda d: d["sweep"].__setitem__("resources", {"cpu": 1, "tpu": 1}), "tpu"),
    (lambda d: d["sweep"].__setitem__("sampler", "grid"), "sweep.sampler"),
    (lambda d: d["baselines"].append({"name": "full_linear", "set": {}}), "unique"),
    (lambda d: d["baselines"].append({"name": "x", "set": {"training.lr": 5.0}}), "outside search.training.lr"),
    (lambda d: d["baselines"].append({"name": "x", "set": {"training.momentum": 0.5}}), "not a searched parameter"),
    (lambda d: d["baselines"].append({"name": "x", "set": {"selection.ratio": 2}}), "selection.ratio"),
    (lambda d: d.__setitem__("search", ["training.lr"]), "search"),
    (lambda d: d["task"].__setitem__("dataset", "imagenet"), "task.dataset"),
    (lambda d: d["search"]["selection.ratio"]["when"].__setitem__("selection.strategy", ["topk", "rs22"]),
     "'rs22' is not one of search.selection.strategy's choices"),
    (lambda d: d["search"]["selection.ratio"].__setitem__("when", {"seed": [7]}),
     "would never be sampled"),  # seed is not searched and is 0 in the base policy
    (lambda d: d["search"]["selection.ratio"].__setitem__("when", {"training.lr": [0.1]}),
     "searched float, which equals a listed value only by chance"),
    (lambda d: d["search"]["selection.rerank_every"].__setitem__("step", 0.5), "whole-number step"),
    (lambda d: d["search"]["training.lr"].update({"log": False, "step": 1e-300}), "steps between low and high"),
    (lambda d: d["budget"].__setitem__("seconds", float("inf")), "budget.seconds"),
    (lambda d: d["sweep"].__setitem__("metric", "val_acc"), "never reports 'val_acc'"),
    (lambda d: d["sweep"].__setitem__("metric", "val_mse"), "sweep.metric"),  # a classification task
    (lambda d: d["sweep"].__setitem__("metric", "test_accuracy"), "test split is never optimised"),
]


@pytest.mark.parametrize("mutate, fragment", SPACE_ERRORS, ids=[f for _, f in SPACE_ERRORS])
def test_bad_search_spaces_are_named(cli, tmp_path, monkeypatch, mutate, fragment):
    monkeypatch.chdir(tmp_path)
    proc = cli("sweep", str(space_with(tmp_path, mutate)))
    assert_clean_failure(proc, tmp_path, fragment, "space.yaml")


@pytest.mark.parametrize("flags, fragment", [
    (["--trials", "0"], "--trials"), (["--budget", "0"], "--budget"), (["--concurrency", "0"], "--concurrency"),
    (["--confirm-seeds", "-1"], "--confirm-seeds"), (["--cpus-per-trial", "0"], "--cpus-per-trial"),
    (["--resume"], "--resume"), (["--address", "nonsense"], "--address"),
    (["--budget", "inf"], "--budget"), (["--budget", "nan"], "--budget"),
    (["--name", "../../x"], "--name '../../x'"), (["--name", "a b"], "--name 'a b'"), (["--name", "a/b"], "--name"),
    (["--experiment", ""], "--experiment: empty"), (["--experiment", "  "], "--experiment: empty"),
    (["--optuna-storage", "bogus://x"], "--optuna-storage bogus://x: no SQLAlchemy driver"),
    (["--optuna-storage", "not a url"], "--optuna-storage not a url: not a database URL"),
    (["--optuna-storage", "postgresql://u:p@127.0.0.1:9/db"], "cannot connect"),
])
def test_bad_sweep_flags(cli, tmp_path, monkeypatch, flags, fragment):
    monkeypatch.chdir(tmp_path)
    proc = cli("sweep", str(ROOT / "search_spaces/digits_mlp.yaml"), *flags)
    assert_clean_failure(proc, tmp_path, fragment)


@pytest.mark.parametrize("flag", ["--storage-path", "--optuna-storage"])
def test_unwritable_storage_is_one_line(cli, tmp_path, monkeypatch, flag):
    """A path under a regular file cannot be written even by root (the tests run as root here)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    where = tmp_path / "a_file" / "sub" / "x"
    value = str(where) if flag == "--storage-path" else f"sqlite:///{where}/optuna.db"
    proc = cli("sweep", str(ROOT / "search_spaces/digits_mlp.yaml"), flag, value)
    assert_clean_failure(proc, tmp_path, f"{flag} {value}: cannot write")
    assert not (tmp_path / "mlflow").exists()  # checked before the tracking store is touched


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path):
    proc = run_cli("sweep", str(ROOT / "search_spaces/digits_mlp.yaml"), "--tracking-uri", "http://127.0.0.1:9",
                   cwd=tmp_path, timeout=120)
    assert_clean_failure(proc, tmp_path, "--tracking-uri http://127.0.0.1:9")


def test_unreachable_ray_address_fails_fast(tmp_path):
    proc = run_cli("sweep", str(ROOT / "search_spaces/digits_mlp.yaml"), "--address", "127.0.0.1:9",
                   cwd=tmp_path, timeout=120)
    assert_clean_failure(proc, tmp_path, "--address 127.0.0.1:9", "cannot reach")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpus_per_trial_without_a_gpu(tmp_path):
    proc = run_cli("sweep", str(ROOT / "search_spaces/digits_mlp.yaml"), "--gpus-per-trial", "0.5",
                   cwd=tmp_path, timeout=180)
    assert_clean_failure(proc, tmp_path, "--gpus-per-trial")


def test_export_needs_a_finished_sweep_or_allow_partial(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from tunebudget.tracking import Tracker

    tracker = Tracker()
    exp = tracker.experiment_id("half_done")
    tracker.start_run(exp, "sweep-x", {"tunebudget_role": "sweep", "sweep_name": "x"})
    proc = cli("export", "half_done", "-o", str(tmp_path / "p.yaml"))
    assert proc.returncode == 2 and "has not finished" in proc.stderr and "--allow-partial" in proc.stderr
    proc = cli("export", "half_done", "-o", str(tmp_path / "p.yaml"), "--allow-partial")
    assert proc.returncode == 2 and "no finished trial" in proc.stderr
    assert not (tmp_path / "p.yaml").exists()


# ---- property-based: parsing never gives a traceback --------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
BASE = tiny_policy()
PATHS = [(s, k) for s, sec in BASE.items() if isinstance(sec, dict) for k in sec] + [(s, None) for s in BASE]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS + [("junk", None)]), values), max_size=4))
@example(edits=[(("task", None), {"\n": None})])  # found by hypothesis: a key that is a newline
def test_policy_parsing_never_tracebacks(edits):
    data = copy.deepcopy(BASE)
    for (section, key), value in edits:
        if key is None:
            data[section] = value
        elif isinstance(data.get(section), dict):
            data[section][key] = value
    try:
        policy_from_dict(data, "fuzz.yaml")
    except TuneBudgetError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.yaml")


SPACE_KEYS = ["search", "sweep", "baselines"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(SPACE_KEYS), key=st.sampled_from(["training.lr", "selection.ratio", "trials", "x"]),
       value=values)
def test_space_parsing_never_tracebacks(tmp_path, section, key, value):
    data = copy.deepcopy(DIGITS)
    if section == "baselines":
        data["baselines"] = [{"name": "b", "set": {key: value}}] if isinstance(value, (int, float, str)) else value
    else:
        data[section] = {**(data.get(section) or {}), key: value}
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_space(path)
    except TuneBudgetError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_arbitrary_text_files_never_traceback(tmp_path, text):
    path = tmp_path / "text.yaml"
    path.write_text(text)
    try:
        load_space(path)
    except TuneBudgetError:
        pass


def test_a_budget_too_small_to_train_is_refused(tmp_path):
    """Trials that train under MIN_STEPS steps measure the initialisation: no 'best policy' from them."""
    proc = run_cli("train", str(ROOT / "search_spaces/digits_mlp.yaml"), "--budget", "0.0001", "--quiet",
                   "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "optimizer step" in proc.stderr, proc.stderr
    assert not (tmp_path / "r.json").exists()

    # 1000 trials: the search stops once the first four have all trained too little (in seconds, not hours)
    proc = run_cli("sweep", str(ROOT / "search_spaces/digits_mlp.yaml"), "--budget", "0.0001", "--trials", "1000",
                   "--confirm-seeds", "0", "--name", "tiny", "--quiet", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "every trial was too short" in proc.stderr, proc.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    parents = client.search_runs([client.get_experiment_by_name("digits_mlp").experiment_id],
                                 "tags.tunebudget_role = 'sweep'")
    assert [p.info.status for p in parents] == ["FAILED"]  # not left RUNNING
    again = run_cli("sweep", str(ROOT / "search_spaces/digits_mlp.yaml"), "--resume", "--name", "tiny",
                    cwd=tmp_path)
    assert again.returncode == 2 and "that sweep failed" in again.stderr
    export = run_cli("export", "digits_mlp", cwd=tmp_path)
    assert export.returncode == 2 and "failed (every trial trained under" in export.stderr, export.stderr


def test_a_tracking_store_that_cannot_be_written_is_one_line_and_fast(tmp_path):
    """MLflow retries a sqlite store it cannot create for minutes; the check on disk answers at once."""
    (tmp_path / "a_file").write_text("")
    uri = f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"
    proc = run_cli("sweep", str(ROOT / "search_spaces/digits_mlp.yaml"), "--tracking-uri", uri, cwd=tmp_path,
                   timeout=60)
    assert_clean_failure(proc, tmp_path, f"--tracking-uri {uri}: cannot write", "part of the path is a file")
    for command in (("export", "digits_mlp"), ("report", "digits_mlp")):
        proc = run_cli(*command, "--tracking-uri", uri, cwd=tmp_path, timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


def test_preflight_failures_leave_no_tracking_store(tmp_path):
    """The default store is created when the first run is logged, not by a preflight that fails."""
    proc = run_cli("sweep", str(ROOT / "search_spaces/digits_mlp.yaml"), "--address", "127.0.0.1:9",
                   cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert not (tmp_path / "mlflow").exists() and not (tmp_path / "ray_results").exists()
    proc = run_cli("export", "digits_mlp", cwd=tmp_path)
    assert proc.returncode == 2 and "no tracking store at" in proc.stderr
    assert not (tmp_path / "mlflow").exists()
