"""``tunebudget cluster render {rayjob, slurm, ray-up}``: a ready file that runs a sweep on a cluster.

The three ways Ray users run clusters: KubeRay's ``RayJob`` (the cluster is created for the sweep and
torn down after it), a Slurm batch script (Ray's ``ray start --head`` / ``srun ray start --address``
pattern, or ``ray symmetric-run``), and the cluster launcher's YAML (``ray up``). Every file pins the
versions installed here (``ray.__version__``, tunebudget's own), starts with a comment saying how to
submit it, and runs the sweep with ``--resume-or-start`` so a retry (RayJob ``backoffLimit``, a Slurm
requeue, the same command again) continues the same sweep instead of starting another.

Everything is checked before anything is written: bad input is one line naming the flag (exit 2).
YAML is written with PyYAML from plain data, the Slurm script from a list of quoted lines.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from tunebudget.errors import TuneBudgetError
from tunebudget.store import is_uri

TARGETS = ("rayjob", "slurm", "ray-up")
#: Where the RayJob mounts the space file (a ConfigMap) and the ReadWriteMany volume.
SPACE_DIR = "/etc/tunebudget"
PVC_MOUNT = "/mnt/tunebudget"
#: The RayJob's name becomes the RayCluster's and its pods' prefixes: KubeRay allows at most 47 characters.
MAX_RAYJOB_NAME = 47
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
#: Tracking stores every node (and a retried head pod) reaches: a server, or a database server.
_SERVER_SCHEMES = ("http", "https", "databricks", "postgresql", "mysql", "mssql")
_OBJECT_STORES = ("s3", "gs", "gcs", "abfs", "az")
#: Sweep flags a rendered file sets itself.
_RENDER_OWN = {"address": "the cluster's address is the rendered file's to give",
               "resume": "the rendered file always runs with --resume-or-start",
               "quiet": "the rendered file always runs with --quiet (job logs are not a terminal)"}


def versions() -> dict[str, str]:
    """What the rendered files pin: Ray, Python (major.minor) and tunebudget, as installed here."""
    import ray

    from tunebudget.version import __version__

    return {"ray": ray.__version__, "python": f"{sys.version_info.major}{sys.version_info.minor}",
            "tunebudget": __version__}


def ray_image(gpu: bool) -> str:
    """``rayproject/ray:<ray>-py<xy>[-gpu]``, the image tag equal to the installed Ray."""
    v = versions()
    return f"rayproject/ray:{v['ray']}-py{v['python']}{'-gpu' if gpu else ''}"


@dataclass
class Rendered:
    """What ``render`` writes: the file's text, and a Containerfile's when one was asked for."""
    text: str
    containerfile: Optional[str] = None


# ---- the sweep's command line ------------------------------------------------------------------

def sweep_command(space_path: str, opts: Any, overrides: dict[str, Optional[str]]) -> list[str]:
    """``tunebudget sweep SPACE`` with the options given, ``overrides`` over them (None drops a flag),
    then ``--resume-or-start --quiet``."""
    from tunebudget.options import SweepOptions

    argv = ["tunebudget", "sweep", space_path]
    values: dict[str, Optional[str]] = {}
    for f in fields(SweepOptions):
        if f.name in _RENDER_OWN or f.metadata.get("action") == "store_true":
            continue
        value = getattr(opts, f.name, None)
        if value is not None:
            values[f.metadata["flag"]] = f"{value:g}" if isinstance(value, float) else str(value)
    values.update(overrides)
    for flag, value in values.items():
        if value is not None:
            argv += [flag, value]
    return argv + ["--resume-or-start", "--quiet"]


def _sh_join(argv: list[str]) -> str:
    """shlex.join, but a leading ``~/`` stays unquoted: the remote shell expands it to the home directory."""
    return " ".join("~/" + shlex.quote(a[2:]) if a.startswith("~/") else shlex.quote(a) for a in argv)


def _tracking_for_multinode(uri: Optional[str], why: str) -> str:
    """The MLflow URI of a sweep whose driver is on a node that does not last (or is not the submitter's)."""
    if not uri:
        raise TuneBudgetError(f"--tracking-uri: required for {why}; give the MLflow server's URI, "
                              "e.g. --tracking-uri http://mlflow.example:5000")
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) else ""
    if scheme not in _SERVER_SCHEMES:
        raise TuneBudgetError(f"--tracking-uri {uri}: {why} needs an MLflow server (http://HOST:5000) or a database "
                              "server URI; a sqlite or file store lives on one node's disk, which the other nodes "
                              "and a retried head do not see")
    return uri


