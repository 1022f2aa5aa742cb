"""Shared fixtures: small policies and a CLI runner in a subprocess (real exit codes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path(os.environ.get("TUNEBUDGET_DATA", "/usr/share/datasets/fashion-mnist"))
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)


def tiny_policy(**sections) -> dict:
    """A digits-MLP policy with a deterministic budget, as a plain dict."""
    base = {
        "name": "tiny",
        "task": {"dataset": "digits", "model": "mlp", "val_size": 200, "model_options": {"hidden": [64]}},
        "budget": {"seconds": None, "samples": 6000, "eval_every": 0.25},
        "training": {"lr": 0.1, "batch_size": 64},
        "selection": {"strategy": "full"},
        "seed": 0,
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run ``python -m tunebudget ARGS`` and return the CompletedProcess (text)."""
    full_env = {**os.environ, **(env or {})}
    try:
        return subprocess.run([sys.executable, "-m", "tunebudget", *args], cwd=cwd or ROOT, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # say what the command had printed: a hang is found from that
        tail = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"tunebudget {' '.join(args)} ran over {timeout} s; its stderr ended:\n"
                             f"{tail[-4000:]}") from None


@pytest.fixture
def tiny():
    return tiny_policy()


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """Run ``tunebudget ARGS`` in this process (fast); returns returncode, stdout, stderr."""
    from tunebudget.cli import main

    def _run(*args: str) -> CliResult:
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return _run
