"""One call to seed every random number generator the chapters use."""

from __future__ import annotations

import random

import numpy as np

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python's ``random``, NumPy's legacy global state and torch (if installed).

    Returns a fresh ``numpy.random.Generator`` seeded with ``seed``, which is
    what new code should draw from.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # the NumPy chapters run without torch
        pass
    else:
        torch.manual_seed(seed)
    return np.random.default_rng(seed)
