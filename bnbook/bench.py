"""Benchmark: forward + backward of bnbook's batch norms against ``torch.nn.BatchNorm2d``.

Run with ``make bench`` (or ``python -m bnbook.bench``): it prints the
configuration table (:func:`config_table`), ``bnbook.fast`` against torch's
native layer and against the floor in every layout, dtype, size, mode and
thread count that the fused kernels serve; ``--ladder`` adds the ladder below.
Everything is timed
interleaved in one process, round after round, so that a noisy machine slows
every entry alike:

* torch's native layer, ``bnbook.nn.BatchNorm2d`` and ``bnbook.scratch.BatchNorm``;
* a **sum pass** (read the tensor once) and a **copy pass** (read it once and
  write it once), from which the memory-traffic floor is derived in the same
  loop. A streaming training-mode forward+backward moves at least 8 tensor
  passes: it reads x for the statistics, reads x and writes y, reads dy and x
  for the two gradient sums, then reads dy and x and writes dx. That is 6
  reads and 2 writes, so ``floor = 4 * t_sum + 2 * t_copy``. In eval mode
  the statistics pass and the paths through them drop out: the forward pass
  reads x and writes y, the backward pass reads dy and x for the sums and
  reads dy and writes dx, so ``floor = 2 * t_sum + 2 * t_copy``.

Each ratio is taken within a round (both entries timed back to back) and the
report gives its median with the min-max over rounds. The table is printed
twice: at torch's default thread count, and at one thread, where NumPy's
single-threaded kernels and torch's compare like for like. A short sweep over
sizes follows.

The ladder, slowest first: autograd through primitive operations, the NumPy
closed form, ``bnbook.nn``'s analytic Function, ``bnbook.fast``'s fused
kernels (when they build here), torch's native kernel, and the floor.
Chapter 16 walks down it, adding ``torch.compile`` (:func:`compiled_entry`),
the cost of fresh allocations (:func:`fresh_vs_refill`) and a counter of the
full-size tensor traffic each implementation moves (:func:`count_passes`).

Targets (at the default thread count): ``bnbook.nn`` within 2.0x of native,
``bnbook.scratch`` within 3.0x, ``bnbook.fast`` at or below native.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bnbook import nn as bnn
from bnbook import scratch

__all__ = [
    "CONFIGS",
    "AllocRow",
    "Cell",
    "Config",
    "TableRow",
    "config_cell",
    "config_table",
    "allocation_study",
    "PassCount",
    "Row",
    "SweepPoint",
    "compiled_entry",
    "count_passes",
    "floor_seconds",
    "fresh_vs_refill",
    "ladder",
    "main",
    "rows_from_times",
    "run",
    "shape_for_mib",
    "sweep",
]

TARGETS = {"bnbook.nn.BatchNorm2d": 2.0, "bnbook.scratch.BatchNorm": 3.0, "bnbook.fast.BatchNorm2d": 1.0}
NATIVE = "torch.nn.BatchNorm2d"
PRIMITIVES = "autograd through primitives"
COMPILED = "torch.compile(bnbook.nn.BatchNorm2d)"
FLOOR = "floor (4 sums + 2 copies)"
SUM, COPY = "sum pass", "copy pass"
LAYERS = (
    PRIMITIVES,
    "bnbook.scratch.BatchNorm",
    "bnbook.nn.BatchNorm2d",
    "bnbook.fast.BatchNorm2d",
    NATIVE,
)
#: ``(reads, writes)`` of the tensor that the least a streaming forward+backward must move.
FLOOR_PASSES = {True: (6, 2), False: (4, 2)}

Step = Callable[[], object]
#: Builds one timed step from ``(x, dy, train)``.
Factory = Callable[[torch.Tensor, torch.Tensor, bool], Step]


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


class SweepPoint(NamedTuple):
    """The ladder at one size: ``mib`` of float32 per tensor, its shape and its rows."""

    mib: float
    shape: tuple[int, ...]
    rounds: int
    rows: list[Row]


class AllocRow(NamedTuple):
    """Fresh ``empty`` + fill over refilling an existing tensor, at one size: median, min, max."""

    mib: float
    ratio: tuple[float, float, float]


class PassCount(NamedTuple):
    """Full-size tensor traffic of one call, in units of the input's size, as the dispatcher sees it."""

    reads: float
    writes: float
    allocations: int
    ops: int


# --- the entries ---------------------------------------------------------------------------------------


