"""Benchmark: forward + backward of bnbook's batch norms against ``torch.nn.BatchNorm2d``.

Run with ``make bench`` (or ``python -m bnbook.bench``). The three
implementations run interleaved in one process, round after round, so that a
noisy machine slows them alike; the report gives medians and the ratios to
native torch. It also estimates the memory-traffic floor: the least number of
bytes a forward+backward pass must move, divided by the measured copy
bandwidth of this machine.

Targets: ``bnbook.nn`` within 2.0x of native, ``bnbook.scratch`` within 3.0x.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from bnbook import nn as bnn
from bnbook import scratch

__all__ = ["copy_bandwidth", "main", "run"]

TARGETS = {"bnbook.nn.BatchNorm2d": 2.0, "bnbook.scratch.BatchNorm": 3.0}


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


def copy_bandwidth(nbytes: int, repeats: int = 20) -> float:
    """Measured bytes per second of a large tensor copy (read + write counted)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)


def run(shape: tuple[int, ...] = (64, 64, 32, 32), rounds: int = 15, warmup: int = 3) -> dict[str, float]:
    """Median seconds per forward+backward for each implementation, measured interleaved."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    dy = torch.randn(shape, generator=gen)
    c = shape[1]
    steps = {
        "torch.nn.BatchNorm2d": _torch_step(torch.nn.BatchNorm2d(c), x, dy),
        "bnbook.nn.BatchNorm2d": _torch_step(bnn.BatchNorm2d(c), x, dy),
        "bnbook.scratch.BatchNorm": _scratch_step(scratch.BatchNorm(c), x.numpy(), dy.numpy()),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table; with ``--check``, return 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    shape = (64, 64, 32, 32)
    nbytes = int(np.prod(shape)) * 4
    med = run(shape, rounds=args.rounds)
    bw = copy_bandwidth(nbytes)
    # Forward reads x and writes y; backward reads dy and x and writes dx.
    floor_bytes = 5 * nbytes
    floor = floor_bytes / bw
    native = med["torch.nn.BatchNorm2d"]
    print(f"forward+backward, input {shape} float32, CPU, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    print(f"memory-traffic floor: {floor_bytes / 2**20:.0f} MiB at {bw / 1e9:.1f} GB/s copy bandwidth "
          f"= {floor * 1e3:.2f} ms")
    print(f"{'implementation':<28}{'ms':>9}{'x native':>10}{'x floor':>9}   target")
    ok = True
    for name, t in med.items():
        ratio = t / native
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            met = ratio <= target
            ok &= met
            verdict = f"<= {target:.1f}x  {'met' if met else 'MISSED'}"
        print(f"{name:<28}{t * 1e3:>9.2f}{ratio:>10.2f}{t / floor:>9.1f}   {verdict}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
