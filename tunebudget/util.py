"""Small helpers shared by the modules: atomic writes and provenance."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: all or nothing.

    A symbolic link is written through (its target is replaced, not the link); a path that is not
    a regular file (``/dev/null``, a FIFO) is written to directly, never replaced. The file gets
    the usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file():
        with open(path, "wb") as fh:
            fh.write(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and a rename: all or nothing."""
    atomic_write_bytes(path, text.encode())


def write_output(path: str | os.PathLike[str], text: str, flag: str) -> Path:
    """Write a file the user asked for (``flag`` names the option): atomically, with a one-line
    TuneBudgetError for a directory or a place that cannot be written."""
    from tunebudget.errors import TuneBudgetError

    out = Path(path)
    if out.is_dir():
        raise TuneBudgetError(f"{flag} {path}: is a directory; give a file path")
    try:
        atomic_write_text(out, text)
    except OSError as exc:
        raise TuneBudgetError(f"{flag} {path}: cannot write there ({exc.strerror or exc}); "
                              "give a path you can write to") from None
    return out


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The current git commit of ``cwd`` (or None outside a repository)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def check_writable_dir(path: Path, what: str) -> None:
    """Raise TuneBudgetError (naming ``what``) unless ``path`` is, or can be made, a writable directory.

    Leaves nothing behind: directories it had to create to find out are removed again.
    """
    from tunebudget.errors import TuneBudgetError

    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tunebudget-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "there" if str(path) in what else f"to {path}"
        why = "part of the path is a file" if isinstance(exc, (FileExistsError, NotADirectoryError)) else \
            exc.strerror or str(exc)
        raise TuneBudgetError(f"{what}: cannot write {where} ({why}); "
                              "give a directory you can write to") from None
    finally:
        for p in created:  # deepest first
            try:
                p.rmdir()
            except OSError:
                pass
