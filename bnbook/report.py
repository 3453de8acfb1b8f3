"""Numbers for the prose: rounded to what matters before they are stored.

A full-precision float differs in its last bits from one CPU to another (and
between thread counts), so a stored output that carries all of its digits
does not reproduce on a reader's machine. Every number a chapter glues or
prints goes through :func:`sig` first; :func:`glue` does it for you.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["glue", "sig"]


def sig(value: Any, digits: int = 3) -> Any:
    """Round ``value`` to ``digits`` significant digits.

    Floats (Python or NumPy, and 0-d tensors via ``float``) come back as Python
    floats; integers and bools unchanged; arrays, lists and tuples element by
    element (as lists or tuples, never arrays). Non-finite values pass through.

    >>> sig(0.4880847930908203)
    0.488
    >>> sig([1234.5, 0.000123456], 2)
    [1200.0, 0.00012]
    """
    if not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be a positive integer, got {digits!r}")
    if isinstance(value, (bool, np.bool_, numbers.Integral)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(sig(v, digits) for v in value)
    if isinstance(value, np.ndarray):
        return [sig(v, digits) for v in value.tolist()] if value.ndim else sig(value.item(), digits)
    try:
        x = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"sig rounds numbers, got {type(value).__name__}") from err
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def glue(name: str, value: Any, digits: int = 3) -> Any:
    """``myst_nb.glue(name, sig(value, digits), display=False)``; returns the rounded value.

    Strings and integers are glued unchanged. Use ``{glue:text}`name``` in
    the prose, with a format such as ``:.2f`` when the trailing zeros matter.
    """
    from myst_nb import glue as _glue

    stored = value if isinstance(value, str) else sig(value, digits)
    _glue(name, stored, display=False)
    return stored