def _check_sweep_flags(args: Any, space: Any) -> Any:
    """The sweep flags, checked as ``tunebudget sweep`` checks them; the SweepOptions."""
    from tunebudget.options import SweepOptions, flag_of, merged_sweep

    opts = SweepOptions.from_args(args)
    for name, why in _RENDER_OWN.items():
        if getattr(opts, name, None) not in (None, False):
            raise TuneBudgetError(f"{flag_of(name)}: not for render: {why}; leave it out")
    if not opts.name:
        raise TuneBudgetError("--name: required: a retry must find the same sweep by its name; e.g. --name lr-sweep-1")
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", opts.name):
        raise TuneBudgetError(f"--name {opts.name[:60]!r}: use letters, digits, '.', '_' and '-' (no '/', spaces or "
                              "leading dot), e.g. --name lr-sweep-1")
    for flag, value in (("--budget", opts.budget), ("--cpus-per-trial", opts.cpus_per_trial),
                        ("--search-time", opts.search_seconds)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise TuneBudgetError(f"{flag}: must be > 0 (got {value})")
    if opts.gpus_per_trial is not None and not (opts.gpus_per_trial >= 0 and math.isfinite(opts.gpus_per_trial)):
        raise TuneBudgetError(f"--gpus-per-trial: must be >= 0 (got {opts.gpus_per_trial})")
    merged_sweep(space, opts)  # bounds of --trials, --eta, ...: one line naming the flag
    return opts


def _per_trial(opts: Any, space: Any) -> tuple[float, float]:
    cpu = opts.cpus_per_trial if opts.cpus_per_trial is not None else float(space.sweep.resources.get("cpu", 1))
    gpu = opts.gpus_per_trial if opts.gpus_per_trial is not None else float(space.sweep.resources.get("gpu", 0))
    return float(cpu), float(gpu)


def _node_gpus(args: Any, gpu_per_trial: float) -> int:
    """GPUs per worker node: --gpus-per-node, else enough for one trial when trials ask for GPUs."""
    given = args.gpus_per_node
    if given is None:
        return math.ceil(gpu_per_trial) if gpu_per_trial > 0 else 0
    if given < 0:
        raise TuneBudgetError(f"--gpus-per-node: must be >= 0 (got {given})")
    if gpu_per_trial > given:
        raise TuneBudgetError(f"--gpus-per-node {given}: a trial asks for {gpu_per_trial:g} GPUs (--gpus-per-trial or "
                              f"the space's sweep.resources.gpu); give --gpus-per-node {math.ceil(gpu_per_trial)} or more")
    return given


def _check_count(flag: str, value: int, least: int) -> None:
    if value < least:
        raise TuneBudgetError(f"{flag}: must be at least {least} (got {value})")


def _head_comment(lines: list[str]) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


class _Dumper(yaml.SafeDumper):
    """No anchors or aliases (a shared dict is written out each time, as kubectl users read it); text
    of several lines as a literal block."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, data: str) -> Any:
    style = "|" if "\n" in data.rstrip("\n") or data.endswith("\n") and "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _text)


def _dump(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def _containerfile(gpu: bool, package: str) -> str:
    return (f"# Build and push: docker build -f Containerfile -t IMAGE . && docker push IMAGE  (podman works too)\n"
            f"# Ray {versions()['ray']} with tunebudget installed; the RayJob's --image names it.\n"
            f"FROM {ray_image(gpu)}\n"
            f"RUN pip install --no-cache-dir {shlex.quote(package)}\n")


# ---- RayJob (KubeRay) --------------------------------------------------------------------------

def _check_rayjob_names(args: Any, name: str) -> None:
    """--name and --namespace: Kubernetes names (the RayJob's at most MAX_RAYJOB_NAME characters)."""
    if len(name) > MAX_RAYJOB_NAME or not _DNS_LABEL.fullmatch(name):
        raise TuneBudgetError(f"--name {name[:60]!r}: a RayJob's name is a Kubernetes name of at most "
                              f"{MAX_RAYJOB_NAME} characters: lower-case letters, digits and '-', e.g. --name lr-sweep-1")
    if not _DNS_LABEL.fullmatch(args.namespace or ""):
        raise TuneBudgetError(f"--namespace {args.namespace!r}: a Kubernetes namespace is lower-case letters, digits "
                              "and '-'")


def _rayjob_storage(args: Any, opts: Any) -> tuple[str, str]:
    """The sweep's storage path and Optuna storage, both reached by every pod and a retried head."""
    storage = opts.storage_path
    if storage and not re.match(rf"^({'|'.join(_OBJECT_STORES)})://[^/]", storage):
        raise TuneBudgetError(f"--storage-path {storage}: a RayJob's storage is an object store URI (s3://bucket/prefix, "
                              f"gs://...) or, with --pvc NAME, a ReadWriteMany volume mounted at {PVC_MOUNT}; "
                              "leave --storage-path out to use the volume")
    if not storage and not args.pvc:
        raise TuneBudgetError("--storage-path/--pvc: a RayJob needs storage every pod sees: --pvc NAME (a ReadWriteMany "
                              "volume) or --storage-path s3://bucket/prefix")
    if args.pvc and not _DNS_LABEL.fullmatch(args.pvc):
        raise TuneBudgetError(f"--pvc {args.pvc!r}: a volume claim's name is lower-case letters, digits and '-'")
    optuna = opts.optuna_storage
    if not optuna:
        if not args.pvc:
            raise TuneBudgetError("--optuna-storage: with object-store storage and no --pvc the Optuna study needs a "
                                  "database server (e.g. --optuna-storage postgresql://USER@HOST/optuna) that a retried "
                                  "head reaches, or add --pvc NAME for a sqlite file on the volume")
        optuna = f"sqlite:///{PVC_MOUNT}/optuna.db"
    elif optuna.startswith("sqlite:") and not (args.pvc and optuna.startswith(f"sqlite:///{PVC_MOUNT}/")):
        raise TuneBudgetError(f"--optuna-storage {optuna}: a sqlite study must be on the volume (--pvc NAME, "
                              f"sqlite:///{PVC_MOUNT}/optuna.db) or the retried head loses it; or give a database server")
    return storage or f"{PVC_MOUNT}/ray_results", optuna


def _check_cpus_per_node(args: Any, cpu_per_trial: float) -> None:
    """--cpus-per-node holds one trial's CPUs."""
    if args.cpus_per_node < cpu_per_trial:
        raise TuneBudgetError(f"--cpus-per-node {args.cpus_per_node}: a trial asks for {cpu_per_trial:g} CPUs; give "
                              f"--cpus-per-node {math.ceil(cpu_per_trial)} or more")


def _rayjob_worker_gpus(args: Any, space: Any, opts: Any) -> int:
    """--workers, --cpus-per-node and --containerfile checked; the GPUs of each worker pod."""
    _check_count("--workers", args.workers, 1)
    cpu, gpu = _per_trial(opts, space)
    node_gpus = _node_gpus(args, gpu)
    _check_cpus_per_node(args, cpu)
    _check_count("--cpus-per-node", args.cpus_per_node, 1)
    if args.containerfile and not args.image:
        raise TuneBudgetError("--containerfile: give --image REGISTRY/NAME:TAG too, the image you will build from it "
                              "and push (the manifest runs it)")
    return node_gpus


def _runtime_env(args: Any) -> dict[str, Any]:
    """The job's runtime env: tunebudget pip-installed unless the image has it (--image, --containerfile)."""
    runtime_env: dict[str, Any] = {"env_vars": {"RAY_AIR_NEW_OUTPUT": "0"}}
    if not args.containerfile and not args.image:
        runtime_env = {"pip": [args.package], **runtime_env}
    return runtime_env


@dataclass
class _Pods:
    """What the head and worker pods share: the image, the volumes and their mounts, the Secret's env."""
    image: str
    mounts: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    env_from: list[dict[str, Any]]

    @classmethod
    def of(cls, args: Any, name: str, node_gpus: int) -> "_Pods":
        """The space's ConfigMap (head only), the --pvc volume (every pod) and --env-secret."""
        mounts = [{"name": "space", "mountPath": SPACE_DIR, "readOnly": True}]
        volumes: list[dict[str, Any]] = [{"name": "space", "configMap": {"name": f"{name}-space"}}]
        if args.pvc:
            mounts.append({"name": "storage", "mountPath": PVC_MOUNT})
            volumes.append({"name": "storage", "persistentVolumeClaim": {"claimName": args.pvc}})
        env_from = [{"secretRef": {"name": args.env_secret}}] if args.env_secret else []
        return cls(args.image or ray_image(node_gpus > 0), mounts, volumes, env_from)

    def container(self, role: str, cpus: int, memory: str, gpus: int, head: bool) -> dict[str, Any]:
        """One Ray container: limits = requests; the head's has the space mounted and Ray's ports."""
        limits: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
        if gpus:
            limits["nvidia.com/gpu"] = gpus
        c: dict[str, Any] = {"name": role, "image": self.image, "resources": {"limits": limits, "requests": dict(limits)},
                             "volumeMounts": self.mounts if head else [m for m in self.mounts if m["name"] != "space"]}
        if head:
            c["ports"] = [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                          {"containerPort": 10001, "name": "client"}]
        if self.env_from:
            c["envFrom"] = self.env_from
        return c

    def head_pod(self, args: Any) -> dict[str, Any]:
        """The head pod's spec: one CPU for the sweep's driver, every volume."""
        return {"containers": [self.container("ray-head", 1, args.head_memory, 0, True)], "volumes": self.volumes}

    def worker_pod(self, args: Any, node_gpus: int) -> dict[str, Any]:
        """A worker pod's spec: the trials' CPUs and GPUs (tolerating GPU taints), the volume but not the space."""
        pod: dict[str, Any] = {"containers": [self.container("ray-worker", args.cpus_per_node, args.memory_per_node,
                                                             node_gpus, False)],
                               "volumes": [v_ for v_ in self.volumes if v_["name"] != "space"]}
        if node_gpus:
            pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        if not pod["volumes"]:
            del pod["volumes"]
        return pod


def _rayjob_doc(args: Any, name: str, command: list[str], pods: _Pods, node_gpus: int,
                labels: dict[str, str]) -> dict[str, Any]:
    """The RayJob: the sweep as entrypoint on a cluster made for it (head + --workers), torn down after."""
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": name, "namespace": args.namespace, "labels": labels},
        "spec": {
            "entrypoint": shlex.join(command),
            "runtimeEnvYAML": yaml.safe_dump(_runtime_env(args), sort_keys=False),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": args.ttl,
            "backoffLimit": args.backoff_limit,
            "rayClusterSpec": {
                "rayVersion": versions()["ray"],
                "headGroupSpec": {
                    # the driver (the sweep) runs on the head; trials go to the workers
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"metadata": {"labels": labels}, "spec": pods.head_pod(args)},
                },
                "workerGroupSpecs": [{
                    "groupName": "workers", "replicas": args.workers, "minReplicas": args.workers,
                    "maxReplicas": args.workers, "rayStartParams": {},
                    "template": {"metadata": {"labels": labels}, "spec": pods.worker_pod(args, node_gpus)},
                }],
            },
        },
    }


