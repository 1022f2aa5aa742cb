"""The GPU fast path; skipped cleanly on machines without CUDA (CI has none)."""

from __future__ import annotations

import pytest
import torch

from tunebudget.policy import policy_from_dict
from tunebudget.trainer import BudgetTrainer

from conftest import ROOT, run_cli, tiny_policy

#: ``-m gpu`` selects these tests; without CUDA they skip.
pytestmark = [pytest.mark.gpu]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
def test_data_stays_on_the_gpu_and_training_uses_it():
    policy = policy_from_dict(tiny_policy(task={"dataset": "synthetic", "model": "mlp", "val_size": 500}))
    trainer = BudgetTrainer(policy, device="cuda")
    assert trainer.data.train.x.is_cuda and trainer.selector.scores.is_cuda
    result = trainer.run()
    assert result.status == "completed" and result.stats["device"].startswith("cuda")


@gpu
def test_images_are_channels_last_with_bf16_autocast():
    policy = policy_from_dict(tiny_policy(task={"dataset": "synthetic", "model": "mlp"}))
    trainer = BudgetTrainer(policy, device="cuda")
    assert trainer.optimizer.defaults.get("fused") is True
    x = torch.randn(4, 1, 28, 28, device="cuda").contiguous(memory_format=torch.channels_last)
    from tunebudget.models import SmallCNN

    trainer.model = SmallCNN((1, 28, 28), 4).cuda().to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert trainer.model(x).dtype == torch.bfloat16
    assert trainer._forward(x).dtype == torch.float32  # losses are computed in fp32


@gpu
def test_compile_happens_before_the_clock():
    policy = policy_from_dict(tiny_policy(training={"compile": True}, budget={"seconds": 2, "samples": None}))
    result = BudgetTrainer(policy, device="cuda").run()
    assert result.status == "completed"
    assert result.stats["compile_seconds"] > 0 and result.stats["train_seconds"] < 2.5


@gpu
def test_fractional_gpu_trials_share_one_gpu(tmp_path):
    import yaml

    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": None, "samples": 4000, "eval_every": 0.5}
    data["sweep"].update({"trials": 2, "concurrency": 4, "confirm_seeds": 0, "resources": {"cpu": 0.5, "gpu": 0.25}})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(data))
    proc = run_cli("sweep", str(space), "--quiet", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("digits_mlp").experiment_id])
    trials = [r for r in runs if r.data.tags.get("stage") == "search"]
    assert trials and all(r.data.params["task.dataset"] == "digits" for r in trials)
    assert all(r.data.tags["device"].startswith("cuda") for r in trials)


@pytest.mark.slow
def test_compile_on_the_cpu_is_outside_the_budget():
    policy = policy_from_dict(tiny_policy(training={"compile": True}, budget={"seconds": 1, "samples": None}))
    result = BudgetTrainer(policy, device="cpu").run()
    assert result.status == "completed"
    assert result.stats["compile_seconds"] > 0  # compiled and warmed up (longer when the cache is cold)...
    assert 1.0 <= result.stats["train_seconds"] < 1.5  # ...before the clock started


@gpu
@pytest.mark.parametrize("selection", [{"strategy": "full"},
                                       {"strategy": "online", "scorer": "reducible", "ratio": 0.5}])
def test_the_clock_waits_for_the_gpu_every_16_steps_not_every_step(selection):
    policy = policy_from_dict(tiny_policy(task={"dataset": "synthetic", "model": "mlp", "val_size": 500},
                                          budget={"seconds": 2.0, "samples": None, "eval_every": 0.25},
                                          selection=selection))
    result = BudgetTrainer(policy, device="cuda").run()
    s = result.stats
    assert result.status == "completed" and s["steps"] > 200
    # start and stop, two per validation (4 of them), one per 16 steps; online scoring adds none
    assert s["device_syncs"] <= 2 + 2 * 4 + s["steps"] // 16
    assert s["overshoot_seconds"] < 0.25 and s["train_seconds"] >= 2.0
