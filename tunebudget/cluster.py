"""Multi-node Ray clusters: checks a sweep runs before any trial starts.

Ray Tune writes every trial's results and checkpoints to the sweep's ``--storage-path`` from the
node the trial runs on, and the driver reads them back. On a cluster of more than one node a local
path therefore has to be the *same* storage on every node (NFS, a shared mount), or an object store
(``s3://bucket/prefix``), which every node reaches if it has the credentials and endpoint.
``check_shared_storage`` proves it before the sweep starts: the driver writes a marker (a file, or an
object) and a tiny task pinned to each alive node reads it back (an object through pyarrow, as Tune
will: a node without the credentials, or with another ``AWS_ENDPOINT_URL``, fails here).
"""

from __future__ import annotations

import logging
import secrets
import socket
from pathlib import Path
from typing import Any

from tunebudget.errors import TuneBudgetError
from tunebudget.store import ObjectPath, is_uri, location

log = logging.getLogger(__name__)

#: Seconds to wait for every node's probe (a node may first have to start a worker process).
PROBE_TIMEOUT = 60.0


def alive_nodes() -> list[dict[str, Any]]:
    """The connected cluster's alive nodes (``ray.nodes()`` entries)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def node_label(node: dict[str, Any]) -> str:
    """``address (node id prefix)``: several nodes may share one address (one host, or behind NAT)."""
    return f"{node.get('NodeManagerAddress', '?')} ({str(node.get('NodeID', ''))[:12]})"


def _probe(path: str, token: str) -> dict[str, Any]:
    """Runs on one node: is the driver's marker there, with the driver's contents?"""
    import os

    try:  # an object through pyarrow as Ray Tune will read it (this node's credentials and endpoint), or a file
        seen = location(path).read_text() == token
    except (OSError, ValueError, TuneBudgetError):
        seen = False
    return {"visible": seen, "hostname": socket.gethostname(), "pid": os.getpid()}


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the directories the check created (deepest first), if still empty: preflight writes nothing."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


def check_shared_storage(storage_path: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise TuneBudgetError when ``storage_path`` is not the same storage on every node.

    Nothing to check on a one-node cluster. Otherwise the driver writes a marker with a random token
    under ``storage_path`` (a local directory, or an object store's URI) and a zero-CPU task pinned to
    each alive node reads it back; the marker, and any directory the check had to create, are removed
    afterwards (preflight leaves nothing behind). A node that does not answer within ``timeout``
    seconds is only warned about: it may be busy or leaving, which proves nothing about its storage.

    Requires ``ray.init`` to have connected already.
    """
    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    token = secrets.token_hex(16)
    name = f".tunebudget-shared-check-{token[:12]}"
    if is_uri(storage_path):
        where = location(storage_path)
        assert isinstance(where, ObjectPath)
        marker_object = where / name
        marker_object.write_text(token)  # preflight's check_store has proved the driver can write there
        try:
            blind, silent = _ask_nodes(nodes, str(marker_object), token, timeout)
        finally:
            marker_object.unlink(missing_ok=True)
        fix = ("every node must reach the object store: give each the same credentials and endpoint "
               "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...) in its environment")
    else:
        path = Path(storage_path).expanduser().resolve()
        created = [p for p in (path, *path.parents) if not p.exists()]  # removed again afterwards
        marker = path / name
        try:
            path.mkdir(parents=True, exist_ok=True)
            marker.write_text(token)
        except OSError as exc:
            _remove_empty(created)
            raise TuneBudgetError(f"--storage-path {storage_path}: cannot write there ({exc.strerror or exc}); "
                                  "give a writable directory on storage every node mounts") from None
        try:
            blind, silent = _ask_nodes(nodes, str(marker), token, timeout)
        finally:
            marker.unlink(missing_ok=True)
            _remove_empty(created)
        fix = ("multi-node sweeps need shared storage such as NFS, or an object store (s3://...); mount the "
               "same directory at the same path on every node and pass it as --storage-path")
    if silent:
        log.warning("--storage-path %s: could not check it on node(s) %s (no answer in %.0f s)", storage_path,
                    ", ".join(node_label(n) for n in silent), timeout)
    if blind:
        raise TuneBudgetError(f"--storage-path {storage_path}: not visible from node(s) "
                              f"{', '.join(node_label(n) for n in blind)} ({fix})")


def _ask_nodes(nodes: list[dict[str, Any]], marker: str, token: str,
               timeout: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each node's answer to :func:`_probe`: the nodes that do not see the marker, and those silent."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                          name="tunebudget_storage_check").remote(marker, token): n for n in nodes}
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    blind, silent = [], [refs[r] for r in pending]
    for ref in ready:
        try:
            answer = ray.get(ref)
        except Exception:  # noqa: BLE001 - the node died or its worker failed: no answer
            silent.append(refs[ref])
            continue
        if not answer["visible"]:
            blind.append(refs[ref])
    for ref in pending:
        ray.cancel(ref, force=True)
    return blind, silent
