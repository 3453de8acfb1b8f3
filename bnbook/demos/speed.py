"""Chapter 16 (making batch norm fast): tables, the configuration grid and the figures.

The timing itself lives in :mod:`bnbook.bench`; this module formats its rows,
loads the configuration table that ``make bench`` stored, estimates native's
passes over memory by timing, and draws the three figures.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from bnbook import bench
from bnbook.plots import MARKERS, PALETTE

__all__ = [
    "TABLE_PATH",
    "FAULT_STEPS",
    "FUSED_NO_CACHE",
    "measured_passes",
    "page_faults",
    "memory_study",
    "spread",
    "stable",
    "print_table",
    "stored_table",
    "table_provenance",
    "worst_cells",
    "BACKWARD_CONFIG",
    "backward_kernels",
    "unstable_cells",
    "pass_counts",
    "plot_alloc",
    "plot_ladder",
    "plot_sweep",
    "print_alloc",
    "print_rows",
]

#: The fused layer with its output cache bypassed, as :func:`measured_passes` names it.
FUSED_NO_CACHE = "bnbook.fast.BatchNorm2d, cache off"

SHORT = {
    bench.PRIMITIVES: "autograd through primitives",
    "bnbook.scratch.BatchNorm": "bnbook.scratch (NumPy)",
    "bnbook.nn.BatchNorm2d": "bnbook.nn (analytic Function)",
    bench.COMPILED: "torch.compile(bnbook.nn)",
    "bnbook.fast.BatchNorm2d": "bnbook.fast (fused C++)",
    FUSED_NO_CACHE: "bnbook.fast, cache off",
    bench.NATIVE: "torch native",
    bench.FLOOR: "floor (6 reads, 2 writes)",
}
STYLE = {  # colour, marker, line style per entry
    "bnbook.nn.BatchNorm2d": (PALETTE[1], MARKERS[1], "-"),
    "bnbook.fast.BatchNorm2d": (PALETTE[2], MARKERS[2], "-"),
    bench.NATIVE: (PALETTE[0], MARKERS[0], "-"),
    bench.FLOOR: ("#222222", None, "--"),
}


def _fmt(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]"


def print_rows(rows: Sequence[bench.Row]) -> None:
    """The ladder as a text table: ms per call, ratio to native and to the floor (median [min-max])."""
    print(f"{'entry':<29}{'ms':>8}{'x native':>20}{'x floor':>20}")
    for row in rows:
        name = SHORT.get(row.name, row.name)
        print(f"{name:<29}{row.median_s * 1e3:>8.1f}{_fmt(row.x_native):>20}{_fmt(row.x_floor):>20}")


def _mib_ticks(ax: plt.Axes, mib: Sequence[float]) -> None:
    """Log-2 x axis labelled with the sizes themselves."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(mib), [f"{m:g}" for m in mib])
    ax.minorticks_off()


def plot_ladder(rows: Sequence[bench.Row]) -> plt.Figure:
    """Horizontal bars: each rung's time over the floor, median with its min-max range over rounds."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    names = [SHORT.get(r.name, r.name) for r in rows][::-1]
    med = [r.x_floor[0] for r in rows][::-1]
    lo = [r.x_floor[0] - r.x_floor[1] for r in rows][::-1]
    hi = [r.x_floor[2] - r.x_floor[0] for r in rows][::-1]
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(rows))][::-1]
    ax.barh(names, med, xerr=[lo, hi], color=colors, alpha=0.85, capsize=3)
    ax.set_xscale("log")
    ax.axvline(1.0, color="#222222", ls="--", lw=1)
    ax.set_xlabel("time / memory-traffic floor (log scale; bar: median, whisker: min-max)")
    ax.set_title("Many passes cost time; among the fast rungs, counts do not set the order")
    return fig


def plot_sweep(points: Sequence[bench.SweepPoint]) -> plt.Figure:
    """Time per forward+backward against tensor size, log-log, with the floor measured alongside."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    mib = [p.mib for p in points]
    for name, (color, marker, ls) in STYLE.items():
        rows = [next((r for r in p.rows if r.name == name), None) for p in points]
        if any(r is None for r in rows):
            continue
        med = [r.median_s * 1e3 for r in rows]
        ax.plot(mib, med, color=color, marker=marker, ls=ls, label=SHORT[name])
        ax.fill_between(
            mib, [r.min_s * 1e3 for r in rows], [r.max_s * 1e3 for r in rows], color=color, alpha=0.15
        )
    ref = [points[0].rows[-1].median_s * 1e3 * m / mib[0] for m in mib]
    ax.plot(mib, ref, color="#8c8c8c", ls=":", label="slope 1 (proportional to size)")
    _mib_ticks(ax, mib)
    ax.set_yscale("log")
    ax.set_xlabel("size of one tensor (MiB, float32)")
    ax.set_ylabel("ms per forward+backward")
    ax.set_title("Time against size: far from proportional across the caches")
    ax.legend(fontsize=9)
    return fig


