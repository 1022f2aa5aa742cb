"""The one error type a user can cause."""

from __future__ import annotations


class TuneBudgetError(Exception):
    """Bad input from the user: a file, a field, a flag, missing data or an unreachable service.

    The message names what is wrong and how to fix it, on one line. The CLI prints it to
    stderr and exits with status 2, having written nothing.
    """