def _rayjob_extras(args: Any, space: Any, name: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    """The documents before the RayJob: the space file's ConfigMap, and the --pvc volume claim."""
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": f"{name}-space", "namespace": args.namespace, "labels": labels},
                 "data": {"space.yaml": Path(space.path).read_text()}}
    docs = [configmap]
    if args.pvc:
        pvc: dict[str, Any] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                               "metadata": {"name": args.pvc, "namespace": args.namespace, "labels": labels},
                               "spec": {"accessModes": ["ReadWriteMany"],
                                        "resources": {"requests": {"storage": args.pvc_size}}}}
        if args.storage_class:
            pvc["spec"]["storageClassName"] = args.storage_class
        docs.append(pvc)
    return docs


def _rayjob_comment(args: Any, name: str, node_gpus: int) -> str:
    """The manifest's header: how to apply and watch it, what it is, what the cluster needs."""
    v = versions()
    built = f"; build --image from {args.containerfile} first" if args.containerfile else ""
    return _head_comment([
        f"Submit with: kubectl apply -f {args.output}{built}",
        f"then: kubectl get rayjob {name} -n {args.namespace} -w ; logs: kubectl logs -n {args.namespace} -l "
        f"job-name={name} -f",
        f"KubeRay RayJob (ray.io/v1) for sweep {name}, rendered by tunebudget {v['tunebudget']} for Ray {v['ray']}.",
        "A retry (backoffLimit) or a re-apply continues the same sweep (--resume-or-start). Needs the KubeRay",
        "operator" + (", a ReadWriteMany storage class" if args.pvc else "") +
        (" and the NVIDIA device plugin" if node_gpus else "") + ".",
    ])


