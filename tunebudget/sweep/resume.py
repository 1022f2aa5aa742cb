"""A sweep's state on disk (``<storage>/<sweep>/tunebudget_sweep.json``) and ``--resume``: the
saved plan, refused when the space or a flag would change what the sweep is.
"""


from __future__ import annotations

import contextlib
import json
import logging
import shlex
from dataclasses import Field, fields, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from tunebudget.errors import TuneBudgetError
from tunebudget.spaces import SearchSpace
from tunebudget.options import SweepOptions
from tunebudget.sweep.plan import Plan, make_plan
from tunebudget.store import ObjectPath, location, object_lock, write_text

log = logging.getLogger(__name__)


STATE_FILE = "tunebudget_sweep.json"


def save_state(plan: Plan, **fields: Any) -> dict[str, Any]:
    path = plan.root / STATE_FILE
    state = read_state(plan.root) or {}
    state.update({"plan": plan.to_json(), **fields})
    write_text(path, json.dumps(state, indent=2, default=str))
    return state


def read_state(root: Union[Path, ObjectPath]) -> Optional[dict[str, Any]]:
    """The sweep's saved state (None if there is none); a file that is not one is a one-line error."""
    path = (root if isinstance(root, ObjectPath) else Path(root)) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TuneBudgetError(f"--resume: {path} cannot be read as a sweep's state ({exc}); the sweep cannot be "
                              "resumed: start a new one (its finished trials stay in MLflow)") from None
    if not isinstance(state, dict) or not isinstance(state.get("plan"), dict):
        raise TuneBudgetError(f"--resume: {path} is not a sweep's state (no plan in it); start a new sweep")
    return state


@contextlib.contextmanager
def sweep_lock(root: Union[Path, ObjectPath]) -> Iterator[None]:
    """Hold ``<root>/.lock`` while the sweep runs: a second sweep (or resume) of the same name fails
    in one line instead of sharing its Tune directory and Optuna study. ``flock`` on a local (or NFS)
    directory; in an object store a heartbeat object, best effort (:func:`store.object_lock`)."""
    import fcntl

    if isinstance(root, ObjectPath):
        with object_lock(root):
            yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TuneBudgetError(f"--name {root.name}: a sweep of that name is running now (it holds "
                                  f"{root / '.lock'}); wait for it, or give another --name") from None
        yield


def find_resumable(storage: Union[Path, ObjectPath], space_name: str, name: Optional[str]) -> Union[Path, ObjectPath]:
    """The sweep directory to resume: ``--name`` if given, else this space's latest unfinished sweep."""
    if name:
        root = storage / name
        if not (root / STATE_FILE).is_file():
            raise TuneBudgetError(f"--resume --name {name}: no sweep state in {root}; check --name and --storage-path")
        return root
    candidates = []
    for state_file in storage.glob(f"*/{STATE_FILE}"):
        try:
            state = read_state(state_file.parent)
        except TuneBudgetError:
            continue  # not a readable state: not a sweep to resume
        if state is not None and state["plan"].get("base", {}).get("name") == space_name and \
                state.get("stage") not in ("finished", "failed"):
            candidates.append(state_file.parent)
    if not candidates:
        raise TuneBudgetError(f"--resume: no unfinished sweep of {space_name!r} under {storage}; "
                              "start a new one without --resume (or give --name / --storage-path)")
    return max(candidates, key=lambda p: (p / STATE_FILE).stat().st_mtime)  # an object store's prefix has no mtime


class SweepFinished(Exception):
    """``--resume-or-start`` found its sweep finished: nothing to run, nothing logged (exit 0)."""

    def __init__(self, name: str, experiment: str, parent_id: str) -> None:
        super().__init__(name)
        self.name, self.experiment, self.parent_id = name, experiment, parent_id


