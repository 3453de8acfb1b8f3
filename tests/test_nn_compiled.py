"""bnbook.nn's short path run from C++: the same numbers as the Python Function, bit for bit.

``bnbook.fast``'s extension carries ``EagerRows``, a copy of
``bnbook.nn._batchnorm._TrainRowsFunction`` (the plain training call on
``(N, C)`` input) written with the same ATen operations in the same order.
Once the extension is loaded, ``bnbook.nn``'s layers take it for CPU tensors.
It exists for speed alone (``make bench`` times it), so every number it
produces must be the Python Function's: compared here with ``torch.equal``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnbook import fast
from bnbook import nn as bnn
from bnbook.nn import _batchnorm as eager

pytestmark = pytest.mark.skipif(not fast.available(), reason=f"no compiled kernels here: {fast.status()}")

SHAPES = [(2, 1), (2, 3), (5, 257), (64, 100), (1000, 7)]


def _run(path, x, dy, w, b, eps, momentum, x_grad=True, w_grad=True):
    """One forward and backward through ``path``; everything it produced or changed."""
    xi = x.clone().requires_grad_(x_grad)
    wi, bi = w.clone().requires_grad_(w_grad), b.clone().requires_grad_(True)
    c, dt = x.shape[1], x.dtype
    rm, rv = torch.linspace(-1, 1, c, dtype=dt), torch.linspace(0.5, 2, c, dtype=dt)
    y = path(xi, wi, bi, rm, rv, eps, momentum)
    y.backward(dy)
    return [y.detach(), xi.grad, wi.grad, bi.grad, rm, rv]


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3 + 1
    dy = torch.randn(shape, generator=g, dtype=dtype)
    w = torch.rand(shape[1], generator=g, dtype=dtype) + 0.5
    b = torch.randn(shape[1], generator=g, dtype=dtype)
    return x, dy, w, b


def _equal(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("grads", [(True, True), (False, True), (True, False)], ids=["all", "no-x", "no-w"])
def test_compiled_short_path_equals_the_python_one_bit_for_bit(dtype, shape, grads) -> None:
    x, dy, w, b = _inputs(shape, dtype)
    compiled = fast.load().eager_rows
    for eps, momentum in [(1e-5, 0.1), (1e-3, 1.0), (0.5, 0.0)]:
        py = _run(eager._TRAIN_ROWS, x, dy, w, b, eps, momentum, *grads)
        cc = _run(compiled, x, dy, w, b, eps, momentum, *grads)
        assert all(_equal(p, c) for p, c in zip(py, cc, strict=True))
        assert py[0].abs().max() > 0.1 and py[2 if grads[1] else 1].abs().max() > 0  # not trivially equal


@pytest.mark.parametrize("layout", ["column-major x and dy", "expanded dy", "column-major x"])
def test_compiled_short_path_takes_strided_input_as_python_does(layout) -> None:
    x, dy, w, b = _inputs((9, 40), torch.float64)
    if layout != "expanded dy":
        x = x.T.contiguous().T
        assert not x.is_contiguous()
    if layout == "column-major x and dy":
        dy = dy.T.contiguous().T
    elif layout == "expanded dy":
        dy = dy[:1].expand_as(dy)  # stride 0 along the batch, as from a sum's backward
    py = _run(eager._TRAIN_ROWS, x, dy, w, b, 1e-5, 0.1)
    cc = _run(fast.load().eager_rows, x, dy, w, b, 1e-5, 0.1)
    assert all(_equal(p, c) for p, c in zip(py, cc, strict=True))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(4096, 1024), (100000, 8)], ids=str)
def test_compiled_short_path_equals_python_on_inputs_that_run_in_parallel(threads, shape) -> None:
    """Large enough for ATen to split its loops across threads: still the same numbers."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, dy, w, b = _inputs(shape, torch.float32, seed=7)
        py = _run(eager._TRAIN_ROWS, x, dy, w, b, 1e-5, 0.1)
        cc = _run(fast.load().eager_rows, x, dy, w, b, 1e-5, 0.1)
    finally:
        torch.set_num_threads(before)
    assert all(_equal(p, c) for p, c in zip(py, cc, strict=True))


def test_the_output_is_versioned_as_by_the_python_path() -> None:
    """The output is written in place into a temporary on both paths: its version counter reads the same."""
    x, _, w, b = _inputs((6, 3), torch.float64)
    versions = []
    for path in (eager._TRAIN_ROWS, fast.load().eager_rows):
        rm, rv = torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype)
        y = path(x.clone().requires_grad_(), w, b, rm, rv, 1e-5, 0.1)
        versions.append(y._version)
    assert versions[0] == versions[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_short_path_second_derivatives_equal_the_python_ones(dtype) -> None:
    """Under create_graph=True both run bnbook.nn's differentiable closed form."""
    x, _, w, b = _inputs((10, 6), dtype, seed=3)
    results = []
    for path in (eager._TRAIN_ROWS, fast.load().eager_rows):
        xi, wi, bi = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
        rm, rv = torch.zeros(6, dtype=dtype), torch.ones(6, dtype=dtype)
        (gx,) = torch.autograd.grad(path(xi, wi, bi, rm, rv, 1e-5, 0.1).pow(3).sum(), xi, create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum(), (xi, wi, bi)))
    assert results[0][0].abs().max() > 0
    assert all(torch.equal(p, c) for p, c in zip(*results, strict=True))


