"""Your own data set (``task.dataset: package.module:factory``) and normalisation that stays bounded.

The factories live in a module written to a temporary directory outside the package, found the way
a user's would be: through PYTHONPATH, the working directory, or (in this process) ``sys.path``.
Training runs for real, and the sweep through a real local Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli, tiny_policy, write_yaml

pytestmark = pytest.mark.filterwarnings("ignore")

MODULE = "tb_own_data"  # unique names: a module stays in sys.modules once imported
BROKEN = "tb_own_data_broken"

FACTORIES = '''
"""Data factories for tests/test_user_data.py."""
import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset


def blobs(n=400, dim=6, classes=3, seed=0):
    """Separable Gaussian classes as a mapping of numpy arrays."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    x = (centres[y] + rng.normal(size=(n, dim))).astype(np.float32)
    cut = n * 3 // 4
    return {"train_x": x[:cut], "train_y": y[:cut], "test_x": x[cut:], "test_y": y[cut:]}


def blob_tensors(n=400):
    """The same, as a tuple of torch tensors, labels as a float column of whole numbers."""
    d = blobs(n)
    t = [torch.from_numpy(d[k]) for k in ("train_x", "train_y", "test_x", "test_y")]
    return t[0], t[1].double()[:, None], t[2], t[3]


class Images(Dataset):
    """(1, 6, 6) images whose class is where a bright square sits."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, 4, size=n)
        self.x = rng.normal(scale=0.3, size=(n, 1, 6, 6)).astype(np.float32)
        for i, c in enumerate(self.y):
            r, col = divmod(int(c), 2)
            self.x[i, 0, 3 * r:3 * r + 3, 3 * col:3 * col + 3] += 2.0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


def image_datasets(n_train=300, n_test=100):
    return Images(n_train, 0), Images(n_test, 1)


def tensor_datasets():
    d = blobs()
    return {"train": TensorDataset(torch.from_numpy(d["train_x"]), torch.from_numpy(d["train_y"])),
            "test": TensorDataset(torch.from_numpy(d["test_x"]), torch.from_numpy(d["test_y"])), "num_classes": 5}


def grey_images():
    """(N, H, W) uint8 images: one channel is added, values divided by 255."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(200, 5, 5), dtype=np.uint8)
    y = (x[:, 2, 2] > 127).astype(np.int64)
    return x[:150], y[:150], x[150:], y[150:]