def print_alloc(label: str, rows: Sequence[bench.AllocRow] | None) -> None:
    """One line per size: the fresh / reused ratio, median [min-max]."""
    if rows is None:
        print(f"{label}: not measured here (needs Linux with glibc)")
        return
    print(label)
    for r in rows:
        print(f"  {r.mib:>5.0f} MiB   fresh / reused {_fmt(r.ratio)}")


def plot_alloc(series: dict[str, Sequence[bench.AllocRow] | None]) -> plt.Figure:
    """Fresh-over-reused ratio against size, one line per experiment, with the 32 MiB mark."""
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for i, (label, rows) in enumerate(series.items()):
        if not rows:
            continue
        x = [r.mib for r in rows]
        ls = "--" if "control" in label else "-"
        color = PALETTE[i % len(PALETTE)]
        ax.plot(x, [r.ratio[0] for r in rows], color=color, marker=MARKERS[i], ls=ls, label=label)
        if "control" not in label:  # ranges of the measurements only, so the figure stays readable
            ax.fill_between(
                x, [r.ratio[1] for r in rows], [r.ratio[2] for r in rows], color=color, alpha=0.12
            )
    ax.axhline(1.0, color="#222222", lw=1)
    ax.axvline(32, color="#8c8c8c", ls=":", lw=1.5, label="32 MiB: glibc's largest adaptive mmap threshold")
    _mib_ticks(ax, sorted({r.mib for rows in series.values() for r in rows or []}))
    ax.set_yscale("log")
    ax.set_xlabel("size of the output (MiB); bands: min-max over rounds of the measurements")
    ax.set_ylabel("time, fresh output / reused output")
    ax.set_title("Fresh memory can cost page faults; the control (dashed) removes them")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return fig


# Counted by reading bnbook/scratch/_batchnorm.py for a float32 input (float64 arrays count twice).
# Forward: isfinite check (1 read, 1/4 written) and np.all (1/4), mean (1), astype float64 (1 read,
# 2 written), centre (2, 2), square (2, 2), its mean (2), scale in place (2, 2), back to float32 (2, 1),
# times gamma (1, 1), plus beta in place (1, 1). Backward: sum dy (1), dy * x_hat (2, 1) and its sum (1),
# dy - mean (1, 1), x_hat * c (1, 1), subtract in place (2, 1), scale in place (1, 1).
# Fresh full-size arrays: 5 forward, 3 backward (the isfinite mask is a quarter of the size).
SCRATCH_COUNT = bench.PassCount(reads=24.25, writes=16.25, allocations=8, ops=18)


def pass_counts(shape: tuple[int, ...] = (8, 16, 8, 8)) -> dict[str, bench.PassCount]:
    """Full-size traffic of one training forward+backward per rung: counted by the dispatcher, or by hand."""
    gen = torch.Generator().manual_seed(0)
    x, dy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    out = {}
    for name in (bench.PRIMITIVES, "bnbook.nn.BatchNorm2d", "bnbook.fast.BatchNorm2d", bench.NATIVE):
        out[name] = bench.count_passes(bench.ENTRIES[name](x, dy, True), x)
    out["bnbook.scratch.BatchNorm"] = SCRATCH_COUNT
    return out


# --- the configuration table, as ``make bench`` measured it --------------------------------------------

#: The table of every configuration, written by ``python -m bnbook.bench --save`` (``make bench``'s table).
TABLE_PATH = Path(__file__).with_name("speed_table.json")