def resume_or_start(space: SearchSpace, opts: SweepOptions) -> SweepOptions:
    """``--resume-or-start``: the options of a resume when sweep ``--name`` exists, else of a start.

    What a job retry needs (a RayJob's ``backoffLimit``, a Slurm requeue, the same command run again):
    one command line that continues the sweep it started (same name, Optuna study and parent run)
    and, once that sweep has finished, exits 0 without running or logging anything.
    """
    if opts.resume:
        raise TuneBudgetError("--resume-or-start: it already resumes a sweep that exists (and starts one that "
                              "does not); leave out --resume")
    if not opts.name:
        raise TuneBudgetError("--resume-or-start: needs --name, the sweep a re-run continues (the default name "
                              "has a timestamp in it); e.g. --name lr-sweep-1")
    plan = make_plan(space, opts)
    state = read_state(plan.root)
    if state is None:
        return replace(opts, resume=False)
    if state.get("stage") == "finished":
        saved = Plan.from_json(state["plan"])
        raise SweepFinished(saved.name, saved.experiment, str(state.get("parent_id", "")))
    if state.get("stage") == "failed":
        raise TuneBudgetError(f"--resume-or-start --name {plan.name}: that sweep failed (its parent run in MLflow "
                              "says why); fix the cause and give another --name to start a new sweep")
    return replace(opts, resume=True)


#: Flags a resumed sweep cannot change (they define what the sweep is): every flag of the space's
#: ``sweep`` section (compared there), and these, by the Plan field they resolve to.
_FIXED_ON_RESUME = {"cpus_per_trial": "cpus", "gpus_per_trial": "gpus", "experiment": "experiment",
                    "optuna_storage": "optuna_storage", "tracking_uri": "tracking_uri", "min_budget": "rungs",
                    "search_seconds": "search_seconds"}


_NOT_FIXED = object()


def _fixed(plan: Plan, flag: Field) -> Any:
    """What a SweepOptions field resolved to in ``plan``; ``_NOT_FIXED`` for a flag that may change."""
    if flag.name in _FIXED_ON_RESUME:
        return getattr(plan, _FIXED_ON_RESUME[flag.name])
    spec = flag.metadata.get("spec")
    return getattr(plan.sweep, spec) if spec else _NOT_FIXED


def resume_plan(space: SearchSpace, opts: SweepOptions) -> tuple[Plan, dict[str, Any]]:
    """The saved plan of the sweep to resume; refuses a changed space or a flag that changes the plan.

    Only ``--address`` (where the Ray cluster is now) and ``--quiet`` may differ: they change where
    and how the sweep runs, not what it is.
    """
    fresh = make_plan(space, opts)
    root = find_resumable(location(fresh.storage), space.name, opts.name)
    state = read_state(root) or {}
    plan = Plan.from_json(state["plan"])
    if state.get("stage") == "finished":
        raise TuneBudgetError(f"--resume --name {plan.name}: that sweep has finished; export it with "
                              f"'tunebudget export {shlex.quote(plan.experiment)}', or start a new sweep")
    if state.get("stage") == "failed":
        raise TuneBudgetError(f"--resume --name {plan.name}: that sweep failed (its parent run in MLflow says why); "
                              "start a new sweep without --resume")
    saved = state.get("space")
    if saved is not None:
        changed = _first_difference(saved, as_json(space.raw))
        if changed:
            raise TuneBudgetError(
                f"--resume: {space.path} changed since sweep {plan.name} started ({changed}); restore it, "
                "or start a new sweep without --resume")
    for flag in fields(SweepOptions):
        given, was = getattr(opts, flag.name), _fixed(plan, flag)
        if given is not None and was is not _NOT_FIXED and _fixed(fresh, flag) != was:
            raise TuneBudgetError(
                f"--resume: {flag.metadata['flag']} {given} differs from sweep {plan.name}'s {was}; a resumed "
                "sweep keeps its settings: leave the flag out, or start a new sweep")
    if opts.budget is not None and fresh.base.budget != plan.base.budget:
        raise TuneBudgetError(
            f"--resume: --budget {opts.budget:g} differs from sweep {plan.name}'s budget "
            f"({plan.base.budget.model_dump(mode='json')}); leave it out, or start a new sweep")
    plan.address = fresh.address
    return plan, state


def as_json(data: Any) -> Any:
    """``data`` as the state file will hold it (JSON: string keys), so saved and fresh compare equal."""
    return json.loads(json.dumps(data, default=str))


def _first_difference(old: Any, new: Any, where: str = "") -> Optional[str]:
    """The first dotted key at which two parsed YAML documents differ, described (None if equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            at = f"{where}.{key}" if where else str(key)
            if key not in new:
                return f"{at} was removed"
            if key not in old:
                return f"{at} was added"
            found = _first_difference(old[key], new[key], at)
            if found:
                return found
        return None
    if old != new:
        return f"{where or 'the file'} changed from {old!r} to {new!r}"
    return None
