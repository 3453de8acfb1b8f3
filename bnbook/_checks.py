"""Input validation shared by the NumPy and PyTorch layers."""

from __future__ import annotations

import numbers

__all__ = [
    "BadInputError",
    "UnsupportedDtypeError",
    "check_eps",
    "check_momentum",
    "check_num_features",
    "check_spatial_rank",
]


class BadInputError(ValueError, RuntimeError):
    """Bad input where ``torch.nn`` raises ``RuntimeError`` (a wrong channel count, mixed dtypes).

    It is a ``ValueError`` (bnbook's rule for bad user input) and a
    ``RuntimeError`` (what torch raises in the same case), so code written
    against either library catches it.
    """


class UnsupportedDtypeError(ValueError, NotImplementedError):
    """An input dtype batch norm does not compute in (integers); torch raises ``NotImplementedError``."""


def check_num_features(num_features: object) -> int:
    """Return ``num_features`` as an int, or raise ``ValueError``."""
    if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
        raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
    if num_features <= 0:
        raise ValueError(f"num_features must be a positive integer, got {num_features}")
    return int(num_features)


def check_eps(eps: object) -> float:
    """Return ``eps`` as a float, or raise ``ValueError`` unless it is finite and > 0."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if not (float(eps) > 0.0 and float(eps) != float("inf")):
        raise ValueError(f"eps must be a positive finite number, got {eps}")
    return float(eps)


def check_momentum(momentum: object) -> float | None:
    """Return ``momentum`` (a float in [0, 1], or None for a cumulative average)."""
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise ValueError(f"momentum must be a number in [0, 1] or None, got {momentum!r}")
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
    return float(momentum)


def check_spatial_rank(ndim: int, allowed: tuple[int, ...], name: str) -> None:
    """Raise ``ValueError`` unless an input of ``ndim`` dimensions is in ``allowed``."""
    if ndim not in allowed:
        wanted = " or ".join(f"{d}D" for d in allowed)
        raise ValueError(f"{name} expected {wanted} input (got {ndim}D input)")
