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

The ladder, in decreasing order of passes: autograd through primitive operations, the NumPy
closed form, ``bnbook.nn``'s analytic Function, ``bnbook.fast``'s fused
kernels (when they build here), torch's native kernel, and the floor.
Chapter 16 walks down it, adding ``torch.compile`` (:func:`compiled_entry`),
the cost of fresh allocations (:func:`fresh_vs_refill`) and a counter of the
full-size tensor traffic each implementation moves (:func:`count_passes`).

Targets (at the default thread count): ``bnbook.nn`` within 2.0x of native,
``bnbook.scratch`` within 3.0x, ``bnbook.fast`` at or below native.

Before the table, :func:`overhead` times what a small layer costs per call:
``bnbook.nn.BatchNorm1d`` against ``torch.nn.BatchNorm1d`` on a 64 x 100
batch, forward+backward in training and forward under ``no_grad`` in eval,
where the arithmetic is tiny and the Python and autograd machinery around it
is most of the time.

The package: ``_ladder`` (the rungs, the floor, pass counts, allocations),
``_table`` (the configuration table), ``_overhead`` (per-call overhead).
"""

from __future__ import annotations

import argparse
import json
import subprocess  # noqa: F401  (tests replace subprocess.run through this name)

import numpy as np
import torch

from bnbook.bench._ladder import (
    CHILD_PRELUDE,
    COMPILED,
    COPY,
    ENTRIES,
    FLOOR,
    FLOOR_PASSES,
    LAYERS,
    NATIVE,
    PRIMITIVES,
    SUM,
    TARGETS,
    AllocRow,
    PassCount,
    Row,
    SweepPoint,
    _fast_available,  # noqa: F401  (used by tests and chapter 16)
    _Primitives,  # noqa: F401
    allocation_study,
    compiled_entry,
    count_passes,
    floor_seconds,
    fresh_vs_refill,
    ladder,
    rows_from_times,
    run,
    run_child,
    shape_for_mib,
    sweep,
)
from bnbook.bench._overhead import OVERHEAD_TARGETS, Overhead, overhead, print_overhead
from bnbook.bench._table import (
    CONFIGS,
    EVAL_FORWARD_PASSES,
    Cell,
    Config,
    TableRow,
    _fmt,
    _spread,  # noqa: F401
    config_cell,
    config_label,
    config_table,
    print_config_table,
    table_from_json,
    table_to_json,
)

__all__ = [
    "CHILD_PRELUDE",
    "CONFIGS",
    "COMPILED",
    "COPY",
    "ENTRIES",
    "EVAL_FORWARD_PASSES",
    "FLOOR",
    "FLOOR_PASSES",
    "LAYERS",
    "NATIVE",
    "OVERHEAD_TARGETS",
    "PRIMITIVES",
    "SUM",
    "TARGETS",
    "AllocRow",
    "Cell",
    "Config",
    "Overhead",
    "PassCount",
    "Row",
    "SweepPoint",
    "TableRow",
    "allocation_study",
    "compiled_entry",
    "config_cell",
    "config_label",
    "config_table",
    "count_passes",
    "floor_seconds",
    "fresh_vs_refill",
    "ladder",
    "main",
    "overhead",
    "print_config_table",
    "print_overhead",
    "rows_from_times",
    "run",
    "run_child",
    "shape_for_mib",
    "sweep",
    "table_from_json",
    "table_to_json",
]


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
    thread_counts = sorted({torch.get_num_threads(), 1}, reverse=True)
    ok = print_overhead([row for n in thread_counts for row in overhead(rounds=args.rounds, threads=n)])
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
        ok = ok and not missed
        print("\ntargets (fused <= 1.0x native everywhere; <= 1.2x floor in training from 1 MiB):", end=" ")
        print("met" if not missed else "MISSED in\n  " + "\n  ".join(missed))
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


