"""Take the result home: a trained model saved with ``train --save``, loaded back in a fresh process by
``tunebudget.load_trained``, and the Python API (``tunebudget.train``) on built-in and own data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tunebudget
from tunebudget.errors import TuneBudgetError

from conftest import tiny_policy, write_yaml

FACTORY = '''
import numpy as np


def digits_raw():
    """Digits as the data set gives them: pixel values 0-16, and a fixed test split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(5).permutation(len(x))
    test, train = order[:300], order[300:]
    return x[train].astype("float32"), y[train], x[test].astype("float32"), y[test]


def values():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4)).astype("float32")
    y = (100 + 20 * x[:, 0] - 10 * x[:, 1]).astype("float32")
    return x[:400], y[:400], x[400:], y[400:]
'''


@pytest.fixture
def own(tmp_path, monkeypatch):
    (tmp_path / "homedata.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def own_policy(**sections) -> dict:
    return tiny_policy(task={"dataset": "homedata:digits_raw", "val_size": 200}, **sections)


LOAD_AND_PREDICT = '''
import json, sys
import tunebudget
from homedata import digits_raw
trained = tunebudget.load_trained(sys.argv[1])
_, _, test_x, test_y = digits_raw()
pred = trained.predict(test_x)
print(json.dumps({"pred": pred.tolist(), "accuracy": float((pred.numpy() == test_y).mean()),
                  "training": trained.model.training}))
