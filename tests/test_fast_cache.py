"""bnbook.fast's output cache: large outputs reuse freed blocks, stay correct, and the cache stays bounded."""

from __future__ import annotations

import io
import pickle
import threading

import pytest
import torch
from torch import nn

from bnbook import fast

pytestmark = pytest.mark.skipif(not fast.available(), reason=f"no fused kernels here: {fast.status()}")

BIG = (128, 64, 32, 32)  # 32 MiB of float32: from here on eval outputs come from the cache
MID = (16, 64, 32, 32)  # 4 MiB: from here on training outputs do
SMALL = (4, 64, 32, 32)  # 1 MiB: torch's own allocator


@pytest.fixture(autouse=True)
def _fresh_cache():
    fast.empty_cache()
    limit = fast.cache_info()["limit"]
    yield
    fast.set_cache_limit(limit)
    fast.empty_cache()


def _train_step(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xi = x.detach().requires_grad_(True)
    y = layer(xi)
    y.backward(dy)
    return y.detach(), xi.grad


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels-last"])
def test_reused_blocks_give_the_same_numbers_as_native(fmt) -> None:
    """Step after step the outputs come from reused blocks, and every step still matches native."""
    gen = torch.Generator().manual_seed(0)
    hits = fast.cache_info()["hits"]
    fused, native = fast.BatchNorm2d(64), nn.BatchNorm2d(64)
    for step in range(3):
        x = (torch.randn(BIG, generator=gen) * (step + 1) + step).contiguous(memory_format=fmt)
        dy = torch.randn(BIG, generator=gen).contiguous(memory_format=fmt)
        got, ref = _train_step(fused, x, dy), _train_step(native, x, dy)
        assert got[0].is_contiguous(memory_format=fmt) and got[0].stride() == x.stride()
        for g, r in zip(got, ref, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
        del got
    info = fast.cache_info()
    assert info["hits"] - hits >= 2, info  # y and dx of the later steps reuse the first steps' blocks


def test_live_outputs_never_share_a_block() -> None:
    x = torch.randn(BIG)
    layer = fast.BatchNorm2d(64).eval()
    with torch.no_grad():
        first = layer(x)
        del first
        outs = [layer(x * k) for k in (1.0, 2.0, 3.0)]
    assert len({o.data_ptr() for o in outs}) == 3
    for k, o in zip((1.0, 2.0, 3.0), outs, strict=True):
        torch.testing.assert_close(o, nn.BatchNorm2d(64).eval()(x * k), rtol=1e-5, atol=1e-5)


def test_which_outputs_use_the_cache() -> None:
    """Training outputs from 4 MiB, eval outputs from 32 MiB; everything smaller uses torch's allocator."""

    def blocks_after(shape, train: bool) -> int:
        fast.empty_cache()
        layer = fast.BatchNorm2d(64).train(train)
        if train:
            _train_step(layer, torch.randn(shape), torch.randn(shape))
        else:
            with torch.no_grad():
                layer(torch.randn(shape))
        return fast.cache_info()["blocks"]

    assert blocks_after(SMALL, train=True) == 0
    assert blocks_after(MID, train=True) == 2  # y and dx, both freed
    assert blocks_after((64, 64, 32, 32), train=False) == 0
    assert blocks_after(BIG, train=False) == 1


def test_a_cached_output_behaves_as_any_tensor() -> None:
    """Resize, in-place, NumPy, pickling and shared memory work on an output from the cache."""
    x = torch.randn(BIG)
    layer = fast.BatchNorm2d(64)
    with torch.no_grad():
        grown = layer(x)
        ref = grown.clone()
        grown.resize_(2 * grown.numel())  # a new, larger block; the values come along
        assert torch.equal(grown[: ref.numel()], ref.flatten())
        grown.mul_(0)
        assert not grown.any()
        y = layer(x)
    ref = y.clone()
    assert torch.equal(torch.from_numpy(y.numpy()), ref)
    buf = io.BytesIO()
    torch.save(y, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), ref)
    assert torch.equal(pickle.loads(pickle.dumps(y)), ref)
    shared = y.clone().share_memory_()
    assert shared.is_shared() and torch.equal(shared, ref)


def test_the_limit_bounds_what_the_cache_keeps() -> None:
    fast.set_cache_limit(48 * 2**20)  # room for one 32 MiB block, not two
    layer = fast.BatchNorm2d(64).eval()
    with torch.no_grad():
        outs = [layer(torch.randn(BIG)) for _ in range(3)]
    del outs
    info = fast.cache_info()
    assert info["blocks"] == 1 and info["bytes"] == 32 * 2**20, info
    fast.set_cache_limit(0)  # frees what is above the new limit, and keeps nothing from now on
    assert fast.cache_info()["bytes"] == 0
    with torch.no_grad():
        layer(torch.randn(BIG))
    assert fast.cache_info()["blocks"] == 0


def test_empty_cache_frees_every_block_but_not_live_tensors() -> None:
    layer = fast.BatchNorm2d(64).eval()
    with torch.no_grad():
        keep = layer(torch.randn(BIG))
        layer(torch.randn(BIG))
    assert fast.cache_info()["blocks"] == 1
    ref = keep.clone()
    fast.empty_cache()
    assert fast.cache_info()["bytes"] == 0
    assert torch.equal(keep, ref)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1", None, float("nan"), -(2**70)])
def test_a_bad_limit_is_refused_and_changes_nothing(bad) -> None:
    before = fast.cache_info()["limit"]
    with pytest.raises(ValueError, match="cache limit"):
        fast.set_cache_limit(bad)
    assert fast.cache_info()["limit"] == before


def test_outputs_freed_on_other_threads() -> None:
    """Blocks are taken and given back from several threads at once without loss or sharing."""
    layer = fast.BatchNorm2d(64).eval()
    x = torch.randn(BIG)
    with torch.no_grad():
        ref = nn.BatchNorm2d(64).eval()(x)
    errors: list[BaseException] = []
    before = fast.cache_info()

    def work() -> None:
        try:
            for _ in range(20):
                with torch.no_grad():
                    y = layer(x)
                torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    info = fast.cache_info()
    calls = info["hits"] + info["misses"] - before["hits"] - before["misses"]
    # each thread holds at most two outputs at once (the last one, while the next is made)
    assert calls == 80 and info["blocks"] <= 8 and info["hits"] - before["hits"] >= 80 - 8, info


def test_the_most_recently_freed_block_is_taken_first() -> None:
    """Last in, first out: the block freed last is the likeliest to be in the CPU's caches."""
    layer = fast.BatchNorm2d(64).eval()
    x = torch.randn(BIG)
    with torch.no_grad():
        a, b = layer(x), layer(x)
        ptr_a, ptr_b = a.data_ptr(), b.data_ptr()
        del a
        del b
        c = layer(x)
        d = layer(x)
    assert (c.data_ptr(), d.data_ptr()) == (ptr_b, ptr_a)


_FORK_SCRIPT = """
import os, sys, threading, torch
from bnbook import fast
layer = fast.BatchNorm2d(64).eval()
x = torch.randn(128, 64, 32, 32)  # 32 MiB: eval outputs use the cache
stop = False
def churn():
    while not stop:
        with torch.no_grad():
            layer(x)
t = threading.Thread(target=churn)
t.start()
for _ in range(int(sys.argv[1])):  # fork while the other thread takes and gives back blocks
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)
        with torch.no_grad():
            y = layer(x)
        os._exit(0 if torch.isfinite(y).all() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
stop = True
t.join()
print("ok")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork here")
def test_a_forked_child_can_use_the_cache_while_another_thread_uses_it() -> None:
    """A fork taken while another thread holds the cache's lock must not leave the child waiting forever.

    Without the reset in the child, 300 such forks hung in two runs of three; the 20 here catch it less often.
    """
    import subprocess
    import sys

    args = [sys.executable, "-c", _FORK_SCRIPT, "20"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_without_cache_takes_torchs_allocator_and_keeps_the_blocks() -> None:
    layer = fast.BatchNorm2d(64).eval()
    x = torch.randn(BIG)
    with torch.no_grad():
        layer(x)
        held = fast.cache_info()
        with fast.without_cache():
            y = layer(x)
            assert fast.cache_info()["hits"] == held["hits"] and fast.cache_info()["blocks"] == 1
        del y  # torch's block goes back to torch, not to the cache
        assert fast.cache_info()["blocks"] == 1
        layer(x)
    assert fast.cache_info()["hits"] == held["hits"] + 1


def test_blocks_of_sizes_no_longer_used_make_room() -> None:
    """A freed block that does not fit under the limit evicts blocks of other sizes, not itself."""
    fast.set_cache_limit(100 * 2**20)
    layer = fast.BatchNorm2d(64).eval()
    with torch.no_grad():
        a, b = layer(torch.randn(BIG)), layer(torch.randn(BIG))  # two 32 MiB blocks
        del a, b
        assert fast.cache_info()["blocks"] == 2
        bigger = (192, 64, 32, 32)  # 48 MiB: 64 + 48 is over the limit
        c = layer(torch.randn(bigger))
        del c
    info = fast.cache_info()
    assert info["bytes"] == 32 * 2**20 + 48 * 2**20 and info["blocks"] == 2, info
    with torch.no_grad():
        hits = fast.cache_info()["hits"]
        layer(torch.randn(bigger))
    assert fast.cache_info()["hits"] == hits + 1


def test_a_numpy_integer_is_a_limit() -> None:
    import numpy as np

    fast.set_cache_limit(np.int64(64 * 2**20))
    assert fast.cache_info()["limit"] == 64 * 2**20
    with pytest.raises(ValueError, match="cache limit"):
        fast.set_cache_limit(2**70)
    assert fast.cache_info()["limit"] == 64 * 2**20


def test_without_cache_nests_and_survives_exceptions() -> None:
    layer = fast.BatchNorm2d(64).eval()
    x = torch.randn(BIG)

    def hits_after_call() -> int:
        before = fast.cache_info()["hits"]
        with torch.no_grad():
            layer(x)
        return fast.cache_info()["hits"] - before

    with torch.no_grad():
        layer(x)  # one block in the cache
    with fast.without_cache():
        with fast.without_cache():
            assert hits_after_call() == 0
        assert hits_after_call() == 0  # the outer block still bypasses
        with pytest.raises(RuntimeError, match="inner"), fast.without_cache():
            raise RuntimeError("inner")
        assert hits_after_call() == 0
    assert hits_after_call() == 1


@pytest.mark.parametrize("shape_fmt", [((4096, 64), None), ((8, 64, 16, 16), torch.channels_last),
                                       ((131072, 64), None)], ids=["rows", "channels-last", "rows-cached"])
def test_eval_far_from_zero_keeps_float32_digits(shape_fmt) -> None:
    """Eval subtracts the mean first in every layout: an input far from zero keeps its precision."""
    shape, fmt = shape_fmt
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=gen) + 1e4
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    layer = (fast.BatchNorm1d if len(shape) == 2 else fast.BatchNorm2d)(64).eval()
    with torch.no_grad():
        layer.running_mean.fill_(1e4)
        layer.running_var.fill_(1.0)
        y = layer(x)
    ref = (x.double() - 1e4) / (1.0 + layer.eps) ** 0.5
    assert (y.double() - ref).abs().max() < 1e-5  # x * alpha + beta would be off by about 1e-3
