"""BudgetPolicy: validation names the field and the fix; the YAML round trip is exact."""

from __future__ import annotations

import pytest
import yaml

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import (SCHEMA_VERSION, BudgetPolicy, load_policy, policy_from_dict, save_policy,
                               split_space)

from conftest import ROOT, tiny_policy, write_yaml


def test_round_trip_through_yaml(tmp_path):
    policy = policy_from_dict(tiny_policy(selection={"strategy": "topk", "ratio": 0.3, "warmup": 0.2}))
    path = tmp_path / "p.yaml"
    save_policy(policy, path)
    again = load_policy(path)
    assert again == policy
    assert again.digest() == policy.digest()
    assert yaml.safe_load(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_flat_keys_and_overrides():
    policy = policy_from_dict(tiny_policy())
    flat = policy.flat()
    assert flat["training.lr"] == 0.1 and flat["selection.strategy"] == "full"
    changed = policy.with_overrides({"training.lr": 0.3, "selection.strategy": "rs2", "selection.ratio": 0.5})
    assert changed.training.lr == 0.3 and changed.selection.ratio == 0.5
    assert policy.training.lr == 0.1  # the original is untouched


@pytest.mark.parametrize(
    "change, field",
    [
        ({"training": {"lrr": 0.1}}, "training.lrr: unknown key"),
        ({"training": {"lr": "fast"}}, "training.lr"),
        ({"training": {"lr": -1.0}}, "training.lr"),
        ({"training": {"batch_size": 0}}, "training.batch_size"),
        ({"training": {"schedule": "sawtooth"}}, "training.schedule"),
        ({"selection": {"strategy": "topk", "ratio": 0.0}}, "selection.ratio"),
        ({"selection": {"strategy": "topk", "ratio": 1.5}}, "selection.ratio"),
        ({"selection": {"strategy": "topk", "ratio": 0.5, "warmup": 1.0}}, "selection.warmup"),
        ({"selection": {"strategy": "topk", "ratio": 0.5, "warmup": -0.1}}, "selection.warmup"),
        ({"selection": {"scorer": "vibes"}}, "selection.scorer"),
        ({"selection": {"strategy": "greedy"}}, "selection.strategy"),
        ({"selection": {"ratio": 0.5}}, "selection.ratio is 0.5 but selection.strategy is 'full'"),
        ({"selection": {"strategy": "topk", "ratio": 0.5, "warmup": 0.6, "final_full": 0.5}}, "final_full"),
        ({"budget": {"seconds": 0, "samples": None}}, "budget.seconds"),
        ({"budget": {"seconds": -5, "samples": None}}, "budget.seconds"),
        ({"budget": {"seconds": 10, "samples": 100}}, "exactly one of budget.seconds"),
        ({"task": {"dataset": "imagenet22k"}}, "task.dataset: unknown data set"),
        ({"task": {"model": "transformer"}}, "task.model: unknown model"),
        ({"task": {"dataset": "synthetic_regression"}, "selection": {"strategy": "topk", "ratio": 0.5, "scorer": "margin"}},
         "regression task"),
        ({"selection": {"strategy": "rs2", "ratio": 0.5, "scorer": "margin"}}, "selection.scorer: 'margin' has no effect"),
        ({"selection": {"strategy": "topk", "ratio": 0.5, "floor": 0.3}}, "selection.floor"),
        ({"task": {"noise_kind": "pairs"}}, "task.noise_kind"),
        ({"task": {"label_noise": 1.0}}, "task.label_noise"),
        ({"task": {"duplicates": 0.5}}, "task.duplicates"),
        ({"task": {"dataset": "synthetic_regression", "label_noise": 0.2}}, "task.label_noise: needs class labels"),
        ({"selection": {"rescore": "yes"}}, "selection.rescore"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_input_names_the_field(change, field):
    with pytest.raises(TuneBudgetError) as info:
        policy_from_dict(tiny_policy(**change), "p.yaml")
    message = str(info.value)
    assert field in message
    assert message.startswith("p.yaml: ")
    assert "\n" not in message


def test_newer_schema_version_is_refused():
    with pytest.raises(TuneBudgetError, match="newer tunebudget"):
        policy_from_dict({**tiny_policy(), "schema_version": SCHEMA_VERSION + 1})


def test_malformed_yaml_gives_the_line(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", "task:\n  dataset: [digits\n")
    with pytest.raises(TuneBudgetError, match=r"malformed YAML at line \d+"):
        load_policy(path)


def test_search_space_file_trains_its_base_policy(tmp_path):
    data = {**tiny_policy(), "search": {"training.lr": {"type": "float", "low": 0.01, "high": 1}},
            "sweep": {"trials": 4}, "baselines": []}
    policy_part, extras = split_space(data)
    assert set(extras) == {"search", "sweep", "baselines"}
    policy = load_policy(write_yaml(tmp_path / "space.yaml", data))
    assert policy.training.lr == 0.1


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_files_are_valid_policies(path):
    assert isinstance(load_policy(path), BudgetPolicy)


def test_switching_strategy_drops_the_fields_the_new_one_does_not_read():
    base = policy_from_dict(tiny_policy(selection={"strategy": "topk", "ratio": 0.4, "scorer": "margin",
                                                   "rerank_every": 3, "warmup": 0.2}))
    rs2 = base.with_overrides({"selection.strategy": "rs2"})
    assert rs2.selection.scorer == "loss" and rs2.selection.rerank_every == 1  # back to their defaults
    assert rs2.selection.ratio == 0.4 and rs2.selection.warmup == 0.2  # RS2 reads these: kept
    with pytest.raises(TuneBudgetError, match="selection.scorer: 'margin' has no effect"):
        base.with_overrides({"selection.strategy": "rs2", "selection.scorer": "margin"})  # said on purpose


def test_readme_documents_every_registered_name():
    from tunebudget.registry import SCORERS, STRATEGIES

    readme = (ROOT / "README.md").read_text()
    for name in SCORERS.names() + STRATEGIES.names():
        assert f"`{name}`" in readme, name