def render_rayjob(args: Any, space: Any, opts: Any) -> Rendered:
    """A KubeRay RayJob manifest (ConfigMap, PVC, RayJob), and the Containerfile's text with --containerfile."""
    name = opts.name
    _check_rayjob_names(args, name)
    tracking = _tracking_for_multinode(opts.tracking_uri, "a RayJob (its head pod goes when the job ends)")
    storage_path, optuna = _rayjob_storage(args, opts)
    node_gpus = _rayjob_worker_gpus(args, space, opts)
    command = sweep_command(f"{SPACE_DIR}/space.yaml", opts, {"--storage-path": storage_path,
                                                              "--tracking-uri": tracking, "--optuna-storage": optuna})
    labels = {"app.kubernetes.io/name": "tunebudget", "app.kubernetes.io/instance": name}
    pods = _Pods.of(args, name, node_gpus)
    docs = _rayjob_extras(args, space, name, labels) + [_rayjob_doc(args, name, command, pods, node_gpus, labels)]
    cf = _containerfile(node_gpus > 0, args.package) if args.containerfile else None
    return Rendered(_rayjob_comment(args, name, node_gpus) + "---\n" + _dump(docs), cf)


# ---- Slurm ---------------------------------------------------------------------------------------

#: The ports a Ray node opens besides --port, each explicit so firewalls and shared nodes can plan for them.
_PORT_FLAGS = ("node-manager-port", "object-manager-port", "ray-client-server-port", "dashboard-agent-grpc-port",
               "dashboard-agent-listen-port", "metrics-export-port", "runtime-env-agent-port")


