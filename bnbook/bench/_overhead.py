"""Per-call overhead of ``bnbook.nn`` against torch's layer on a small batch; see :mod:`bnbook.bench`.

At 64 x 100 the arithmetic of batch norm takes a few microseconds, so a call's
time is mostly Python, dispatch and autograd bookkeeping: the cost a reader
pays for using the book's own layer in a small network (chapter 1 trains
three of them at every step). Both layers are timed in one loop, round after
round (torch's, then bnbook's, each for a fixed number of calls), and each
round gives one ratio; the report is the median ratio with the 3rd-lowest and
3rd-highest as its range, so a noisy machine slows both alike.

In training, bnbook.nn's short path runs from C++ where bnbook's kernels are
built (see :mod:`bnbook.nn._batchnorm`); the Python Function is then timed
too, in the same rounds, so the report shows what each path costs.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from bnbook import nn as bnn
from bnbook.nn import _batchnorm as eager

__all__ = ["OVERHEAD_TARGETS", "Overhead", "overhead", "print_overhead"]

#: The most that bnbook.nn may cost per call, as a multiple of torch's layer.
OVERHEAD_TARGETS = {"train": 1.3, "eval": 1.5}


class Overhead(NamedTuple):
    """One mode's per-call times (microseconds, medians over rounds) and per-round ratios.

    ``path`` says how bnbook.nn's training short path ran: ``"C++"`` (the
    compiled copy that bnbook.nn takes where bnbook's kernels are built) or
    ``"Python"``. With the compiled copy in use, the Python Function is timed
    too, in the same rounds (``python_us``, ``python_ratio``), for comparison.
    """

    mode: str
    threads: int
    native_us: float
    bnbook_us: float
    ratio: tuple[float, float, float]  # median, 3rd lowest, 3rd highest
    path: str = "Python"
    python_us: float | None = None
    python_ratio: tuple[float, float, float] | None = None

    @property
    def target(self) -> float:
        return OVERHEAD_TARGETS[self.mode]


def _spread(values: list[float]) -> tuple[float, float, float]:
    v = sorted(values)
    k = min(2, (len(v) - 1) // 2)
    return v[len(v) // 2], v[k], v[-1 - k]


def overhead(
    shape: tuple[int, int] = (64, 100),
    rounds: int = 25,
    calls: int = 200,
    seed: int = 0,
    threads: int | None = None,
) -> list[Overhead]:
    """Time ``bnbook.nn.BatchNorm1d`` against ``torch.nn.BatchNorm1d`` per call, interleaved.

    ``train``: forward and backward in training mode (running statistics
    updated, gradients of input, weight and bias). ``eval``: forward in eval
    mode under ``torch.no_grad()``. ``threads``: torch's intra-op threads for
    the measurement (default: as set), restored afterwards.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _overhead(shape, rounds, calls, seed)
    finally:
        torch.set_num_threads(before)


def _overhead(shape: tuple[int, int], rounds: int, calls: int, seed: int) -> list[Overhead]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).requires_grad_(True)
    dy = torch.randn(shape, generator=gen)
    out = []
    for mode in ("train", "eval"):
        layers = [torch.nn.BatchNorm1d(shape[1]), bnn.BatchNorm1d(shape[1])]
        for layer in layers:
            layer.train(mode == "train")

        def step(layer, mode=mode):
            if mode == "train":
                layer(x).backward(dy)
            else:
                with torch.no_grad():
                    layer(x)

        for layer in layers:  # warm up both (bnbook.nn's first training call picks its short path)
            for _ in range(20):
                step(layer)
        compiled = eager.TRAIN_ROWS_PATHS[eager.BatchNormFunction]
        both = mode == "train" and compiled is not eager._TRAIN_ROWS
        blocks = [(layers[0], None), (layers[1], None)] + ([(layers[1], eager._TRAIN_ROWS)] if both else [])
        times: list[list[float]] = [[] for _ in blocks]
        for _ in range(rounds):
            for k, (layer, path) in enumerate(blocks):
                if path is not None:
                    eager.TRAIN_ROWS_PATHS[eager.BatchNormFunction] = path
                try:
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        step(layer)
                    times[k].append((time.perf_counter() - t0) / calls)
                finally:
                    eager.TRAIN_ROWS_PATHS[eager.BatchNormFunction] = compiled
        med = [sorted(t)[rounds // 2] * 1e6 for t in times]
        ratios = [[b / a for a, b in zip(times[0], t, strict=True)] for t in times[1:]]
        out.append(
            Overhead(
                mode, torch.get_num_threads(), med[0], med[1], _spread(ratios[0]),
                "C++" if both else "Python",
                med[2] if both else None,
                _spread(ratios[1]) if both else None,
            )
        )
    return out


def print_overhead(rows: list[Overhead], file=None) -> bool:
    """Print the overhead rows; return whether every median ratio is within its target."""
    print(
        "\nper-call overhead: bnbook.nn.BatchNorm1d / torch.nn.BatchNorm1d on (64, 100): "
        "median of per-round ratios [3rd lowest-3rd highest]",
        file=file,
    )
    ok = True
    for r in rows:
        met = r.ratio[0] <= r.target
        ok &= met
        what = "forward+backward" if r.mode == "train" else "forward, no_grad"
        path = f" ({r.path} short path)" if r.mode == "train" else ""
        print(
            f"  {r.mode:<5} {what:<17} {r.threads}T  "
            f"torch {r.native_us:6.1f} us, bnbook {r.bnbook_us:6.1f} us{path}: "
            f"{r.ratio[0]:.2f} [{r.ratio[1]:.2f}-{r.ratio[2]:.2f}]  target <= {r.target:.1f}: "
            f"{'met' if met else 'MISSED'}",
            file=file,
        )
        if r.mode == "train" and r.path == "Python":
            print(f"  {'':<5} (bnbook's kernels are not built here, so bnbook.nn runs its short path in "
                  "Python; `make dev` builds them)", file=file)
        if r.python_ratio is not None:
            p = r.python_ratio
            print(
                f"  {'':<5} {'':<17} {'':>2}  {'':>15}  bnbook {r.python_us:6.1f} us (Python short path, "
                f"for comparison): {p[0]:.2f} [{p[1]:.2f}-{p[2]:.2f}]",
                file=file,
            )
    return ok
