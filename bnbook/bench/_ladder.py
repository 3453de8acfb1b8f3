"""The ladder of implementations, the floor, pass counts and allocations; see :mod:`bnbook.bench`."""

from __future__ import annotations

import json
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
    "AllocRow",
    "COMPILED",
    "CHILD_PRELUDE",
    "COPY",
    "ENTRIES",
    "FLOOR",
    "FLOOR_PASSES",
    "LAYERS",
    "NATIVE",
    "PRIMITIVES",
    "PassCount",
    "Row",
    "SUM",
    "SweepPoint",
    "TARGETS",
    "allocation_study",
    "compiled_entry",
    "count_passes",
    "floor_seconds",
    "fresh_vs_refill",
    "ladder",
    "rows_from_times",
    "run_child",
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
    names = list(steps)
    for r in range(warmup + rounds):
        # rotate the order each round, so that no entry always runs right after the same one
        # (a pass that follows another over the same tensor may find it still in the cache)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            step = steps[name]
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
            pair = (fresh, reused) if r % 2 == 0 else (reused, fresh)  # alternate which one goes first
            spent = []
            for step in pair:
                t0 = time.perf_counter()
                step()
                spent.append(time.perf_counter() - t0)
            t_fresh, t_reused = spent if r % 2 == 0 else spent[::-1]
            if r >= warmup:
                ratios.append(t_fresh / t_reused)
        out.append(AllocRow(float(mib), _summary(ratios)))
    return out


#: The start of a child process's script: with argv[2] == "control", glibc keeps freed memory for
#: reuse (no fresh pages), or the child prints null and stops; then torch with argv[3] threads.
CHILD_PRELUDE = """
import ctypes, json, sys
if sys.argv[2] == "control":
    libc = ctypes.CDLL("libc.so.6")
    # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1: big blocks from the heap, and freed memory kept for reuse
    if libc.mallopt(-3, ctypes.c_int(1 << 30)) != 1 or libc.mallopt(-1, ctypes.c_int(2**31 - 1)) != 1:
        print(json.dumps(None))
        sys.exit()
import torch
torch.set_num_threads(int(sys.argv[3]))
"""

def run_child(script: str, args: str, kind: str, timeout_s: float) -> object:
    """Run ``script`` (which starts with :data:`CHILD_PRELUDE`) in a fresh Python with ``args`` and ``kind``.

    Returns the JSON value the child printed last, or None if it failed,
    timed out or printed nothing readable.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, args, kind, str(torch.get_num_threads())],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


_CHILD = CHILD_PRELUDE + """from bnbook.bench import fresh_vs_refill
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
    found = run_child(_CHILD, args, "control" if control else "plain", timeout_s)
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