def stored_table(path: Path | str = TABLE_PATH) -> tuple[list[int], list[bench.TableRow]]:
    """The thread counts and rows of a table saved by ``python -m bnbook.bench --save PATH``."""
    with open(path) as handle:
        data = json.load(handle)
    return list(data["threads"]), bench.table_from_json(data["rows"])


def table_provenance(rows: Sequence[bench.TableRow]) -> str:
    """One line on where and when a stored table was measured, from its rows' provenance."""
    found = [r.provenance for r in rows if r.provenance]
    if not found:
        return "where and when: not recorded in this table"
    first = found[0]
    loads = [p["load_average_1_5_15_min"][0] for p in found if p.get("load_average_1_5_15_min")]
    load = f", 1-minute load average {min(loads):.1f} to {max(loads):.1f}" if loads else ""
    return (
        f"measured {first['date']} on {first['cpu']} ({first['cores']} cores), torch {first['torch']}{load}"
    )


def _cell(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]"


def print_table(rows: Sequence[bench.TableRow], mode: str) -> None:
    """One mode of the table: per configuration, fused / native and fused / floor at each thread count."""
    keys = [k for k in rows[0].cells if k[0] == mode]
    head = "".join(f"{f'{n} thr: / native':>21}{'/ floor':>21}" for _, n in keys)
    print(f"{'configuration':<47}{head}")
    for row in rows:
        cells = "".join(f"{_cell(row.cells[k].x_native):>21}{_cell(row.cells[k].x_floor):>21}" for k in keys)
        print(f"{bench.config_label(row.config):<47}{cells}")


def worst_cells(
    rows: Sequence[bench.TableRow],
    mode: str,
    ratio: str = "x_native",
    min_mib: float = 0.0,
    threads: int | None = None,
    max_spread: float | None = None,
) -> list[tuple[float, str, int]]:
    """``(median, configuration, threads)`` of every cell of one mode, worst (largest median) first.

    ``threads`` keeps one thread count only; ``max_spread`` keeps only the cells
    whose range agrees within that factor (:func:`stable`).
    """
    out = [
        (getattr(cell, ratio)[0], bench.config_label(row.config), n)
        for row in rows
        if row.config.mib >= min_mib
        for (m, n), cell in row.cells.items()
        if m == mode
        and (threads is None or n == threads)
        and (max_spread is None or stable(getattr(cell, ratio), max_spread))
    ]
    return sorted(out, reverse=True)


def verdict(
    rows: Sequence[bench.TableRow],
    mode: str,
    bound: float,
    ratio: str = "x_native",
    min_mib: float = 0.0,
    threads: int = 1,
    max_spread: float = 3.0,
    what: str = "native",
) -> str:
    """The verdict on the stable cells of one mode against ``bound``, from their medians and ranges.

    Above the bound when some stable cell's whole range is above it; below it
    when every stable cell's whole range is at or below it; otherwise "about
    equal": some range spans the bound, so another run could put that cell's
    median on either side.
    """
    cells = [
        getattr(cell, ratio)
        for row in rows
        if row.config.mib >= min_mib
        for (m, n), cell in row.cells.items()
        if m == mode and n == threads and stable(getattr(cell, ratio), max_spread)
    ]
    if any(c[1] > bound for c in cells):
        return f"above {what} in some cells, whole range"
    if all(c[2] <= bound for c in cells):
        return f"at or below {what} in every cell, whole range"
    return f"about equal to {what}: some ranges span it"


def unstable_cells(
    rows: Sequence[bench.TableRow], ratio: str = "x_native", max_spread: float = 3.0
) -> list[tuple[str, str, int, tuple[float, float, float]]]:
    """``(configuration, mode, threads, cell)`` of every cell whose range is wider than ``max_spread``."""
    return [
        (bench.config_label(row.config), m, n, getattr(cell, ratio))
        for row in rows
        for (m, n), cell in row.cells.items()
        if not stable(getattr(cell, ratio), max_spread)
    ]


