"""A user's own model (``task.model: package.module:factory``): every way it can be wrong is one
line and exit 2, checked with one forward pass before the clock starts; a right one trains."""

from __future__ import annotations

import pytest

from conftest import tiny_policy, write_yaml

pytestmark = pytest.mark.filterwarnings("ignore")

MODULE = "tb_own_models"  # a unique name: a module stays in sys.modules once imported

FACTORIES = '''
"""Model factories for tests/test_user_model.py."""
from torch import nn


def good(input_shape, num_outputs, hidden=32):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))


def too_many_outputs(input_shape, num_outputs):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], num_outputs + 2))


def wrong_input(input_shape, num_outputs):
    return nn.Linear(7, num_outputs)


def raises(input_shape, num_outputs):
    raise RuntimeError("out of ideas")


def no_arguments():
    return nn.Linear(64, 10)


def no_parameters(input_shape, num_outputs):
    return nn.Flatten()


def not_a_module(input_shape, num_outputs):
    return "a string"


class TupleOut(nn.Module):
    def __init__(self, input_shape, num_outputs):
        super().__init__()
        self.fc = nn.Linear(input_shape[-1], num_outputs)

    def forward(self, x):
        return self.fc(x), x
'''


@pytest.fixture
def models_on_path(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(FACTORIES)
    (tmp_path / "tb_raises_on_import.py").write_text("raise ImportError('needs a GPU library')\n")
    (tmp_path / "tb_syntax_error.py").write_text("def broken(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def train(cli, tmp_path, model: str, **options):
    policy = tiny_policy(task={"model": model, "model_options": options})
    return cli("train", str(write_yaml(tmp_path / "p.yaml", policy)), "--quiet")


def test_a_good_factory_trains(cli, models_on_path):
    proc = train(cli, models_on_path, f"{MODULE}:good", hidden=16)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("spec, fragment", [
    (f"{MODULE}:too_many_outputs", "gives outputs of shape (2, 12) for a batch of 2; the task needs (2, 10)"),
    (f"{MODULE}:TupleOut", "gives a tuple"),
    (f"{MODULE}:wrong_input", "forward pass on inputs of shape (2, 64) raised RuntimeError"),
    (f"{MODULE}:raises", "raised RuntimeError: out of ideas; fix the factory"),
    (f"{MODULE}:no_arguments", "cannot be called as factory(input_shape, num_outputs"),
    (f"{MODULE}:not_a_module", "returned str, not a torch.nn.Module"),
    (f"{MODULE}:no_parameters", "with no trainable parameters"),
    (f"{MODULE}:", "has no attribute ''"),
    (f"{MODULE}:missing", "has no attribute 'missing'"),
    ("tb_raises_on_import:f", "importing tb_raises_on_import raised ImportError: needs a GPU library"),
    ("tb_syntax_error:f", "importing tb_syntax_error raised SyntaxError"),
    ("tb_no_such_module:f", "make the module importable"),
])
def test_a_wrong_factory_is_one_line(cli, models_on_path, spec, fragment):
    proc = train(cli, models_on_path, spec)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("tunebudget: error: task.model"), proc.stderr
    assert fragment in proc.stderr, proc.stderr


def test_sweeps_catch_a_missing_module_before_and_a_broken_factory_in_one_line(models_on_path):
    """A module no worker can import is refused at preflight (nothing written); a factory that fails
    in every trial ends the sweep with its one-line message and a FAILED (not RUNNING) parent run."""
    import os

    import yaml
    from mlflow.tracking import MlflowClient

    from conftest import ROOT, run_cli
    from test_bad_input import assert_clean_failure

    tmp = models_on_path
    space = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    space["budget"] = {"seconds": None, "samples": 2000, "eval_every": 0.5}
    space["task"]["model"] = "tb_no_such_module:f"
    space["task"].pop("model_options", None)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("sweep", str(write_yaml(tmp / "s.yaml", space)), "--trials", "1", cwd=tmp, env=env)
    assert_clean_failure(proc, tmp, "task.model: cannot import 'tb_no_such_module:f'", "PYTHONPATH")

    space["task"]["model"] = f"{MODULE}:raises"
    proc = run_cli("sweep", str(write_yaml(tmp / "s.yaml", space)), "--trials", "1", "--confirm-seeds", "0",
                   "--quiet", cwd=tmp, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "every trial failed: task.model:" in proc.stderr and "out of ideas" in proc.stderr
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits_mlp")
    parents = client.search_runs([exp.experiment_id], "tags.tunebudget_role = 'sweep'")
    assert [p.info.status for p in parents] == ["FAILED"]


# ---- property-based: whatever a factory builds, the trainer either trains it or says why in one line

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SHAPES = st.lists(st.integers(0, 12), min_size=0, max_size=3)
_RETURNS = st.one_of(
    st.just("None"), st.integers(-3, 3).map(str), st.text("ab", max_size=3).map(repr),
    st.tuples(st.integers(0, 70), st.integers(0, 12)).map(lambda t: f"nn.Linear({t[0]}, {t[1]})"),
    st.tuples(st.integers(0, 70), st.integers(0, 12)).map(
        lambda t: f"nn.Sequential(nn.Flatten(), nn.Linear({t[0]}, {t[1]}))"),
    _SHAPES.map(lambda s: f"Const({tuple(s)!r})"),
    st.just("nn.Identity()"), st.just("nn.Flatten()"),
)
_PARAMS = st.sampled_from(["", "input_shape", "input_shape, num_outputs", "input_shape, num_outputs, extra",
                           "*args", "input_shape, num_outputs, **kw"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=_PARAMS, body=_RETURNS, raises=st.booleans())
def test_any_factory_trains_or_is_one_line(tmp_path_factory, params, body, raises):
    import importlib
    import sys

    from tunebudget.errors import TuneBudgetError
    from tunebudget.policy import policy_from_dict
    from tunebudget.trainer import BudgetTrainer

    tmp = tmp_path_factory.mktemp("fuzz")
    name = f"tb_fuzz_{tmp.name.replace('-', '_')}"
    (tmp / f"{name}.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Const(nn.Module):\n    def __init__(self, shape):\n        super().__init__()\n"
        "        self.shape = shape\n        self.w = nn.Parameter(torch.zeros(1))\n"
        "    def forward(self, x):\n        return torch.zeros(self.shape) + self.w\n\n"
        f"def make({params}):\n" + ("    raise ValueError('no')\n" if raises else f"    return {body}\n"))
    sys.path.insert(0, str(tmp))
    try:
        importlib.invalidate_caches()
        policy = policy_from_dict(tiny_policy(task={"model": f"{name}:make", "model_options": {}},
                                              budget={"samples": 640}))
        try:
            result = BudgetTrainer(policy, device="cpu").run()
        except TuneBudgetError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("task.model"), str(exc)
        else:
            assert result.status in ("completed", "diverged")
    finally:
        sys.path.remove(str(tmp))


@pytest.mark.parametrize("hidden, fragment", [([-1], "task.model_options.hidden"), ("abc", "list of layer widths"),
                                              (5, "list of layer widths"), ([10**9], "from 1 to 65536"),
                                              ([0], "from 1 to 65536"), ([1.5], "whole numbers")])
def test_built_in_model_widths_are_checked(cli, tmp_path, hidden, fragment):
    proc = cli("train", str(write_yaml(tmp_path / "p.yaml", tiny_policy(task={"model_options": {"hidden": hidden}}))),
               "--quiet")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr


def test_user_code_that_exits_is_one_line(cli, models_on_path):
    (models_on_path / "tb_exits.py").write_text(
        "import sys\nfrom torch import nn\n\ndef quits(input_shape, num_outputs):\n    sys.exit(3)\n")
    (models_on_path / "tb_exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    for spec, fragment in (("tb_exits:quits", "raised SystemExit: 3"), ("tb_exits_on_import:f", "SystemExit")):
        proc = train(cli, models_on_path, spec)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
