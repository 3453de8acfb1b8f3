"""Shared fixtures for bnbook's unit tests.

Every test compares bnbook against an answer that does not come from bnbook:
PyTorch's own batch norm, a closed form, or finite differences.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: no display needed

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Run torch single-threaded: the tensors here are tiny, and on a shared machine
    torch's worker threads spin against other processes (measured: 5x slower with 2).
    Also registers the browser tests' summary, which must exist in the controlling
    process of ``pytest -n`` too, to gather what the workers measured."""
    from browsing import register_summary

    register_summary(config)
    try:
        import torch
    except ImportError:  # pragma: no cover - the NumPy-only tests still run
        return
    torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, fixed-seed NumPy generator for each test."""
    return np.random.default_rng(12345)


# The browser tests' session fixtures, shared by every module that uses them (one Chromium, one server).
from browsing import base_url, browser, site, summary  # noqa: E402, F401