def _slurm_node_gpus(args: Any, space: Any, opts: Any) -> int:
    """--nodes and --cpus-per-node checked; the GPUs of each node."""
    _check_count("--nodes", args.nodes, 1)
    cpu, gpu = _per_trial(opts, space)
    _check_cpus_per_node(args, cpu)
    return _node_gpus(args, gpu)


def _slurm_tracking(args: Any, opts: Any) -> str:
    """The MLflow URI: a server for several nodes, else --tracking-uri or an absolute ./mlflow store."""
    tracking = opts.tracking_uri
    if args.nodes > 1:
        tracking = _tracking_for_multinode(tracking, f"a sweep on {args.nodes} nodes")
    elif not tracking:  # the sweep's own default, ./mlflow, made absolute: the step's directory may differ
        tracking = f"sqlite:///{Path.cwd() / 'mlflow' / 'mlflow.db'}"
    return tracking


def _check_slurm_ports_and_time(args: Any) -> None:
    """--port, --dashboard-port, --ports-from (its 1000 ports) and --time."""
    for flag, port in (("--port", args.port), ("--dashboard-port", args.dashboard_port), ("--ports-from", args.ports_from)):
        if not 1024 <= port <= 65535 - (1000 if flag == "--ports-from" else 0):
            raise TuneBudgetError(f"{flag} {port}: must be a port between 1024 and 65535 (--ports-from: its 1000 ports)")
    if args.time and not re.fullmatch(r"(\d+-)?\d+(:\d{2}){0,2}", args.time):
        raise TuneBudgetError(f"--time {args.time!r}: a Slurm time limit such as 4:00:00 or 1-00:00:00")


def _slurm_storage(opts: Any) -> str:
    """--storage-path (default ./ray_results), a local one made absolute."""
    storage = opts.storage_path or str(Path.cwd() / "ray_results")
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    return storage


def _slurm_header(args: Any, opts: Any, space_path: str, node_gpus: int) -> list[Optional[str]]:
    """The shebang, the comment on how to submit it, the #SBATCH lines (None where a flag is not given)."""
    v = versions()
    return ["#!/bin/bash",
            f"# Submit with: sbatch {args.output}",
            f"# Slurm batch script for sweep {opts.name}, rendered by tunebudget {v['tunebudget']} for Ray {v['ray']}"
            f" ({'ray symmetric-run' if args.symmetric_run else 'ray start --head / srun ray start --address'}).",
            f"# Every node needs Ray {v['ray']} and tunebudget {v['tunebudget']} on PATH (activate the environment",
            "# before sbatch: srun passes the environment on), and --storage-path on storage every node mounts;",
            f"# the head node reads the space file from {space_path}.",
            "# A requeue (scontrol requeue, preemption) continues the same sweep: --resume-or-start.",
            f"#SBATCH --job-name={opts.name}",
            f"#SBATCH --nodes={args.nodes}",
            "#SBATCH --ntasks-per-node=1",
            f"#SBATCH --cpus-per-task={args.cpus_per_node}",
            "#SBATCH --exclusive" if args.exclusive else None,
            f"#SBATCH --gpus-per-node={node_gpus}" if node_gpus else None,
            f"#SBATCH --partition={args.partition}" if args.partition else None,
            f"#SBATCH --time={args.time}" if args.time else None,
            f"#SBATCH --output={opts.name}-%j.out",
            "#SBATCH --requeue",
            "#SBATCH --open-mode=append"]


def _slurm_setup(args: Any) -> list[str]:
    """The ports, each node's `ray start` arguments, the allocation's nodes and the head's address."""
    p = args.ports_from
    ports = {flag: p + i for i, flag in enumerate(_PORT_FLAGS)}
    return ["set -euo pipefail",
            "",
            f"RAY_PORT={args.port}",
            f"DASHBOARD_PORT={args.dashboard_port}",
            f"WORKER_PORTS=({p + 100} {p + 999})",
            "# Slurm gives GPUs per node as N or TYPE:N; Ray wants the count",
            'GPUS="${SLURM_GPUS_PER_NODE:-0}"',
            'GPUS="${GPUS##*:}"',
            'CPUS="${SLURM_CPUS_PER_TASK:-1}"',
            "# a directory of this job's own: Ray's sockets and logs (kept short, under 108 bytes)",
            'RAY_TMP="/tmp/ray-${SLURM_JOB_ID}"',
            "NODE_ARGS=(--num-cpus \"$CPUS\" --num-gpus \"$GPUS\" --temp-dir \"$RAY_TMP\" --disable-usage-stats \\",
            f"  {' '.join(f'--{flag} {port}' for flag, port in ports.items())} \\",
            '  --min-worker-port "${WORKER_PORTS[0]}" --max-worker-port "${WORKER_PORTS[1]}")',
            "",
            'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
            'HEAD_NODE="${NODES[0]}"',
            'HEAD_IP="$(srun --nodes=1 --ntasks=1 --overlap -w "$HEAD_NODE" hostname --ip-address | awk \'{print $1}\')"',
            'ADDRESS="$HEAD_IP:$RAY_PORT"',
            'echo "Ray head: $HEAD_NODE ($ADDRESS), ${#NODES[@]} node(s), $CPUS CPUs and $GPUS GPUs each"',
            ]