def _torch_step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Step:
    def step() -> None:
        xi = x.detach().requires_grad_(True)
        module(xi).backward(dy)

    return step


def _scratch_step(layer: scratch.BatchNorm, x: np.ndarray, dy: np.ndarray) -> Step:
    def step() -> None:
        layer(x)
        layer.backward(dy)

    return step


def _module_factory(make: Callable[[int], torch.nn.Module]) -> Factory:
    def factory(x: torch.Tensor, dy: torch.Tensor, train: bool) -> Step:
        module = make(x.shape[1]).to(device=x.device, dtype=x.dtype).train(train)
        return _torch_step(module, x, dy)

    return factory


def _scratch_factory(x: torch.Tensor, dy: torch.Tensor, train: bool) -> Step:
    if x.device.type != "cpu":
        raise ValueError("bnbook.scratch runs on NumPy arrays: its entry needs CPU tensors")
    layer = scratch.BatchNorm(x.shape[1]).train(train)
    if not train:
        layer(x.numpy())  # running statistics to normalize with
    return _scratch_step(layer, x.numpy(), dy.numpy())


def _fast_factory(x: torch.Tensor, dy: torch.Tensor, train: bool) -> Step:
    from bnbook import fast

    return _module_factory(fast.BatchNorm2d)(x, dy, train)


ENTRIES: dict[str, Factory] = {
    PRIMITIVES: _module_factory(_Primitives),
    "bnbook.scratch.BatchNorm": _scratch_factory,
    "bnbook.nn.BatchNorm2d": _module_factory(bnn.BatchNorm2d),
    "bnbook.fast.BatchNorm2d": _fast_factory,
    NATIVE: _module_factory(torch.nn.BatchNorm2d),
}


def _fast_available() -> bool:
    from bnbook import fast

    return fast.available()


# --- timing and the floor --------------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def floor_seconds(t_sum: Sequence[float], t_copy: Sequence[float], train: bool = True) -> list[float]:
    """The memory-traffic floor of each round from its timed sum and copy passes.

    A sum pass reads the tensor once; a copy pass reads it once and writes it
    once. Training needs 6 reads and 2 writes, so ``4 * t_sum + 2 * t_copy``;
    eval mode 4 reads and 2 writes, so ``2 * t_sum + 2 * t_copy``. See chapter 16.
    """
    if len(t_sum) != len(t_copy):
        raise ValueError(f"need one sum and one copy time per round, got {len(t_sum)} and {len(t_copy)}")
    reads, writes = FLOOR_PASSES[bool(train)]
    return [(reads - writes) * s + writes * c for s, c in zip(t_sum, t_copy, strict=True)]


