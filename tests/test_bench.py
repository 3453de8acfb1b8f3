"""bnbook.bench: the floor arithmetic on synthetic timings, the ladder's structure, the pass counter.

No test asserts a wall-clock time: timings on a shared machine are noise. The
arithmetic is checked on made-up seconds with answers worked out by hand, and
the pass counter against counts read off the operators' definitions.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from bnbook import bench

TINY = (4, 3, 4, 4)


def test_floor_is_four_sums_and_two_copies_in_training() -> None:
    # 6 reads + 2 writes: a sum reads once, a copy reads once and writes once
    assert bench.floor_seconds([1.0, 2.0], [10.0, 20.0]) == [4 * 1 + 2 * 10, 4 * 2 + 2 * 20]


def test_floor_in_eval_mode_is_two_sums_and_two_copies() -> None:
    assert bench.floor_seconds([1.0], [10.0], train=False) == [2 * 1 + 2 * 10]


def test_floor_needs_one_sum_and_one_copy_per_round() -> None:
    with pytest.raises(ValueError, match="one sum and one copy"):
        bench.floor_seconds([1.0, 2.0], [1.0])


def test_rows_take_ratios_within_each_round() -> None:
    times = {
        bench.NATIVE: [2.0, 4.0, 8.0],
        "slow": [4.0, 12.0, 8.0],  # 2x, 3x, 1x native in its own round
        bench.SUM: [0.1, 0.2, 0.4],
        bench.COPY: [0.3, 0.6, 1.2],
    }
    rows = {r.name: r for r in bench.rows_from_times(times)}
    assert list(rows) == [bench.NATIVE, "slow", bench.FLOOR]
    floors = [4 * 0.1 + 2 * 0.3, 4 * 0.2 + 2 * 0.6, 4 * 0.4 + 2 * 1.2]  # 1.0, 2.0, 4.0
    assert rows[bench.FLOOR].median_s == pytest.approx(2.0)
    assert rows["slow"].x_native == pytest.approx((2.0, 1.0, 3.0))
    # slow / floor per round: 4/1, 12/2, 8/4 -> median 4, min 2, max 6
    assert rows["slow"].x_floor == pytest.approx((4.0, 2.0, 6.0))
    assert rows[bench.NATIVE].x_floor == pytest.approx((2.0, 2.0, 2.0))
    assert rows[bench.FLOOR].x_floor == pytest.approx((1.0, 1.0, 1.0))
    assert (rows["slow"].min_s, rows["slow"].max_s) == (4.0, 12.0)
    assert floors[1] == pytest.approx(rows[bench.FLOOR].median_s)


def test_rows_refuse_ragged_or_incomplete_times() -> None:
    with pytest.raises(ValueError, match="must include"):
        bench.rows_from_times({bench.NATIVE: [1.0], bench.SUM: [1.0]})
    with pytest.raises(ValueError, match="same"):
        bench.rows_from_times({bench.NATIVE: [1.0], bench.SUM: [1.0, 2.0], bench.COPY: [1.0]})


def _sane(rows: list[bench.Row]) -> None:
    for row in rows:
        assert row.min_s <= row.median_s <= row.max_s
        for lo_med_hi in (row.x_native, row.x_floor):
            med, lo, hi = lo_med_hi
            assert 0 < lo <= med <= hi and math.isfinite(hi)


def test_ladder_returns_every_entry_then_the_floor() -> None:
    rows = bench.ladder(TINY, rounds=2, warmup=0)
    names = [r.name for r in rows]
    expected = [n for n in bench.LAYERS if n != "bnbook.fast.BatchNorm2d" or bench._fast_available()]
    assert names == [*expected, bench.FLOOR]
    _sane(rows)
    native = rows[names.index(bench.NATIVE)]
    assert native.x_native == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_ladder_runs_every_configuration(fmt, dtype, train) -> None:
    rows = bench.ladder(
        TINY, 1, ["bnbook.fast.BatchNorm2d"], warmup=0, dtype=dtype, memory_format=fmt, train=train
    )
    assert rows[-1].name == bench.FLOOR and bench.NATIVE in [r.name for r in rows]
    _sane(rows)


def test_ladder_accepts_a_custom_entry_and_rejects_bad_input() -> None:
    calls = []

    def factory(x, dy, train):
        return lambda: calls.append(x.shape)

    rows = bench.ladder(TINY, 3, [("mine", factory)], warmup=1)
    assert [r.name for r in rows] == ["mine", bench.NATIVE, bench.FLOOR]
    assert len(calls) == 4
    with pytest.raises(ValueError, match="rounds"):
        bench.ladder(TINY, 0)
    with pytest.raises(ValueError, match="shape"):
        bench.ladder((4, 3, 4))


def test_shape_for_mib_gives_the_bytes_asked_for() -> None:
    for mib, dtype in [(1, torch.float32), (16, torch.float32), (16, torch.float64), (256, torch.float32)]:
        shape = bench.shape_for_mib(mib, dtype)
        assert math.prod(shape) * torch.empty((), dtype=dtype).element_size() == mib * 2**20
    with pytest.raises(ValueError, match="whole number"):
        bench.shape_for_mib(0.1)


def test_sweep_has_one_point_per_size() -> None:
    points = bench.sweep([0.25, 0.5], [1, 2], warmup=0)
    assert [p.mib for p in points] == [0.25, 0.5]
    assert [p.rounds for p in points] == [1, 2]
    assert points[1].shape[0] == 2 * points[0].shape[0]
    for p in points:
        _sane(p.rows)
    with pytest.raises(ValueError, match="one round count per size"):
        bench.sweep([1], [1, 2])


def test_fresh_vs_refill_returns_positive_ratios() -> None:
    for what in ("copy", "native"):
        rows = bench.fresh_vs_refill([0.25, 1], rounds=2, what=what)
        assert [r.mib for r in rows] == [0.25, 1.0]
        for r in rows:
            med, lo, hi = r.ratio
            assert 0 < lo <= med <= hi and math.isfinite(hi)
    with pytest.raises(ValueError, match="copy"):
        bench.fresh_vs_refill([1], what="move")


# --- the pass counter, against counts read off each operator's definition -----------------------------


def test_counter_sees_an_add_as_two_reads_one_write_one_allocation() -> None:
    a, b = torch.randn(1000), torch.randn(1000)
    assert bench.count_passes(lambda: a + b, a) == bench.PassCount(2.0, 1.0, 1, 1)


def test_counter_in_place_and_out_write_without_allocating() -> None:
    a, b = torch.randn(1000), torch.randn(1000)
    assert bench.count_passes(lambda: a.add_(b), a) == bench.PassCount(2.0, 1.0, 0, 1)
    out = torch.empty(1000)
    assert bench.count_passes(lambda: torch.mul(a, b, out=out), a) == bench.PassCount(2.0, 1.0, 0, 1)


def test_counter_ignores_views_and_small_tensors_and_weights_by_bytes() -> None:
    a = torch.randn(10, 100)
    w = torch.randn(1, 100)
    # the view is free; the broadcast (1, 100) operand is small; one read, one write
    assert bench.count_passes(lambda: a.view(100, 10).t() * 2.0, a) == bench.PassCount(1.0, 1.0, 1, 1)
    assert bench.count_passes(lambda: a * w, a) == bench.PassCount(1.0, 1.0, 1, 1)
    # a float64 copy of a float32 tensor writes twice its bytes
    assert bench.count_passes(lambda: a.double(), a) == bench.PassCount(1.0, 2.0, 1, 1)
    # a reduction reads and writes nothing big
    assert bench.count_passes(lambda: a.sum(), a) == bench.PassCount(1.0, 0.0, 0, 1)


def test_counter_sees_native_batch_norm_as_one_op_each_way() -> None:
    x, dy = torch.randn(TINY), torch.randn(TINY)
    step = bench.ENTRIES[bench.NATIVE](x, dy, True)
    count = bench.count_passes(step, x)
    # forward reads x, writes y; backward reads dy and x, writes dx (two fresh outputs)
    assert count == bench.PassCount(3.0, 2.0, 2, 2)


def test_counter_finds_autograd_through_primitives_far_above_the_floor() -> None:
    x, dy = torch.randn(TINY), torch.randn(TINY)
    count = bench.count_passes(bench.ENTRIES[bench.PRIMITIVES](x, dy, True), x)
    reads, writes = bench.FLOOR_PASSES[True]
    assert count.reads > 2 * reads and count.writes > 2 * writes and count.allocations > 4


def test_compiled_entry_reports_or_skips(monkeypatch) -> None:
    import subprocess

    def too_slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(cmd="python", timeout=1)

    monkeypatch.setattr(bench.subprocess, "run", too_slow)
    entry, msg = bench.compiled_entry(TINY, timeout_s=1)
    assert entry is None and "longer than" in msg


def test_allocation_study_runs_in_a_child_with_and_without_the_control() -> None:
    for control in (False, True):
        found = bench.allocation_study([0.25], [0.25], rounds=1, control=control)
        if found is None:  # not Linux with glibc
            continue
        assert set(found) == {"copy", "native"}
        for rows in found.values():
            assert [r.mib for r in rows] == [0.25]
            med, lo, hi = rows[0].ratio
            assert 0 < lo <= med <= hi and math.isfinite(hi)
    with pytest.raises(ValueError, match="rounds"):
        bench.allocation_study([1], [1], rounds=0)


# --- the configuration table ---------------------------------------------------------------------------


def test_configs_cover_every_layout_dtype_and_the_small_fully_connected_inputs() -> None:
    names = {c.name for c in bench.CONFIGS}
    assert {
        "2d NCHW",
        "2d channels-last",
        "1d (N, C)",
        "1d (N, C, L)",
        "3d NCDHW",
        "3d channels-last",
    } <= names
    assert {c.dtype for c in bench.CONFIGS} == {torch.float32, torch.float64}
    shapes = {c.shape for c in bench.CONFIGS}
    assert (64, 100) in shapes and (256, 1024) in shapes
    sized = [c.mib for c in bench.CONFIGS if c.mib >= 1]
    assert min(sized) == 1 and max(sized) == 64


def test_spread_is_median_and_third_from_each_end() -> None:
    assert bench._spread(list(range(1, 26))) == (13, 3, 23)
    assert bench._spread([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)  # fewer than 7 rounds: min and max


@pytest.mark.skipif(not bench._fast_available(), reason="needs the fused kernels")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_config_table_cells_and_json_round_trip(train) -> None:
    configs = [bench.Config("1d (N, C)", (8, 5), torch.float32), bench.Config("t", TINY, torch.float64)]
    mode = "train" if train else "eval"
    before = torch.get_num_threads()
    rows = bench.config_table(configs, threads=(1,), modes=(mode,), rounds=2, warmup=0)
    assert torch.get_num_threads() == before
    assert [r.config for r in rows] == configs
    for r in rows:
        cell = r.cells[(mode, 1)]
        assert cell.rounds == 2
        for med, lo, hi in (cell.x_native, cell.x_floor):
            assert 0 < lo <= med <= hi and math.isfinite(hi)
    assert bench.table_from_json(bench.table_to_json(rows)) == rows
    with pytest.raises(ValueError, match="modes"):
        bench.config_table(configs, modes=("infer",))


def test_overhead_reports_both_modes_against_their_targets() -> None:
    import io

    rows = bench.overhead(rounds=3, calls=5)
    assert [r.mode for r in rows] == ["train", "eval"]
    for r in rows:
        assert r.native_us > 0 and r.bnbook_us > 0
        assert r.ratio[1] <= r.ratio[0] <= r.ratio[2]
        assert r.target == bench.OVERHEAD_TARGETS[r.mode]
    out = io.StringIO()
    ok = bench.print_overhead(rows, file=out)
    assert ok == all(r.ratio[0] <= r.target for r in rows)
    assert out.getvalue().count("target <=") == 2
    train = rows[0]
    assert f"({train.path} short path)" in out.getvalue()
    # with the compiled short path in use, the Python one is timed beside it, in the same rounds
    assert (train.python_ratio is not None) == (train.path == "C++")
    if train.python_ratio is not None:
        assert train.python_us > 0 and "Python short path, for comparison" in out.getvalue()
    from bnbook.nn import _batchnorm as eager

    assert eager.TRAIN_ROWS_PATHS[eager.BatchNormFunction] is not eager._TRAIN_ROWS or train.path == "Python"


def test_bench_runs_as_a_module() -> None:
    import subprocess as sp
    import sys

    cmd = [sys.executable, "-m", "bnbook.bench", "--help"]
    done = sp.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--ladder" in done.stdout


# --- timing method: rotating order and provenance -----------------------------------------------------


def test_ladder_rotates_the_order_of_its_entries_every_round() -> None:
    seen: list[str] = []

    def factory(name):
        return lambda x, dy, train: lambda: seen.append(name)

    bench.ladder(TINY, 3, [("a", factory("a")), ("b", factory("b")), ("c", factory("c"))], warmup=1)
    per_round = [[n for n in seen[i * 3 : i * 3 + 3]] for i in range(4)]
    # native, sum and copy also run each round (not recorded here), so the recorded entries keep their
    # relative order, but which one comes first changes from round to round
    assert {r[0] for r in per_round} == {"a", "b", "c"}


def test_provenance_records_machine_versions_threads_and_load() -> None:
    found = bench._table.provenance()
    assert {"cpu", "cores", "torch", "torch_threads", "date", "load_average_1_5_15_min"} <= set(found)
    assert found["torch"] == torch.__version__ and found["torch_threads"] == torch.get_num_threads()


@pytest.mark.skipif(not bench._fast_available(), reason="needs the fused kernels")
def test_config_table_rows_carry_their_provenance_through_json() -> None:
    rows = bench.config_table(
        [bench.Config("t", TINY, torch.float32)], threads=(1,), modes=("eval",), rounds=1
    )
    assert rows[0].provenance is not None and "cpu" in rows[0].provenance
    back = bench.table_from_json(bench.table_to_json(rows))
    assert back[0].provenance == rows[0].provenance
    from bnbook.demos import speed

    assert "measured" in speed.table_provenance(back)
    assert "not recorded" in speed.table_provenance([back[0]._replace(provenance=None)])


def test_speed_stability_and_worst_cells_by_thread_count() -> None:
    from bnbook.demos import speed

    assert speed.spread((1.0, 0.5, 2.0)) == 4.0 and not speed.stable((1.0, 0.5, 2.0))
    assert speed.stable((1.0, 0.8, 1.2))
    config = bench.Config("t", TINY, torch.float32)
    cell = bench.Cell((1.1, 1.0, 1.2), (0.9, 0.8, 1.0), 25)
    wide = bench.Cell((5.0, 0.1, 30.0), (9.0, 1.0, 40.0), 25)
    rows = [bench.TableRow(config, {("train", 2): wide, ("train", 1): cell})]
    assert [c[2] for c in speed.worst_cells(rows, "train")] == [2, 1]
    assert [c[0] for c in speed.worst_cells(rows, "train", threads=1)] == [1.1]
    assert [c[2] for c in speed.worst_cells(rows, "train", max_spread=3.0)] == [1]
    assert [(c[1], c[2]) for c in speed.unstable_cells(rows)] == [("train", 2)]
    # the stable 1-thread cell: 1.1 [1.0-1.2] against native, 0.9 [0.8-1.0] against the floor
    assert speed.verdict(rows, "train", 0.95).startswith("above")  # its whole range is above
    assert speed.verdict(rows, "train", 1.0).startswith("about equal")  # its range spans 1.0
    assert speed.verdict(rows, "train", 1.15).startswith("about equal")
    assert speed.verdict(rows, "train", 1.2).startswith("at or below")
    assert speed.verdict(rows, "train", 1.0, "x_floor").startswith("at or below")


def test_memory_study_returns_both_runs_or_none() -> None:
    from bnbook.demos import speed

    found = speed.memory_study(passes_mib=0.25, copy_mib=(0.25,), native_mib=(0.25,), rounds=1)
    assert set(found) == {"plain", "control"}
    for run in found.values():
        if run is None:  # not Linux with glibc
            continue
        assert [r.mib for r in run["copy"]] == [0.25] and [r.mib for r in run["native"]] == [0.25]
        if run["passes"] is not None:
            for med, lo, hi in run["passes"].values():
                assert 0 < lo <= med <= hi


def test_check_fails_when_only_the_overhead_target_is_missed(monkeypatch, capsys) -> None:
    """``--check`` exits 1 on a missed overhead target even when every kernel cell is met."""
    from bnbook import fast

    def rows(ratio):
        return lambda **_: [bench.Overhead(m, 1, 10.0, 10 * ratio, (ratio,) * 3) for m in ("train", "eval")]

    monkeypatch.setattr(fast, "available", lambda: True)
    monkeypatch.setattr(bench, "config_table", lambda **_: [])  # every kernel cell (none) met
    monkeypatch.setattr(bench, "print_config_table", lambda rows: None)
    monkeypatch.setattr(bench, "overhead", rows(2.0))
    assert bench.main(["--check"]) == 1
    assert "MISSED" in capsys.readouterr().out
    monkeypatch.setattr(bench, "overhead", rows(1.0))
    assert bench.main(["--check"]) == 0


def test_backward_kernels_gives_a_ratio_per_thread_count_or_none(monkeypatch) -> None:
    """Here and in a child that keeps freed memory: one (median, low, high) per thread count."""
    from bnbook import fast
    from bnbook.demos import speed

    tiny = bench.Config("2d channels-last", (2, 3, 4, 4), torch.float32, torch.channels_last)
    before = torch.get_num_threads()
    for memory in ("as is", "kept"):
        found = speed.backward_kernels(tiny, threads=(1,), rounds=3, warmup=1, memory=memory)
        assert torch.get_num_threads() == before
        if fast.available() and (memory == "as is" or sys.platform.startswith("linux")):
            assert list(found) == [1] and 0 < found[1][1] <= found[1][0] <= found[1][2], (memory, found)
        else:
            assert found is None
    with pytest.raises(ValueError, match="rounds"):
        speed.backward_kernels(tiny, rounds=0)
    with pytest.raises(ValueError, match="memory"):
        speed.backward_kernels(tiny, memory="fresh")
    monkeypatch.setattr(fast, "available", lambda: False)
    assert speed.backward_kernels(tiny, rounds=3) is None


def test_page_faults_counts_every_step_and_restores_the_cache(monkeypatch) -> None:
    """At 64 MiB glibc maps each fresh output anew: without the cache both outputs of a step fault in full."""
    from bnbook import fast
    from bnbook.demos import speed

    if not fast.available():
        assert speed.page_faults(mib=(1,), steps=1) is None
        return
    with pytest.raises(ValueError, match="steps"):
        speed.page_faults(steps=0)
    fresh = speed.page_faults(mib=(64,), steps=2, warmup=2)  # a fresh process: a clean heap
    assert list(fresh) == [64.0] and list(fresh[64.0]) == list(speed.FAULT_STEPS)
    if sys.platform.startswith("linux"):
        assert fresh[64.0]["bnbook.fast, cache off"] > 1.5, fresh
    assert 0 <= fresh[64.0]["bnbook.fast"] < 0.05, fresh
    here = speed.page_faults(mib=(64,), steps=2, warmup=2, fresh_process=False)
    assert 0 <= here[64]["bnbook.fast"] < 0.05, here
    assert here[64]["bnbook.fast, cache off"] >= 0
    with torch.no_grad():  # the bypass has ended: a 32 MiB eval output comes from the cache again
        before = fast.cache_info()["misses"] + fast.cache_info()["hits"]
        fast.BatchNorm2d(64).eval()(torch.randn(128, 64, 32, 32))
        assert fast.cache_info()["misses"] + fast.cache_info()["hits"] == before + 1
    monkeypatch.setattr(fast, "available", lambda: False)
    assert speed.page_faults(mib=(1,)) is None