def measured_passes(
    mib: float = 64, rounds: int = 7, warmup: int = 1
) -> dict[str, tuple[float, float, float]]:
    """Time of one training forward+backward in units of the floor's passes, measured in this process.

    At ``mib`` MiB per tensor (float32, NCHW, the current thread count), each
    round times torch's native layer, ``bnbook.fast``'s, ``bnbook.fast``'s with
    its output cache bypassed (:func:`bnbook.fast.without_cache`, the control),
    a sum and a copy, in an order that rotates from round to round. The floor moves 8 passes (6 reads,
    2 writes) in ``4 t_sum + 2 t_copy``, so an implementation that takes ``t``
    takes the time of ``8 t / T_floor`` floor passes. That is time, not traffic:
    it includes page faults on fresh outputs, arithmetic and per-call work, and
    it is an upper bound on passes only where the floor's sum and copy run at
    full memory speed. Returns median and range (min-max) over rounds per entry.
    """
    from bnbook import fast

    shape = bench.shape_for_mib(mib)
    gen = torch.Generator().manual_seed(0)
    x, dy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    dst = torch.empty_like(x)
    fused = bench.ENTRIES["bnbook.fast.BatchNorm2d"](x, dy, True)

    def fused_without_cache() -> None:
        with fast.without_cache():
            fused()

    steps = {
        bench.NATIVE: bench.ENTRIES[bench.NATIVE](x, dy, True),
        "bnbook.fast.BatchNorm2d": fused,
        FUSED_NO_CACHE: fused_without_cache,
        bench.SUM: lambda: x.sum(),
        bench.COPY: lambda: dst.copy_(x),
    }
    names = list(steps)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            steps[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    floors = bench.floor_seconds(times[bench.SUM], times[bench.COPY])
    out = {}
    for name in (bench.NATIVE, "bnbook.fast.BatchNorm2d", FUSED_NO_CACHE):
        passes = [8 * t / f for t, f in zip(times[name], floors, strict=True)]
        out[name] = (statistics.median(passes), min(passes), max(passes))
    return out


_MEMORY_CHILD = bench.CHILD_PRELUDE + """from bnbook import bench
from bnbook.demos.speed import measured_passes
passes_mib, copy_mib, native_mib, rounds = json.loads(sys.argv[1])
passes = measured_passes(passes_mib, rounds, warmup=2) if bench._fast_available() else None
bench.fresh_vs_refill([max(copy_mib + native_mib)], 1, "copy", warmup=2)  # the heap grows once, untimed
print(json.dumps({
    "passes": passes,
    "copy": bench.fresh_vs_refill(copy_mib, rounds, "copy", warmup=2),
    "native": bench.fresh_vs_refill(native_mib, rounds, "native", warmup=2),
}))
"""


def memory_study(
    passes_mib: float = 64,
    copy_mib: Sequence[float] = (64, 16, 4),
    native_mib: Sequence[float] = (64, 16),
    rounds: int = 9,
    timeout_s: float = 300.0,
) -> dict[str, dict | None]:
    """Fresh memory's cost, measured twice in fresh processes: as is, and with no fresh pages (the control).

    Each child first runs :func:`measured_passes` at ``passes_mib`` (the time of
    native's and the fused layer's forward+backward in floor passes), then
    :func:`bnbook.bench.fresh_vs_refill` for the copy and for native batch norm,
    all with ``rounds`` interleaved rounds. The control child first raises
    glibc's mmap and trim thresholds (``mallopt``, as
    :func:`bnbook.bench.allocation_study` does), so that fresh outputs reuse
    pages the process already holds: no page faults. A fresh process starts
    with a clean heap (a long-running one may hold a large free region that
    serves big requests without new pages). Both children run at this
    process's thread count. Returns ``{"plain": ..., "control": ...}``, each
    ``{"passes": {name: (median, min, max)} or None, "copy": [AllocRow],
    "native": [AllocRow]}``, or None where it could not run (not Linux with
    glibc, or a failed child).
    """
    out: dict[str, dict | None] = {}
    args = json.dumps([passes_mib, list(copy_mib), list(native_mib), int(rounds)])
    linux = sys.platform.startswith("linux")
    for kind in ("plain", "control"):
        found = bench.run_child(_MEMORY_CHILD, args, kind, timeout_s) if linux else None
        if found is not None:
            if found["passes"] is not None:
                found["passes"] = {k: tuple(v) for k, v in found["passes"].items()}
            for what in ("copy", "native"):
                found[what] = sorted(bench.AllocRow(float(m), tuple(r)) for m, r in found[what])
        out[kind] = found
    return out


#: The three training steps :func:`page_faults` counts, in the order it runs them.
FAULT_STEPS = ("torch native", "bnbook.fast, cache off", "bnbook.fast")


def page_faults(
    mib: Sequence[float] = (16, 64), steps: int = 5, warmup: int = 3, fresh_process: bool = True,
    timeout_s: float = 120.0,
) -> dict[float, dict] | None:
    """Page faults per training step (forward+backward, NCHW float32), in tensors' worth of pages.

    For each size, torch's native layer, ``bnbook.fast`` with its output cache
    bypassed (:func:`bnbook.fast.without_cache`) and ``bnbook.fast`` as shipped each run
    ``warmup`` steps, then ``steps`` counted ones; the operating system's count
    of minor page faults (``getrusage``) over the counted steps, per step, is
    divided by the number of 4 KiB pages in one tensor. The count depends on
    what the process allocated and freed before (a large free region in the
    heap serves big requests without new pages), so by default each of the
    three runs in a fresh process of its own, whose heap is clean;
    ``fresh_process=False`` counts all three here, one after another.
    Returns ``{mib: {step name: tensors' worth of pages faulted per step}}``,
    or None where the fused kernels, ``resource.getrusage`` or the child
    process are not available.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps}, {warmup}")
    from bnbook import fast

    if not fast.available():
        return None
    if not fresh_process:
        return _page_faults_here(list(mib), steps, warmup)
    out: dict[float, dict] = {float(m): {} for m in mib}
    # the three children run at once: a count of page faults does not depend on sharing the cores
    calls = [partial(bench.run_child, _FAULTS_CHILD, json.dumps([list(mib), steps, warmup, [name]]), "plain",
                     timeout_s) for name in FAULT_STEPS]
    with ThreadPoolExecutor(len(calls)) as pool:
        results = list(pool.map(lambda call: call(), calls))
    for found in results:
        if found is None:
            return None
        for m, counts in found.items():
            out[float(m)].update(counts)
    return out


def _page_faults_here(
    mib: Sequence[float], steps: int, warmup: int, names: Sequence[str] = FAULT_STEPS
) -> dict[float, dict] | None:
    """The counting loop of :func:`page_faults` for ``names``, in this process.

    The largest size goes first: a heap that grew for smaller tensors could
    otherwise serve a large one from its free space, without new pages.
    """
    from bnbook import fast

    try:
        import resource
    except ImportError:  # not a Unix
        return None
    if not fast.available():
        return None

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    out: dict[float, dict] = {}
    for size in sorted(mib, reverse=True):
        shape = bench.shape_for_mib(size)
        gen = torch.Generator().manual_seed(0)
        x, dy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        pages = x.numel() * x.element_size() / 4096
        counts = {}
        for name in names:
            entry = bench.NATIVE if name == "torch native" else "bnbook.fast.BatchNorm2d"
            step = bench.ENTRIES[entry](x, dy, True)
            with fast.without_cache() if name.endswith("cache off") else contextlib.nullcontext():
                for _ in range(warmup):
                    step()
                before = faults()
                for _ in range(steps):
                    step()
                counts[name] = (faults() - before) / steps / pages
        out[size] = counts
    return {size: out[size] for size in mib}


_FAULTS_CHILD = bench.CHILD_PRELUDE + """from bnbook.demos.speed import _page_faults_here
mib, steps, warmup, names = json.loads(sys.argv[1])
print(json.dumps(_page_faults_here(mib, steps, warmup, names)))
"""


def spread(r: Sequence[float]) -> float:
    """High over low of a ``(median, low, high)`` cell: how far its rounds disagree."""
    return r[2] / r[1] if r[1] > 0 else math.inf


def stable(r: Sequence[float], max_spread: float = 3.0) -> bool:
    """Whether a cell's rounds agree within a factor ``max_spread`` (high / low); see chapter 16."""
    return spread(r) <= max_spread


# --- the backward kernels on their own -------------------------------------------------------------------


#: The input :func:`backward_kernels` times by default: channels-last float32, 16 MiB.
BACKWARD_CONFIG = bench.Config("2d channels-last", (64, 64, 32, 32), torch.float32, torch.channels_last)
_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last,
            "channels_last_3d": torch.channels_last_3d}