def values(n=300):
    """Regression targets."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=n)
    return x[:200], y[:200], x[200:], y[200:]


def constant_in_training(n=300):
    """Feature 0 is 5.0 in every training sample but varies in test; targets are classes."""
    d = blobs(n, dim=4)
    d["train_x"][:, 0] = 5.0
    d["test_x"][:, 0] = np.linspace(-3.0, 9.0, len(d["test_x"]))
    return d


def needs_path(path, scale=1.0):
    return blobs()


def raises():
    raise RuntimeError("database unreachable\\nwith a second line")


def wrong_type():
    return "train.csv"


def three():
    d = blobs()
    return d["train_x"], d["train_y"], d["test_x"]


def short_labels():
    d = blobs()
    d["train_y"] = d["train_y"][:-1]
    return d


def fractional_labels():
    d = blobs()
    d["train_y"] = d["train_y"] + 0.5
    return d


def empty_test():
    d = blobs()
    d["test_x"], d["test_y"] = d["test_x"][:0], d["test_y"][:0]
    return d


def unknown_key():
    d = blobs()
    d["labels"] = d.pop("train_y")
    return d


def string_labels():
    d = blobs()
    d["train_y"] = np.array(["cat"] * len(d["train_x"]))
    return d


def nan_inputs():
    d = blobs()
    d["test_x"][3, 1] = np.nan
    return d


def one_class():
    d = blobs()
    d["train_y"][:] = 0
    d["test_y"][:] = 0
    return d


def label_above_num_classes():
    return {**blobs(classes=3), "num_classes": 2}


def one_dimensional():
    d = blobs()
    d["train_x"] = d["train_x"][:, 0]
    return d


def not_pairs():
    return [torch.zeros(3)] * 5, [torch.zeros(3)] * 5


class Failing(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2:
            raise OSError("image 2.png unreadable")
        return torch.zeros(3), 0


def failing_dataset():
    return Failing(), Failing()


not_callable = 3
'''


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory) -> Path:
    """A directory outside the package holding the factories (and a module that fails on import)."""
    d = tmp_path_factory.mktemp("own_data")
    (d / f"{MODULE}.py").write_text(FACTORIES)
    (d / f"{BROKEN}.py").write_text('import json\n\nraise ValueError("no config.json next to the module")\n')
    return d


def _with_path(module_dir: Path) -> str:
    """PYTHONPATH with the factories' directory first, keeping the caller's (the tunebudget under test)."""
    return os.pathsep.join([str(module_dir), os.environ.get("PYTHONPATH", "")])


@pytest.fixture
def own(module_dir, monkeypatch):
    """Make the factories importable in this process, as PYTHONPATH would."""
    monkeypatch.syspath_prepend(str(module_dir))
    return module_dir


def own_policy(factory: str, **task) -> dict:
    return tiny_policy(task={"dataset": f"{MODULE}:{factory}", "val_size": 50, **task},
                       budget={"samples": 3000})


# ---- (a) tunebudget train ------------------------------------------------------------------------

def test_train_finds_the_module_through_pythonpath(module_dir, tmp_path):
    policy = write_yaml(tmp_path / "own.yaml", own_policy("blobs", data_options={"n": 500}))
    out = tmp_path / "result.json"
    proc = run_cli("train", str(policy), "--quiet", "--json", str(out), cwd=tmp_path,
                   env={"PYTHONPATH": _with_path(module_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["status"] == "completed" and result["test"]["accuracy"] > 0.9
    assert result["policy"]["task"]["dataset"] == f"{MODULE}:blobs"


@pytest.mark.parametrize("how", ["python -m", "console script"])
def test_train_from_the_module_directory(module_dir, tmp_path, how):
    """``cd`` to the module and run: the working directory is importable, as for a model factory,
    also for the ``tunebudget`` console script (which, unlike ``python -m``, puts no directory of
    its own on sys.path)."""
    policy = write_yaml(tmp_path / "own.yaml", own_policy("blobs"))
    if how == "python -m":
        proc = run_cli("train", str(policy), "--quiet", cwd=module_dir, env={"PYTHONPATH": ""})
    else:
        script = Path(sys.executable).parent / "tunebudget"
        if not script.is_file():
            pytest.skip("no tunebudget console script next to this Python")
        proc = subprocess.run([str(script), "train", str(policy), "--quiet"], cwd=module_dir, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout


@pytest.mark.parametrize("factory, task, metric", [
    ("blob_tensors", {}, "accuracy"),
    ("image_datasets", {"model": "cnn", "model_options": {"width": 8, "hidden": 16}}, "accuracy"),
    ("tensor_datasets", {}, "accuracy"),
    ("grey_images", {"model_options": {"hidden": [16]}}, "accuracy"),
    ("values", {"kind": "regression"}, "mse"),
    ("blobs", {"label_noise": 0.3, "noise_kind": "pairs", "imbalance": 4, "duplicates": 2, "train_subset": 0.8},
     "accuracy"),
], ids=["tensors", "image-datasets-cnn", "tensor-datasets", "uint8-hw", "regression", "regimes"])
def test_every_form_trains(own, tmp_path, cli, factory, task, metric):
    policy = write_yaml(tmp_path / "own.yaml", own_policy(factory, **task))
    out = tmp_path / "result.json"
    res = cli("train", str(policy), "--quiet", "--json", str(out))
    assert res.returncode == 0, res.stderr
    test = json.loads(out.read_text())["test"]
    assert set(test) == {"loss", metric}
    if metric == "accuracy" and not task.get("label_noise"):
        assert test["accuracy"] > 0.6
    if metric == "mse":
        assert test["mse"] < 0.5  # standardised targets: 1 is what predicting the mean scores


def test_bundle_from_own_data(own):
    """Validation carve, image detection, num_classes and regimes work on a factory's data."""
    from tunebudget.data import load_data
    from tunebudget.policy import TaskSpec

    images = load_data(TaskSpec(dataset=f"{MODULE}:image_datasets", model="cnn", val_size=60), seed=1)
    assert images.is_image and images.input_shape == (1, 6, 6)
    assert (len(images.train), len(images.val), len(images.test)) == (240, 60, 100)
    assert images.kind == "classification" and images.num_outputs == 4
    grey = load_data(TaskSpec(dataset=f"{MODULE}:grey_images", model="mlp", val_size=20))
    assert grey.input_shape == (1, 5, 5)
    flat = load_data(TaskSpec(dataset=f"{MODULE}:tensor_datasets", model="mlp", val_size=0.2))
    assert flat.input_shape == (6,) and not flat.is_image and flat.num_outputs == 5  # num_classes as given
    noisy = load_data(TaskSpec(dataset=f"{MODULE}:blobs", model="mlp", val_size=50, label_noise=0.2))
    assert int(noisy.train.noisy.sum()) == round(0.2 * len(noisy.train)) and noisy.val.noisy is None
    reg = load_data(TaskSpec(dataset=f"{MODULE}:values", kind="regression", model="mlp", val_size=40))
    assert reg.kind == "regression" and reg.num_outputs == 1 and reg.train.y.dtype.is_floating_point


