"""bnbook.fast: the fused kernels against torch's native layer, in every layout and dtype; the fallback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from bnbook import fast
from bnbook import nn as bnn

pytestmark = pytest.mark.skipif(not fast.available(), reason=f"no fused kernels here: {fast.status()}")

CASES = [
    (nn.BatchNorm1d, fast.BatchNorm1d, (16, 5), None),
    (nn.BatchNorm1d, fast.BatchNorm1d, (6, 5, 7), None),
    (nn.BatchNorm2d, fast.BatchNorm2d, (4, 5, 6, 3), None),
    (nn.BatchNorm2d, fast.BatchNorm2d, (4, 5, 6, 3), torch.channels_last),
    (nn.BatchNorm3d, fast.BatchNorm3d, (2, 5, 3, 4, 2), None),
    (nn.BatchNorm3d, fast.BatchNorm3d, (2, 5, 3, 4, 2), torch.channels_last_3d),
]
IDS = ["1d-2D", "1d-3D", "2d", "2d-channels-last", "3d", "3d-channels-last"]
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1e-4, "atol": 1e-4}}


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(("ref_cls", "fast_cls", "shape", "fmt"), CASES, ids=IDS)
def test_matches_native_over_train_and_eval_steps(ref_cls, fast_cls, shape, fmt, dtype, affine) -> None:
    gen = torch.Generator().manual_seed(0)
    layers = [cls(5, affine=affine, dtype=dtype) for cls in (ref_cls, fast_cls)]
    if affine:
        w, b = torch.rand(5, generator=gen, dtype=dtype) + 0.5, torch.randn(5, generator=gen, dtype=dtype)
        for layer in layers:
            with torch.no_grad():
                layer.weight.copy_(w)
                layer.bias.copy_(b)
    for step, train in enumerate([True, True, False, True, False]):
        x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + step
        dy = torch.randn(shape, generator=gen, dtype=dtype)
        if fmt is not None:
            x, dy = x.contiguous(memory_format=fmt), dy.contiguous(memory_format=fmt)
        outs = []
        for layer in layers:
            layer.train(train).zero_grad()
            xi = x.clone().requires_grad_()
            y = layer(xi)
            y.backward(dy)
            grads = [xi.grad] + ([layer.weight.grad, layer.bias.grad] if affine else [])
            outs.append((y, *grads, layer.running_mean, layer.running_var, layer.num_batches_tracked))
        for ref, ours in zip(*outs, strict=True):
            torch.testing.assert_close(ours, ref, **TOL[dtype])


def test_large_offset_float32_is_accurate() -> None:
    x = torch.randn(64, 4, 16, 16) + 1e4
    y = fast.BatchNorm2d(4)(x)
    x64 = x.double()
    ref = (x64 - x64.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        x64.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    native = nn.BatchNorm2d(4)(x)
    assert (y.double() - ref).abs().max() <= (native.double() - ref).abs().max() + 1e-4


@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=["planes", "rows"])
def test_large_offset_float32_backward_is_accurate(fmt) -> None:
    """The backward sums shift by the float64 mean rounded to float32 and put the rest back exactly."""
    gen = torch.Generator().manual_seed(3)
    fmt = fmt or torch.contiguous_format
    x = (torch.randn(32, 4, 8, 8, generator=gen) * 0.01 + 3e3).contiguous(memory_format=fmt)
    dy = (torch.randn(32, 4, 8, 8, generator=gen) + 0.5).contiguous(memory_format=fmt)
    grads = {}
    for name, layer, xin, din in (
        ("fast", fast.BatchNorm2d(4), x, dy),
        ("ref", nn.BatchNorm2d(4, dtype=torch.float64), x.double(), dy.double()),
    ):
        xi = xin.clone().requires_grad_()
        layer(xi).backward(din)
        grads[name] = (xi.grad.double(), layer.weight.grad.double(), layer.bias.grad.double())
    # The input's spread (0.01) is 40 float32 steps at 3000: rounding the mean to float32 before
    # subtracting it would cost about 10% of grad(weight) (torch's float32 kernel loses about that).
    for k in range(3):
        err = (grads["fast"][k] - grads["ref"][k]).abs().max()
        assert err <= 1e-4 * grads["ref"][k].abs().max(), (k, float(err))


@pytest.mark.parametrize("shape", [(1 << 22, 2), (1, 2, 1 << 22)], ids=["rows", "planes"])
def test_float32_statistics_stay_accurate_over_millions_of_values(shape) -> None:
    """Float32 statistics are summed in float only within short blocks, then in double."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)) + 3
    _, mean, invstd = fast.load().forward_train(x, None, None, 1e-5)
    dims = [d for d in range(x.dim()) if d != 1]
    var, ref_mean = torch.var_mean(x.double(), dims, unbiased=False)
    assert ((mean - ref_mean).abs() / var.sqrt()).max() < 1e-6
    assert ((invstd - (var + 1e-5).rsqrt()) / invstd).abs().max() < 1e-6