def _backward_kernel_ratios(
    shape: Sequence[int], dtype: str, memory_format: str, threads: Sequence[int], rounds: int, warmup: int
) -> dict[int, tuple[float, float, float]]:
    """The timing loop of :func:`backward_kernels`, in this process (plain names, so a child can call it)."""
    from bnbook import fast
    from bnbook.bench._table import _spread

    ext = fast.load()
    gen = torch.Generator().manual_seed(0)
    x, dy = (
        torch.randn(tuple(shape), generator=gen, dtype=getattr(torch, dtype)).contiguous(
            memory_format=_FORMATS[memory_format]
        )
        for _ in range(2)
    )
    weight = torch.ones(shape[1], dtype=x.dtype)
    _, mean, invstd = ext.forward_train(x, weight, None, 1e-5)
    _, save_mean, save_invstd = torch.native_batch_norm(x, weight, None, None, None, True, 0.1, 1e-5)
    steps = (
        lambda: ext.backward_train(dy, x, weight, mean, invstd, True),
        lambda: torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, None, None, save_mean, save_invstd, True, 1e-5, [True, True, True]
        ),
    )
    before = torch.get_num_threads()
    out = {}
    try:
        for n in threads:
            torch.set_num_threads(n)
            ratios = []
            for r in range(warmup + rounds):
                spent = [0.0, 0.0]
                for i in (0, 1) if r % 2 == 0 else (1, 0):
                    t0 = time.perf_counter()
                    steps[i]()
                    spent[i] = time.perf_counter() - t0
                if r >= warmup:
                    ratios.append(spent[0] / spent[1])
            out[n] = _spread(ratios)
    finally:
        torch.set_num_threads(before)
    return out


