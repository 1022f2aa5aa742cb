"""What a new user writes first: YAML as people write it, empty files, the metric to optimise."""

from __future__ import annotations

import copy

import pytest
import yaml

from tunebudget.errors import TuneBudgetError
from tunebudget.policy import load_policy
from tunebudget.spaces import METRICS, load_space

from conftest import ROOT, tiny_policy, write_yaml

DIGITS = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())


def test_exponent_floats_without_a_dot_are_numbers(tmp_path, cli):
    """YAML 1.2 reads ``1e-3`` as a float; PyYAML (YAML 1.1) reads it as a string."""
    text = yaml.safe_dump(tiny_policy(), sort_keys=False).replace("lr: 0.1", "lr: 1e-3")
    assert "lr: 1e-3" in text
    (tmp_path / "p.yaml").write_text(text)
    assert load_policy(tmp_path / "p.yaml").training.lr == 0.001

    space = copy.deepcopy(DIGITS)
    space["search"]["training.lr"] = {"type": "float", "low": "LOW", "high": 0.5, "log": True}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space, sort_keys=False).replace("LOW", "1e-3"))
    assert load_space(tmp_path / "s.yaml").params["training.lr"].low == 0.001

    proc = cli("train", str(tmp_path / "p.yaml"), "--set", "training.lr=5e-2", "--set", "training.momentum=9E-1",
               "--json", str(tmp_path / "r.json"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    import json

    policy = json.loads((tmp_path / "r.json").read_text())["policy"]
    assert policy["training"]["lr"] == 0.05 and policy["training"]["momentum"] == 0.9


def test_quoted_exponent_stays_a_string(tmp_path):
    text = yaml.safe_dump(tiny_policy(), sort_keys=False).replace("lr: 0.1", "lr: '1e-3'")
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(TuneBudgetError, match="training.lr"):
        load_policy(tmp_path / "p.yaml")


@pytest.mark.parametrize("content, fragment", [
    ("", "the file is empty"),
    ("# only a comment\n", "the file is empty"),
    ("- a\n- b\n", "expected a mapping"),
    ("training:\n  lr: 0.1\n  lr: 0.2\n", "duplicate key 'lr'"),
    ("training: {lr: 0.1}\ntraining: {lr: 0.2}\n", "duplicate key 'training'"),
])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_empty_and_ambiguous_files_are_bad_input(tmp_path, cli, content, fragment, command):
    path = tmp_path / "p.yaml"
    path.write_text(content)
    proc = cli(command, str(path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr and str(path) in proc.stderr


def test_a_directory_is_not_a_policy(tmp_path, cli):
    proc = cli("train", str(tmp_path))
    assert proc.returncode == 2 and "is a directory" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("metric, mode", [("val_loss", "min"), ("train_loss", "min"), ("val_accuracy", "max"),
                                          ("throughput", "max")])
def test_mode_follows_the_metric(tmp_path, metric, mode):
    data = copy.deepcopy(DIGITS)
    data["sweep"]["metric"] = metric
    data["sweep"].pop("mode", None)
    assert load_space(write_yaml(tmp_path / "s.yaml", data)).metric() == (metric, mode)
    data["sweep"]["mode"] = "max" if mode == "min" else "min"  # an explicit mode is the user's choice
    assert load_space(write_yaml(tmp_path / "s.yaml", data)).metric()[1] == data["sweep"]["mode"]


def test_regression_metrics(tmp_path):
    space = load_space(ROOT / "search_spaces/synthetic_regression.yaml")
    assert space.metric() == ("val_mse", "min")


@pytest.mark.parametrize("dataset", ["digits", "synthetic_regression"])
def test_every_optimisable_metric_is_reported_by_the_trainer(dataset):
    """METRICS is what the sweep accepts: each must be in what a real trial reports at validation."""
    from tunebudget.policy import policy_from_dict
    from tunebudget.trainer import BudgetTrainer

    policy = policy_from_dict(tiny_policy(task={"dataset": dataset, "model": "mlp", "val_size": 100}))
    result = BudgetTrainer(policy, device="cpu").run()
    kind = policy.task.kind
    reported = {k for k, v in result.history[-1].items() if isinstance(v, (int, float))}
    assert set(METRICS[kind]) <= reported, set(METRICS[kind]) - reported


@pytest.mark.parametrize("mode, best, base, shown", [("min", [0.10, 0.11, 0.12], [0.20, 0.21, 0.22], "-0.1000"),
                                                    ("max", [0.92, 0.93, 0.94], [0.90, 0.91, 0.92], "+0.0200")])
def test_verdict_shows_the_difference_as_measured(mode, best, base, shown):
    """A lower MSE is shown as a negative difference with its direction, not as '+'."""
    from tunebudget.sweep.report import verdict
    from tunebudget.sweep.records import Candidate

    v = verdict([Candidate("top1", "searched", {}, values=best), Candidate("full_linear", "baseline", {}, values=base)],
                mode, "val_mse" if mode == "min" else "val_accuracy")
    assert v.beats and f"({shown}, {'lower' if mode == 'min' else 'higher'} is better;" in v.text


def test_sweep_progress_counts_only_finished_trials_and_never_wraps(capsys):
    """A trial Tune marks TERMINATED without its final report (killed by Ctrl-C, early-stopped) is
    not 'done'; lines are whole however long (stderr is not a terminal under pytest)."""
    from types import SimpleNamespace as Trial

    from tunebudget.sweep.live import SweepProgress

    metric = "val_accuracy_of_a_long_metric_name_that_would_wrap_at_eighty_columns"
    progress = SweepProgress("search", 5, metric, "max")
    progress.update([Trial(status="TERMINATED", last_result={"finished": 1, metric: 0.9}),
                     Trial(status="TERMINATED", last_result={metric: 0.99}),  # killed: its value is partial
                     Trial(status="RUNNING", last_result={})])
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"search: 1/5 done, 1 running, 0 failed, 1 stopped; best {metric} 0.9000"]


@pytest.mark.parametrize("val_size", [0.999, 0.6, 1400])
def test_holding_out_most_of_the_data_is_refused(tmp_path, cli, val_size):
    """digits has 1437 training samples: holding out more than half for validation is a mistake."""
    proc = cli("train", str(write_yaml(tmp_path / "p.yaml", tiny_policy(task={"val_size": val_size}))), "--quiet")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "task.val_size" in proc.stderr and "more than half" in proc.stderr


def test_outputs_write_through_links_and_devices(tmp_path, cli):
    """--json /dev/null must not replace the device (it once did, as root); a link's target is
    written, the link stays; files get 0666 less the umask, not 0600."""
    import os
    import stat

    policy = write_yaml(tmp_path / "p.yaml", tiny_policy(budget={"samples": 1000}))
    fifo_free_device = "/dev/null"
    proc = cli("train", str(policy), "--quiet", "--json", fifo_free_device)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.stat(fifo_free_device).st_mode)
    target = tmp_path / "real.json"
    (tmp_path / "link.json").symlink_to(target)
    proc = cli("train", str(policy), "--quiet", "--json", str(tmp_path / "link.json"))
    assert proc.returncode == 0 and (tmp_path / "link.json").is_symlink() and target.is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_a_space_name_never_leaves_the_storage_path(tmp_path):
    """The default sweep name comes from the space's `name`, which may hold '/', '..' or spaces."""
    from tunebudget.sweep import SweepOptions, make_plan

    for name in ("../../escape", "/tmp/abs_escape", "my sweep é", "x" * 300):
        data = copy.deepcopy(DIGITS)
        data["name"] = name
        plan = make_plan(load_space(write_yaml(tmp_path / "s.yaml", data)), SweepOptions(storage_path=str(tmp_path)))
        assert plan.root.parent == tmp_path and " " not in plan.name and len(plan.name) < 128, plan.name


def test_corrupt_sweep_state_and_a_running_sweep_are_one_line(tmp_path, cli, monkeypatch):
    from tunebudget.errors import TuneBudgetError
    from tunebudget.sweep.resume import sweep_lock

    monkeypatch.chdir(tmp_path)
    space = str(ROOT / "search_spaces/digits_mlp.yaml")
    for content in ("{not json", "[]"):
        (tmp_path / "ray_results" / "broken").mkdir(parents=True, exist_ok=True)
        (tmp_path / "ray_results" / "broken" / "tunebudget_sweep.json").write_text(content)
        proc = cli("sweep", space, "--resume", "--name", "broken")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "start a new" in proc.stderr, proc.stderr
    with sweep_lock(tmp_path / "ray_results" / "busy"):  # another sweep of that name holds it
        with pytest.raises(TuneBudgetError, match="a sweep of that name is running now"):
            with sweep_lock(tmp_path / "ray_results" / "busy"):
                pass


@pytest.mark.parametrize("argv, fragment", [([], "required: COMMAND"), (["bogus"], "invalid choice"),
                                            (["train", "x.yaml", "--budget", "abc"], "invalid float value"),
                                            (["train", "x.yaml", "--json", ""], "--json: empty"),
                                            (["ui", "--host", "bogus.invalid", "--port", "5999"], "--host bogus.invalid")])
def test_command_line_errors_are_one_line(tmp_path, argv, fragment):
    from conftest import run_cli

    (tmp_path / "x.yaml").write_text(yaml.safe_dump(tiny_policy()))
    proc = run_cli(*argv, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
    assert not (tmp_path / "mlflow").exists()


def test_verbose_after_the_command_and_a_closed_stdout(tmp_path):
    import subprocess
    import sys

    from conftest import run_cli

    policy = write_yaml(tmp_path / "p.yaml", tiny_policy(budget={"samples": 1000}))
    proc = run_cli("train", "-v", str(policy), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # `tunebudget train ... | head -0`: the reader is gone before the summary is printed
    reader_gone = subprocess.run(f"{sys.executable} -m tunebudget train {policy} --quiet | true", shell=True,
                                 cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in reader_gone.stderr and "BrokenPipe" not in reader_gone.stderr, reader_gone.stderr


def test_yaml_merge_keys_may_override(tmp_path):
    text = ("defaults: &d {lr: 0.1, batch_size: 64}\n" + yaml.safe_dump(tiny_policy()).replace(
        "training:\n  batch_size: 64\n  lr: 0.1\n", "training:\n  <<: *d\n  lr: 0.2\n"))
    assert "<<: *d" in text
    data = yaml.safe_load(text)
    data.pop("defaults")
    from tunebudget.policy import load_yaml_text

    parsed = load_yaml_text(text)
    assert parsed["training"] == {"lr": 0.2, "batch_size": 64}


def test_the_repository_tracks_no_generated_files():
    """A fresh clone must not bring MLflow or Ray output with it (mlruns/ once did, 40 files)."""
    import shutil
    import subprocess

    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "mlruns", "ray_results", "mlflow"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked == ["mlflow/README.md"], tracked