'''


@pytest.mark.parametrize("keep_best", [False, True])
def test_a_saved_model_predicts_in_a_fresh_process_what_the_trainer_did(own, tmp_path, cli, keep_best):
    sections = {"training": {"keep_best": True}, "budget": {"eval_every": 0.1}} if keep_best else {}
    policy = write_yaml(tmp_path / "p.yaml", own_policy(**sections))
    res = cli("train", str(policy), "--quiet", "--save", str(tmp_path / "model"), "--json", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr
    assert "saved the model to" in res.stdout
    summary = json.loads((tmp_path / "r.json").read_text())
    saved = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert saved == ["model.json", "policy.yaml", "preprocess.pt", "weights.pt"]
    assert isinstance(torch.load(tmp_path / "model" / "weights.pt", weights_only=True), dict)
    (tmp_path / "predict.py").write_text(LOAD_AND_PREDICT)
    proc = subprocess.run([sys.executable, str(tmp_path / "predict.py"), str(tmp_path / "model")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads(proc.stdout)
    assert fresh["training"] is False  # eval mode
    assert fresh["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-12)
    # the same policy through the Python API (deterministic budget): the very same predictions
    result = tunebudget.train(tunebudget.load_policy(policy), device="cpu")
    with torch.no_grad():
        mine = result.model.eval()(result.data.test.x).argmax(1)
    assert fresh["pred"] == mine.tolist()
    if keep_best:
        assert result.stats["kept_progress"] == summary["kept_progress"]


def test_regression_predictions_come_back_in_the_targets_units(own, tmp_path):
    policy = tiny_policy(task={"dataset": "homedata:values", "kind": "regression", "val_size": 50},
                         budget={"samples": 20000})
    result = tunebudget.train(policy, device="cpu")
    trained = tunebudget.load_trained(result.save(str(tmp_path / "reg")))
    from homedata import values

    _, _, x, y = values()
    pred = trained.predict(x).numpy()
    assert np.abs(pred - y).mean() < 0.2 * np.abs(y - y.mean()).mean()  # in units of y (around 100), not standardised


def test_the_api_trains_your_own_arrays_and_module(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 5)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    policy = tiny_policy(task={"val_size": 100}, selection={"strategy": "topk", "scorer": "reducible",
                                                            "ratio": 0.5, "warmup": 0.2})
    result = tunebudget.train(policy, data={"train_x": x[:600], "train_y": y[:600], "test_x": x[600:],
                                            "test_y": y[600:]}, model=net, device="cpu")
    assert result.model is net and result.test["accuracy"] > 0.85
    assert result.stats["train_size"] == 500 and result.stats["il_seconds"] > 0  # IL models: copies of net
    assert result.summary()["policy"]["selection"]["scorer"] == "reducible"
    with pytest.raises(TuneBudgetError, match="returned 600 train inputs but 599 train targets"):
        tunebudget.train(policy, data=(x[:600], y[:599], x[600:], y[600:]), device="cpu")


def test_save_refuses_a_non_empty_or_unwritable_directory_before_training(tmp_path, cli):
    policy = write_yaml(tmp_path / "p.yaml", tiny_policy())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for target, fragment in ((tmp_path / "full", "exists and is not empty"), (tmp_path / "p.yaml", "is a file"),
                             (Path("/proc/tunebudget-model"), "--save /proc/tunebudget-model")):
        res = cli("train", str(policy), "--quiet", "--save", str(target))
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr
        assert "test accuracy" not in res.stdout  # refused before training
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_load_trained_refuses_what_is_not_a_whole_saved_model(tmp_path):
    result = tunebudget.train(tiny_policy(), device="cpu")
    good = result.save(str(tmp_path / "m"))
    assert tunebudget.load_trained(good).predict(result.data.test.x[:3]).shape == (3,)
    with pytest.raises(TuneBudgetError, match="no such directory"):
        tunebudget.load_trained(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("weights.pt", "policy.yaml", "model.json"):
        (broken / f).write_bytes((good / f).read_bytes())
    with pytest.raises(TuneBudgetError, match="preprocess.pt is missing"):
        tunebudget.load_trained(broken)
    (broken / "preprocess.pt").write_bytes((good / "preprocess.pt").read_bytes())
    info = json.loads((good / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps({**info, "format": 99, "tunebudget_version": "9.0"}))
    with pytest.raises(TuneBudgetError, match="saved in format 99 .tunebudget 9.0.; this tunebudget reads format 1"):
        tunebudget.load_trained(broken)
    (broken / "model.json").write_text(json.dumps(info))
    (broken / "weights.pt").write_bytes((good / "weights.pt").read_bytes()[:-100])
    with pytest.raises(TuneBudgetError, match="weights.pt does not match the hash"):
        tunebudget.load_trained(broken)
    with pytest.raises(TuneBudgetError, match="the directory exists and is not empty"):
        result.save(str(good))


# ---- the replay in MLflow: the run, its dataset, the model (pyfunc) and the registry ----------------

def test_a_logged_replay_is_an_mlflow_model_that_predicts_what_the_saved_one_does(own, tmp_path, cli, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from test_ui import CHROMIUM, UiServer, render
    from tunebudget.tracking import ui_url

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    policy = write_yaml(tmp_path / "p.yaml", own_policy())
    res = cli("train", str(policy), "--quiet", "--save", str(tmp_path / "model"), "--tracking-uri", uri,
              "--experiment", "replays", "--register", "digits-home")
    assert res.returncode == 0, res.stderr
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("replays")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["training.lr"] == "0.1"
    assert run.data.metrics["test_accuracy"] > 0.8 and run.data.tags["tunebudget_role"] == "train"
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "homedata:digits_raw" and len(inp.dataset.digest) == 12
    assert json.loads(inp.dataset.profile)["train_size"] == 1797 - 300 - 200
    (model,) = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert model.source_run_id == run.info.run_id
    assert client.get_model_version("digits-home", "1").source.endswith(model.model_id) or \
        model.model_id in client.get_model_version("digits-home", "1").source
    from homedata import digits_raw

    _, _, test_x, test_y = digits_raw()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for models:/ URIs; undone after the test (set_tracking_uri is not)
    logged = mlflow.pyfunc.load_model(f"models:/{model.model_id}").predict(test_x.astype("float32"))
    saved = tunebudget.load_trained(tmp_path / "model").predict(test_x).numpy()
    assert (np.asarray(logged).argmax(1) == saved).all()
    assert (saved == test_y).mean() == pytest.approx(run.data.metrics["test_accuracy"])
    if CHROMIUM is None:
        return
    ui = UiServer(tmp_path, "--tracking-uri", uri)
    try:
        link = ui_url(f"http://127.0.0.1:{ui.port}", exp.experiment_id, run.info.run_id)
        dom = render(link, tmp_path)
        shot = os.environ.get("TUNEBUDGET_RUN_SCREENSHOT")  # a PNG of the run page, to look at by hand
        if shot:
            render(link, tmp_path, Path(shot))
    finally:
        ui.stop()
    assert "Logged models (1)" in dom and model.model_id in dom  # the logged model, on the run page
    assert f"{inp.dataset.digest})" in dom and "homedata:digits_raw" in dom  # its dataset: name (digest)
    assert "digits-home" in dom  # and the registered model


@pytest.mark.parametrize("args, fragment", [
    (("--register", "x"), "--register: needs a tracking store"),
    (("--tracking-uri", "sqlite:////proc/nowhere/m.db"), "--tracking-uri sqlite:////proc/nowhere/m.db"),
    (("--tracking-uri", "sqlite:///m.db", "--register", " "), "--register: empty"),
])
def test_tracking_flags_are_checked_before_training(tmp_path, cli, args, fragment):
    res = cli("train", str(write_yaml(tmp_path / "p.yaml", tiny_policy())), "--quiet", *args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr
    assert "test accuracy" not in res.stdout


def test_logging_a_replay_leaves_the_process_tracking_uri_alone(tmp_path, cli, monkeypatch):
    """MLflow's fluent log_model sets MLFLOW_TRACKING_URI for later subprocesses: a sweep started after
    a logged replay (the API, a notebook, these tests) must still log where it is told to."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    policy = write_yaml(tmp_path / "p.yaml", tiny_policy())
    res = cli("train", str(policy), "--quiet", "--tracking-uri", f"sqlite:///{tmp_path / 'a.db'}")
    assert res.returncode == 0, res.stderr
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    res = cli("train", str(policy), "--quiet", "--tracking-uri", f"sqlite:///{tmp_path / 'b.db'}")
    assert res.returncode == 0 and os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
