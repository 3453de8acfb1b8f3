"""PyTorch layers of bnbook, drop-in for ``torch.nn``'s, with their own arithmetic.

Modules
-------
_batchnorm
    ``BatchNorm1d/2d/3d``, their autograd Function and the functional ``batch_norm``
    (chapters 2 to 5, 7).
_tools
    Tools that act on the batch-norm layers of any model: finding them and
    recalibrating their running statistics (chapter 4).
_renorm
    Batch norm for small batches: Batch Renormalization and ghost batch norm (chapter 13).
_sync
    ``SyncBatchNorm``: statistics of the global batch across processes (chapter 14).
_fold
    Folding batch norm into the Linear or Conv layer before it, for inference.
"""

from bnbook.nn._batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormFunction, batch_norm
from bnbook.nn._fold import fold_batch_norm, fold_batch_norms
from bnbook.nn._renorm import BatchRenorm1d, BatchRenorm2d, GhostBatchNorm, renorm_limits
from bnbook.nn._sync import SyncBatchNorm
from bnbook.nn._tools import batch_norm_layers, recalibrate_bn

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormFunction",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "GhostBatchNorm",
    "SyncBatchNorm",
    "batch_norm",
    "batch_norm_layers",
    "fold_batch_norm",
    "fold_batch_norms",
    "recalibrate_bn",
    "renorm_limits",
]
