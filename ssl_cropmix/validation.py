"""Argument validators shared by every public constructor (one place, one message format).

A bool or int argument given as anything else is refused with the parameter's name and the
value, instead of being coerced: ``bool("no")`` is ``True`` and ``int(2.7)`` is ``2``, so a
string from a hand-written config or a typo in Python would otherwise change a run silently.
This module imports nothing of the package, so any module may use it.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def check_bool(name: str, value: Any, optional: bool = False) -> bool | None:
    """Validate a bool argument (Python or NumPy bool; not ``"no"``, not ``0`` / ``1``).

    Args:
        name: the parameter, for the message.
        value: the value given.
        optional: ``None`` is accepted (and returned) too.

    Returns:
        ``value`` as a Python ``bool`` (or ``None``).

    Raises:
        TypeError: naming ``name`` and ``value`` (a wrong type, never coerced).
    """
    if optional and value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool{' or None' if optional else ''}, got {value!r}")
    return bool(value)


def check_int(name: str, value: Any, low: int | None = None, optional: bool = False) -> int | None:
    """Validate an integer argument (Python or NumPy int, not a bool, not a float or string).

    Args:
        name: the parameter, for the message.
        value: the value given.
        low: smallest value accepted (``None``: no bound).
        optional: ``None`` is accepted (and returned) too.

    Returns:
        ``value`` as a Python ``int`` (or ``None``).

    Raises:
        ValueError: naming ``name`` and ``value``.
    """
    if optional and value is None:
        return None
    bad = isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
    if bad or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise ValueError(f"{name} must be an int{bound}{' or None' if optional else ''}, got {value!r}")
    return int(value)


def check_bools(**values: Any) -> None:
    """:func:`check_bool` on each keyword (``check_bools(shuffle=shuffle, pin=pin)``): one line
    in a constructor for all its flags.

    Raises:
        TypeError: naming the first keyword whose value is not a bool.
    """
    for name, value in values.items():
        check_bool(name, value)