# ---- policy validation stays light ------------------------------------------------------------------

def test_policy_validation_imports_neither_torch_nor_the_module():
    code = (
        "import sys\n"
        "from tunebudget.policy import policy_from_dict\n"
        "p = policy_from_dict({'task': {'dataset': 'no_such_module_xyz:make', 'kind': 'regression',"
        " 'data_options': {'rows': 10}}, 'selection': {'strategy': 'full'}})\n"
        "assert p.task.kind == 'regression' and p.to_dict()['task']['kind'] == 'regression'\n"
        "assert 'torch' not in sys.modules and 'no_such_module_xyz' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("task, expected", [
    ({"dataset": "digits", "kind": "regression"}, "task.kind: digits is a classification data set"),
    ({"dataset": "nomodule:"}, "task.dataset: unknown data set 'nomodule:'"),
    ({"dataset": f"{MODULE}:values", "kind": "regression", "label_noise": 0.1}, "task.label_noise: needs class labels"),
])
def test_bad_task_fields_are_policy_errors(tmp_path, cli, task, expected):
    res = cli("train", str(write_yaml(tmp_path / "p.yaml", tiny_policy(task=task))))
    assert res.returncode == 2 and expected in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_kind_is_written_only_when_it_is_not_implied():
    from tunebudget.policy import policy_from_dict

    digits = policy_from_dict(tiny_policy())
    assert digits.task.kind == "classification" and "kind" not in digits.to_dict()["task"]
    own = policy_from_dict(tiny_policy(task={"dataset": f"{MODULE}:values", "kind": "regression"}))
    assert policy_from_dict(own.to_dict()) == own
    assert own.with_overrides({"task.kind": "classification"}).to_dict()["task"].get("kind") is None


# ---- (c) bad factories: exit 2, one line ------------------------------------------------------------