@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=["planes", "rows"])
def test_float32_statistics_of_a_huge_spread(fmt) -> None:
    """Squares over float32's range are summed again in double, not returned as infinity."""
    fmt = fmt or torch.contiguous_format
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(8, 3, 4, 4, generator=gen) * 1e20).contiguous(memory_format=fmt)
    y = fast.BatchNorm2d(3, affine=False)(x).double()
    x64 = x.double()
    ref = (x64 - x64.mean((0, 2, 3), keepdim=True)) / x64.var((0, 2, 3), unbiased=False, keepdim=True).sqrt()
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=["planes", "rows"])
def test_grad_weight_when_the_gradient_has_a_large_mean(fmt) -> None:
    """dy = 1e4 + noise: sum(dy * x_hat) and dx cancel, and neither may lose digits to float32 rounding."""
    gen = torch.Generator().manual_seed(7)
    fmt = fmt or torch.contiguous_format
    x = torch.randn(64, 4, 16, 16, generator=gen).contiguous(memory_format=fmt)
    dy = (torch.randn(64, 4, 16, 16, generator=gen) + 1e4).contiguous(memory_format=fmt)
    grads = []
    layers = ((fast.BatchNorm2d(4), x, dy), (nn.BatchNorm2d(4).double(), x.double(), dy.double()))
    for layer, xin, din in layers:
        xi = xin.clone().requires_grad_()
        layer(xi).backward(din)
        grads.append((layer.weight.grad.double(), xi.grad.double()))
    (dw, dx), (dw_ref, dx_ref) = grads
    assert (dw - dw_ref).abs().max() <= 1e-6 * dw_ref.abs().max()
    assert (dx - dx_ref).abs().max() <= 1e-6 * dx_ref.abs().max()


def _dx_reference(x: torch.Tensor, dy: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Batch norm's input gradient in float64, centred twice (exact for these float32 inputs)."""
    x, dy = x.double(), dy.double()
    dims = [d for d in range(x.dim()) if d != 1]
    xc = x - x.mean(dims, keepdim=True)
    xc = xc - xc.mean(dims, keepdim=True)
    invstd = (xc.pow(2).mean(dims, keepdim=True) + eps).rsqrt()
    x_hat = xc * invstd
    g = dy - dy.mean(dims, keepdim=True)
    return invstd * (g - x_hat * (g * x_hat).mean(dims, keepdim=True))


@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=["planes", "rows"])
def test_dx_when_the_first_gradient_is_an_outlier_or_x_has_a_large_mean(fmt) -> None:
    """The backward pass shifts dy by a value of its own: an outlier there must cost no digits; nor
    may the rounding of a large mean of x (with dy correlated with x)."""
    fmt = fmt or torch.contiguous_format
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(64, 4, 8, 8, generator=gen)
    outlier = torch.randn(64, 4, 8, 8, generator=gen)
    outlier[0] = 1e6  # the first sample, where the shift is taken
    cases = {
        "outlier": (z, outlier),
        "x + 1e4": (z + 1e4, 5 + 3 * z + 0.1 * torch.randn(64, 4, 8, 8, generator=gen)),
    }
    for name, (x, dy) in cases.items():
        x, dy = x.contiguous(memory_format=fmt), dy.contiguous(memory_format=fmt)
        ref = _dx_reference(x, dy)
        xi = x.clone().requires_grad_()
        fast.BatchNorm2d(4)(xi).backward(dy)
        rest = slice(1, None)  # the outlier's own sample aside: the others must keep their digits
        err = (xi.grad.double() - ref)[rest].abs().max() / ref[rest].abs().max()
        assert err < 2e-5, (name, float(err))


