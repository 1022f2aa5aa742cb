"""Data regimes: seeded, applied to the training split only, recorded in the policy; bad values are
one-line errors."""

from __future__ import annotations

import pytest
import torch

from tunebudget.data import load_data
from tunebudget.policy import TaskSpec, policy_from_dict

from conftest import needs_fashion, tiny_policy, write_yaml

DIGITS = {"dataset": "digits", "model": "mlp", "val_size": 200}


def bundle(seed: int = 0, **regime):
    return load_data(TaskSpec(**DIGITS, **regime), seed)


def test_regimes_leave_validation_and_test_untouched_and_are_seeded():
    clean = bundle()
    for regime in ({"label_noise": 0.3}, {"label_noise": 0.3, "noise_kind": "pairs"}, {"duplicates": 3},
                   {"imbalance": 5}, {"train_subset": 0.5}):
        a, b, other = bundle(**regime), bundle(**regime), bundle(seed=1, **regime)
        for split in ("val", "test"):  # (normalisation follows the training split, so compare labels)
            assert torch.equal(getattr(a, split).y, getattr(clean, split).y), (regime, split)
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y), regime
        assert not (a.train.x.shape == other.train.x.shape and torch.equal(a.train.y, other.train.y)), regime


def test_label_noise_changes_exactly_the_rate_and_marks_what_it_changed():
    clean, noisy = bundle(), bundle(label_noise=0.3)
    assert clean.train.noisy is None
    changed = clean.train.y != noisy.train.y
    assert torch.equal(changed, noisy.train.noisy)
    assert int(changed.sum()) == round(0.3 * len(clean.train))
    pairs = bundle(label_noise=0.3, noise_kind="pairs")
    flips = {(int(a), int(b)) for a, b in zip(clean.train.y[pairs.train.noisy], pairs.train.y[pairs.train.noisy])}
    assert len({a for a, _ in flips}) == len(flips)  # each class flips to a single partner class


def test_duplicates_imbalance_and_subset_shapes():
    n = len(bundle().train)
    dup = bundle(duplicates=4)
    distinct = torch.unique(dup.train.x, dim=0).shape[0]
    assert distinct == round(n / 4) and 0.7 * n < len(dup.train) < 1.3 * n
    tail = torch.bincount(bundle(imbalance=5).train.y, minlength=10).float()
    assert tail.max() / tail.min() == pytest.approx(5, rel=0.1)
    assert len(bundle(train_subset=100).train) == 100 and len(bundle(train_subset=0.25).train) == round(0.25 * n)


def test_regime_is_part_of_the_policy_and_its_flat_params():
    policy = policy_from_dict(tiny_policy(task={"label_noise": 0.2, "noise_kind": "pairs"}))
    flat = policy.flat()
    assert flat["task.label_noise"] == 0.2 and flat["task.noise_kind"] == "pairs"
    assert policy.task.regime() == {"label_noise": 0.2, "noise_kind": "pairs"}
    assert policy_from_dict(tiny_policy()).task.regime() == {}


@pytest.mark.parametrize("override, field", [
    ("task.label_noise=1.5", "task.label_noise"),
    ("task.noise_kind=rows", "task.noise_kind"),
    ("task.duplicates=0", "task.duplicates"),
    ("task.imbalance=0.5", "task.imbalance"),
    ("task.train_subset=5000", "task.train_subset"),
    ("selection.il_budget=0.9", "selection.il_budget"),
])
def test_bad_regime_values_are_one_line_errors(cli, tmp_path, override, field):
    path = write_yaml(tmp_path / "p.yaml", tiny_policy(selection={"strategy": "online", "scorer": "reducible",
                                                                  "ratio": 0.5}))
    out = tmp_path / "r.json"
    res = cli("train", str(path), "--set", override, "--json", str(out), "--quiet")
    assert res.returncode == 2 and field in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not out.exists()


@needs_fashion
def test_fashion_mnist_noise_regime_trains_with_clean_test_labels():
    from tunebudget.trainer import BudgetTrainer

    policy = policy_from_dict({"task": {"dataset": "fashion_mnist", "model": "mlp", "label_noise": 0.4,
                                        "train_subset": 5000, "val_size": 1000},
                               "budget": {"seconds": None, "samples": 20000, "eval_every": 0.5}})
    result = BudgetTrainer(policy, device="cpu").run()
    assert result.stats["mislabelled_share"] == pytest.approx(0.4, abs=0.03)
    assert result.test["accuracy"] > 0.6  # measured against the clean test labels
