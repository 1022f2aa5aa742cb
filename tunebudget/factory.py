"""Your own code named as ``package.module:factory`` (``task.model``, ``task.dataset``).

One place imports such a string, checks its options against its signature and turns a failure into
one line naming the policy field: the models, the data sets and the sweep's preflight share it. The
module is found on PYTHONPATH or in the working directory; a local sweep's Ray workers find it the
same way (Ray adds the driver's working directory to their sys.path and they inherit its PYTHONPATH).

Example:
    >>> import_factory("math:sqrt", "task.model")(4.0)
    2.0
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable

from tunebudget.errors import TuneBudgetError

#: How to make a user's ``package.module:factory`` importable (models and data sets).
IMPORT_FIX = ("make the module importable: run from the directory that holds it, or add that directory "
              "to PYTHONPATH (or pip install its package)")


def with_working_dir_on_path() -> None:
    """``python -m tunebudget`` puts the working directory first on sys.path, the ``tunebudget``
    console script does not: look there too (last, so it shadows nothing installed)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def check_importable(spec: str, field: str) -> None:
    """Raise TuneBudgetError when the module of ``package.module:factory`` cannot be found, without
    importing it (the sweep's driver stays free of torch and of the user's import side effects)."""
    import importlib.util

    module = spec.partition(":")[0]
    with_working_dir_on_path()
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError) as exc:  # a parent package that is missing or fails to import
        found, why = False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    else:
        why = f"No module named {module!r}"
    if not found:
        raise TuneBudgetError(f"{field}: cannot import {spec!r} ({why}); {IMPORT_FIX}")


def import_factory(spec: str, field: str = "task.model") -> Callable[..., Any]:
    """The callable ``spec`` (``package.module:factory``) names; any failure to import it is a
    one-line TuneBudgetError naming ``field``. Models and data sets import in the process that trains."""
    module_name, _, attr = spec.partition(":")
    with_working_dir_on_path()
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # not found, or the user's module failed (or exited) while imported
        parts = module_name.split(".")
        not_found = isinstance(exc, ModuleNotFoundError) and exc.name in {
            ".".join(parts[: i + 1]) for i in range(len(parts))}
        if not_found:
            raise TuneBudgetError(f"{field}: cannot import {spec!r} ({first_line(exc)}); {IMPORT_FIX}") from None
        raise TuneBudgetError(f"{field}: cannot import {spec!r}: importing {module_name} raised "
                              f"{type(exc).__name__}: {first_line(exc)}; fix the module (or install what it "
                              "imports) so that it imports") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise TuneBudgetError(f"{field}: cannot import {spec!r} (module {module_name} has no attribute {attr!r}); "
                              "give 'package.module:factory' of a callable it defines")
    if not callable(factory):
        raise TuneBudgetError(f"{field}: {spec!r} is not callable; give a function or class")
    return factory


def first_line(exc: BaseException) -> str:
    """An exception's message on one line (a multi-line message keeps its first line).

    Example:
        >>> first_line(ValueError("bad\\nmore"))
        'bad'
    """
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def check_options(factory: Callable[..., Any], options: dict[str, Any], field: str, owner: str,
                  skip: int = 0) -> None:
    """``options`` against the keyword parameters of ``factory`` after its first ``skip`` (a model
    factory's input_shape and num_outputs): an unknown name (unless it takes ``**kwargs``) or a
    missing required one is a one-line error naming ``field``. Shared by model and data options."""
    try:
        params = list(inspect.signature(factory).parameters.values())[skip:]
    except (TypeError, ValueError):  # no signature to check against (a builtin, say): the call will tell
        return
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    bad = [k for k in options if k not in known]
    if bad and not takes_kwargs:
        raise TuneBudgetError(f"{field}: unknown option {bad[0]!r} for {owner}; valid options are "
                              f"{', '.join(known) or 'none'}")
    missing = [p.name for p in params if p.name in known and p.default is p.empty and p.name not in options]
    if missing:
        raise TuneBudgetError(f"{field}: {owner} needs option {missing[0]!r} (it has no default); "
                              f"set {field}.{missing[0]}")
