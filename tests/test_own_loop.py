"""The policy in your own loop: tunebudget.Recipe with a plain PyTorch loop (examples/own_loop.py)
follows the policy's LR and selection as tunebudget's own trainer does."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml

import tunebudget
from tunebudget.errors import TuneBudgetError

from conftest import ROOT, write_yaml

sys.path.insert(0, str(ROOT / "examples"))
from own_loop import train_own  # noqa: E402


def digits_policy(tmp_path, selection: dict):
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data = {k: v for k, v in data.items() if k not in ("search", "sweep", "baselines")}
    data["budget"] = {"seconds": None, "samples": 30000, "eval_every": 0.25}
    data["selection"] = selection
    return write_yaml(tmp_path / "policy.yaml", data)


@pytest.mark.parametrize("selection", [
    {"strategy": "full"},
    {"strategy": "topk", "scorer": "margin", "ratio": 0.5, "warmup": 0.2},
    {"strategy": "infobatch", "scorer": "loss", "ratio": 0.5},
    {"strategy": "online", "scorer": "loss", "ratio": 0.5},
    {"strategy": "topk", "scorer": "small_loss", "ratio": "auto", "warmup": 0.2},
], ids=["full", "topk-margin", "infobatch", "online", "small-loss-auto"])
def test_own_loop_reaches_tunebudget_trains_accuracy(tmp_path, selection):
    path = digits_policy(tmp_path, selection)
    mine = train_own(str(path))
    theirs = tunebudget.train(str(path), device="cpu").test["accuracy"]
    assert abs(mine - theirs) <= 0.01, (mine, theirs)


def test_recipe_spends_the_budget_with_the_schedule_and_a_dataloader():
    policy = tunebudget.policy_from_dict({"budget": {"seconds": None, "samples": 3000, "use": 0.5},
                                          "training": {"batch_size": 100},
                                          "selection": {"strategy": "rs2", "ratio": 0.5}})
    ds = torch.utils.data.TensorDataset(torch.randn(400, 3), torch.randint(0, 2, (400,)))
    recipe = tunebudget.Recipe(policy, n=len(ds))
    lrs, seen = [], []
    for x, y in torch.utils.data.DataLoader(ds, batch_sampler=recipe.sampler()):
        lrs.append(recipe.lr_multiplier())
        idx = torch.arange(len(x))  # rs2 reads no scores: the ids are only counted
        recipe.step(idx, torch.zeros(len(x)))
        seen.append(len(x))
    assert sum(seen) == 1500 and recipe.done  # half of 3000 (budget.use 0.5)
    assert lrs[0] == 1.0 and lrs[-1] == pytest.approx(100 / 1500) and lrs == sorted(lrs, reverse=True)
    assert max(seen) == 100 and recipe.epochs == 8  # 200 of the 400 samples per RS2 epoch


@pytest.mark.parametrize("selection, fragment", [
    ({"strategy": "topk", "scorer": "reducible", "ratio": 0.5}, "needs tunebudget's trainer"),
    ({"strategy": "topk", "scorer": "assistant", "ratio": 0.5}, "needs tunebudget's trainer"),
    ({"strategy": "topk", "scorer": "loss", "ratio": 0.5, "rescore": True}, "selection.rescore"),
])
def test_recipe_refuses_what_only_the_trainer_can_do(selection, fragment):
    policy = tunebudget.policy_from_dict({"selection": selection})
    with pytest.raises(TuneBudgetError, match=fragment):
        tunebudget.Recipe(policy, n=100)