_KERNELS_CHILD = bench.CHILD_PRELUDE + """from bnbook.demos.speed import _backward_kernel_ratios
print(json.dumps(_backward_kernel_ratios(*json.loads(sys.argv[1]))))
"""


def backward_kernels(
    config: bench.Config = BACKWARD_CONFIG,
    threads: Sequence[int] = (2, 1),
    rounds: int = 15,
    warmup: int = 16,
    memory: str = "kept",
    timeout_s: float = 120.0,
) -> dict[int, tuple[float, float, float]] | None:
    """``bnbook.fast``'s backward kernel over native's, timed on their own, at each thread count.

    Each round calls the fused kernel (``backward_train``) and ATen's
    ``native_batch_norm_backward`` once each on the same ``dy`` and ``x``,
    back to back in an order that alternates, and takes their ratio. Each
    call writes a fresh ``dx`` the size of the input; whether that memory
    comes with new pages (a page fault per 4 KiB, which can take longer than
    the kernel) changes from call to call. With ``memory="kept"`` (the
    default) the loop runs in a fresh process in which glibc keeps freed
    memory for reuse (the control of :func:`memory_study`), after ``warmup``
    untimed rounds (enough for glibc's heap to grow to what the loop needs),
    so that the ratio compares the kernels; with
    ``memory="as is"`` it runs here, page faults and all. Returns
    ``{threads: (median, low, high)}`` of the ratios (low and high the
    3rd-lowest and 3rd-highest from 7 rounds on), or None where the kernels
    are not available or the child cannot run (not Linux with glibc, a
    failure, a timeout). See chapter 16.
    """
    from bnbook import fast

    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    if memory not in ("kept", "as is"):
        raise ValueError(f"memory must be 'kept' or 'as is', got {memory!r}")
    if not fast.available():
        return None
    fmt = next(k for k, v in _FORMATS.items() if v == config.memory_format)
    args = [list(config.shape), str(config.dtype).removeprefix("torch."), fmt, list(threads), rounds, warmup]
    if memory == "as is":
        return _backward_kernel_ratios(*args)
    if not sys.platform.startswith("linux"):
        return None
    found = bench.run_child(_KERNELS_CHILD, json.dumps(args), "control", timeout_s)
    return None if found is None else {int(n): tuple(r) for n, r in found.items()}
