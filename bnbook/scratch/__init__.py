"""Normalization from scratch, in NumPy only.

Pure kernels do the arithmetic and return ``(out, cache)``; layers such as
:class:`BatchNorm` only hold parameters, running statistics and the mode.
Conventions are PyTorch's. Nothing in this package imports torch or matplotlib.

Modules
-------
_batchnorm
    Batch norm: the forward and backward kernels and the :class:`BatchNorm` layer
    (chapters 2 to 5).
"""

from bnbook.scratch._batchnorm import (
    BatchNorm,
    BNCache,
    batch_norm_backward,
    batch_norm_backward_graph,
    batch_norm_forward,
    batch_norm_inference_forward,
    reduction_axes,
)

__all__ = [
    "BNCache",
    "BatchNorm",
    "batch_norm_backward",
    "batch_norm_backward_graph",
    "batch_norm_forward",
    "batch_norm_inference_forward",
    "reduction_axes",
]
