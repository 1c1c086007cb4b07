"""Importing the user's objects by ``module:variable``, the form ``taskiq worker`` takes.

One home for it: the broker of ``taskmon retry`` and ``taskmon queues``, and
any other object a command names the same way, load through
:func:`import_object`, so they accept the same specs and fail with the same
one-line messages.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any

__all__ = ["SpecError", "import_object"]


class SpecError(ValueError):
    """The spec is malformed, its module fails to import, or its variable is missing; one line."""


def import_object(
    spec: str, *, what: str = "broker", kind: type | None = None, kind_name: str = ""
) -> Any:
    """The object `spec` (``module:variable``, the variable maybe dotted) names.

    The current directory is on the import path while importing, as for
    ``taskiq worker``.

    Args:
        spec: ``module:variable``, e.g. ``myapp.tasks:broker``.
        what: what the object is, for the messages (``broker``, ``scheduler``).
        kind: the type the object must be an instance of, if any.
        kind_name: how the messages name `kind` (default its class name).

    Raises:
        SpecError: the spec is malformed, the module cannot be imported, the
            variable is missing, or it is not a `kind`.
    """
    module_name, sep, name = spec.strip().partition(":")
    if not sep or not module_name or not all(p.isidentifier() for p in name.split(".")):
        raise SpecError(
            f"{what} {spec!r} is not module:variable (expected module:variable, the form "
            f"`taskiq {'scheduler' if what == 'scheduler' else 'worker'}` takes, "
            f"e.g. myapp.tasks:{what})"
        )
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise SpecError(f"{what} {spec}: cannot import {module_name}: {exc}") from exc
    except Exception as exc:  # the user's module failed while importing
        raise SpecError(
            f"{what} {spec}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(os.getcwd())
    obj: Any = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SpecError(f"{what} {spec}: {module_name} has no variable {name}") from None
    if kind is not None and not isinstance(obj, kind):
        expected = kind_name or kind.__name__
        raise SpecError(f"{what} {spec} is a {type(obj).__name__}, not a {expected}")
    return obj
