"""Checks of public scalar parameters, stated once: a bad value raises :class:`InputError` naming it.

Every public entry point validates its parameters here (scikit-learn's validate-once habit);
the helpers behind it trust what they are given. ``bool`` is never accepted as a number
(``True`` is an ``int`` to Python, not a batch size to a user). Layer indices have their own
module, :mod:`ihs_sight.layers`; prompts are checked in :mod:`ihs_sight.prompts`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from .errors import InputError

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    """``value`` as a positive integer, or ``InputError`` ("<name> must be a positive integer")."""
    if not _is_int(value) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def batch_size(value: Any) -> int:
    """Prompts (or packed rows) per forward pass: a positive integer."""
    return positive_int("batch_size", value)


def number(name: str, value: Any, *, low: float, high: float | None = None, integer: bool = False,
           low_open: bool = False) -> float:
    """A finite number ``>= low`` (``> low`` with ``low_open``) and ``<= high``; integers only with ``integer``."""
    ok = (_is_int(value) if integer else _is_number(value)) and math.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        rng = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise InputError(f"{name} must be {'an integer' if integer else 'a number'} {rng}, got {value!r}.")
    return value  # type: ignore[no-any-return]


def fraction(name: str, value: Any, low: float = 0.0, high: float = 1.0) -> float:
    """A number strictly between ``low`` and ``high`` (a rate or an accuracy target)."""
    if not _is_number(value) or not low < float(value) < high:
        raise InputError(f"{name} must be a number strictly between {low:g} and {high:g}, got {value!r}.")
    return float(value)


def finite(name: str, value: Any) -> float:
    """A finite number (NaN and infinities refused)."""
    if not _is_number(value) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def as_list(name: str, value: Any, expected: str, *, hint: str = "") -> list[Any]:
    """``value`` as a list; a lone string or a non-iterable raises ``InputError`` ("<name> must be <expected>")."""
    if isinstance(value, str):
        raise InputError(f"{name} must be {expected}, not a single string{hint}.")
    try:
        return list(value)
    except TypeError:
        raise InputError(f"{name} must be {expected}, got {type(value).__name__}.") from None


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (not merely truthy), else ``InputError``."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False; got {value!r}.")
    return value


def one_of(name: str, value: Any, choices: Sequence[T]) -> T:
    """``value`` if it is one of ``choices`` (compared with ``==``), else ``InputError`` listing them."""
    for choice in choices:
        if isinstance(value, type(choice)) and value == choice:
            return choice
    listed = ", ".join(repr(c) for c in choices)
    raise InputError(f"{name} must be one of {listed}; got {value!r}.")


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line naming the field (``"meta.n_layers: Input should be a valid integer"``;
    a model-level check names its fields in its own message)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", error)).removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where + ': ' if where else ''}{message}{more}"