def _slurm_symmetric(sweep_q: str) -> list[str]:
    """The ray symmetric-run form: one step starts Ray on every node and runs the sweep on the head's."""
    return ["# one task per node: each starts Ray, the head's runs the sweep, all stop when it ends",
            "srun --nodes=\"${#NODES[@]}\" --ntasks-per-node=1 ray symmetric-run --address \"$ADDRESS\" "
            "--min-nodes \"${#NODES[@]}\" --dashboard-port \"$DASHBOARD_PORT\" \"${NODE_ARGS[@]}\" -- \\",
            f"  {sweep_q} --address \"$ADDRESS\""]


def _slurm_start_nodes() -> list[str]:
    """The classic form's start: `ray start --head` on the head node, then `ray start --address` on the others."""
    return ["",
            "# Ray on every node, each as a step of its own in the background (srun passes SIGTERM on to",
            "# `ray start --block`, which then stops its node: no `ray stop`, which would stop every Ray of the",
            "# account on a shared node)",
            "STEPS=()",
            'srun --nodes=1 --ntasks=1 --overlap -w "$HEAD_NODE" ray start --head --block '
            '--node-ip-address="$HEAD_IP" --port="$RAY_PORT" \\',
            '  --dashboard-host=0.0.0.0 --dashboard-port="$DASHBOARD_PORT" "${NODE_ARGS[@]}" &',
            'STEPS+=("$!")',
            "for _ in $(seq 90); do  # the head answers within a few seconds; give it three minutes",
            '  if ray health-check --address "$ADDRESS" >/dev/null 2>&1; then break; fi',
            "  sleep 2",
            "done",
            'ray health-check --address "$ADDRESS"',
            'for node in "${NODES[@]:1}"; do',
            '  srun --nodes=1 --ntasks=1 --overlap -w "$node" ray start --block --address "$ADDRESS" '
            '"${NODE_ARGS[@]}" &',
            '  STEPS+=("$!")',
            "done"]


def _slurm_run_sweep(sweep_q: str) -> list[str]:
    """The classic form's end: wait for every node, run the sweep on the head node, stop the nodes' steps."""
    return ["# every node of the allocation in the cluster before the sweep plans its concurrency",
            'python3 - "$ADDRESS" "${#NODES[@]}" <<\'PY\'',
            "import sys, time",
            "import ray",
            'ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)',
            "deadline = time.time() + 300",
            'while (alive := sum(n["Alive"] for n in ray.nodes())) < int(sys.argv[2]):',
            "    if time.time() > deadline:",
            '        sys.exit(f"only {alive} of {sys.argv[2]} nodes joined the Ray cluster in 5 minutes")',
            "    time.sleep(2)",
            "PY",
            "",
            "# the sweep is the job's step, on the head node",
            'status=0',
            f'srun --nodes=1 --ntasks=1 --overlap -w "$HEAD_NODE" {sweep_q} --address "$ADDRESS" || status=$?',
            'kill -TERM "${STEPS[@]}" 2>/dev/null || true',
            'wait || true',
            'exit "$status"']


def render_slurm(args: Any, space: Any, opts: Any) -> Rendered:
    """An sbatch script: Ray on every node of the allocation, the sweep on the head node."""
    node_gpus = _slurm_node_gpus(args, space, opts)
    tracking = _slurm_tracking(args, opts)
    _check_slurm_ports_and_time(args)
    space_path = str(Path(space.path).resolve())
    sweep = sweep_command(space_path, opts, {"--storage-path": _slurm_storage(opts), "--tracking-uri": tracking})
    sweep_q = " ".join(shlex.quote(a) for a in sweep)
    lines = _slurm_header(args, opts, space_path, node_gpus) + _slurm_setup(args)
    if args.symmetric_run:
        lines += _slurm_symmetric(sweep_q)
    else:
        lines += _slurm_start_nodes() + _slurm_run_sweep(sweep_q)
    return Rendered("\n".join(line for line in lines if line is not None) + "\n")


# ---- ray up (the cluster launcher) --------------------------------------------------------------

