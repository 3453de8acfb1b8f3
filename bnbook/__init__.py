"""bnbook: the code behind the interactive textbook on batch normalization.

Submodules
----------
scratch
    Batch norm in NumPy alone (never imports torch).
nn
    Drop-in ``BatchNorm1d/2d/3d`` for PyTorch with their own autograd Function.
gradcheck
    Centred-difference gradients and relative errors.
fast
    Fused C++ kernels for the CPU, built on first use (else the eager path).
models, batched, grouped, training
    Small networks, a data-dependent initialization, and training loops (many
    networks at once in ``batched`` and ``grouped``).
stats, report
    Paired comparisons over seeds, and numbers rounded for the prose.
bench
    ``make bench``: the per-call overhead and the configuration table.

``import bnbook`` stays light: torch is imported only by :mod:`bnbook.nn` and
inside :func:`get_device`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["get_device", "__version__"]
__version__ = "0.1.0"


def get_device() -> torch.device:
    """The device the chapters compute on.

    ``BNBOOK_DEVICE`` when set (for example ``cpu`` or ``cuda``), else CUDA if
    available, else Apple's MPS if available, else the CPU.
    """
    import torch

    name = os.environ.get("BNBOOK_DEVICE", "").strip()
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise ValueError(f"BNBOOK_DEVICE={name!r} is not a torch device: {err}") from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"BNBOOK_DEVICE={name!r}, but torch finds no CUDA device here")
        mps = getattr(torch.backends, "mps", None)
        if device.type == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError(f"BNBOOK_DEVICE={name!r}, but torch finds no MPS device here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