def test_an_infinite_first_gradient_gives_an_infinite_bias_gradient_as_torch() -> None:
    x, dy = torch.randn(16, 3), torch.randn(16, 3)
    dy[0, 1] = float("inf")
    grads = []
    for layer in (fast.BatchNorm1d(3), nn.BatchNorm1d(3)):
        layer(x.clone().requires_grad_()).backward(dy)
        grads.append(layer.bias.grad)
    assert grads[0][1] == grads[1][1] == float("inf")
    torch.testing.assert_close(grads[0][[0, 2]], grads[1][[0, 2]])


def test_float32_statistics_of_a_tiny_spread() -> None:
    """Squares near float32's underflow are summed again in double; a constant channel stays exact."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(32, 3, 8, generator=gen) * 1e-22
    x[:, 2] = 0.25  # constant
    _, mean, invstd = fast.load().forward_train(x, None, None, 1e-60)
    var, ref_mean = torch.var_mean(x.double(), (0, 2), unbiased=False)
    torch.testing.assert_close(invstd[:2], (var[:2] + 1e-60).rsqrt(), rtol=1e-5, atol=0)
    assert mean[2] == 0.25 and abs(invstd[2] / 1e30 - 1) < 1e-12  # variance exactly 0


def test_gradient_that_shares_the_inputs_memory() -> None:
    """dy may be the input's own storage (y.backward(x.detach())): the backward sums still read both."""
    x = torch.randn(16, 6) * 2 + 1
    outs = []
    for layer in (fast.BatchNorm1d(6), nn.BatchNorm1d(6)):
        xi = x.clone().requires_grad_()
        layer(xi).backward(xi.detach())
        outs.append((xi.grad, layer.weight.grad, layer.bias.grad))
    for got, ref in zip(*outs, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_other_inputs_take_the_eager_path() -> None:
    """Half precision and non-contiguous input still work (through bnbook.nn's Function)."""
    layer = fast.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(
        layer(x.half()).float(), nn.BatchNorm2d(3)(x.half()).float(), rtol=1e-2, atol=1e-2
    )
    strided = torch.randn(4, 3, 10, 5)[:, :, ::2]
    torch.testing.assert_close(fast.BatchNorm2d(3)(strided), nn.BatchNorm2d(3)(strided), rtol=1e-5, atol=1e-5)


def test_fallback_when_disabled() -> None:
    code = (
        "import torch, bnbook.fast as f; print(f.available()); print(f.status()); "
        "x = torch.arange(12.).reshape(4, 3); "
        "print(float((f.BatchNorm1d(3)(x) - torch.nn.BatchNorm1d(3)(x)).abs().max()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"BNBOOK_NO_EXTENSION": "1", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "False" and "BNBOOK_NO_EXTENSION" in lines[1] and "eager" in lines[1]
    assert float(lines[2]) < 1e-6


# Shapes that take each of the kernels' loops: planes with tails after the 16-wide blocks, rows split
# by blocks of rows across threads, rows split by blocks of channels (wide or short inputs).
LOOPS = [
    ((3, 4, 37), None, "planes, tail"),
    ((8, 6, 16, 33), None, "planes, several tasks"),
    ((64, 40, 16, 16), torch.channels_last, "rows, blocks of rows"),
    ((600, 300), None, "(N, C), blocks of rows"),
    ((1203, 500), None, "(N, C), over 2 MiB, rows one per sweep"),
    ((37, 300), None, "(N, C), row tails after blocks of 16 and sweeps of 4"),
    ((5, 600), None, "(N, C), few rows, blocks of channels"),
    ((9, 4200), None, "(N, C), wide, blocks of channels"),
    ((4, 3, 5, 6, 7), torch.channels_last_3d, "rows, 3d"),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(("shape", "fmt"), [c[:2] for c in LOOPS], ids=[c[2] for c in LOOPS])
def test_every_loop_matches_native(shape, fmt, dtype, threads) -> None:
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(shape)]
    ours = {
        nn.BatchNorm1d: fast.BatchNorm1d,
        nn.BatchNorm2d: fast.BatchNorm2d,
        nn.BatchNorm3d: fast.BatchNorm3d,
    }
    c = shape[1]
    gen = torch.Generator().manual_seed(1)
    layers = [k(c, dtype=dtype) for k in (cls, ours[cls])]
    w, b = torch.rand(c, generator=gen, dtype=dtype) + 0.5, torch.randn(c, generator=gen, dtype=dtype)
    for layer in layers:
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for train in (True, False):
            x = torch.randn(shape, generator=gen, dtype=dtype) * 2 + 5
            dy = torch.randn(shape, generator=gen, dtype=dtype)
            if fmt is not None:
                x, dy = x.contiguous(memory_format=fmt), dy.contiguous(memory_format=fmt)
            outs = []
            for layer in layers:
                layer.train(train).zero_grad()
                xi = x.clone().requires_grad_()
                y = layer(xi)
                y.backward(dy)
                outs.append(
                    (y, xi.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var)
                )
            for ref, got in zip(*outs, strict=True):
                torch.testing.assert_close(got, ref, **TOL[dtype])
    finally:
        torch.set_num_threads(before)


def test_running_update_bumps_versions_and_eval_under_no_grad_matches() -> None:
    layer, ref = fast.BatchNorm2d(3), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5) + 2
    v0 = layer.running_mean._version
    layer(x)
    ref(x)
    assert layer.running_mean._version > v0  # the kernel's in-place update is seen by autograd's checks
    layer.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref(x))