def rows_from_times(
    times: Mapping[str, Sequence[float]], order: Sequence[str] | None = None, train: bool = True
) -> list[Row]:
    """Rows of the table from per-round seconds: ratios to native and to the floor, round by round.

    ``times`` holds one list of seconds per entry, one value per round, and must
    contain ``NATIVE``, ``"sum pass"`` and ``"copy pass"``. The floor row comes
    last. Ratios are taken within each round before the median and range.
    """
    missing = [k for k in (NATIVE, SUM, COPY) if k not in times]
    if missing:
        raise ValueError(f"times must include {missing}")
    n = len(times[NATIVE])
    if n == 0 or any(len(v) != n for v in times.values()):
        raise ValueError("every entry needs the same, non-zero number of rounds")
    floors = floor_seconds(times[SUM], times[COPY], train)
    names = [k for k in (order or times) if k in times and k not in (SUM, COPY)]
    rows = []
    for name, t in [(k, list(times[k])) for k in names] + [(FLOOR, floors)]:
        to_native = [a / b for a, b in zip(t, times[NATIVE], strict=True)]
        to_floor = [a / b for a, b in zip(t, floors, strict=True)]
        rows.append(Row(name, statistics.median(t), min(t), max(t), _summary(to_native), _summary(to_floor)))
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ladder(
    shape: tuple[int, ...] = (64, 64, 32, 32),
    rounds: int = 5,
    entries: Sequence[str | tuple[str, Factory]] = LAYERS,
    *,
    warmup: int = 1,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
    train: bool = True,
    device: str | torch.device = "cpu",
) -> list[Row]:
    """Time forward+backward of each entry, interleaved with the floor's passes; one row per entry.

    Parameters
    ----------
    shape : tuple of int
        ``(N, C, H, W)`` of the input.
    rounds, warmup : int
        Timed rounds, after ``warmup`` untimed ones. Every round runs every entry once.
    entries : sequence
        Names from ``ENTRIES`` (``bnbook.fast``'s is skipped where its kernels do not
        build), or ``(name, factory)`` pairs such as :func:`compiled_entry`'s. Torch's
        native layer is always timed: the ratios need it.
    dtype, memory_format, train, device
        The configuration: float32 or float64, NCHW or channels-last, training or
        eval mode, CPU or GPU.

    Returns
    -------
    list of Row
        The entries in the order given (native added where missing), then the floor.
        See chapter 16.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be (N, C, H, W) with positive sizes, got {shape}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device).contiguous(memory_format=memory_format)
    dy = torch.randn(shape, generator=gen, dtype=dtype).to(device).contiguous(memory_format=memory_format)
    dst = torch.empty_like(x)
    pairs = [(e, ENTRIES[e]) if isinstance(e, str) else e for e in entries]
    if NATIVE not in [name for name, _ in pairs]:
        pairs.append((NATIVE, ENTRIES[NATIVE]))
    steps: dict[str, Step] = {}
    for name, factory in pairs:
        if name == "bnbook.fast.BatchNorm2d" and not _fast_available():
            continue
        steps[name] = factory(x, dy, train)
    steps[SUM] = lambda: x.sum()
    steps[COPY] = lambda: dst.copy_(x)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return rows_from_times(times, train=train)


def run(shape: tuple[int, ...] = (64, 64, 32, 32), rounds: int = 15, warmup: int = 3) -> list[Row]:
    """The full ladder at one shape (``make bench``'s table): :func:`ladder` over ``LAYERS``."""
    return ladder(shape, rounds, LAYERS, warmup=warmup)


def shape_for_mib(
    mib: float, dtype: torch.dtype = torch.float32, c: int = 64, hw: int = 32
) -> tuple[int, ...]:
    """``(N, c, hw, hw)`` whose tensor takes ``mib`` MiB in ``dtype``; N must come out a whole number."""
    per_sample = c * hw * hw * torch.empty((), dtype=dtype).element_size()
    n = mib * 2**20 / per_sample
    if n < 1 or n != int(n):
        raise ValueError(
            f"{mib} MiB is not a whole number of {per_sample}-byte samples of shape ({c}, {hw}, {hw})"
        )
    return (int(n), c, hw, hw)


def sweep(
    sizes_mib: Sequence[float],
    rounds: Sequence[int],
    entries: Sequence[str | tuple[str, Factory]] = (
        "bnbook.nn.BatchNorm2d",
        "bnbook.fast.BatchNorm2d",
        NATIVE,
    ),
    warmup: int = 1,
) -> list[SweepPoint]:
    """:func:`ladder` at each size (float32, NCHW, training), ``rounds[i]`` rounds at ``sizes_mib[i]``."""
    if len(sizes_mib) != len(rounds):
        raise ValueError(f"need one round count per size, got {len(sizes_mib)} sizes and {len(rounds)}")
    out = []
    for mib, r in zip(sizes_mib, rounds, strict=True):
        shape = shape_for_mib(mib)
        out.append(SweepPoint(float(mib), shape, r, ladder(shape, r, entries, warmup=warmup)))
    return out


# --- allocation ----------------------------------------------------------------------------------------


def _native_pair(shape: tuple[int, ...]) -> tuple[Step, Step]:
    """Torch's native forward+backward kernels: with fresh outputs, and into preallocated ones."""
    aten = torch.ops.aten
    gen = torch.Generator().manual_seed(0)
    x, dy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    c = shape[1]
    w, b, rm, rv = torch.ones(c), torch.zeros(c), torch.zeros(c), torch.ones(c)
    y, dx = torch.empty_like(x), torch.empty_like(x)
    sm, si, dw, db = (torch.empty(c) for _ in range(4))
    mask = [True, True, True]

    def fresh() -> None:
        _, mean, invstd = aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
        aten.native_batch_norm_backward(dy, x, w, rm, rv, mean, invstd, True, 1e-5, mask)

    def reused() -> None:
        aten.native_batch_norm.out(x, w, b, rm, rv, True, 0.1, 1e-5, out=y, save_mean=sm, save_invstd=si)
        aten.native_batch_norm_backward.out(
            dy, x, w, rm, rv, sm, si, True, 1e-5, mask, out0=dx, out1=dw, out2=db
        )

    return fresh, reused


def _copy_pair(shape: tuple[int, ...]) -> tuple[Step, Step]:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    dst = torch.empty_like(x)
    return (lambda: torch.empty_like(x).copy_(x)), (lambda: dst.copy_(x))


def fresh_vs_refill(
    sizes_mib: Sequence[float], rounds: int = 5, what: str = "copy", warmup: int = 1
) -> list[AllocRow]:
    """How much fresh output memory costs: the same work into new memory over into existing memory.

    ``what="copy"`` times ``torch.empty_like(x).copy_(x)`` against
    ``dst.copy_(x)``; ``what="native"`` times torch's native batch-norm forward
    and backward kernels (``aten.native_batch_norm`` and its backward) with
    fresh outputs against their ``.out`` variants writing into preallocated
    tensors. Both sides move the same bytes; the fresh side also asks the
    allocator for memory. Large blocks come from the operating system as new
    pages (glibc maps blocks above its mmap threshold, which adapts up to
    32 MiB by default), and the first write to each new page takes a page
    fault. Returns the ratio fresh / reused per size: median and range over
    interleaved rounds. See chapter 16.
    """
    if what not in ("copy", "native"):
        raise ValueError(f"what must be 'copy' or 'native', got {what!r}")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    out = []
    for mib in sizes_mib:
        fresh, reused = (_copy_pair if what == "copy" else _native_pair)(shape_for_mib(mib, c=1, hw=16))
        ratios = []
        for r in range(warmup + rounds):
            t0 = time.perf_counter()
            fresh()
            t1 = time.perf_counter()
            reused()
            t2 = time.perf_counter()
            if r >= warmup:
                ratios.append((t1 - t0) / (t2 - t1))
        out.append(AllocRow(float(mib), _summary(ratios)))
    return out


_CHILD = """
import ctypes, json, sys
if sys.argv[2] == "control":
    libc = ctypes.CDLL("libc.so.6")
    # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1: big blocks from the heap, and freed memory kept for reuse
    if libc.mallopt(-3, ctypes.c_int(1 << 30)) != 1 or libc.mallopt(-1, ctypes.c_int(2**31 - 1)) != 1:
        print(json.dumps(None))
        sys.exit()
import torch
torch.set_num_threads(int(sys.argv[3]))
from bnbook.bench import fresh_vs_refill
copy_mib, native_mib, rounds = json.loads(sys.argv[1])
fresh_vs_refill([max(copy_mib + native_mib)], 1, "copy", warmup=2)  # the heap grows once, before timing
print(json.dumps({
    "copy": fresh_vs_refill(copy_mib, rounds, "copy", warmup=2),
    "native": fresh_vs_refill(native_mib, rounds, "native", warmup=2),
}))
"""


def allocation_study(
    copy_mib: Sequence[float],
    native_mib: Sequence[float],
    rounds: int = 5,
    control: bool = False,
    timeout_s: float = 180.0,
) -> dict[str, list[AllocRow]] | None:
    """:func:`fresh_vs_refill` for the copy and for native batch norm, in a fresh process.

    A fresh process starts with a clean heap: a long-running one may hold a
    large free region left by earlier work, which then serves big requests
    without new pages, so the effect comes and goes with the process's history.
    With ``control=True`` the child first raises glibc's mmap threshold to
    1 GiB and its trim threshold to 2 GiB with ``mallopt``, so freed blocks
    stay in the heap and the next allocation reuses their pages: no new pages,
    no page faults. The child runs at this process's torch thread count.
    Returns ``{"copy": rows, "native": rows}``, or None where that is not
    possible (not Linux with glibc, or the child fails or times out). Sizes are
    measured in the order given (largest first keeps the first measurement from
    paying for the heap's growth) and returned smallest first. See chapter 16.
    """
    if rounds < 1:
        raise ValueError(f"need rounds >= 1, got {rounds}")
    if not sys.platform.startswith("linux"):
        return None
    args = json.dumps([list(copy_mib), list(native_mib), int(rounds)])
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                args,
                "control" if control else "plain",
                str(torch.get_num_threads()),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None
    if found is None:
        return None
    return {k: sorted(AllocRow(float(m), tuple(r)) for m, r in v) for k, v in found.items()}


# --- torch.compile -------------------------------------------------------------------------------------


_WARM = """
import json, sys, time, torch
from bnbook import nn as bnn
shape = tuple(json.loads(sys.argv[1]))
torch.manual_seed(0)
x, dy = torch.randn(shape), torch.randn(shape)
t0 = time.perf_counter()
module = torch.compile(bnn.BatchNorm2d(shape[1]), dynamic=False)
module(x.requires_grad_()).backward(dy)
print(json.dumps(time.perf_counter() - t0))
"""


def compiled_entry(
    shape: tuple[int, ...], timeout_s: float = 150.0
) -> tuple[tuple[str, Factory] | None, str]:
    """``torch.compile`` of ``bnbook.nn.BatchNorm2d`` as a ladder entry, with a bounded compile time.

    A fresh process compiles it first (forward and backward, at ``shape``),
    under ``timeout_s``; this fills inductor's on-disk cache, so compiling again
    here mostly loads it. Returns ``((name, factory), message)``, or
    ``(None, message)`` when compiling fails or takes too long. The message
    gives the compile times. See chapter 16.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _WARM, json.dumps(list(shape))],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        cold = float(json.loads(done.stdout.strip().splitlines()[-1])) if done.returncode == 0 else None
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
    except subprocess.TimeoutExpired:
        return None, f"torch.compile took longer than {timeout_s:.0f} s here: left out"
    except (OSError, ValueError, IndexError) as err:
        cold, why = None, f"{type(err).__name__}: {err}"
    if cold is None:
        return None, f"torch.compile failed here ({why}): left out"
    try:
        module = torch.compile(bnn.BatchNorm2d(shape[1]), dynamic=False)
        gen = torch.Generator().manual_seed(1)
        x, dy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        t0 = time.perf_counter()
        module(x.requires_grad_()).backward(dy)
        warm = time.perf_counter() - t0
    except Exception as err:  # a backend error must not stop the chapter
        return None, f"torch.compile failed here ({type(err).__name__}): left out"

    def factory(x: torch.Tensor, dy: torch.Tensor, train: bool) -> Step:
        if tuple(x.shape) != tuple(shape) or not train:
            raise ValueError(f"the compiled entry was built for training at {shape}, got {tuple(x.shape)}")
        return _torch_step(module, x, dy)

    msg = f"compiled in {cold:.1f} s in a fresh process, then {warm:.1f} s here from inductor's cache"
    return (COMPILED, factory), msg


# --- counting passes -----------------------------------------------------------------------------------


_ALLOCATORS = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros_like")


def _bytes_touched(t: torch.Tensor) -> int:
    """Bytes a kernel reads from ``t``: a broadcast (stride-0) view reads only its storage."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


class _Counter(TorchDispatchMode):
    """Adds up full-size reads, writes and fresh allocations, operator by operator."""

    def __init__(self, nbytes: int) -> None:
        super().__init__()
        self.nbytes, self.reads, self.writes, self.allocations, self.ops = nbytes, 0, 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False):
            return out  # a view moves no data
        leaves = torch.utils._pytree.tree_leaves
        outs = [t for t in leaves(out) if isinstance(t, torch.Tensor)]
        targets = [t for t in leaves(kwargs.get("out")) if isinstance(t, torch.Tensor)]
        ins = [t for t in leaves((args, {k: v for k, v in kwargs.items() if k != "out"}))]
        ins = [t for t in ins if isinstance(t, torch.Tensor)]
        half = self.nbytes // 2
        big_in = [t for t in ins if _bytes_touched(t) >= half]
        big_out = [t for t in outs if t.numel() * t.element_size() >= half]
        if not big_in and not big_out:
            return out
        self.ops += 1
        name = func.overloadpacket.__name__
        if name not in _ALLOCATORS:
            self.reads += sum(_bytes_touched(t) for t in big_in)
        old = {t.untyped_storage().data_ptr() for t in ins + targets}
        for t in big_out:
            self.allocations += int(t.untyped_storage().data_ptr() not in old)
            if name not in _ALLOCATORS:
                self.writes += t.numel() * t.element_size()
        return out


