"""The options of ``tunebudget sweep``: one list, from which the command line's parser is generated
and over which the space's ``sweep`` section is updated and checked (by its own model, once).

Light on purpose (no Ray, no MLflow): the command line's parser is built from it on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional, get_args

from tunebudget.errors import TuneBudgetError
from tunebudget.spaces import SearchSpace, SweepSpec


def _opt(flag: str, kind: Any, help: str, spec: Optional[str] = None, **argparse_kw: Any) -> Any:
    """A command-line option: its flag, its argparse type, its help; ``spec``: the space's ``sweep``
    field it overrides (that field's bounds and choices are the option's: checked once, by the space's
    model)."""
    return field(default=None, metadata={"flag": flag, "type": kind, "help": help, "spec": spec, **argparse_kw})


def _switch(flag: str, help: str) -> Any:
    return field(default=False, metadata={"flag": flag, "action": "store_true", "help": help})


_FILE = "default: the file's sweep.{}, else {}"


@dataclass
class SweepOptions:
    """The command line's choices, in ``tunebudget sweep --help``'s order (the parser is generated
    from these fields: :func:`add_sweep_flags`); None means "take the space file's ``sweep``
    section". A new option of the space's ``sweep`` section is one field of
    :class:`~tunebudget.spaces.SweepSpec` (the sweep reads it as ``plan.sweep.<name>``); its flag, if
    it has one, one field here with its ``spec`` name."""

    trials: Optional[int] = _opt(
        "--trials", int, "searched trials, beyond the baselines (default: the file's sweep.trials); with --fidelity "
        "restart, the compute of that many full-budget trials, spent on as many configurations as it buys",
        spec="trials")
    budget: Optional[float] = _opt("--budget", float, "wall-clock training budget of each trial", metavar="SECONDS")
    concurrency: Optional[int] = _opt("--concurrency", int, "trials running at once", spec="concurrency")
    cpus_per_trial: Optional[float] = _opt("--cpus-per-trial", float, "CPUs per trial; torch threads follow it")
    gpus_per_trial: Optional[float] = _opt("--gpus-per-trial", float, "GPUs per trial, fractional to share one GPU")
    address: Optional[str] = _opt("--address", str, "join this Ray cluster (host:port); default: a local Ray, or "
                                  "$RAY_ADDRESS")
    tracking_uri: Optional[str] = _opt("--tracking-uri", str, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                       "else ./mlflow)")
    experiment: Optional[str] = _opt("--experiment", str, "MLflow experiment name (default: the space's name)")
    fidelity: Optional[str] = _opt(
        "--fidelity", str, "full: every trial runs the whole budget; restart: successive halving with the budget as "
        "the fidelity, every trial a complete run at its rung's budget (default: the file's sweep.fidelity, else "
        "full)", spec="fidelity")
    search_seconds: Optional[float] = _opt(
        "--search-time", float, "stop the search stage after this much wall time (trials still running then are cut "
        "and not counted); the confirmation stage follows as usual", metavar="SECONDS")
    eta: Optional[int] = _opt("--eta", int, "restart: keep the top 1/eta of each rung (default: sweep.eta, else 3)",
                              spec="eta")
    min_budget: Optional[float] = _opt("--min-budget", float, "restart: the smallest rung's budget, in the budget's "
                                       "unit (default: budget / eta^2)", spec="min_budget", metavar="AMOUNT")
    scheduler: Optional[str] = _opt("--scheduler", str, f"early stopping of trials ({_FILE.format('scheduler', 'none')})",
                                    spec="scheduler")
    sampler: Optional[str] = _opt("--sampler", str, f"Optuna sampler ({_FILE.format('sampler', 'tpe')})", spec="sampler")
    confirm_seeds: Optional[int] = _opt(
        "--confirm-seeds", int, "seeds per re-run policy in the confirmation stage (the race: its compute is "
        f"candidates x this many runs; {_FILE.format('confirm_seeds', 3)})", spec="confirm_seeds")
    confirm: Optional[str] = _opt(
        "--confirm", str, "confirmation stage: race (seeds in rounds; candidates the leader beats beyond the noise "
        "leave after sweep.first_test seeds and their runs go to the others, within the compute of fixed) or fixed "
        f"(--confirm-seeds each); {_FILE.format('confirm', 'race')}", spec="confirm")
    confirm_top: Optional[int] = _opt("--confirm-top", int, "searched policies re-run in the confirmation stage "
                                      f"({_FILE.format('confirm_top', 3)})", spec="confirm_top")
    min_effect: Optional[float] = _opt(
        "--min-effect", float, "the verdict's bar: 'beats' needs the paired difference's 95%% interval above this, "
        f"in the metric's units (0.005: half a point of accuracy; {_FILE.format('min_effect', 0)})", spec="min_effect",
        metavar="DELTA")
    max_failures: Optional[int] = _opt("--max-failures", int, "retries of a trial whose worker fails "
                                       f"({_FILE.format('max_failures', 1)})", spec="max_failures")
    resume: bool = _switch("--resume", "continue this space's latest interrupted sweep (or --name)")
    resume_or_start: bool = _switch(
        "--resume-or-start", "with --name: continue that sweep if it exists under --storage-path, else start it; "
        "a finished one exits 0 and runs nothing (for job retries: a RayJob's, a Slurm requeue)")
    name: Optional[str] = _opt("--name", str, "sweep name (Ray experiment directory and Optuna study); default: "
                               "space-timestamp")
    seed: Optional[int] = _opt("--seed", int, "seed of the sampler and of the base policy", spec="seed")
    storage_path: Optional[str] = _opt(
        "--storage-path", str, "where the sweep's state, lock and Ray Tune's results go (default ./ray_results): a "
        "directory (shared, e.g. NFS, on a cluster) or an object store URI pyarrow opens (s3://bucket/prefix, "
        "gs://...; endpoint and credentials from the environment, e.g. AWS_ENDPOINT_URL)")
    optuna_storage: Optional[str] = _opt("--optuna-storage", str, "Optuna storage URL (default: sqlite next to the "
                                         "tracking store; with an object-store --storage-path and a tracking "
                                         "server, ./mlflow/optuna.db)")
    quiet: bool = _switch("--quiet", "no live progress")

    @classmethod
    def from_args(cls, args: Any) -> "SweepOptions":
        """The options of a parsed ``tunebudget sweep`` command line."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def flag_of(name: str) -> str:
    """The command-line flag of a SweepOptions field (``search_seconds`` -> ``--search-time``)."""
    return next(f.metadata["flag"] for f in fields(SweepOptions) if f.name == name)


