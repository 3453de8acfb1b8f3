"""The arithmetic of ``chapters/14_across_processes``: combining shards, counting layers and messages.

NumPy and the standard library only: the worker processes never need it, and
the notebook can use it without starting any.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "collectives_per_pass",
    "combine_shards",
    "resnet50_bn_channels",
    "resnet50_parameter_count",
    "ring_allgather_seconds",
    "ring_allreduce_seconds",
]

#: Names of ``torch.distributed`` collectives, as they appear in calls such as ``dist.all_reduce(...)``.
COLLECTIVE_NAMES = frozenset(
    {
        "all_reduce",
        "all_gather",
        "all_gather_single",
        "all_gather_into_tensor",
        "all_gather_object",
        "broadcast",
        "reduce_scatter",
        "reduce_scatter_tensor",
        "all_to_all",
        "all_to_all_single",
        "barrier",
    }
)


def combine_shards(shards: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and biased variance of the concatenated shards, from per-shard sums only.

    Two rounds, as :class:`bnbook.nn.SyncBatchNorm` does: the sums and counts give the
    global mean; then each shard's sum of squared deviations from that mean gives
    the global variance. ``shards`` are arrays of shape (n_k, features); n_k may differ.
    """
    counts = [len(s) for s in shards]
    n = sum(counts)
    mean = sum(s.sum(axis=0) for s in shards) / n
    var = sum(((s - mean) ** 2).sum(axis=0) for s in shards) / n
    return mean, var


def resnet50_bn_channels() -> list[int]:
    """Channels of the 53 batch-norm layers of ResNet-50 (He et al., 2016), in order.

    The stem has one (64); each bottleneck block of width w has three (w, w, 4w), and
    the first block of each of the four stages one more on its projection shortcut (4w).
    """
    channels = [64]
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for b in range(blocks):
            channels += [width, width, 4 * width]
            if b == 0:
                channels.append(4 * width)
    return channels


def resnet50_parameter_count() -> int:
    """Learnable parameters of ResNet-50 for 1000 classes, counted layer by layer (25,557,032)."""
    total = 7 * 7 * 3 * 64  # stem convolution
    c_in = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for b in range(blocks):
            total += c_in * width + 9 * width * width + width * 4 * width
            if b == 0:
                total += c_in * 4 * width  # projection shortcut
            c_in = 4 * width
    total += 2 * sum(resnet50_bn_channels())  # gamma and beta
    return total + 2048 * 1000 + 1000  # classifier


def ring_allreduce_seconds(
    numbers: float,
    world_size: int,
    latency_s: float,
    bandwidth_bytes_s: float,
    bytes_per_number: int = 4,
    latency_per_step: bool = False,
) -> float:
    r"""Time of one all-reduce in the latency-bandwidth model.

    .. math::

        t = \ell + 2\,\frac{P-1}{P}\,\frac{k\,b}{W}

    with P processes, a fixed cost :math:`\ell` per all-reduce (latency), k numbers
    of b bytes and link bandwidth W (bytes per second); a ring all-reduce sends
    each byte :math:`2(P-1)/P` times. By default the latency is paid once per
    all-reduce, whatever P; with ``latency_per_step`` it is paid at each of the
    ring's :math:`2(P-1)` steps, so :math:`t = 2(P-1)\,\ell + \dots`.
    """
    if world_size < 1 or latency_s < 0 or bandwidth_bytes_s <= 0:
        raise ValueError("need world_size >= 1, latency_s >= 0 and bandwidth_bytes_s > 0")
    p = world_size
    latency = 2 * (p - 1) * latency_s if latency_per_step else latency_s
    return latency + 2 * (p - 1) / p * numbers * bytes_per_number / bandwidth_bytes_s


def ring_allgather_seconds(
    numbers: float,
    world_size: int,
    latency_s: float,
    bandwidth_bytes_s: float,
    bytes_per_number: int = 4,
    latency_per_step: bool = False,
) -> float:
    r"""Time of one all-gather of k numbers from each of P processes, in the latency-bandwidth model.

    .. math::

        t = \ell + (P-1)\,\frac{k\,b}{W}

    Every process must receive the other :math:`P-1` contributions, so unlike an
    all-reduce the traffic grows with P. With ``latency_per_step`` the latency is
    paid at each of the ring's :math:`P-1` steps instead of once.
    """
    if world_size < 1 or latency_s < 0 or bandwidth_bytes_s <= 0:
        raise ValueError("need world_size >= 1, latency_s >= 0 and bandwidth_bytes_s > 0")
    latency = (world_size - 1) * latency_s if latency_per_step else latency_s
    return latency + (world_size - 1) * numbers * bytes_per_number / bandwidth_bytes_s


def _calls(node: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every collective call inside ``node``, in source order."""
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            name = sub.func.attr if isinstance(sub.func, ast.Attribute) else getattr(sub.func, "id", "")
            if name in COLLECTIVE_NAMES:
                found.append((sub.lineno, name))
    return sorted(found)


def _most_on_a_path(statements: Sequence[ast.stmt]) -> int:
    """The most collective calls that one run through ``statements`` can make (loops refused)."""
    total = 0
    for st in statements:
        if isinstance(st, ast.If):
            total += len(_calls(st.test)) + max(_most_on_a_path(st.body), _most_on_a_path(st.orelse))
        elif isinstance(st, (ast.For, ast.While, ast.AsyncFor)) and _calls(st):
            raise ValueError(f"a collective inside a loop (line {st.lineno}): its count depends on the data")
        elif isinstance(st, ast.Try):
            handlers = max((_most_on_a_path(h.body) for h in st.handlers), default=0)
            total += _most_on_a_path(st.body) + handlers + _most_on_a_path(st.orelse + st.finalbody)
        elif isinstance(st, (ast.With, ast.AsyncWith)):
            total += _most_on_a_path(st.body)
        else:
            total += len(_calls(st))
    return total


def collectives_per_pass(function_class: Any) -> dict[str, dict[str, Any]]:
    """Collectives that an autograd Function's ``forward`` and ``backward`` make, read from its source.

    Parses the class's source with :mod:`ast`, lists every call to a
    ``torch.distributed`` collective, and counts the most that one execution
    can make: calls in the two arms of an ``if``/``else`` exclude each other.
    Used on ``torch.nn.modules._functions.SyncBatchNorm``, whose collectives sit
    in such branches (one for NCCL and one for gloo; one for an empty shard).

    Returns
    -------
    dict
        For ``"forward"`` and ``"backward"``: ``calls``, a list of (line in the file,
        collective name), and ``per_layer``, the most collectives one call makes.
    """
    lines, first = inspect.getsourcelines(function_class)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    out: dict[str, dict[str, Any]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in ("forward", "backward"):
            calls = [(line + first - 1, name) for line, name in _calls(node)]
            out[node.name] = {"calls": calls, "per_layer": _most_on_a_path(node.body)}
    if set(out) != {"forward", "backward"}:
        raise ValueError(f"{function_class!r} has no forward and backward methods to read")
    return out
