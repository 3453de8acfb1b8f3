"""Benchmark: forward + backward of bnbook's batch norms against ``torch.nn.BatchNorm2d``.

Run with ``make bench`` (or ``python -m bnbook.bench``). Everything is timed
interleaved in one process, round after round, so that a noisy machine slows
every entry alike:

* torch's native layer, ``bnbook.nn.BatchNorm2d`` and ``bnbook.scratch.BatchNorm``;
* a **sum pass** (read the tensor once) and a **copy pass** (read it once and
  write it once), from which the memory-traffic floor is derived in the same
  loop. A streaming training-mode forward+backward moves at least 8 tensor
  passes: it reads x for the statistics, reads x and writes y, reads dy and x
  for the two gradient sums, then reads dy and x and writes dx. That is 6
  reads and 2 writes, so ``floor = 4 * t_sum + 2 * t_copy``.

Each ratio is taken within a round (both entries timed back to back) and the
report gives its median with the min-max over rounds. The table is printed
twice: at torch's default thread count, and at one thread, where NumPy's
single-threaded kernels and torch's compare like for like.

The ladder, slowest first: autograd through primitive operations, the NumPy
closed form, ``bnbook.nn``'s analytic Function, ``bnbook.fast``'s fused
kernels (when they build here), torch's native kernel, and the floor.

Targets (at the default thread count): ``bnbook.nn`` within 2.0x of native,
``bnbook.scratch`` within 3.0x, ``bnbook.fast`` at or below native.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from bnbook import nn as bnn
from bnbook import scratch

__all__ = ["Row", "main", "run"]

TARGETS = {"bnbook.nn.BatchNorm2d": 2.0, "bnbook.scratch.BatchNorm": 3.0, "bnbook.fast.BatchNorm2d": 1.0}
NATIVE = "torch.nn.BatchNorm2d"
LAYERS = (
    "autograd through primitives",
    "bnbook.scratch.BatchNorm",
    "bnbook.nn.BatchNorm2d",
    "bnbook.fast.BatchNorm2d",
    NATIVE,
)


class _Primitives(torch.nn.Module):
    """Batch norm written with plain tensor operations; autograd derives the backward pass."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(c))
        self.bias = torch.nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((0, 2, 3), keepdim=True)
        var = (x - mean).square().mean((0, 2, 3), keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * self.weight.view(1, -1, 1, 1) + self.bias.view(
            1, -1, 1, 1
        )


class Row(NamedTuple):
    """One entry of the table: seconds per call, and ratios to native and to the floor."""

    name: str
    median_s: float
    min_s: float
    max_s: float
    x_native: tuple[float, float, float]  # median, min, max over rounds
    x_floor: tuple[float, float, float]


def _torch_step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        xi = x.detach().requires_grad_(True)
        module(xi).backward(dy)

    return step


def _scratch_step(layer: scratch.BatchNorm, x: np.ndarray, dy: np.ndarray) -> Callable[[], None]:
    def step() -> None:
        layer(x)
        layer.backward(dy)

    return step


def _summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def run(shape: tuple[int, ...] = (64, 64, 32, 32), rounds: int = 15, warmup: int = 3) -> list[Row]:
    """Time every entry interleaved, ``rounds`` times after ``warmup`` rounds; one row per layer."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    dy = torch.randn(shape, generator=gen)
    dst = torch.empty_like(x)
    c = shape[1]
    from bnbook import fast

    steps: dict[str, Callable[[], object]] = {
        NATIVE: _torch_step(torch.nn.BatchNorm2d(c), x, dy),
        "autograd through primitives": _torch_step(_Primitives(c), x, dy),
        "bnbook.nn.BatchNorm2d": _torch_step(bnn.BatchNorm2d(c), x, dy),
        "bnbook.scratch.BatchNorm": _scratch_step(scratch.BatchNorm(c), x.numpy(), dy.numpy()),
        "sum pass": lambda: x.sum(),
        "copy pass": lambda: dst.copy_(x),
    }
    if fast.available():
        steps["bnbook.fast.BatchNorm2d"] = _torch_step(fast.BatchNorm2d(c), x, dy)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    floors = [4 * s + 2 * c_ for s, c_ in zip(times["sum pass"], times["copy pass"], strict=True)]
    times["floor (4 sums + 2 copies)"] = floors
    rows = []
    for name in (*LAYERS, "floor (4 sums + 2 copies)"):
        if name not in times:
            continue
        t = times[name]
        to_native = [a / b for a, b in zip(t, times[NATIVE], strict=True)]
        to_floor = [a / b for a, b in zip(t, floors, strict=True)]
        rows.append(Row(name, statistics.median(t), min(t), max(t), _summary(to_native), _summary(to_floor)))
    return rows


def _print_table(rows: list[Row], shape: tuple[int, ...], rounds: int, threads: int, judge: bool) -> bool:
    nbytes = int(np.prod(shape)) * 4
    print(
        f"\nforward+backward, input {shape} float32 ({nbytes / 2**20:.0f} MiB), CPU, {threads} thread(s), "
        f"{rounds} interleaved rounds: median [min-max]"
    )
    print(f"{'entry':<28}{'ms':>22}{'x native':>22}{'x floor':>22}   target")
    ok = True
    for row in rows:
        verdict = ""
        target = TARGETS.get(row.name)
        if target is not None and judge:
            met = row.x_native[0] <= target
            ok &= met
            verdict = f"<= {target:.1f}x  {'met' if met else 'MISSED'}"
        ms = f"{row.median_s * 1e3:.2f} [{row.min_s * 1e3:.2f}-{row.max_s * 1e3:.2f}]"
        xn = "{:.2f} [{:.2f}-{:.2f}]".format(*row.x_native)
        xf = "{:.2f} [{:.2f}-{:.2f}]".format(*row.x_floor)
        print(f"{row.name:<28}{ms:>22}{xn:>22}{xf:>22}   {verdict}")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Print the tables; with ``--check``, return 1 when a target is missed at the default threads."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    shape = (64, 64, 32, 32)
    default_threads = torch.get_num_threads()
    ok = _print_table(run(shape, rounds=args.rounds), shape, args.rounds, default_threads, judge=True)
    if default_threads > 1:
        try:
            torch.set_num_threads(1)
            _print_table(run(shape, rounds=args.rounds), shape, args.rounds, 1, judge=False)
        finally:
            torch.set_num_threads(default_threads)
    from bnbook import fast

    print(
        "\nfloor: the least a streaming forward+backward moves (6 reads, 2 writes of the tensor), "
        f"timed in the same loop. bnbook.fast: {fast.status()}"
    )
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
