"""Argument checks shared by every public constructor and function.

Each check raises with a message that names the owner (a class or function), the argument in
backticks, what it must be, and what was given — e.g. ``"ActivationMaps: `num_probe` must be a
positive int; got 0"``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

__all__ = ["check_choice", "check_count", "check_flag", "check_int", "check_number", "prefix"]


def _got(value: Any) -> str:
    """``float 2.0``: what was given, with its type (for type errors)."""
    return f"{type(value).__name__} {value!r}"


def prefix(owner: str | None) -> str:
    """``"Owner: "`` or ``""``."""
    return f"{owner}: " if owner else ""


def check_int(
    owner: str | None,
    argument: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """Return ``value`` if it is an int in ``[low, high]`` (``None`` too with ``allow_none``).

    Raises:
        TypeError: For a value that is not an int (``bool`` included).
        ValueError: For an int out of range.
    """
    if value is None and allow_none:
        return None
    bounds = []
    if low is not None:
        bounds.append(f">= {low}")
    if high is not None:
        bounds.append(f"<= {high}")
    expected = "an int" + (f" {' and '.join(bounds)}" if bounds else "")
    if allow_none:
        expected += " or None"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{prefix(owner)}`{argument}` must be {expected}; got {_got(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{prefix(owner)}`{argument}` must be {expected}; got {value!r}")
    return value


def check_count(owner: str | None, argument: str, value: Any, *, allow_none: bool = False) -> Any:
    """Return ``value`` if it is a positive int (or ``None`` when ``allow_none``).

    Raises:
        TypeError: For a value that is not an int (``bool`` included).
        ValueError: For an int below 1.
    """
    if value is None and allow_none:
        return None
    expected = "a positive int or None" if allow_none else "a positive int"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{prefix(owner)}`{argument}` must be {expected}; got {_got(value)}")
    if value < 1:
        raise ValueError(f"{prefix(owner)}`{argument}` must be {expected}; got {value!r}")
    return value


def check_number(
    owner: str | None,
    argument: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    allow_none: bool = False,
) -> float | None:
    """Return ``value`` as a float if it is a real number in range.

    Args:
        owner: Name used in the message.
        argument: The argument's name.
        value: The value to check.
        low: Lower bound (inclusive unless ``low_open``).
        high: Upper bound (inclusive).
        low_open: Exclude ``low`` itself (``> low``).
        allow_none: Accept ``None``.

    Raises:
        TypeError: For a value that is not a real number (``bool`` included).
        ValueError: For NaN or a value out of range.
    """
    if value is None and allow_none:
        return None
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"<= {high}")
    expected = "a number" + (f" {' and '.join(parts)}" if parts else "")
    if allow_none:
        expected += " or None"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{prefix(owner)}`{argument}` must be {expected}; got {value!r}")
    v = float(value)
    bad = v != v  # NaN
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or v > high
    if bad:
        raise ValueError(f"{prefix(owner)}`{argument}` must be {expected}; got {value!r}")
    return v


def check_choice(owner: str | None, argument: str, value: Any, choices: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``.

    Raises:
        ValueError: Otherwise; the message lists the choices.
    """
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{prefix(owner)}`{argument}` must be one of {listed}; got {value!r}")
    return value


def check_flag(owner: str | None, argument: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False``.

    Raises:
        TypeError: Otherwise.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{prefix(owner)}`{argument}` must be True or False; got {value!r}")
    return value
