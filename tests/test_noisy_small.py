"""Where the budget is more than the data can take: training less (budget.use), the best validated
weights (training.keep_best), small-loss selection with an estimated noise rate, and a validation
split of the data's own. Real training on digits under the deterministic sample budget."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from tunebudget.data import load_data
from tunebudget.policy import policy_from_dict
from tunebudget.selection.scorers import MAX_NOISE_ESTIMATE, estimate_noise
from tunebudget.trainer import BudgetTrainer

from conftest import tiny_policy, write_yaml
from test_bad_data import fashion_dir, idx, image_folder

NOISY = {"label_noise": 0.4}


def trainer(**sections) -> BudgetTrainer:
    return BudgetTrainer(policy_from_dict(tiny_policy(**sections)), device="cpu")


# ---- budget.use: train less -----------------------------------------------------------------

def test_use_trains_for_its_share_with_the_schedule_fitted_to_it():
    result = trainer(budget={"use": 0.25, "eval_every": 0.25}).run()
    s = result.stats
    assert 1500 <= s["sample_passes_charged"] < 1500 + 64  # a quarter of 6000, within one batch
    assert s["unspent_share"] == pytest.approx(0.75, abs=64 / 6000)
    assert s["budget_use"] == 0.25
    # validations and the LR follow the share: four validations, the LR at zero when the share ends
    assert [h["progress"] for h in result.history] == pytest.approx([0.25, 0.5, 0.75, 1.0], abs=64 / 1500)
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=0.1 * 64 / 1500 + 1e-9)
    assert result.history[1]["lr"] == pytest.approx(0.05, abs=0.01)  # half-way through the share: half the LR


def test_use_one_is_the_whole_budget():
    a = trainer().run()
    b = trainer(budget={"use": 1.0}).run()
    assert a.test == b.test and b.stats["unspent_share"] == 0.0


# ---- training.keep_best --------------------------------------------------------------------

def test_keep_best_returns_and_tests_the_best_validated_weights():
    """Under heavy label noise the validation accuracy peaks before the end (memorisation): the kept
    weights are those of the best validation, and the test metrics are theirs."""
    sections = dict(task=NOISY | {"label_noise": 0.6}, budget={"samples": 30000, "eval_every": 0.05},
                    training={"lr": 0.2})
    last = trainer(**sections).run()
    t = trainer(**{**sections, "training": {"lr": 0.2, "keep_best": True}})
    best = t.run()
    accs = [h["val_accuracy"] for h in best.history]
    assert [h["val_accuracy"] for h in last.history] == accs  # keeping a copy changes nothing in training
    first_max = int(np.argmax(accs))
    assert best.stats["kept_progress"] == pytest.approx(best.history[first_max]["progress"])
    assert best.history[first_max]["kept"] and not any(h["kept"] for h in best.history[first_max + 1:])
    assert best.val["accuracy"] == max(accs) > last.val["accuracy"]
    assert best.stats["kept_progress"] < 1.0
    # the model now holds the kept weights: evaluating it again gives the reported test metrics
    assert t.evaluate(t.data.test) == best.test != last.test
    params = sum(v.numel() * v.element_size() for v in t.model.state_dict().values())
    assert best.stats["keep_best_bytes"] == params
    assert best.stats["keep_best_copies"] >= 1 and best.stats["keep_best_seconds"] >= 0


def test_keep_best_of_a_run_that_only_improves_keeps_the_last():
    result = trainer(training={"keep_best": True}, budget={"eval_every": 0.5}).run()
    assert result.stats["kept_progress"] == pytest.approx(1.0, abs=0.02) or \
        result.val["accuracy"] > result.history[-1]["val_accuracy"]


# ---- small-loss selection and the noise estimate ---------------------------------------------

def test_small_loss_keeps_wrong_labels_out():
    budget = {"samples": 30000}
    full = trainer(task=NOISY, budget=budget).run()
    small = trainer(task=NOISY, budget=budget, selection={"strategy": "topk", "scorer": "small_loss", "ratio": 0.6,
                                                          "warmup": 0.2, "rescore": True}).run()
    loss = trainer(task=NOISY, budget=budget, selection={"strategy": "topk", "scorer": "loss", "ratio": 0.6,
                                                         "warmup": 0.2, "rescore": True}).run()
    assert full.stats["mislabelled_share"] == pytest.approx(0.4, abs=0.01)
    assert small.stats["mislabelled_share"] < 0.25 < 0.4 < loss.stats["mislabelled_share"]


@pytest.mark.parametrize("strategy", ["topk", "online"])
def test_auto_ratio_keeps_one_minus_the_estimated_noise(strategy):
    result = trainer(task=NOISY, budget={"samples": 30000},
                     selection={"strategy": strategy, "scorer": "small_loss", "ratio": "auto", "warmup": 0.3}).run()
    estimate = result.stats["noise_estimate"]
    assert 0.2 < estimate < 0.6  # the data's rate is 0.4
    assert result.history[-1]["kept_share"] == pytest.approx(1 - estimate, abs=0.01)
    assert result.stats["mislabelled_share"] < 0.35


def test_noise_estimate_finds_the_second_mode_and_is_capped():
    g = torch.Generator().manual_seed(1)
    clean, noisy = torch.rand(800, generator=g) * 0.2, 3 + torch.rand(200, generator=g)
    assert estimate_noise(torch.cat([clean, noisy, torch.full((5,), float("nan"))])) == pytest.approx(0.2, abs=0.01)
    assert estimate_noise(torch.cat([torch.zeros(100), torch.ones(900)])) == MAX_NOISE_ESTIMATE
    assert estimate_noise(torch.zeros(50)) == 0.0


# ---- a validation split of the data's own ---------------------------------------------------

FACTORIES = '''
import numpy as np
import torch


def _blobs(n, seed, dim=6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (rng.normal(size=(n, dim)) + 3 * np.eye(3, dim)[y]).astype("float32"), y


def arrays(val_n=80, val_dim=6, val_label=None):
    x, y = _blobs(400, 0)
    t, ty = _blobs(100, 1)
    v, vy = _blobs(val_n, 2, val_dim)
    if val_label is not None:
        vy[0] = val_label
    return {"train_x": x, "train_y": y, "test_x": t, "test_y": ty, "val_x": v, "val_y": vy}


def half_val():
    out = arrays()
    del out["val_y"]
    return out


def datasets():
    x, y = _blobs(300, 0)
    t, ty = _blobs(100, 1)
    v, vy = _blobs(60, 2)
    as_ds = lambda a, b: torch.utils.data.TensorDataset(torch.from_numpy(a), torch.from_numpy(b))
    return {"train": as_ds(x, y), "test": as_ds(t, ty), "val": as_ds(v, vy)}
'''


@pytest.fixture
def own(tmp_path, monkeypatch):
    (tmp_path / "valdata.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def own_task(factory: str, **options) -> dict:
    return {"dataset": f"valdata:{factory}", "data_options": options, "val_size": 50}


@pytest.mark.parametrize("factory, n_val", [("arrays", 80), ("datasets", 60)])
def test_a_factorys_validation_split_is_used_as_given(own, factory, n_val):
    policy = policy_from_dict(tiny_policy(task=own_task(factory, **({"val_n": 80} if factory == "arrays" else {})),
                                          budget={"samples": 3000}))
    data = load_data(policy.task, 0)
    assert data.val_source == "given" and len(data.val) == n_val
    assert len(data.train) == (400 if factory == "arrays" else 300)  # nothing carved out of the training split
    # with label noise on the training split, the given validation labels stay as they are
    noisy = load_data(policy.with_overrides({"task.label_noise": 0.5}).task, 0)
    assert torch.equal(noisy.val.y, data.val.y) and not torch.equal(noisy.train.y, data.train.y)
    result = BudgetTrainer(policy, device="cpu", data=data).run()
    assert result.stats["val_source"] == "given" and result.stats["val_size"] == n_val


@pytest.mark.parametrize("factory, options, fragment", [
    ("arrays", {"val_dim": 5}, "train and val inputs of different shapes"),
    ("arrays", {"val_label": 7}, "label 7 in val_y, outside the classes 0 … 2"),
    ("arrays", {"val_label": -1}, "negative label"),
    ("arrays", {"val_n": 0}, "no samples"),
    ("half_val", {}, "val_x without val_y"),
])
def test_a_bad_validation_split_is_one_line_and_exit_2(own, tmp_path, cli, factory, options, fragment):
    policy = write_yaml(tmp_path / "p.yaml", tiny_policy(task=own_task(factory, **options)))
    res = cli("train", str(policy), "--quiet")
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr


def _val_idx_files(root, n=40, labels=None, shape=(28, 28)):
    rng = np.random.default_rng(3)
    root.mkdir(exist_ok=True)
    (root / "val-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(rng.integers(0, 255, (n, *shape)))))
    y = rng.integers(0, 10, n) if labels is None else np.asarray(labels)
    (root / "val-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(y)))
    return root


def test_fashion_mnist_reads_a_validation_split_from_val_root(tmp_path, cli):
    task = {"dataset": "fashion_mnist", "model": "mlp", "root": str(fashion_dir(tmp_path)),
            "val_root": str(_val_idx_files(tmp_path / "val")), "model_options": {}}
    policy = write_yaml(tmp_path / "p.yaml", tiny_policy(task=task, budget={"samples": 3000}))
    out = tmp_path / "r.json"
    res = cli("train", str(policy), "--quiet", "--json", str(out))
    assert res.returncode == 0, res.stderr
    stats = json.loads(out.read_text())
    assert stats["val_source"] == "given" and stats["val_size"] == 40 and stats["train_size"] == 300


@pytest.mark.parametrize("build, fragment", [
    (lambda tmp: tmp / "nowhere", "does not exist"),
    (lambda tmp: _val_idx_files(tmp / "v", labels=[3] * 39), "40 validation images but 39 labels"),
    (lambda tmp: _val_idx_files(tmp / "v", shape=(14, 14)), "validation inputs have shape"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "val-images-idx3-ubyte.gz not found"),
])
def test_bad_val_root_is_one_line_and_exit_2(tmp_path, cli, build, fragment):
    task = {"dataset": "fashion_mnist", "model": "mlp", "root": str(fashion_dir(tmp_path)),
            "val_root": str(build(tmp_path)), "model_options": {}}
    res = cli("train", str(write_yaml(tmp_path / "p.yaml", tiny_policy(task=task))), "--quiet")
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr


def test_image_folder_reads_a_validation_folder_of_the_same_classes(tmp_path):
    from PIL import Image

    from tunebudget.errors import TuneBudgetError

    train_root = image_folder(tmp_path)
    (tmp_path / "v").mkdir()
    val_root = image_folder(tmp_path / "v", classes=("dog",), per_class=5)
    task = {"dataset": "imagefolder", "root": str(train_root), "val_root": str(val_root), "model": "mlp",
            "model_options": {}}
    data = load_data(policy_from_dict(tiny_policy(task=task)).task, 0)
    assert data.val_source == "given" and len(data.val) == 5
    assert set(data.val.y.tolist()) == {1}  # "dog" is class 1 under task.root (cat, dog)
    (val_root / "bird").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(val_root / "bird" / "0.png")
    with pytest.raises(TuneBudgetError, match="class folder 'bird', which task.root does not"):
        load_data(policy_from_dict(tiny_policy(task=task)).task, 0)


# ---- bad values: one line, exit 2 ------------------------------------------------------------

@pytest.mark.parametrize("override, fragment", [
    ("budget.use=0", "budget.use: Input should be greater than 0"),
    ("budget.use=1.5", "budget.use: Input should be less than or equal to 1"),
    ("budget.use=0.001", "budget.samples: 6000 x budget.use 0.001 = 6 is less than one batch"),
    ("selection.ratio=1.2", "selection.ratio: 1.2 is not a share"),
    ("selection.ratio=often", "selection.ratio: 'often' is not a share"),
    ("selection.ratio=auto", "selection.ratio: auto (1 - the noise rate estimated"),
    ("task.val_root=/tmp", "task.val_root: digits reads no validation split from a directory"),
])
def test_bad_values_are_one_line_and_exit_2(tmp_path, cli, override, fragment):
    policy = write_yaml(tmp_path / "p.yaml", tiny_policy())
    res = cli("train", str(policy), "--quiet", "--set", override)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr


def test_auto_ratio_needs_small_loss_and_a_warmup(tmp_path, cli):
    base = {"strategy": "topk", "scorer": "small_loss", "ratio": "auto"}
    for selection in (base, {**base, "scorer": "margin", "warmup": 0.1}, {**base, "strategy": "rs2", "warmup": 0.1}):
        policy = write_yaml(tmp_path / "p.yaml", tiny_policy(selection=selection))
        res = cli("train", str(policy), "--quiet")
        assert res.returncode == 2 and "selection.ratio: auto" in res.stderr, res.stderr


# ---- the sweep's verdict: paired over the confirmation seeds -----------------------------------

def test_verdict_is_paired_on_shared_seeds_and_sees_what_welch_cannot():
    """Seed effects shared by both policies (the split, the noise draw) swamp a small, consistent
    difference for Welch's test; the paired test sees it."""
    from tunebudget.sweep.report import verdict
    from tunebudget.sweep.records import Candidate

    shared = [0.80, 0.86, 0.83, 0.89, 0.85]
    best = Candidate("top1", "searched", {}, values=[v + 0.004 for v in shared], seeds=[0, 1, 2, 3, 4])
    base = Candidate("full_use0.1", "baseline", {}, values=shared, seeds=[0, 1, 2, 3, 4])
    v = verdict([best, base], "max", "val_accuracy")
    assert v.test == "paired" and v.beats and v.paired.n == 5
    assert "paired over 5 seeds: 95% CI [+0.0040, +0.0040]" in v.text
    unpaired = verdict([Candidate("top1", "searched", {}, values=best.values),
                        Candidate("full_use0.1", "baseline", {}, values=shared)], "max", "val_accuracy")
    assert unpaired.test == "welch" and not unpaired.beats and "none shared" in unpaired.text
    # the bar: a difference of 0.004 does not clear min_effect 0.005
    assert not verdict([best, base], "max", "val_accuracy", min_effect=0.005).beats
    # a lower MSE: differences and the interval as measured (negative), judged in the better direction
    worse = Candidate("top1", "searched", {}, values=[0.5 - 0.01 * k for k in range(4)], seeds=[0, 1, 2, 3])
    ref = Candidate("full_linear", "baseline", {}, values=[0.52 - 0.01 * k - 0.001 * (k % 2) for k in range(4)],
                    seeds=[0, 1, 2, 3])
    v = verdict([worse, ref], "min", "val_mse")
    assert v.beats and "lower is better; paired over 4 seeds: 95% CI [-0.0" in v.text


