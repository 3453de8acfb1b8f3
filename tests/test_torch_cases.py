"""torch's own batch-norm tests, run against bnbook.nn and bnbook.fast.

Two sources:

* ``module_db``, the table of constructor arguments and inputs that torch's
  generic module tests run for ``BatchNorm1d/2d/3d``
  (``torch/testing/_internal/common_modules.py``), with its error inputs.
  Every entry runs here in training and eval mode over several steps, in
  float32 and float64, comparing outputs, gradients and every buffer with
  torch's layer given the same state.
* The batch-norm cases of torch's ``test/test_nn.py``, rewritten as pytest
  functions against both libraries (``simple_average``, ``update_stats``,
  buffer updates without tracking, the size checks, channels-last input,
  non-contiguous input, a large batch, old state dicts).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from bnbook import fast
from bnbook import nn as bnn

common_modules = pytest.importorskip("torch.testing._internal.common_modules")

BN_INFOS = [
    m for m in common_modules.module_db if m.name in ("nn.BatchNorm1d", "nn.BatchNorm2d", "nn.BatchNorm3d")
]
LIBRARIES = {"nn": bnn, "fast": fast}
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-9}, torch.float32: {"rtol": 2e-4, "atol": 2e-5}}


def _cases():
    for info in BN_INFOS:
        for dtype in (torch.float64, torch.float32):
            for training in (True, False):
                inputs = info.module_inputs_func(
                    info, device="cpu", dtype=dtype, requires_grad=True, training=training
                )
                for k, mi in enumerate(inputs):
                    for lib in LIBRARIES:
                        desc = mi.desc or f"case{k}"
                        yield pytest.param(
                            info,
                            mi,
                            dtype,
                            training,
                            lib,
                            id=f"{info.name[3:]}-{desc}-{str(dtype)[6:]}-{('eval', 'train')[training]}-{lib}",
                        )


def _pair(info, mi, dtype, lib):
    args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
    torch.manual_seed(0)
    ref = info.module_cls(*args, **kwargs).to(dtype)
    ours = getattr(LIBRARIES[lib], info.module_cls.__name__)(*args, **kwargs).to(dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(0.5, 1.5)
        for name, b in ref.named_buffers():
            if name.endswith("running_mean"):
                b.normal_()
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize(("info", "mi", "dtype", "training", "lib"), list(_cases()))
def test_module_db_inputs_match_torch(info, mi, dtype, training, lib) -> None:
    ref, ours = _pair(info, mi, dtype, lib)
    ref.train(training), ours.train(training)
    (x,) = mi.forward_input.args
    for step in range(3):
        xs = [x.detach().clone().mul(1 + step).requires_grad_(x.requires_grad) for _ in range(2)]
        outs = [m(z) for m, z in zip((ref, ours), xs, strict=True)]
        torch.testing.assert_close(outs[1], outs[0], **TOL[dtype])
        if outs[0].numel():
            grad = torch.linspace(-1, 1, outs[0].numel(), dtype=dtype).view_as(outs[0])
            for out in outs:
                out.backward(grad)
            torch.testing.assert_close(xs[1].grad, xs[0].grad, **TOL[dtype])
            for (name, p), q in zip(ref.named_parameters(), ours.parameters(), strict=True):
                torch.testing.assert_close(q.grad, p.grad, **TOL[dtype], msg=name)
                p.grad = q.grad = None
        for (name, b), c in zip(ref.named_buffers(), ours.buffers(), strict=True):
            torch.testing.assert_close(c, b, **TOL[dtype], msg=name)


def _error_cases():
    for info in BN_INFOS:
        for ei in info.module_error_inputs_func(
            info, device="cpu", dtype=torch.float64, requires_grad=False, training=True
        ):
            for lib in LIBRARIES:
                yield pytest.param(info, ei, lib, id=f"{info.name[3:]}-{ei.error_regex}-{lib}")


@pytest.mark.parametrize(("info", "ei", "lib"), list(_error_cases()))
def test_module_db_error_inputs_raise_torchs_error(info, ei, lib) -> None:
    mi = ei.module_error_input
    cls = getattr(LIBRARIES[lib], info.module_cls.__name__)
    module = cls(*mi.constructor_input.args, **mi.constructor_input.kwargs)  # built as torch builds it
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(ei.error_type, match=re.compile(ei.error_regex)):
        module(*mi.forward_input.args, **mi.forward_input.kwargs)
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


# --- batch-norm cases of torch's test_nn.py, rewritten -------------------------------------------------


@pytest.fixture(params=list(LIBRARIES))
def lib(request):
    return LIBRARIES[request.param]


def test_batchnorm_simple_average(lib) -> None:
    """momentum=None: the running statistics are the plain average over the batches seen."""
    torch.manual_seed(0)
    module = lib.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    zeros, ones = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    x1, x2 = torch.rand(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64)
    module(x1)
    module(x2)
    mean = (x1.mean(0) + x2.mean(0)) / 2
    var = (x1.var(0) + x2.var(0)) / 2
    torch.testing.assert_close(module.running_mean, mean)
    torch.testing.assert_close(module.running_var, var)
    module.reset_running_stats()
    torch.testing.assert_close(module.running_mean, zeros)
    torch.testing.assert_close(module.running_var, ones)
    assert int(module.num_batches_tracked) == 0


def test_batchnorm_update_stats(lib) -> None:
    torch.manual_seed(1)
    module = lib.BatchNorm1d(3, momentum=0.3)
    x = torch.randn(10, 3) * 2 + 1
    module(x)
    torch.testing.assert_close(module.running_mean, 0.3 * x.mean(0))
    torch.testing.assert_close(module.running_var, 0.7 + 0.3 * x.var(0))
    assert int(module.num_batches_tracked) == 1
    module.eval()
    state = copy.deepcopy(module.state_dict())
    module(x)
    for key, value in module.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_batchnorm_buffer_update_when_stats_are_not_tracked(lib) -> None:
    module = lib.BatchNorm1d(3, track_running_stats=False)
    assert module.running_mean is None and module.num_batches_tracked is None
    x = torch.randn(5, 3)
    torch.testing.assert_close(module(x), (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))
    module.eval()  # still batch statistics: there are no running ones
    torch.testing.assert_close(module(x), (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))


def test_batchnorm_raises_error_if_less_than_one_value_per_channel(lib) -> None:
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        lib.BatchNorm1d(10)(torch.randn(1, 10))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        lib.BatchNorm2d(10)(torch.randn(1, 10, 1, 1))


@pytest.mark.parametrize("which", ["running_mean", "running_var", "weight", "bias"])
def test_batchnorm_raises_error_if_operand_has_wrong_size(which) -> None:
    """torch raises RuntimeError for a per-channel tensor of the wrong length; so does bnbook."""
    x = torch.rand(2, 10)
    args = {"running_mean": torch.zeros(10), "running_var": torch.ones(10), "weight": None, "bias": None}
    args[which] = torch.ones(11)
    with pytest.raises(RuntimeError):
        torch.nn.functional.batch_norm(
            x, args["running_mean"], args["running_var"], args["weight"], args["bias"]
        )
    with pytest.raises(RuntimeError, match=which):
        bnn.batch_norm(x, args["running_mean"], args["running_var"], args["weight"], args["bias"])


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_batchnorm_nhwc_and_noncontiguous_match_torch(lib, fmt) -> None:
    torch.manual_seed(2)
    x = torch.randn(4, 5, 6, 7, dtype=torch.float64).to(memory_format=fmt)
    x = x[:, :, ::2] if fmt is torch.contiguous_format else x  # a non-contiguous view
    ref, ours = nn.BatchNorm2d(5, dtype=torch.float64), lib.BatchNorm2d(5, dtype=torch.float64)
    xs = [x.detach().clone().requires_grad_() for _ in range(2)]
    ys = [m(z) for m, z in zip((ref, ours), xs, strict=True)]
    torch.testing.assert_close(ys[1], ys[0])
    for y in ys:
        y.backward(torch.ones_like(y).cumsum(-1))
    torch.testing.assert_close(xs[1].grad, xs[0].grad)


def test_batchnorm_large_batch(lib) -> None:
    torch.manual_seed(3)
    x = torch.randn(70000, 3, 1, 1) * 3 + 5
    ref, ours = nn.BatchNorm2d(3), lib.BatchNorm2d(3)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-5)


def test_batchnorm_load_state_dict_without_counter(lib) -> None:
    """A checkpoint from before num_batches_tracked existed (version 1) loads as into torch's layer."""
    counters = []
    for module in (nn.BatchNorm2d(3), lib.BatchNorm2d(3)):
        state = module.state_dict()
        del state["num_batches_tracked"]
        state._metadata[""]["version"] = 1
        module.num_batches_tracked.fill_(5)
        module.load_state_dict(state)
        counters.append(int(module.num_batches_tracked))
    assert counters[0] == counters[1]


def test_batchnorm_empty_batch(lib) -> None:
    x = torch.randn(0, 3, 2, 2, requires_grad=True)
    y = lib.BatchNorm2d(3)(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