@pytest.mark.parametrize("factory, task, expected", [
    ("raises", {}, "task.dataset: tb_own_data:raises raised RuntimeError: database unreachable;"),
    ("wrong_type", {}, "returned str; return (train_x, train_y, test_x, test_y)"),
    ("three", {}, "returned a tuple of 3;"),
    ("short_labels", {}, "returned 300 train inputs but 299 train targets"),
    ("fractional_labels", {}, ("non-integer labels in train_y; give class labels 0 … C-1 for classification, "
                               "or set task.kind: regression")),
    ("empty_test", {}, "test_x with no samples"),
    ("unknown_key", {}, "unknown key 'labels'"),
    ("string_labels", {}, "train_y of dtype <U3; give numbers"),
    ("nan_inputs", {}, "test_x with NaN or infinite values"),
    ("one_class", {}, "labels of one class only"),
    ("label_above_num_classes", {}, "returned label 2 but num_classes 2"),
    ("one_dimensional", {}, "train_x of shape (300,); give flat inputs (N, features)"),
    ("not_pairs", {}, "train[0] is a Tensor, not an (x, y) pair"),
    ("failing_dataset", {}, ("task.dataset: tb_own_data:failing_dataset: train[2] raised OSError: image 2.png "
                             "unreadable; fix the Dataset's __getitem__")),
    ("blobs", {"data_options": {"rows": 10}},
     "task.data_options: unknown option 'rows' for data set tb_own_data:blobs; valid options are n, dim, classes, seed"),
    ("needs_path", {}, "task.data_options: data set tb_own_data:needs_path needs option 'path'"),
    ("not_callable", {}, "task.dataset: 'tb_own_data:not_callable' is not callable"),
    ("no_such_factory", {}, ("task.dataset: cannot import 'tb_own_data:no_such_factory' (module tb_own_data has "
                             "no attribute 'no_such_factory')")),
])
def test_bad_factory_is_one_line_and_exit_2(own, tmp_path, cli, factory, task, expected):
    policy = write_yaml(tmp_path / "own.yaml", own_policy(factory, **task))
    res = cli("train", str(policy), "--quiet")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunebudget: error: task."), res.stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("spec, expected", [
    ("tb_no_such_module:load", ("task.dataset: cannot import 'tb_no_such_module:load' (No module named "
                                "'tb_no_such_module'); make the module importable: run from the directory that "
                                "holds it, or add that directory to PYTHONPATH")),
    (f"{BROKEN}:load", (f"task.dataset: cannot import '{BROKEN}:load': importing {BROKEN} raised ValueError: "
                        "no config.json next to the module; fix the module")),
])
def test_module_that_cannot_be_imported_is_one_line_and_exit_2(module_dir, tmp_path, spec, expected):
    """In a fresh process, as a user meets it: a missing module, and one that raises on import."""
    policy = write_yaml(tmp_path / "own.yaml", tiny_policy(task={"dataset": spec}))
    proc = run_cli("train", str(policy), "--quiet", cwd=tmp_path, env={"PYTHONPATH": _with_path(module_dir)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]


# ---- (b) a sweep through a real local Ray -----------------------------------------------------------

def test_sweep_on_own_data(module_dir, tmp_path):
    """Ray workers import the factory the way the driver does (here: PYTHONPATH, not the working dir)."""
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["name"] = "own_blobs"
    data["task"] = {"dataset": f"{MODULE}:blobs", "data_options": {"n": 400}, "model": "mlp",
                    "model_options": {"hidden": [32]}, "val_size": 60}
    data["budget"] = {"seconds": None, "samples": 1500, "eval_every": 0.5}
    data["sweep"].update({"trials": 2, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 1})
    space = write_yaml(tmp_path / "space.yaml", data)
    proc = run_cli("sweep", str(space), "--cpus-per-trial", "1", "--quiet", cwd=tmp_path,
                   env={"PYTHONPATH": _with_path(module_dir)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Verdict" in proc.stdout and f"dataset: {MODULE}:blobs" in proc.stdout

    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("own_blobs")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("stage") in ("search", "confirm")]
    assert len([r for r in trials if r.data.tags["stage"] == "search"]) == 2 + 2  # trials + baselines
    assert all(r.info.status == "FINISHED" and r.data.params["task.dataset"] == f"{MODULE}:blobs" for r in trials)
    assert all(r.data.metrics["test_accuracy"] > 0.5 for r in trials)


# ---- normalisation: a feature constant in the training split -----------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_digits_inputs_stay_bounded(seed):
    """A pixel that is 0 in every training image but not elsewhere was divided by 1e-6 (val_loss 1198)."""
    from tunebudget.data import load_data
    from tunebudget.policy import TaskSpec

    bundle = load_data(TaskSpec(dataset="digits", model="mlp", val_size=200), seed)
    for split in (bundle.train, bundle.val, bundle.test):
        assert float(split.x.abs().max()) < 100
    assert float(bundle.train.x.mean(0).abs().max()) < 1e-4  # still centred


def test_digits_validation_loss_is_sane(tmp_path, cli):
    """Seed 0's validation split holds the sample that read 1e6: val_loss was ~1000 at 96% accuracy."""
    out = tmp_path / "r.json"
    res = cli("train", str(write_yaml(tmp_path / "p.yaml", tiny_policy())), "--quiet", "--json", str(out))
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert result["val"]["accuracy"] > 0.85 and result["val"]["loss"] < 1.0
    assert all(h["val_loss"] < 2.0 for h in result["history"])


def test_feature_constant_in_training_is_centred_not_exploded(own):
    from tunebudget.data import load_data
    from tunebudget.policy import TaskSpec

    bundle = load_data(TaskSpec(dataset=f"{MODULE}:constant_in_training", model="mlp", val_size=40))
    assert float(bundle.train.x[:, 0].abs().max()) == 0.0 and float(bundle.val.x[:, 0].abs().max()) == 0.0
    # test values 5 - 8 .. 9 - 5: centred on the training value 5, not divided by a std of ~0
    assert float(bundle.test.x[:, 0].min()) == pytest.approx(-8.0) and float(bundle.test.x[:, 0].max()) == 4.0
    assert float(bundle.test.x.abs().max()) < 100
    assert float(bundle.train.x[:, 1:].std(0).sub(1).abs().max()) < 1e-4  # the other features are standardised
