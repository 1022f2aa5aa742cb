"""The one error type a user can cause."""

from __future__ import annotations


class TuneBudgetError(Exception):
    """Bad input from the user: a file, a field, a flag, missing data or an unreachable service.

    The message names what is wrong and how to fix it, on one line. The CLI prints it to
    stderr and exits with status 2, having written nothing.
    """


def field_path(loc: tuple) -> str:
    """A pydantic error location as ``a.b.c``; a key with a newline, a tab or a space is quoted,
    so the one-line error stays one line and shows where the odd key is."""
    def part(p: object) -> str:
        text = str(p)
        return repr(text) if not text.isprintable() or any(c.isspace() for c in text) else text

    return ".".join(part(p) for p in loc)
