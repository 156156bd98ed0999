"""Courteous evolution: a moved or renamed public name keeps working for a while and says where it went.

A module that lost a name declares ``__getattr__ = moved({"old": ("new.module", "new_name")})``;
reading the old name warns with :class:`IhsSightDeprecationWarning` (a ``FutureWarning``, so it
is shown by default and can be silenced on its own) and returns the new object.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


class IhsSightDeprecationWarning(FutureWarning):
    """A name or a way of calling ihs-sight that will go away; the message names the replacement."""


def warn(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``."""
    warnings.warn(f"{old} is deprecated; use {new} instead.", IhsSightDeprecationWarning, stacklevel=stacklevel)


def moved(module: str, names: Mapping[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``names`` (old name -> (new module, new name)) with a warning."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target, new = names[name]
        warn(f"{module}.{name}", f"{target}.{new}")
        return getattr(importlib.import_module(target), new)

    return __getattr__