def test_a_baseline_that_wins_is_still_compared_with_the_best_searched_policy():
    """When a baseline is the best, the verdict gives the best searched policy's paired difference from
    it with its interval (what the user needs to see how far selection is from winning)."""
    from tunebudget.sweep.report import verdict
    from tunebudget.sweep.records import Candidate

    base = Candidate("full_use0.1", "baseline", {}, values=[0.84, 0.83, 0.85], seeds=[0, 1, 2])
    top1 = Candidate("top1", "searched", {}, values=[0.835, 0.826, 0.846], seeds=[0, 1, 2])
    top2 = Candidate("top2", "searched", {}, values=[0.70, 0.71, 0.69], seeds=[0, 1, 2])
    v = verdict([top2, base, top1], "max", "val_accuracy")
    assert v.best is base and not v.beats and v.challenger is top1 and v.test == "paired"
    assert v.paired.n == 3 and v.paired.high < 0 and abs(v.diff + 0.0043) < 1e-4
    assert "No searched policy beats the baselines" in v.text
    assert "'top1' is -0.0043 from it" in v.text and "paired over 3 seeds: 95% CI [-0.0" in v.text
    # no shared seeds: no interval to give, the verdict says only who won
    lone = verdict([Candidate("top1", "searched", {}, values=[0.8]), base], "max", "val_accuracy")
    assert lone.challenger is None and lone.text.endswith("(val_accuracy 0.8400 ± 0.0100).")
