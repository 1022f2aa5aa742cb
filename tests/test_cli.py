"""`tunebudget train` as a user runs it: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT, needs_fashion, run_cli, tiny_policy, write_yaml


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tunebudget: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in proc.stderr


def test_train_writes_a_json_summary(tmp_path):
    policy = write_yaml(tmp_path / "p.yaml", tiny_policy())
    out = tmp_path / "result.json"
    proc = run_cli("train", str(policy), "--json", str(out), "--set", "training.lr=0.2", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    for key in ("status", "budget_seconds", "train_seconds", "eval_seconds", "scoring_seconds", "samples_seen"):
        assert key in summary
    assert summary["status"] == "completed"
    assert summary["test"]["accuracy"] > 0.8
    assert summary["policy"]["training"]["lr"] == 0.2 and summary["policy"]["seed"] == 3
    assert "test accuracy" in proc.stdout


def test_budget_flag_switches_to_wall_clock(tmp_path):
    policy = write_yaml(tmp_path / "p.yaml", tiny_policy())
    out = tmp_path / "r.json"
    proc = run_cli("train", str(policy), "--budget", "1", "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["limit"] == "seconds" and summary["budget_seconds"] == 1.0
    assert 1.0 <= summary["train_seconds"] < 1.5


@pytest.mark.parametrize(
    "content, fragments",
    [
        ("task: [unclosed\n", ("malformed YAML at line",)),
        ({**tiny_policy(), "trainingg": {}}, ("trainingg: unknown key",)),
        (tiny_policy(training={"lr": "0.1x"}), ("training.lr",)),
        (tiny_policy(selection={"strategy": "topk", "ratio": 2}), ("selection.ratio",)),
        (tiny_policy(selection={"strategy": "topk", "ratio": 0.5, "warmup": 1}), ("selection.warmup",)),
        (tiny_policy(task={"dataset": "nope"}), ("task.dataset",)),
        (tiny_policy(task={"model": "nope"}), ("task.model",)),
        (tiny_policy(task={"model": "no_such_pkg.mod:make"}), ("task.model: cannot import",)),
        (tiny_policy(task={"model_options": {"depth": 3}}), ("task.model_options", "depth")),
        (tiny_policy(task={"dataset": "synthetic_regression"}, selection={"strategy": "topk", "ratio": 0.5,
                                                                         "scorer": "margin"}), ("regression",)),
        (tiny_policy(task={"dataset": "fashion_mnist", "root": "/nonexistent/fm"}), ("task.root", "apt-get")),
        (tiny_policy(task={"dataset": "cifar10"}), ("task.root",)),
        ({**tiny_policy(), "schema_version": 99}, ("newer tunebudget",)),
    ],
    ids=["malformed", "unknown-key", "type", "ratio", "warmup", "dataset", "model", "factory", "model-option",
         "margin-regression", "missing-data", "torchvision-no-root", "schema"],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli, tmp_path, content, fragments):
    policy = write_yaml(tmp_path / "p.yaml", content)
    out = tmp_path / "result.json"
    proc = cli("train", str(policy), "--json", str(out))
    assert_user_error(proc, *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--budget", "0"], ("budget.seconds",)),
        (["--budget", "-3"], ("budget.seconds",)),
        (["--set", "training.lr"], ("--set",)),
        (["--set", "nosection.lr=1"], ("nosection",)),
        (["--set", "training.momentum=1.5"], ("training.momentum",)),
        (["--device", "tpu"], ("--device",)),
    ],
)
def test_bad_flags_exit_2(cli, tmp_path, args, fragments):
    policy = write_yaml(tmp_path / "p.yaml", tiny_policy())
    assert_user_error(cli("train", str(policy), *args), *fragments)


def test_missing_file_exits_2_in_a_real_process(tmp_path):
    assert_user_error(run_cli("train", str(tmp_path / "nope.yaml")), "no such file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_exits_2(tmp_path):
    policy = write_yaml(tmp_path / "p.yaml", tiny_policy())
    assert_user_error(run_cli("train", str(policy), "--device", "cuda"), "--device cuda", "--device cpu")


def test_diverged_run_exits_1_with_status(tmp_path):
    policy = write_yaml(tmp_path / "p.yaml", tiny_policy(
        task={"dataset": "synthetic_regression", "model": "mlp", "val_size": 500},
        training={"lr": 10.0, "momentum": 0.99, "schedule": "constant"}))
    out = tmp_path / "r.json"
    proc = run_cli("train", str(policy), "--json", str(out), "--quiet")
    assert proc.returncode == 1
    assert json.loads(out.read_text())["status"] == "diverged"


@needs_fashion
def test_shipped_selective_policy_runs_on_fashion_mnist(tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("train", str(ROOT / "search_spaces/fashion_mnist_cnn_selective.yaml"), "--budget", "4",
                   "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["test"]["accuracy"] > 0.6
    assert summary["distinct_samples"] <= summary["train_size"] == 55000
    assert "scoring_share" in summary
