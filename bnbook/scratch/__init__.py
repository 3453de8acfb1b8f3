"""Normalization from scratch, in NumPy only.

Pure kernels do the arithmetic and return ``(out, cache)``; layers such as
:class:`BatchNorm` only hold parameters, running statistics and the mode.
Conventions are PyTorch's. Nothing in this package imports torch or matplotlib.

Modules
-------
_batchnorm
    Batch norm: the forward and backward kernels and the :class:`BatchNorm` layer
    (chapters 2 to 5).
_family
    Its relatives that normalize each sample on its own: layer, group and
    instance norm, forward and backward kernels (chapter 9).
_renorm
    Batch renormalization for small batches: forward and backward kernels, the
    running-statistics update and the warm-up schedule (chapter 13).
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
from bnbook.scratch._family import (
    NormCache,
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
    layer_norm,
    layer_norm_backward,
)
from bnbook.scratch._renorm import (
    RenormCache,
    batch_renorm_backward,
    batch_renorm_forward,
    batch_renorm_running_update,
    renorm_limits,
)

__all__ = [
    "BNCache",
    "BatchNorm",
    "NormCache",
    "RenormCache",
    "batch_norm_backward",
    "batch_norm_backward_graph",
    "batch_norm_forward",
    "batch_norm_inference_forward",
    "batch_renorm_backward",
    "batch_renorm_forward",
    "batch_renorm_running_update",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "reduction_axes",
    "renorm_limits",
]
