"""Data that is not what it claims: every case is one line and exit 2, never a traceback or a
classifier trained on one class. The files are built here, small, in the real formats."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_policy, write_yaml

FILES = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
         "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz"}


def idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape) + \
        array.astype(np.uint8).tobytes()


def fashion_dir(tmp, mutate=None):
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 255, (300, 28, 28)), "train_y": rng.integers(0, 10, 300),
              "test_x": rng.integers(0, 255, (50, 28, 28)), "test_y": rng.integers(0, 10, 50)}
    blobs = {k: gzip.compress(idx(a)) for k, a in arrays.items()}
    if mutate:
        mutate(blobs, arrays)
    root = tmp / "fm"
    root.mkdir()
    for key, blob in blobs.items():
        (root / FILES[key]).write_bytes(blob)
    return root


def train(cli, tmp, task):
    policy = tiny_policy(task={"model": "mlp", "val_size": 60, **task})
    policy["task"].pop("model_options")
    return cli("train", str(write_yaml(tmp / "p.yaml", policy)), "--quiet")


def test_small_valid_idx_files_train(cli, tmp_path):
    proc = train(cli, tmp_path, {"dataset": "fashion_mnist", "root": str(fashion_dir(tmp_path))})
    assert proc.returncode == 0, proc.stderr


IDX_CASES = {
    "not gzip": (lambda b, a: b.__setitem__("train_x", idx(a["train_x"])), "not a readable gzip file"),
    "truncated": (lambda b, a: b.__setitem__("train_x", gzip.compress(idx(a["train_x"])[:-1000])), "truncated"),
    "cut gzip stream": (lambda b, a: b.__setitem__("test_y", b["test_y"][:-12]), "not a readable gzip file"),
    "wrong header": (lambda b, a: b.__setitem__("train_y", gzip.compress(b"\x00\x00\x0d\x01" + idx(a["train_y"])[4:])),
                     "not an IDX file"),
    "images as labels": (lambda b, a: b.__setitem__("test_y", b["test_x"]), "not an IDX file of 1-dimensional"),
    "empty file": (lambda b, a: b.__setitem__("test_x", b""), "not an IDX file"),
    "counts differ": (lambda b, a: b.__setitem__("train_y", gzip.compress(idx(a["train_y"][:299]))),
                      "differ in count"),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_broken_idx_files_are_one_line(cli, tmp_path, case):
    mutate, fragment = IDX_CASES[case]
    proc = train(cli, tmp_path, {"dataset": "fashion_mnist", "root": str(fashion_dir(tmp_path, mutate))})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr


def image_folder(tmp, classes=("cat", "dog"), per_class=12, broken=None):
    root = tmp / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir()
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    if broken:
        (root / classes[0] / "broken.png").write_bytes(broken)
    return root


@pytest.mark.parametrize("build, fragment", [
    (lambda tmp: image_folder(tmp, classes=()), "holds no images in class folders"),
    (lambda tmp: image_folder(tmp, per_class=0), "holds no images in class folders"),
    (lambda tmp: image_folder(tmp, classes=("only",)), "holds one class folder"),
    (lambda tmp: image_folder(tmp, broken=b"not a png at all"), "is not a readable image"),
    (lambda tmp: image_folder(tmp, broken=b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), "is not a readable image"),
])
def test_broken_image_folders_are_one_line(cli, tmp_path, build, fragment):
    proc = train(cli, tmp_path, {"dataset": "imagefolder", "root": str(build(tmp_path))})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr


def test_a_good_image_folder_trains(cli, tmp_path):
    proc = train(cli, tmp_path, {"dataset": "imagefolder", "root": str(image_folder(tmp_path)), "val_size": 4})
    assert proc.returncode == 0, proc.stderr


# ---- property-based: whatever lies under a data root, loading it trains or is one line -------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PNG = st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from(["RGB", "L", "RGBA"]))


def _png(spec) -> bytes:
    import io

    w, h, mode = spec
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG")
    return buf.getvalue()


_CONTENT = st.one_of(st.binary(max_size=64), _PNG.map(_png), _PNG.map(lambda s: _png(s)[:30]))
_TREE = st.dictionaries(st.sampled_from(["a", "b", "c", ".hidden", "a b"]),
                        st.dictionaries(st.sampled_from(["1.png", "2.png", "3.jpg", "x.txt", "4.PNG"]), _CONTENT,
                                        max_size=4), max_size=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_TREE)
def test_any_image_folder_loads_or_is_one_line(tmp_path_factory, tree):
    from tunebudget.data import load_data
    from tunebudget.errors import TuneBudgetError
    from tunebudget.policy import policy_from_dict

    root = tmp_path_factory.mktemp("root")
    for folder, files in tree.items():
        (root / folder).mkdir()
        for name, blob in files.items():
            (root / folder / name).write_bytes(blob)
    policy = policy_from_dict(tiny_policy(task={"dataset": "imagefolder", "root": str(root), "val_size": 1}))
    try:
        bundle = load_data(policy.task, 0)
    except TuneBudgetError as exc:
        assert "\n" not in str(exc), str(exc)
    else:
        assert bundle.num_outputs >= 2 and len(bundle.train) >= 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(list(FILES)), cut=st.integers(0, 2000), junk=st.binary(max_size=16),
       gz=st.booleans())
def test_any_corruption_of_idx_files_is_one_line(tmp_path_factory, which, cut, junk, gz):
    from tunebudget.data import load_data
    from tunebudget.errors import TuneBudgetError
    from tunebudget.policy import policy_from_dict

    def mutate(blobs, arrays):
        raw = idx(np.asarray(arrays[which]))
        raw = junk + raw[len(junk) + cut:] if cut else raw[: max(0, len(raw) - len(junk))] + junk
        blobs[which] = gzip.compress(raw) if gz else raw

    root = fashion_dir(tmp_path_factory.mktemp("fm"), mutate)
    policy = policy_from_dict(tiny_policy(task={"dataset": "fashion_mnist", "root": str(root), "val_size": 60}))
    try:
        load_data(policy.task, 0)
    except TuneBudgetError as exc:
        assert "\n" not in str(exc), str(exc)
