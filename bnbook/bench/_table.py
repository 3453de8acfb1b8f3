"""The configuration table: bnbook.fast against native and the floor in every layout (chapter 16)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import NamedTuple

import torch

from bnbook.bench._ladder import Step, floor_seconds

__all__ = [
    "CONFIGS",
    "Cell",
    "Config",
    "EVAL_FORWARD_PASSES",
    "TableRow",
    "config_cell",
    "config_label",
    "config_table",
    "print_config_table",
    "provenance",
    "table_from_json",
    "table_to_json",
]


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
    """A configuration and its cells, keyed ``(mode, threads)`` with mode ``"train"`` or ``"eval"``.

    ``provenance`` says where and when the row was measured (:func:`provenance`), or is None.
    """

    config: Config
    cells: dict[tuple[str, int], Cell]
    provenance: dict | None = None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def provenance() -> dict:
    """Where and when a measurement runs: CPU, core count, torch version, threads, date, load average."""
    import datetime
    import os

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_1_5_15_min": load,
    }


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
    The order of the four rotates from round to round.
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
    n = len(steps)
    for r in range(warmup + rounds):
        for i in [(r + j) % n for j in range(n)]:  # the order rotates, so no step always follows the same one
            t0 = time.perf_counter()
            steps[i]()
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
            out.append(TableRow(config, cells, provenance()))
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
            **({"provenance": r.provenance} if r.provenance else {}),
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
        rows.append(TableRow(config, cells, d.get("provenance")))
    return rows


# --- the command line ----------------------------------------------------------------------------------


def _fmt(r: tuple[float, float, float]) -> str:
    return "{:.2f} [{:.2f}-{:.2f}]".format(*r)
