r"""Folding batch norm into the linear map before it, for inference (the chapter on BN at inference).

In eval mode a batch-norm layer is a fixed per-channel affine map,

.. math::

    \mathrm{BN}(z) = \gamma \frac{z - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta
    = s \odot z + (\beta - s \odot \hat\mu),
    \qquad s = \frac{\gamma}{\sqrt{\hat\sigma^2+\epsilon}},

so after a linear map :math:`z = Wx + b` it can be merged into it:
:math:`W' = s \odot W` (row by row, one row per output channel) and
:math:`b' = s \odot (b - \hat\mu) + \beta`.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnbook.nn._renorm import GhostBatchNorm, _BatchRenorm

__all__ = ["fold_batch_norm", "fold_batch_norms"]

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (_BatchNorm, _BatchRenorm)


@torch.no_grad()
def fold_batch_norm(layer: nn.Module, bn: _BatchNorm) -> nn.Module:
    """A new layer of the same type as ``layer`` whose output is ``bn(layer(x))`` in eval mode.

    Parameters
    ----------
    layer : nn.Linear or nn.Conv1d/2d/3d
        With or without bias. Not changed.
    bn : batch-norm layer (torch's or bnbook's) with running statistics
        With or without affine parameters. Not changed.

    Returns
    -------
    nn.Module
        A copy of ``layer`` with folded weight and a bias, in eval mode,
        with the dtype and device of ``layer``'s weight.

    Raises
    ------
    ValueError
        For a layer type that cannot be folded (e.g. a transposed convolution),
        a batch norm without running statistics, or a channel mismatch.

    Examples
    --------
    >>> conv, bn = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
    >>> fused = fold_batch_norm(conv, bn.eval())
    >>> x = torch.randn(2, 3, 5, 5)
    >>> torch.allclose(fused(x), bn(conv(x)), atol=1e-5)
    True
    """
    if type(layer) not in _FOLDABLE:
        raise ValueError(
            f"fold_batch_norm folds into nn.Linear or nn.Conv1d/2d/3d, got {type(layer).__name__}"
        )
    if not isinstance(bn, (_BatchNorm, _BatchRenorm)):
        raise ValueError(f"fold_batch_norm needs a batch-norm layer, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "the batch norm has no running statistics (track_running_stats=False): in eval mode it "
            "still normalizes with batch statistics, which no fixed linear map can reproduce"
        )
    out_channels = layer.weight.shape[0]
    if bn.num_features != out_channels:
        raise ValueError(
            f"{type(layer).__name__} has {out_channels} output channels but the batch norm "
            f"normalizes {bn.num_features}"
        )
    dtype = layer.weight.dtype
    acc = torch.float64  # fold in double precision, then round once
    scale = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(acc)
    shift = -bn.running_mean.to(acc) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(acc)
    folded = copy.deepcopy(layer).eval()
    weight = layer.weight.to(acc) * scale.view((-1,) + (1,) * (layer.weight.dim() - 1))
    bias = shift if layer.bias is None else layer.bias.to(acc) * scale + shift
    folded.weight = nn.Parameter(weight.to(dtype), requires_grad=layer.weight.requires_grad)
    folded.bias = nn.Parameter(bias.to(dtype), requires_grad=layer.weight.requires_grad)
    return folded


def fold_batch_norms(model: nn.Module, *example_inputs: torch.Tensor) -> fx.GraphModule:
    """A copy of ``model`` in which every Linear/Conv whose output feeds only a batch norm absorbs it.

    The model is traced with ``torch.fx``, so any module whose forward fx can
    trace works, not only ``nn.Sequential``; execution order, not attribute
    order, decides what follows what. A pair is folded only when that is exact
    for every call of the model:

    * the layer is called once, and nothing else reads its parameters (a
      layer used twice, or whose weight is shared or read directly, keeps its
      batch norm: folding would change its other uses too);
    * its output goes to the batch norm and nowhere else;
    * the batch norm normalizes the layer's output channels. For a
      convolution that is always so (channels on dim 1). A ``Linear`` puts
      its features on the *last* dim, so the pair folds only when that is
      dim 1, i.e. the Linear's output is ``(N, C)``. With ``example_inputs``
      the shapes are propagated and checked. Without them, a
      ``Linear -> BatchNorm1d`` pair of matching sizes is folded into a
      Linear that accepts only 2-D input and says so for any other
      (``(N, L, F)`` input, where the batch norm would normalize over ``L``).

    Batch-norm layers after anything else (an activation, an addition, a
    second use) are kept. Batch renormalization layers fold like batch norm
    (in eval mode they are one). The copy is in eval mode; the original is not changed.

    Parameters
    ----------
    model : nn.Module
    *example_inputs : Tensor, optional
        Inputs for one call of ``model``, used only to learn the shapes.

    Raises
    ------
    ValueError
        If a batch-norm layer of ``model`` is in training mode: folding is
        only valid with the running statistics (call ``model.eval()``).
    """
    training = [name for name, m in model.named_modules() if isinstance(m, _NORMS) and m.training]
    if training:
        raise ValueError(
            f"batch-norm layers in training mode cannot be folded; call model.eval() ({training})"
        )
    root = copy.deepcopy(model).eval()
    traced = fx.GraphModule(root, _Tracer().trace(root))
    if example_inputs:
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(traced).propagate(*example_inputs)
    modules = dict(traced.named_modules())
    calls: dict[str, int] = {}
    read_params: set[str] = set()
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
        elif node.op == "get_attr":
            read_params.add(node.target.rpartition(".")[0])
    owners: dict[int, int] = {}
    for _, p in traced.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _NORMS):
            continue
        prev = node.args[0] if node.args else node.kwargs.get("input")
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        layer, bn = modules[prev.target], modules[node.target]
        if type(layer) not in _FOLDABLE or bn.running_mean is None:
            continue
        if calls[prev.target] != 1 or prev.target in read_params:
            continue  # the layer has other uses, which must keep its own weights
        if any(owners[id(p)] > 1 for p in layer.parameters()):
            continue  # a parameter shared with another module
        if bn.num_features != layer.weight.shape[0]:
            continue  # e.g. Linear on (N, L, F) with BatchNorm1d(L): not a per-output-channel map
        guarded = False
        if isinstance(layer, nn.Linear):
            meta = prev.meta.get("tensor_meta")
            if meta is not None and len(meta.shape) != 2:
                continue  # the batch norm normalizes dim 1 of a (N, L, F) output: not foldable
            guarded = meta is None
        folded = fold_batch_norm(layer, bn)
        if guarded:
            folded.__class__ = _FoldedLinear
        _set_submodule(traced, prev.target, folded)
        node.replace_all_uses_with(prev)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


class _FoldedLinear(nn.Linear):
    """A Linear that has absorbed a ``BatchNorm1d`` over its (N, C) output; it refuses other shapes."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 2:
            raise ValueError(
                f"this Linear absorbed a BatchNorm1d that normalizes dim 1 of a (N, C) output, so it "
                f"takes (N, F) input only; got {input.dim()}-D input of shape {tuple(input.shape)}. "
                "Pass an example input to fold_batch_norms so that it can check the shapes when it folds."
            )
        return super().forward(input)


class _Tracer(fx.Tracer):
    """Keeps every normalization layer a leaf: bnbook's, batch renorm, ghost batch norm (torch's are)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (*_NORMS, GhostBatchNorm)) or super().is_leaf_module(m, module_qualified_name)


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)
