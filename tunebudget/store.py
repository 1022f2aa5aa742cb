"""Where a sweep's files live: a local directory (a :class:`~pathlib.Path`) or an object store
(an :class:`ObjectPath`: ``s3://bucket/prefix``, ``gs://...``, any URI that
``pyarrow.fs.FileSystem.from_uri`` opens, the layer Ray Tune itself uses for ``storage_path``).

An :class:`ObjectPath` offers the few ``Path`` operations the sweep's state needs (``/``, ``name``,
``is_file``, ``read_text``, ``write_text``, ``unlink``, ``glob('*/NAME')``, ``stat().st_mtime``), so
the state file, its lock and Tune's results go to either kind with the same code. Its ``str`` is the
URI, which Tune takes as ``storage_path`` as it is (query parameters such as
``?endpoint_override=127.0.0.1:9000&scheme=http`` included: pyarrow reads them; so does it read
``AWS_ENDPOINT_URL``).

The lock (:func:`object_lock`) cannot be ``flock`` there: it is an object written, read back, and
refreshed by a heartbeat; best effort, see its docstring.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Optional, Union

from tunebudget.errors import TuneBudgetError

#: ``scheme://`` at the start of a storage path: an object store (or another pyarrow filesystem).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(text: str) -> bool:
    return bool(_URI.match(str(text)))


_OPENED: dict[str, "ObjectPath"] = {}


def location(storage: Union[str, os.PathLike[str]]) -> Union[Path, "ObjectPath"]:
    """A storage path as the sweep uses it: a URI as an :class:`ObjectPath` (one per URI in a
    process, so its filesystem is resolved once), else a ``Path``."""
    if not is_uri(str(storage)):
        return Path(storage)
    return _OPENED.setdefault(str(storage), ObjectPath(str(storage)))


def normalize(raw: str, flag: str = "--storage-path") -> str:
    """``--storage-path`` as the plan keeps it: a local directory, absolute; a ``file://`` URI as its
    directory; any other URI as given, without a trailing ``/`` (a bucket alone is refused: the
    sweep's directories would be its top level, next to anyone's)."""
    if not is_uri(raw):
        return str(Path(raw).expanduser().resolve())
    head, sep, query = raw.partition("?")
    if head.lower().startswith("file://"):
        if query:
            raise TuneBudgetError(f"{flag} {raw}: a file:// URI takes no ?query; give the directory itself")
        return str(Path(head[len("file://"):] or "/").expanduser().resolve())
    scheme, _, rest = head.partition("://")
    rest = rest.strip("/")
    if "/" not in rest:  # a bucket alone (or nothing): the sweeps would sit at its top, next to anyone's
        raise TuneBudgetError(f"{flag} {raw}: name a bucket and a prefix, e.g. {scheme}://my-bucket/tunebudget")
    return f"{scheme}://{rest}{sep}{query}"


class ObjectPath:
    """A file or a "directory" (a key prefix) in an object store, named by a URI."""

    def __init__(self, uri: str, base: Optional["ObjectPath"] = None) -> None:
        head, sep, query = uri.partition("?")
        self._head, self._query = head.rstrip("/"), (sep + query)
        #: the storage path this one was derived from: its filesystem is resolved once, there
        #: (from_uri may ask the store, e.g. for an S3 bucket's region)
        self._base = base or self
        self._fs: Any = None
        self._fsp = ""

    def _derived(self, head: str) -> "ObjectPath":
        return ObjectPath(head + self._query, self._base)

    # ---- naming -----------------------------------------------------------------------------------
    def __truediv__(self, part: str) -> "ObjectPath":
        return self._derived(f"{self._head}/{str(part).strip('/')}")

    def __str__(self) -> str:
        return self._head + self._query

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def name(self) -> str:
        return self._head.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "ObjectPath":
        return self._derived(self._head.rsplit("/", 1)[0])

    # ---- the filesystem ---------------------------------------------------------------------------
    def filesystem(self) -> tuple[Any, str]:
        """``(pyarrow filesystem, its path of this object)``; a URI pyarrow cannot open is one line."""
        import pyarrow.fs

        base = self._base if self._head.startswith(self._base._head) else self
        if base._fs is None:
            try:
                base._fs, base._fsp = pyarrow.fs.FileSystem.from_uri(str(base))
            except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError
                raise TuneBudgetError(f"--storage-path {base}: pyarrow cannot open it ({str(exc).splitlines()[0]}); "
                                      "use a URI such as s3://bucket/prefix or gs://bucket/prefix, or a "
                                      "directory") from None
        return base._fs, base._fsp.rstrip("/") + self._head[len(base._head):]

    def _info(self) -> Any:
        fs, path = self.filesystem()
        return fs.get_file_info(path)

    def is_file(self) -> bool:
        import pyarrow.fs

        return self._info().type == pyarrow.fs.FileType.File

    def exists(self) -> bool:
        import pyarrow.fs

        return self._info().type != pyarrow.fs.FileType.NotFound

    def stat(self) -> Any:
        info = self._info()
        return SimpleNamespace(st_mtime=info.mtime.timestamp() if info.mtime else 0.0, st_size=info.size)

    def read_bytes(self) -> bytes:
        fs, path = self.filesystem()
        with fs.open_input_stream(path) as fh:
            return fh.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_text(self, text: str) -> None:
        """One object written whole: a reader sees the old contents or the new, never a part."""
        fs, path = self.filesystem()
        with fs.open_output_stream(path) as fh:
            fh.write(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        fs, path = self.filesystem()
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: a prefix exists once an object under it does."""

    def glob(self, pattern: str) -> Iterator["ObjectPath"]:
        """``*/NAME`` only (the one pattern the sweep uses): ``NAME`` in each direct sub-prefix."""
        import pyarrow.fs

        star, _, leaf = pattern.partition("/")
        if star != "*" or not leaf or "*" in leaf or "/" in leaf:
            raise ValueError(f"ObjectPath.glob supports '*/NAME' only (got {pattern!r})")
        fs, path = self.filesystem()
        found = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True, recursive=False))
        for info in found:
            if info.type == pyarrow.fs.FileType.Directory:
                candidate = self / info.base_name / leaf
                if candidate.is_file():
                    yield candidate