def render_ray_up(args: Any, space: Any, opts: Any) -> Rendered:
    """A `ray up` cluster YAML (local provider), its header saying how to run the sweep with `ray exec`."""
    if not args.head_ip:
        raise TuneBudgetError("--head-ip: required: the address of the machine that becomes the head (ray up's local "
                              "provider), e.g. --head-ip 10.0.0.1")
    workers = [w.strip() for w in (args.worker_ips or "").split(",") if w.strip()]
    tracking = opts.tracking_uri
    storage = opts.storage_path
    if workers:
        tracking = _tracking_for_multinode(tracking, f"a sweep on {1 + len(workers)} machines")
        if not storage:
            raise TuneBudgetError("--storage-path: required with --worker-ips: a directory every machine mounts (NFS) "
                                  "or an object store URI (s3://bucket/prefix)")
    storage = storage or "~/ray_results"
    if not args.ssh_user:
        raise TuneBudgetError("--ssh-user: required: the account ray up logs in as on every machine")
    v = versions()
    remote_space = "~/tunebudget/space.yaml"
    sweep = sweep_command(remote_space, opts, {"--storage-path": storage, "--tracking-uri": tracking})
    pip = f"pip install -q 'ray[default]=={v['ray']}' {shlex.quote(args.package)}"
    config: dict[str, Any] = {
        "cluster_name": opts.name,
        "max_workers": len(workers),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "local", "head_ip": args.head_ip, "worker_ips": workers},
        "auth": {"ssh_user": args.ssh_user, **({"ssh_private_key": args.ssh_key} if args.ssh_key else {})},
        "file_mounts": {remote_space: str(Path(space.path).resolve())},
        "setup_commands": [pip],
        "head_start_ray_commands": ["ray stop",
                                    "ulimit -c unlimited && ray start --head --port=6379 "
                                    "--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=0.0.0.0"],
        "worker_start_ray_commands": ["ray stop", "ray start --address=$RAY_HEAD_IP:6379"],
    }
    ray_exec = f"ray exec {args.output} {shlex.quote(_sh_join(sweep))}"
    head = _head_comment([
        f"Submit with: ray up -y {args.output} && {ray_exec}",
        f"stop it with: ray down -y {args.output}. Ray cluster launcher YAML (local provider: machines you have,",
        f"reached over SSH) for sweep {opts.name}, rendered by tunebudget {v['tunebudget']} for Ray {v['ray']}.",
        "Running the ray exec line again continues the same sweep (--resume-or-start).",
    ])
    return Rendered(head + _dump([config]))


_RENDERERS = {"rayjob": render_rayjob, "slurm": render_slurm, "ray-up": render_ray_up}


def render(target: str, args: Any) -> Rendered:
    """Check everything and build the file's text (nothing is written here)."""
    from tunebudget.spaces import load_space

    space = load_space(args.space)
    opts = _check_sweep_flags(args, space)
    if not args.package.strip():
        raise TuneBudgetError("--package: empty; give a pip requirement such as tunebudget==0.1.0")
    return _RENDERERS[target](args, space, opts)


def write_rendered(target: str, args: Any) -> list[Path]:
    """Render, then write the file (and the Containerfile) whole, each through a temporary file."""
    from tunebudget.util import check_writable_dir, write_output

    out = Path(args.output)
    if out.is_dir():
        raise TuneBudgetError(f"-o {args.output}: is a directory; give a file path")
    check_writable_dir(out.resolve().parent, f"-o {args.output}")
    if getattr(args, "containerfile", None):
        cf = Path(args.containerfile)
        if cf.is_dir():
            raise TuneBudgetError(f"--containerfile {args.containerfile}: is a directory; give a file path")
        check_writable_dir(cf.resolve().parent, f"--containerfile {args.containerfile}")
    rendered = render(target, args)
    written = []
    if rendered.containerfile is not None:
        write_output(args.containerfile, rendered.containerfile, "--containerfile")
        written.append(Path(args.containerfile))
    write_output(args.output, rendered.text, "-o")
    written.append(out)
    if target == "slurm":
        out.chmod(out.stat().st_mode | 0o111)
    return written


def _add_rayjob_flags(p: Any) -> None:
    """The flags of ``cluster render rayjob``: namespace, pods, image, volume, Secret, retries."""
    p.add_argument("--namespace", default="default", help="Kubernetes namespace (default: default)")
    p.add_argument("--workers", type=int, default=1, help="worker pods (default 1)")
    p.add_argument("--memory-per-node", default="8Gi", help="memory of each worker pod (default 8Gi)")
    p.add_argument("--head-memory", default="4Gi", help="memory of the head pod, where the sweep's driver "
                   "runs (default 4Gi)")
    p.add_argument("--image", help="container image (default: rayproject/ray:<ray>-py<xy>[-gpu], tunebudget "
                   "pip-installed through the runtime env)")
    p.add_argument("--containerfile", metavar="FILE", help="also write a Containerfile that installs "
                   "tunebudget on the Ray image; build it as --image (then no pip install at run time)")
    p.add_argument("--pvc", metavar="NAME", help=f"a ReadWriteMany volume claim (rendered too) mounted at "
                   f"{PVC_MOUNT}: the storage path and the Optuna sqlite study")
    p.add_argument("--pvc-size", default="10Gi", help="the volume's size (default 10Gi)")
    p.add_argument("--storage-class", help="the volume's storage class (default: the cluster's default)")
    p.add_argument("--env-secret", metavar="SECRET", help="a Secret whose keys become environment variables "
                   "of every pod (object store and MLflow credentials)")
    p.add_argument("--ttl", type=_nonneg("--ttl"), default=3600, metavar="SECONDS",
                   help="seconds the finished job's cluster is kept (ttlSecondsAfterFinished; default 3600)")
    p.add_argument("--backoff-limit", type=_nonneg("--backoff-limit"), default=2,
                   help="retries of a failed job, each continuing the sweep (default 2)")