def add_sweep_flags(parser: Any) -> None:
    """Add every SweepOptions field to an argparse parser (choices from the space's ``sweep`` model)."""
    for f in fields(SweepOptions):
        meta = dict(f.metadata)
        flag, kind, spec = meta.pop("flag"), meta.pop("type", None), meta.pop("spec", None)
        if kind is not None:
            meta["type"] = kind
        choices = get_args(SweepSpec.model_fields[spec].annotation) if spec else ()
        if choices and all(isinstance(c, str) for c in choices):
            meta["choices"] = list(choices)
        parser.add_argument(flag, dest=f.name, **meta)


def merged_sweep(space: SearchSpace, opts: SweepOptions) -> SweepSpec:
    """The space's ``sweep`` section with the command line's values over it, checked by its model: the
    one place an option's bounds are checked; a bad value is one line naming the flag."""
    from pydantic import ValidationError

    given = {f.metadata["spec"]: (f.metadata["flag"], getattr(opts, f.name)) for f in fields(opts)
             if f.metadata.get("spec") and getattr(opts, f.name) is not None}
    try:
        return SweepSpec.model_validate({**space.sweep.model_dump(), **{k: v for k, (_, v) in given.items()}})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = err["loc"][0] if err["loc"] else None
        if key not in given:  # a rule across fields: the model's own sentence, after the flags given
            flags = " ".join(f"{flag} {value}" for flag, value in given.values())
            raise TuneBudgetError(f"{flags + ': ' if flags else ''}{err['msg'].removeprefix('Value error, ')}") from None
        flag, value = given[key]
        ctx = err.get("ctx") or {}
        words = {"greater_than_equal": f"must be at least {ctx.get('ge')}", "less_than_equal":
                 f"must be at most {ctx.get('le')}", "greater_than": f"must be > {ctx.get('gt')}"}
        raise TuneBudgetError(f"{flag}: {words.get(err['type'], err['msg'])} (got {value})") from None