def write_text(path: Union[Path, ObjectPath], text: str) -> None:
    """Write a state file whole: a temporary file and a rename locally, one object in a store."""
    if isinstance(path, ObjectPath):
        path.write_text(text)
    else:
        from tunebudget.util import atomic_write_text

        atomic_write_text(path, text)


def check_store(storage: str) -> None:
    """An object-store ``--storage-path`` opens and takes a write (a probe object written and removed):
    a missing bucket, bad credentials or a wrong endpoint fail here in one line, before Ray starts."""
    root = location(storage)
    assert isinstance(root, ObjectPath)
    probe = root / f".tunebudget-write-check-{secrets.token_hex(6)}"
    try:
        probe.write_text("probe")
        probe.unlink(missing_ok=True)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneBudgetError(f"--storage-path {storage}: cannot write there ({first[:300]}); check that the bucket "
                              "exists and the credentials (and AWS_ENDPOINT_URL for an S3 API other than AWS') "
                              "are set") from None


# ---- the lock on an object store ----------------------------------------------------------------------

#: Seconds between the holder's refreshes of its lock object.
HEARTBEAT = 10.0
#: A lock whose contents have not changed for this long is a dead holder's, and is taken over.
STALE_AFTER = 3 * HEARTBEAT
#: Seconds between writing a lock and reading it back (a racing writer's object would be seen then).
SETTLE = 1.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(path: ObjectPath) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: someone's, being written; judged by whether it changes
    return data if isinstance(data, dict) else {}


def _held_by_the_dead(held: dict[str, Any]) -> bool:
    """A holder on this host whose process is gone: its lock is stale at once."""
    return held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) and \
        not _pid_alive(held["pid"])


def _refuse(root: ObjectPath, path: ObjectPath, held: dict[str, Any]) -> TuneBudgetError:
    who = f" (host {held.get('host')}, pid {held.get('pid')})" if held.get("host") else ""
    return TuneBudgetError(f"--name {root.name}: a sweep of that name is running now{who}: it holds {path}, and "
                           "refreshes it; wait for it, or give another --name")


@contextlib.contextmanager
def object_lock(root: ObjectPath) -> Iterator[None]:
    """Hold ``<root>/.lock`` in an object store while the sweep runs. **Best effort**, not a mutex.

    Object stores have no ``flock``, and pyarrow's filesystem layer no conditional create, so: a lock
    object that exists and is alive refuses a second sweep of the name in one line; alive means its
    holder refreshes it every ``HEARTBEAT`` seconds. A lock left by a dead holder (a SIGKILLed driver,
    a lost pod) is taken over: at once when the holder was a process of this host that is gone,
    else once its contents have not changed for ``STALE_AFTER`` seconds (a retry on another node
    waits that long). The lock is written, then read back after ``SETTLE`` seconds: of two sweeps
    of one name started within that second, the later writer's wins and the other is refused; two
    whose writes and read-backs interleave exactly could both run. Removed when the sweep ends.
    """
    path = root / ".lock"
    held = _read_lock(path)
    if held is not None and not _held_by_the_dead(held):
        seen, since = json.dumps(held, sort_keys=True), time.monotonic()
        while time.monotonic() - since < STALE_AFTER:  # alive if it changes: a holder's heartbeat
            time.sleep(min(HEARTBEAT / 4, STALE_AFTER))
            now = _read_lock(path)
            if now is None:
                break  # released meanwhile
            if json.dumps(now, sort_keys=True) != seen:
                raise _refuse(root, path, now)
    token = secrets.token_hex(16)
    mine = {"token": token, "host": socket.gethostname(), "pid": os.getpid()}

    def write(beat: int) -> None:
        path.write_text(json.dumps({**mine, "beat": beat, "time": time.time()}))

    write(0)
    time.sleep(SETTLE)
    now = _read_lock(path) or {}
    if now.get("token") != token:
        raise _refuse(root, path, now)
    stop = threading.Event()

    def heartbeat() -> None:
        beat = 0
        while not stop.wait(HEARTBEAT):
            beat += 1
            with contextlib.suppress(OSError):
                current = _read_lock(path) or {}
                if current.get("token") not in (None, token):
                    return  # taken over (this holder was thought dead): leave it to the new holder
                write(beat)

    thread = threading.Thread(target=heartbeat, name="tunebudget-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=HEARTBEAT)
        with contextlib.suppress(OSError):
            if (_read_lock(path) or {}).get("token") == token:
                path.unlink(missing_ok=True)