def _add_slurm_flags(p: Any) -> None:
    """The flags of ``cluster render slurm``: the allocation, Ray's ports, the symmetric-run form."""
    p.add_argument("--nodes", type=int, default=1, help="nodes of the allocation (default 1)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--time", help="time limit, e.g. 4:00:00")
    p.add_argument("--exclusive", action="store_true", help="whole nodes (#SBATCH --exclusive)")
    p.add_argument("--port", type=int, default=6379, help="the head's GCS port (default 6379)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="the dashboard's port (default 8265)")
    p.add_argument("--ports-from", type=int, default=20000, metavar="PORT",
                   help="every other Ray port is explicit, from this one up (PORT..PORT+6; workers "
                        "PORT+100..PORT+999; default 20000)")
    p.add_argument("--symmetric-run", action="store_true",
                   help="start the nodes and run the sweep with ray symmetric-run (Ray >= 2.49)")


def _add_ray_up_flags(p: Any) -> None:
    """The flags of ``cluster render ray-up``: the machines and the SSH login."""
    p.add_argument("--head-ip", help="the head machine's address")
    p.add_argument("--worker-ips", metavar="IP,IP", help="the worker machines, comma-separated")
    p.add_argument("--ssh-user", help="the SSH account on every machine")
    p.add_argument("--ssh-key", help="the SSH private key (default: ssh's own)")


_TARGET_HELP = {"rayjob": "KubeRay RayJob manifest (kubectl apply -f)", "slurm": "Slurm batch script (sbatch)",
                "ray-up": "Ray cluster launcher YAML, local provider (ray up)"}
_TARGET_FLAGS = {"rayjob": _add_rayjob_flags, "slurm": _add_slurm_flags, "ray-up": _add_ray_up_flags}


def _add_target(tsub: Any, target: str) -> None:
    """``cluster render TARGET``: the space, -o, --package, the node flags, the target's own, the sweep's."""
    from tunebudget.options import add_sweep_flags

    p = tsub.add_parser(target, help=_TARGET_HELP[target], description=_TARGET_HELP[target] + ".")
    p.add_argument("space", help="search-space YAML file")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--package", default=None, metavar="REQUIREMENT",
                   help="pip requirement that installs tunebudget on the nodes (default: tunebudget==<this "
                        "version>; a wheel URL or git+https://... works too)")
    if target != "ray-up":
        p.add_argument("--cpus-per-node", type=int, default=4, help="CPUs of each node (default 4)")
        p.add_argument("--gpus-per-node", type=int, default=None,
                       help="whole GPUs of each worker node (default: enough for one trial when trials ask for "
                            "GPUs)")
    _TARGET_FLAGS[target](p)
    add_sweep_flags(p.add_argument_group(
        "sweep options", "as tunebudget sweep's (--name required; --address, --resume and --quiet are the "
        "file's own: it runs the sweep with --resume-or-start --quiet)"))
    p.set_defaults(func=cmd_render, target=target)


def add_render_commands(sub: Any) -> None:
    """``cluster render {rayjob, slurm, ray-up}`` under the CLI's subcommands."""
    cluster = sub.add_parser("cluster", help="render a file that runs a sweep on a cluster (KubeRay, Slurm, ray up)",
                             description="Files for the clusters people have: a KubeRay RayJob, a Slurm batch script "
                                         "or a ray up cluster YAML, pinned to the Ray and tunebudget installed here.")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    render_p = csub.add_parser("render", help="write a RayJob manifest, an sbatch script or a ray up YAML",
                               description="Write a ready file for a sweep of SPACE: the sweep flags are tunebudget "
                                           "sweep's; the file runs it with --resume-or-start, so a retry continues it.")
    tsub = render_p.add_subparsers(dest="target", required=True, metavar="TARGET")
    for target in TARGETS:
        _add_target(tsub, target)


def _nonneg(flag: str):
    def parse(raw: str) -> int:
        import argparse

        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number (got {raw!r})") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
        return value

    parse.__name__ = flag
    return parse


def cmd_render(args: Any) -> int:
    if args.package is None:
        args.package = f"tunebudget=={versions()['tunebudget']}"
    for path in write_rendered(args.target, args):
        print(f"wrote {path}")
    return 0