def test_compiled_short_path_passes_gradcheck_and_gradgradcheck() -> None:
    compiled = fast.load().eager_rows
    x, _, w, b = _inputs((7, 3), torch.float64, seed=5)

    def f(xi, wi, bi):
        return compiled(xi, wi, bi, torch.zeros(3, dtype=xi.dtype), torch.ones(3, dtype=xi.dtype), 1e-5, 0.1)

    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_running_buffers_are_versioned_as_by_the_python_path() -> None:
    """In-place updates bump the buffers' version counters, so autograd sees a buffer that changed."""
    x, dy, w, b = _inputs((8, 4), torch.float32)
    bumps = []
    for path in (eager._TRAIN_ROWS, fast.load().eager_rows):
        rm, rv = torch.zeros(4), torch.ones(4)
        before = (rm._version, rv._version)
        path(x.clone().requires_grad_(), w, b, rm, rv, 1e-5, 0.1)
        bumps.append((rm._version - before[0], rv._version - before[1]))
    assert bumps[0] == bumps[1] and bumps[0][0] > 0


def test_layers_take_the_compiled_path_once_the_kernels_are_loaded() -> None:
    fast.load()
    bn = bnn.BatchNorm1d(5)
    assert "EagerRows" in bn(torch.randn(16, 5, requires_grad=True)).grad_fn.name()
    eager.use_compiled_rows(None)
    try:
        y = bn(torch.randn(16, 5, requires_grad=True))
        assert type(y.grad_fn).__name__ == "_TrainRowsFunctionBackward"
    finally:
        eager.use_compiled_rows(fast.load().eager_rows)
    # a training run gives the same weights on either path
    runs = []
    for compiled in (True, False):
        eager.use_compiled_rows(fast.load().eager_rows if compiled else None)
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), bnn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        runs.append(net.state_dict())
    eager.use_compiled_rows(fast.load().eager_rows)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_load_built_never_builds(tmp_path, monkeypatch) -> None:
    """Where nothing is built, bnbook.nn gets None at once and stays on the Python path."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(fast, "_state", {"module": None, "error": None, "tried": False})
    monkeypatch.setattr(fast, "load", lambda verbose=False: pytest.fail("load_built must not build"))
    assert fast.load_built() is None
    assert list(tmp_path.iterdir()) == []


def _copy_of_the_build(tmp_path, cut: int | None = None):
    """The real library and its stamp, copied into ``tmp_path`` (the library cut to ``cut`` bytes)."""
    from torch.utils import cpp_extension

    fast.load()
    name = fast._module_name()
    build = Path(cpp_extension._get_build_directory(name, False))
    data = (build / f"{name}.so").read_bytes()
    (tmp_path / f"{name}.so").write_bytes(data if cut is None else data[:cut])
    (tmp_path / f"{name}.so.built").write_text((build / f"{name}.so.built").read_text())
    return name


def test_load_built_skips_a_build_in_progress(tmp_path, monkeypatch) -> None:
    import fcntl

    from torch.utils import cpp_extension

    name = _copy_of_the_build(tmp_path)
    assert (tmp_path / f"{name}.so.built").read_text() == fast._stamp(tmp_path / f"{name}.so")  # whole
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(fast, "_state", {"module": None, "error": None, "tried": False})
    monkeypatch.setattr(fast, "load", lambda verbose=False: pytest.fail("must not wait for the build"))
    with open(tmp_path / "bnbook-build.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another build holds the folder
        assert fast.load_built() is None


def test_a_cache_that_cannot_be_written_leaves_the_layers_on_python(monkeypatch) -> None:
    from torch.utils import cpp_extension

    def read_only(name, verbose):
        raise PermissionError("[Errno 13] Permission denied: '/read-only/torch_extensions'")

    monkeypatch.setattr(cpp_extension, "_get_build_directory", read_only)
    monkeypatch.setattr(fast, "_state", {"module": None, "error": None, "tried": False})
    monkeypatch.setitem(eager.TRAIN_ROWS_PATHS, eager.BatchNormFunction, eager._first_rows_call)
    y = bnn.BatchNorm1d(3)(torch.randn(5, 3, requires_grad=True))  # the first call asks load_built
    assert type(y.grad_fn).__name__ == "_TrainRowsFunctionBackward"


@pytest.mark.parametrize("cut", [0, 4096, "half"])
def test_a_library_cut_short_is_never_imported(tmp_path, cut) -> None:
    """What a build killed while linking leaves: importing it would crash the process, not raise."""
    from torch.utils import cpp_extension

    fast.load()
    name = fast._module_name()
    size = (Path(cpp_extension._get_build_directory(name, False)) / f"{name}.so").stat().st_size
    _copy_of_the_build(tmp_path, size // 2 if cut == "half" else cut)
    assert fast._import_finished(name, tmp_path) is None
    (tmp_path / f"{name}.so.built").unlink()  # and a library without its stamp is not imported either
    assert fast._import_finished(name, tmp_path) is None


def test_load_built_imports_a_finished_build_without_the_build_tool() -> None:
    """A checkout changes the source file's time, not its text: the build is used as it is, at once.

    Both by bnbook.nn's first training call and by ``bnbook.fast.load``.
    """
    import os
    import subprocess
    import sys

    script = (
        "import time, torch\n"
        "from torch.utils import cpp_extension\n"
        "def refuse(*a, **k): raise SystemExit('the build tool was called')\n"
        "cpp_extension.load = refuse\n"
        "from bnbook import fast, nn\n"
        "t = time.perf_counter()\n"
        "y = nn.BatchNorm1d(4)(torch.randn(8, 4, requires_grad=True))\n"
        "assert fast.load() is not None\n"
        "assert fast.BatchNorm2d(3)(torch.randn(4, 3, 2, 2)).shape == (4, 3, 2, 2)\n"
        "print(round(time.perf_counter() - t, 2), y.grad_fn.name())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", script]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, node = done.stdout.split(maxsplit=1)
    assert "EagerRows" in node
    assert float(seconds) < 10  # a load, not a build (which takes about half a minute)