def test_rows_node_with_frozen_parameters_and_an_input_changed_in_place() -> None:
    """The (N, C) training node: gradients only where asked, and autograd's check on a saved input."""
    x, dy = torch.randn(12, 4) * 2 + 1, torch.randn(12, 4)
    grads = []
    for layer in (fast.BatchNorm1d(4), nn.BatchNorm1d(4)):
        layer.weight.requires_grad_(False)
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(dy)
        grads.append((xi.grad, layer.bias.grad))
        assert layer.weight.grad is None
    for got, ref in zip(*grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    xi = x.clone().requires_grad_()
    y = fast.BatchNorm1d(4)(xi)
    with torch.no_grad():
        xi.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(dy)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(16, 4), (4, 4, 3, 3)], ids=["rows", "planes"])
@pytest.mark.parametrize("lib", [fast, bnn], ids=["fast", "nn"])
def test_jit_trace_checks_saves_and_updates_buffers_as_torch(lib, shape, train) -> None:
    """Under torch.jit.trace the layer is one aten::batch_norm: outputs, running buffers, save and load."""
    import io

    dim = "1d" if len(shape) == 2 else "2d"
    ours = getattr(lib, f"BatchNorm{dim}")(4).train(train)
    ref = getattr(nn, f"BatchNorm{dim}")(4).train(train)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(9)) * 2 + 1
    traced = torch.jit.trace(ours, x)  # check_trace on: the trace must replay the same computation
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    ours_state = {k: v.clone() for k, v in ours.state_dict().items()}
    ref.load_state_dict(ours_state)
    x2 = torch.randn(shape, generator=torch.Generator().manual_seed(10)) * 3 - 1
    expected = ref(x2)
    torch.testing.assert_close(traced(x2), expected, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded(x2), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("layout", ["rows", "ncl", "nchw", "nhwc"])
def test_a_non_finite_dy_gives_torchs_inf_and_nan(layout, bad, train) -> None:
    """dy with an inf or NaN: dx, dweight and dbias are inf and NaN exactly where torch's are."""
    shape = {"rows": (8, 3), "ncl": (4, 3, 5), "nchw": (4, 3, 2, 2), "nhwc": (4, 3, 2, 2)}[layout]
    gen = torch.Generator().manual_seed(4)
    x, dy = torch.randn(shape, generator=gen) * 2 + 1, torch.randn(shape, generator=gen)
    dy.view(-1)[5] = bad
    dy.view(-1)[0] = bad  # a first value of its channel too: the shift of dy must not hide it
    if layout == "nhwc":
        x, dy = x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)
    dim = {2: "1d", 3: "1d", 4: "2d"}[len(shape)]
    grads = []
    for lib in (nn, fast):
        layer = getattr(lib, f"BatchNorm{dim}")(3).train(train)
        with torch.no_grad():
            layer.running_mean.fill_(0.5)
            layer.running_var.fill_(2.0)
        xi = x.clone().requires_grad_()
        layer(xi).backward(dy)
        grads.append((xi.grad, layer.weight.grad, layer.bias.grad))
    for ref, got in zip(*grads, strict=True):
        assert torch.equal(ref.isnan(), got.isnan()) and torch.equal(ref.isposinf(), got.isposinf())
        assert torch.equal(ref.isneginf(), got.isneginf())
        finite = ref.isfinite()
        torch.testing.assert_close(got[finite], ref[finite], rtol=1e-4, atol=1e-5)