def count_passes(step: Step, like: torch.Tensor) -> PassCount:
    """Count the full-size tensor traffic of ``step()``, op by op, as torch's dispatcher sees it.

    Every ATen operator that runs (forward and backward, eager) is intercepted.
    Inputs and outputs of at least half the size of ``like`` count as reads and
    writes, in units of ``like``'s bytes (a float64 temporary of a float32 input
    counts 2); an output in new memory counts as an allocation. Views cost
    nothing. What a single operator does inside (torch's native kernel, or
    ``bnbook.fast``'s C++ loops) is invisible here: count those from their
    source. See chapter 16.
    """
    nbytes = like.numel() * like.element_size()
    if nbytes == 0:
        raise ValueError("like must be a non-empty tensor")
    with _Counter(nbytes) as counter:
        step()
    return PassCount(counter.reads / nbytes, counter.writes / nbytes, counter.allocations, counter.ops)


# --- every configuration: fused against native, and against the floor -------------------------------


class Config(NamedTuple):
    """One input of the configuration table: a name, the input's shape, dtype and memory layout."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def mib(self) -> float:
        """Size of the input tensor in MiB."""
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size() / 2**20


_CL, _CL3 = torch.channels_last, torch.channels_last_3d
_F32, _F64 = torch.float32, torch.float64
#: The inputs of ``make bench``'s table and chapter 16's: every layout ``bnbook.fast`` serves, both
#: dtypes, and sizes from 25 KiB (a small fully connected layer) to 64 MiB.
CONFIGS: tuple[Config, ...] = (
    Config("2d NCHW", (64, 64, 32, 32), _F32),
    Config("2d NCHW", (32, 64, 32, 32), _F64),
    Config("2d NCHW", (4, 64, 32, 32), _F32),
    Config("2d NCHW", (256, 64, 32, 32), _F32),
    Config("2d channels-last", (64, 64, 32, 32), _F32, _CL),
    Config("2d channels-last", (32, 64, 32, 32), _F64, _CL),
    Config("2d channels-last", (4, 64, 32, 32), _F32, _CL),
    Config("2d channels-last", (256, 64, 32, 32), _F32, _CL),
    Config("1d (N, C)", (64, 100), _F32),
    Config("1d (N, C)", (256, 1024), _F32),
    Config("1d (N, C)", (256, 1024), _F64),
    Config("1d (N, C)", (16384, 256), _F32),
    Config("1d (N, C, L)", (64, 64, 1024), _F32),
    Config("1d (N, C, L)", (32, 64, 1024), _F64),
    Config("3d NCDHW", (32, 64, 8, 16, 16), _F32),
    Config("3d channels-last", (32, 64, 8, 16, 16), _F32, _CL3),
)
#: ``(reads, writes)`` of an eval-mode forward pass: read x, write y.
EVAL_FORWARD_PASSES = (1, 1)


class Cell(NamedTuple):
    """One cell: fused / native and fused / floor, each (median, low, high) over interleaved rounds.

    Low and high are the 3rd-lowest and 3rd-highest of the per-round ratios
    (the lowest and highest when there are fewer than 7 rounds).
    """

    x_native: tuple[float, float, float]
    x_floor: tuple[float, float, float]
    rounds: int


class TableRow(NamedTuple):
    """A configuration and its cells, keyed ``(mode, threads)`` with mode ``"train"`` or ``"eval"``."""

    config: Config
    cells: dict[tuple[str, int], Cell]


def _spread(values: Sequence[float]) -> tuple[float, float, float]:
    v = sorted(values)
    k = 2 if len(v) >= 7 else 0
    return statistics.median(v), v[k], v[-1 - k]


def _layer_classes(dim: int) -> tuple[type, type]:
    from bnbook import fast

    pairs = {
        2: (torch.nn.BatchNorm1d, fast.BatchNorm1d),
        3: (torch.nn.BatchNorm1d, fast.BatchNorm1d),
        4: (torch.nn.BatchNorm2d, fast.BatchNorm2d),
        5: (torch.nn.BatchNorm3d, fast.BatchNorm3d),
    }
    if dim not in pairs:
        raise ValueError(f"batch norm takes 2 to 5 dimensions, got {dim}")
    return pairs[dim]


def config_cell(config: Config, train: bool, rounds: int = 25, warmup: int = 2) -> Cell:
    """Time ``bnbook.fast`` against torch's native layer on one configuration, at the current threads.

    Training times forward+backward; eval times the forward pass under
    ``torch.no_grad()``. Each round runs, back to back: native, fused, a sum
    and a copy (the floor's passes). The floor is ``4 t_sum + 2 t_copy`` in
    training (6 reads, 2 writes) and ``t_copy`` in eval (1 read, 1 write).
    Needs the fused kernels (:func:`bnbook.fast.available`). See chapter 16.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(config.shape, generator=gen, dtype=config.dtype).contiguous(
        memory_format=config.memory_format
    )
    dy = torch.randn(config.shape, generator=gen, dtype=config.dtype).contiguous(
        memory_format=config.memory_format
    )
    dst = torch.empty_like(x)
    c = config.shape[1]
    native, fused = (k(c, dtype=config.dtype).train(train) for k in _layer_classes(len(config.shape)))

    def step(module: torch.nn.Module) -> Step:
        if train:
            return lambda: module(x.detach().requires_grad_(True)).backward(dy)

        def forward() -> None:
            with torch.no_grad():
                module(x)

        return forward

    steps = [step(native), step(fused), lambda: x.sum(), lambda: dst.copy_(x)]
    times: list[list[float]] = [[] for _ in steps]
    for r in range(warmup + rounds):
        for i, s in enumerate(steps):
            t0 = time.perf_counter()
            s()
            if r >= warmup:
                times[i].append(time.perf_counter() - t0)
    t_nat, t_fus, t_sum, t_copy = times
    floors = floor_seconds(t_sum, t_copy, True) if train else list(t_copy)
    return Cell(
        _spread([f / n for f, n in zip(t_fus, t_nat, strict=True)]),
        _spread([f / fl for f, fl in zip(t_fus, floors, strict=True)]),
        rounds,
    )


def config_table(
    configs: Sequence[Config] = CONFIGS,
    threads: Sequence[int] = (2, 1),
    modes: Sequence[str] = ("train", "eval"),
    rounds: int = 25,
    warmup: int = 2,
) -> list[TableRow]:
    """:func:`config_cell` for every configuration, mode and thread count; torch's threads are restored."""
    bad = [m for m in modes if m not in ("train", "eval")]
    if bad:
        raise ValueError(f"modes must be 'train' or 'eval', got {bad}")
    before = torch.get_num_threads()
    out = []
    try:
        for config in configs:
            cells = {}
            for n in threads:
                torch.set_num_threads(n)
                for mode in modes:
                    cells[(mode, n)] = config_cell(config, mode == "train", rounds, warmup)
            out.append(TableRow(config, cells))
    finally:
        torch.set_num_threads(before)
    return out


def config_label(config: Config) -> str:
    """``"2d NCHW (64, 64, 32, 32) float32, 16 MiB"``-style label of a configuration."""
    size = f"{config.mib:.0f} MiB" if config.mib >= 1 else f"{config.mib * 1024:.0f} KiB"
    return (
        f"{config.name} {'x'.join(map(str, config.shape))} {str(config.dtype).removeprefix('torch.')}, {size}"
    )


def print_config_table(rows: Sequence[TableRow], file=None) -> None:
    """The table: one line per configuration, fused / native and fused / floor per mode and thread count."""
    keys = list(rows[0].cells) if rows else []
    head = "".join(f"{f'{m} {n}T x native':>22}{f'{m} {n}T x floor':>22}" for m, n in keys)
    print(f"{'configuration':<46}{head}", file=file)
    for row in rows:
        cells = "".join(f"{_fmt(row.cells[k].x_native):>22}{_fmt(row.cells[k].x_floor):>22}" for k in keys)
        print(f"{config_label(row.config):<46}{cells}", file=file)


def table_to_json(rows: Sequence[TableRow]) -> list[dict]:
    """Plain data for a table (for saving it); :func:`table_from_json` reads it back."""
    return [
        {
            "name": r.config.name,
            "shape": list(r.config.shape),
            "dtype": str(r.config.dtype).removeprefix("torch."),
            "channels_last": r.config.memory_format != torch.contiguous_format,
            "cells": [
                {
                    "mode": m,
                    "threads": n,
                    "x_native": list(c.x_native),
                    "x_floor": list(c.x_floor),
                    "rounds": c.rounds,
                }
                for (m, n), c in r.cells.items()
            ],
        }
        for r in rows
    ]


def table_from_json(data: Sequence[dict]) -> list[TableRow]:
    """Rows back from :func:`table_to_json`'s data."""
    rows = []
    for d in data:
        shape = tuple(d["shape"])
        fmt = {4: _CL, 5: _CL3}.get(len(shape)) if d["channels_last"] else torch.contiguous_format
        config = Config(d["name"], shape, getattr(torch, d["dtype"]), fmt)
        cells = {
            (c["mode"], c["threads"]): Cell(tuple(c["x_native"]), tuple(c["x_floor"]), c["rounds"])
            for c in d["cells"]
        }
        rows.append(TableRow(config, cells))
    return rows


# --- the command line ----------------------------------------------------------------------------------


def _print_table(rows: list[Row], shape: tuple[int, ...], rounds: int, threads: int, judge: bool) -> bool:
    nbytes = int(np.prod(shape)) * 4
    print(
        f"\nforward+backward, input {shape} float32 ({nbytes / 2**20:.0f} MiB), CPU, {threads} thread(s), "
        f"{rounds} interleaved rounds: median [min-max]"
    )
    print(f"{'entry':<30}{'ms':>22}{'x native':>22}{'x floor':>22}   target")
    ok = True
    for row in rows:
        verdict = ""
        target = TARGETS.get(row.name)
        if target is not None and judge:
            met = row.x_native[0] <= target
            ok &= met
            verdict = f"<= {target:.1f}x  {'met' if met else 'MISSED'}"
        print(f"{row.name:<30}{_fmt_ms(row):>22}{_fmt(row.x_native):>22}{_fmt(row.x_floor):>22}   {verdict}")
    return ok


def _fmt(r: tuple[float, float, float]) -> str:
    return "{:.2f} [{:.2f}-{:.2f}]".format(*r)


def _fmt_ms(row: Row) -> str:
    return f"{row.median_s * 1e3:.2f} [{row.min_s * 1e3:.2f}-{row.max_s * 1e3:.2f}]"


def _print_sweep(points: list[SweepPoint]) -> None:
    print("\nsize sweep, 1 thread: ms per forward+backward, median (x floor)")
    short = {"bnbook.nn.BatchNorm2d": "bnbook.nn", "bnbook.fast.BatchNorm2d": "bnbook.fast", NATIVE: "native"}
    names = [short.get(r.name, r.name.split(" ")[0]) for r in points[0].rows]
    print(f"{'MiB':>6}{'rounds':>8}" + "".join(f"{n:>20}" for n in names))
    for p in points:
        cells = "".join(f"{f'{r.median_s * 1e3:.2f} ({r.x_floor[0]:.2f}x)':>20}" for r in p.rows)
        print(f"{p.mib:>6.0f}{p.rounds:>8}{cells}")


def main(argv: list[str] | None = None) -> int:
    """Print the configuration table (and, with ``--ladder``, the ladder and a size sweep).

    With ``--check``, return 1 when a target is missed: ``bnbook.fast`` at or
    below native (median) in every cell, and within 1.2x of the floor in
    training at 1 MiB and above. ``--save PATH`` writes the table as JSON.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--ladder", action="store_true", help="also the ladder of every rung and a size sweep"
    )
    parser.add_argument("--save", metavar="PATH", help="write the configuration table as JSON")
    args = parser.parse_args(argv)
    from bnbook import fast

    print(f"bnbook.fast: {fast.status()}")
    ok = True
    if fast.available():
        threads = sorted({torch.get_num_threads(), 1}, reverse=True)
        print(
            f"\nbnbook.fast against torch native, {args.rounds} interleaved rounds per cell: "
            "median of per-round ratios [3rd lowest-3rd highest].\n"
            "train: forward+backward, floor 4 sums + 2 copies; eval: forward under no_grad, floor 1 copy.\n"
        )
        rows = config_table(threads=threads, rounds=args.rounds)
        print_config_table(rows)
        missed = []
        for row in rows:
            for (mode, n), cell in row.cells.items():
                if cell.x_native[0] > 1.0:
                    missed.append(f"{config_label(row.config)}, {mode} {n}T: {cell.x_native[0]:.2f}x native")
                if mode == "train" and row.config.mib >= 1 and cell.x_floor[0] > 1.2:
                    missed.append(f"{config_label(row.config)}, {mode} {n}T: {cell.x_floor[0]:.2f}x floor")
        ok = not missed
        print("\ntargets (fused <= 1.0x native everywhere; <= 1.2x floor in training from 1 MiB):", end=" ")
        print("met" if ok else "MISSED in\n  " + "\n  ".join(missed))
        if args.save:
            with open(args.save, "w") as handle:
                json.dump({"threads": threads, "rows": table_to_json(rows)}, handle, indent=1)
            print(f"saved to {args.save}")
    if args.ladder:
        shape = (64, 64, 32, 32)
        default_threads = torch.get_num_threads()
        _print_table(run(shape, rounds=15), shape, 15, default_threads, judge=True)
        try:
            torch.set_num_threads(1)
            _print_sweep(sweep((1, 4, 16, 64), (7, 5, 3, 2)))
        finally:
            torch.set_num_threads(default_threads)
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
