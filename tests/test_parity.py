"""Parity with PyTorch: ``bnbook.scratch`` and ``bnbook.nn`` against ``torch.nn.BatchNorm*d``.

The reference is PyTorch's native batch norm, which shares no code with bnbook.
Like ``torch/testing/_internal/common_modules.py``, the cases are a table of
constructor options with readable ids; every entry runs on every input rank,
in float64 and float32, over several steps in train, eval and train mode again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bnbook import fast, scratch
from bnbook import nn as bnn

# --- the table -------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Constructor options for one parity run; ``desc`` becomes the test id."""

    desc: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    nn_only: bool = False  # scratch.BatchNorm has no ``bias`` keyword


CASES = [
    Case("default"),
    Case("affine=False", {"affine": False}),
    Case("bias=False", {"bias": False}, nn_only=True),
    Case("affine=False,bias=False", {"affine": False, "bias": False}, nn_only=True),
    Case("track=False", {"track_running_stats": False}),
    Case("affine=False,track=False", {"affine": False, "track_running_stats": False}),
    Case("momentum=0.5", {"momentum": 0.5}),
    Case("momentum=None", {"momentum": None}),
    Case("momentum=0", {"momentum": 0.0}),
    Case("momentum=1", {"momentum": 1.0}),
    Case("eps=1e-3", {"eps": 1e-3}),
    Case("eps=0.5", {"eps": 0.5}),
    Case("momentum=None,eps=0.1,track=False", {"momentum": None, "eps": 0.1, "track_running_stats": False}),
]

#: Input shapes (N, C, *spatial), by id. Channels are 3 except in one 1-channel case.
SHAPES = {
    "2D(N,C)": (8, 3),
    "3D(N,C,L)": (4, 3, 5),
    "4D(N,C,H,W)": (3, 3, 4, 2),
    "5D(N,C,D,H,W)": (2, 3, 2, 3, 2),
    "4D-one-channel": (2, 1, 3, 3),
}

TORCH_CLS = {
    2: torch.nn.BatchNorm1d,
    3: torch.nn.BatchNorm1d,
    4: torch.nn.BatchNorm2d,
    5: torch.nn.BatchNorm3d,
}
BNN_CLS = {2: bnn.BatchNorm1d, 3: bnn.BatchNorm1d, 4: bnn.BatchNorm2d, 5: bnn.BatchNorm3d}

#: (rtol, atol) per dtype.
TOL = {torch.float64: (1e-9, 1e-10), torch.float32: (1e-4, 1e-5)}
DTYPES = {"float64": torch.float64, "float32": torch.float32}

#: Train three steps, evaluate twice, train again.
SCHEDULE = ("train", "train", "train", "eval", "eval", "train")


def _close(actual: Any, expected: Any, dtype: torch.dtype, what: str) -> None:
    rtol, atol = TOL[dtype]
    a = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    e = expected.detach().cpu().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=what)


def _reference(case: Case, shape: tuple[int, ...], dtype: torch.dtype, rng) -> torch.nn.Module:
    """torch's module for this case, with random gamma and beta."""
    ref = TORCH_CLS[len(shape)](shape[1], dtype=dtype, **case.kwargs)
    with torch.no_grad():
        if ref.weight is not None:
            ref.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, shape[1])))
        if ref.bias is not None:
            ref.bias.copy_(torch.from_numpy(rng.normal(0.0, 1.0, shape[1])))
    return ref


def _batch(shape, dtype, rng) -> tuple[np.ndarray, np.ndarray]:
    """An input with a different mean and spread per channel, and an upstream gradient."""
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    loc = rng.uniform(-3.0, 3.0, c).reshape(view)
    scale = rng.uniform(0.5, 3.0, c).reshape(view)
    x = loc + scale * rng.normal(size=shape)
    dy = rng.normal(size=shape)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return x.astype(np_dtype), dy.astype(np_dtype)


def _torch_step(ref: torch.nn.Module, x: np.ndarray, dy: np.ndarray):
    ref.zero_grad(set_to_none=True)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    y = ref(xt)
    y.backward(torch.from_numpy(dy))
    return y, xt.grad


def _check_buffers(ours_mean, ours_var, ours_count, ref: torch.nn.Module, dtype, where: str) -> None:
    if ref.running_mean is None:
        assert ours_mean is None and ours_var is None and ours_count is None, where
        return
    _close(ours_mean, ref.running_mean, dtype, f"running_mean {where}")
    _close(ours_var, ref.running_var, dtype, f"running_var {where}")
    assert int(ours_count) == int(ref.num_batches_tracked), f"num_batches_tracked {where}"


def _ids(values: dict) -> list[str]:
    return list(values)


# --- layer parity over several steps ----------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=_ids(DTYPES))
@pytest.mark.parametrize("shape", SHAPES.values(), ids=_ids(SHAPES))
@pytest.mark.parametrize("case", [c for c in CASES if not c.nn_only], ids=lambda c: c.desc)
def test_scratch_matches_torch(case: Case, shape, dtype, rng) -> None:
    ref = _reference(case, shape, dtype, rng)
    ours = scratch.BatchNorm(shape[1], **case.kwargs)
    if ref.weight is not None:
        ours.gamma = ref.weight.detach().double().numpy().copy()
        ours.beta = ref.bias.detach().double().numpy().copy()
    for step, mode in enumerate(SCHEDULE):
        where = f"step {step} ({mode})"
        ref.train(mode == "train")
        ours.train(mode == "train")
        x, dy = _batch(shape, dtype, rng)
        y_ref, dx_ref = _torch_step(ref, x, dy)
        y = ours(x.copy())
        dx = ours.backward(dy.copy())
        assert y.dtype == x.dtype and dx.dtype == x.dtype, where
        _close(y, y_ref, dtype, f"output {where}")
        _close(dx, dx_ref, dtype, f"input grad {where}")
        if ref.weight is None:
            assert ours.grad_gamma is None and ours.grad_beta is None, where
        else:
            _close(ours.grad_gamma, ref.weight.grad, dtype, f"grad_gamma {where}")
            _close(ours.grad_beta, ref.bias.grad, dtype, f"grad_beta {where}")
        _check_buffers(ours.running_mean, ours.running_var, ours.num_batches_tracked, ref, dtype, where)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=_ids(DTYPES))
@pytest.mark.parametrize("shape", SHAPES.values(), ids=_ids(SHAPES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.desc)
def test_nn_matches_torch(case: Case, shape, dtype, rng) -> None:
    ref = _reference(case, shape, dtype, rng)
    ours = BNN_CLS[len(shape)](shape[1], dtype=dtype, **case.kwargs)
    with torch.no_grad():
        for name in ("weight", "bias"):
            if getattr(ref, name) is not None:
                getattr(ours, name).copy_(getattr(ref, name))
            else:
                assert getattr(ours, name) is None, name
    for step, mode in enumerate(SCHEDULE):
        where = f"step {step} ({mode})"
        ref.train(mode == "train")
        ours.train(mode == "train")
        x, dy = _batch(shape, dtype, rng)
        y_ref, dx_ref = _torch_step(ref, x, dy)
        y, dx = _torch_step(ours, x, dy)
        assert y.dtype == dtype and dx.dtype == dtype, where
        _close(y, y_ref, dtype, f"output {where}")
        _close(dx, dx_ref, dtype, f"input grad {where}")
        for name in ("weight", "bias"):
            if getattr(ref, name) is not None:
                _close(getattr(ours, name).grad, getattr(ref, name).grad, dtype, f"{name}.grad {where}")
        _check_buffers(ours.running_mean, ours.running_var, ours.num_batches_tracked, ref, dtype, where)
        if ref.num_batches_tracked is not None:
            assert ours.num_batches_tracked.dtype == torch.long


# --- the functional form ----------------------------------------------------------

FUNC_CASES = [
    pytest.param(
        training, buffers, weight, bias, id=f"training={training},buffers={buffers},w={weight},b={bias}"
    )
    for training, buffers, weight, bias in itertools.product((True, False), repeat=4)
    if training or buffers  # eval without running statistics is an error (tested below)
]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=_ids(DTYPES))
@pytest.mark.parametrize(("training", "buffers", "weight", "bias"), FUNC_CASES)
def test_functional_matches_torch(training, buffers, weight, bias, dtype, rng) -> None:
    shape = (4, 3, 5)
    x, dy = _batch(shape, dtype, rng)
    args = {}
    for name, wanted, make in (
        ("weight", weight, lambda: rng.uniform(0.5, 2.0, 3)),
        ("bias", bias, lambda: rng.normal(size=3)),
    ):
        args[name] = torch.tensor(make(), dtype=dtype) if wanted else None
    stats = (rng.normal(size=3), rng.uniform(0.5, 2.0, 3))
    grads = {}
    outs = {}
    buffer_after = {}
    for who, fn in (("torch", F.batch_norm), ("bnbook", bnn.batch_norm)):
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        params = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in args.items()}
        rm, rv = (torch.tensor(s, dtype=dtype) for s in stats) if buffers else (None, None)
        y = fn(xt, rm, rv, params["weight"], params["bias"], training=training, momentum=0.3, eps=1e-4)
        y.backward(torch.from_numpy(dy))
        outs[who] = y
        grads[who] = [xt.grad] + [p.grad for p in params.values() if p is not None]
        buffer_after[who] = (rm, rv)
    _close(outs["bnbook"], outs["torch"], dtype, "output")
    for i, (g, g_ref) in enumerate(zip(grads["bnbook"], grads["torch"], strict=True)):
        _close(g, g_ref, dtype, f"grad {i}")
    if buffers:
        for i in range(2):
            _close(buffer_after["bnbook"][i], buffer_after["torch"][i], dtype, f"buffer {i}")


def test_functional_eval_without_running_stats_raises() -> None:
    with pytest.raises(ValueError, match="running_mean"):
        bnn.batch_norm(torch.randn(4, 3), None, None, training=False)


# --- state dicts ------------------------------------------------------------------


def _trained(module: torch.nn.Module, shape, seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    """Move the module's state away from its initial values: random gamma, beta, three steps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if module.weight is not None:
            module.weight.uniform_(0.5, 2.0, generator=gen)
        if module.bias is not None:
            module.bias.normal_(generator=gen)
        module.train()
        for _ in range(3):
            module(torch.randn(shape, generator=gen, dtype=dtype) * 2 + 1)
    return module


STATE_OPTIONS = [
    pytest.param(kw, id=",".join(f"{k}={v}" for k, v in kw.items()) or "default")
    for kw in (
        {},
        {"affine": False},
        {"bias": False},
        {"track_running_stats": False},
        {"affine": False, "track_running_stats": False},
    )
]


@pytest.mark.parametrize("kwargs", STATE_OPTIONS)
def test_state_dict_keys_match_torch(kwargs) -> None:
    for rank in (2, 4, 5):
        ours = BNN_CLS[rank](3, **kwargs).state_dict()
        ref = TORCH_CLS[rank](3, **kwargs).state_dict()
        assert list(ours) == list(ref)
        for key in ref:
            assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape, key
            assert torch.equal(ours[key], ref[key]), key


@pytest.mark.parametrize("kwargs", STATE_OPTIONS)
def test_state_dict_torch_to_bnbook_and_back(kwargs) -> None:
    shape = (4, 3, 2, 2)
    ref = _trained(torch.nn.BatchNorm2d(3, **kwargs), shape)
    ours = bnn.BatchNorm2d(3, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x))

    back = torch.nn.BatchNorm2d(3, **kwargs)
    ours2 = _trained(bnn.BatchNorm2d(3, **kwargs), shape, seed=1)
    back.load_state_dict(ours2.state_dict(), strict=True)
    for key, value in ours2.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), ours2.eval()(x))


def test_state_dict_version1_checkpoint_without_counter_loads() -> None:
    """A version-1 checkpoint (no num_batches_tracked) loads strictly, and the counter ends as torch's."""
    src = _trained(torch.nn.BatchNorm1d(3), (8, 3))
    state = src.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    ref, ours = torch.nn.BatchNorm1d(3), bnn.BatchNorm1d(3)
    for module in (ref, ours):
        s = state.copy()  # load_state_dict may add the missing key to the dict it is given
        s._metadata = state._metadata
        module.num_batches_tracked.fill_(7)
        module.load_state_dict(s, strict=True)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)
    torch.testing.assert_close(ours.running_mean, src.running_mean)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("track", [True, False], ids=["track", "no-track"])
def test_state_dict_torch_to_scratch_and_back(affine, track) -> None:
    shape = (4, 3, 2, 2)
    kwargs = {"affine": affine, "track_running_stats": track}
    ref = _trained(torch.nn.BatchNorm2d(3, dtype=torch.float64, **kwargs), shape, dtype=torch.float64)
    ours = scratch.BatchNorm(3, **kwargs)
    ours.load_state_dict(ref.state_dict())  # torch tensors, some requiring grad
    assert list(ours.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[key], value.numpy(), err_msg=key)
    x = np.random.default_rng(3).normal(size=shape)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        np.testing.assert_allclose(ours(x), ref(torch.from_numpy(x)).numpy(), rtol=1e-12, atol=1e-12)

    # scratch -> torch, strict, via torch.as_tensor
    ours.train()
    for _ in range(2):
        ours(np.random.default_rng(4).normal(2.0, 3.0, size=shape))
    back = torch.nn.BatchNorm2d(3, dtype=torch.float64, **kwargs)
    back.load_state_dict({k: torch.as_tensor(v) for k, v in ours.state_dict().items()}, strict=True)
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key].numpy(), value, err_msg=key)
    if track:
        assert back.num_batches_tracked.dtype == torch.long
        assert int(back.num_batches_tracked) == 5


@pytest.mark.parametrize("rank", [2, 4, 5], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_to_dtype_moves_parameters_and_buffers(rank, dtype) -> None:
    ours, ref = BNN_CLS[rank](3).to(dtype), TORCH_CLS[rank](3).to(dtype)
    pairs = zip(
        itertools.chain(ours.named_parameters(), ours.named_buffers()),
        itertools.chain(ref.named_parameters(), ref.named_buffers()),
        strict=True,
    )
    for (k, v), (k_ref, v_ref) in pairs:
        assert k == k_ref and v.dtype == v_ref.dtype, k
    assert ours.weight.dtype == ours.running_mean.dtype == ours.running_var.dtype == dtype
    assert ours.num_batches_tracked.dtype == torch.long  # .to(dtype) moves only floating point
    y = ours(torch.randn((4, 3) + (2,) * (rank - 2), dtype=dtype))
    assert y.dtype == dtype
    assert ours.running_mean.dtype == dtype and int(ours.num_batches_tracked) == 1


def test_factory_kwargs_make_float64_state() -> None:
    ours = bnn.BatchNorm1d(3, dtype=torch.float64)
    assert ours.weight.dtype == ours.bias.dtype == ours.running_mean.dtype == torch.float64
    assert ours.num_batches_tracked.dtype == torch.long


def test_reset_parameters_matches_torch() -> None:
    ours, ref = _trained(bnn.BatchNorm1d(3), (8, 3)), _trained(torch.nn.BatchNorm1d(3), (8, 3))
    ours.reset_parameters()
    ref.reset_parameters()
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


# --- never torch's native kernel --------------------------------------------------


class _RecordOps(TorchDispatchMode):
    """Records the name of every ATen operator that runs while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _forward_backward(module: torch.nn.Module) -> None:
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    module(x).square().sum().backward()


def test_op_recorder_sees_torchs_native_kernel() -> None:
    """The detector used below does catch torch's own batch norm (so it can fail)."""
    with _RecordOps() as rec:
        _forward_backward(torch.nn.BatchNorm2d(3))
    assert any("batch_norm" in op for op in rec.ops)


@pytest.mark.parametrize("mode", ["train", "eval", "no-track"])
def test_nn_never_calls_native_batch_norm(mode, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("torch's native batch norm was called")

    for name in [n for n in dir(torch) if "batch_norm" in n]:
        monkeypatch.setattr(torch, name, refuse)
    monkeypatch.setattr(torch.nn.functional, "batch_norm", refuse)
    module = bnn.BatchNorm2d(3, track_running_stats=mode != "no-track")
    module.train(mode != "eval")
    with _RecordOps() as rec:
        _forward_backward(module)
    assert rec.ops, "no operator was recorded"
    assert not [op for op in rec.ops if "batch_norm" in op]


# --- errors, like torch's ---------------------------------------------------------


@pytest.mark.parametrize(
    ("cls_ours", "cls_ref", "bad_shape"),
    [
        (bnn.BatchNorm1d, torch.nn.BatchNorm1d, (2, 3, 4, 4)),
        (bnn.BatchNorm1d, torch.nn.BatchNorm1d, (3,)),
        (bnn.BatchNorm2d, torch.nn.BatchNorm2d, (2, 3, 4)),
        (bnn.BatchNorm2d, torch.nn.BatchNorm2d, (2, 3, 4, 4, 4)),
        (bnn.BatchNorm3d, torch.nn.BatchNorm3d, (2, 3, 4, 4)),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else f"{len(v)}D",
)
def test_nn_wrong_rank_message_like_torch(cls_ours, cls_ref, bad_shape) -> None:
    x = torch.zeros(bad_shape)
    with pytest.raises(ValueError) as ref_err:
        cls_ref(3)(x)
    with pytest.raises(ValueError) as our_err:
        cls_ours(3)(x)
    assert str(ref_err.value) in str(our_err.value)


def test_scratch_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"got 1D input"):
        scratch.BatchNorm(3)(np.zeros(3))
    with pytest.raises(ValueError, match=r"got 0D input"):
        scratch.BatchNorm(3)(np.float64(1.0))


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1)], ids=lambda s: f"{len(s)}D")
def test_one_value_per_channel_in_training(shape) -> None:
    message = "Expected more than 1 value per channel when training"
    cls = BNN_CLS[len(shape)]
    with pytest.raises(ValueError, match=message):
        TORCH_CLS[len(shape)](3)(torch.zeros(shape))  # the reference says the same
    with pytest.raises(ValueError, match=message):
        cls(3)(torch.zeros(shape))
    with pytest.raises(ValueError, match=message):
        cls(3, track_running_stats=False).eval()(torch.zeros(shape))
    with pytest.raises(ValueError, match=message):
        scratch.BatchNorm(3)(np.zeros(shape))
    with pytest.raises(ValueError, match=message):
        scratch.BatchNorm(3, track_running_stats=False).eval()(np.zeros(shape))
    with pytest.raises(ValueError, match=message):
        bnn.batch_norm(torch.zeros(shape), None, None, training=True)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")], ids=str)
def test_scratch_rejects_bad_eps_at_construction(eps) -> None:
    with pytest.raises(ValueError, match="eps"):
        scratch.BatchNorm(3, eps=eps)


# --- the short path for (N, C) training --------------------------------------------


# bnbook.nn's short path, and bnbook.fast's (the fused kernels behind the same short path)
ROWS_LAYERS = [bnn.BatchNorm1d] + ([fast.BatchNorm1d] if fast.available() else [])
ROWS_IDS = ["nn", "fast"][: len(ROWS_LAYERS)]


def _rows_pair(dtype=torch.float64, c=7, seed=0, cls=bnn.BatchNorm1d):
    torch.manual_seed(seed)
    ref, ours = torch.nn.BatchNorm1d(c, dtype=dtype), cls(c, dtype=dtype)
    with torch.no_grad():
        for layer in (ref, ours):
            layer.weight.copy_(torch.linspace(-1.5, 2.0, c, dtype=dtype))
            layer.bias.copy_(torch.linspace(0.5, -0.5, c, dtype=dtype))
    return ref, ours


@pytest.mark.parametrize("cls", ROWS_LAYERS, ids=ROWS_IDS)
def test_rows_training_takes_the_short_path_and_others_do_not(cls) -> None:
    x = torch.randn(16, 5, requires_grad=True)
    bn = cls(5)
    shorts, general = {  # bnbook.nn's short path runs from C++ where the kernels are built
        bnn.BatchNorm1d: (("_TrainRowsFunctionBackward", "CppNode<bnbook_fast::EagerRows>"),
                          "BatchNormFunctionBackward"),
        fast.BatchNorm1d: (("CppNode<bnbook_fast::TrainRows>",), "FusedBatchNormFunctionBackward"),
    }[cls]
    assert any(s in bn(x).grad_fn.name() for s in shorts)
    assert any(s in bn(x.detach()).grad_fn.name() for s in shorts)  # weight needs grad
    assert type(bn(torch.randn(16, 5, 3)).grad_fn).__name__ == general
    assert type(cls(5, affine=False)(x).grad_fn).__name__ == general
    assert type(cls(5, track_running_stats=False)(x).grad_fn).__name__ == general
    assert type(bn.half()(x.half()).grad_fn).__name__ == "BatchNormFunctionBackward"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("x_grad", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None, 1.5])
@pytest.mark.parametrize("cls", ROWS_LAYERS, ids=ROWS_IDS)
def test_rows_short_path_matches_torch_over_steps(cls, dtype, x_grad, momentum) -> None:
    ref, ours = _rows_pair(dtype, cls=cls)
    ref.momentum = ours.momentum = momentum
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for step in range(3):
        x = (torch.randn(12, 7, dtype=dtype) * 3 + step).requires_grad_(x_grad)
        dy = torch.randn(12, 7, dtype=dtype)
        outs = []
        for layer in (ref, ours):
            xi = x.detach().clone().requires_grad_(x_grad)
            y = layer(xi)
            y.backward(dy)
            outs.append((y.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
            layer.weight.grad = layer.bias.grad = None
        (y0, dx0, dw0, db0), (y1, dx1, dw1, db1) = outs
        torch.testing.assert_close(y1, y0, **tol)
        if x_grad:
            torch.testing.assert_close(dx1, dx0, **tol)
        else:
            assert dx0 is None and dx1 is None
        torch.testing.assert_close(dw1, dw0, **tol)
        torch.testing.assert_close(db1, db0, **tol)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **tol)
        torch.testing.assert_close(ours.running_var, ref.running_var, **tol)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1


@pytest.mark.parametrize("cls", ROWS_LAYERS, ids=ROWS_IDS)
def test_rows_short_path_double_backward_matches_torch(cls) -> None:
    """A gradient penalty differentiates the backward pass: it must match torch's exactly."""
    ref, ours = _rows_pair(cls=cls)
    x = torch.randn(10, 7, dtype=torch.float64)
    grads = []
    for layer in (ref, ours):
        xi = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(layer(xi).pow(3).sum(), xi, create_graph=True)
        penalty = gx.pow(2).sum()
        grads.append(torch.autograd.grad(penalty, (xi, layer.weight, layer.bias)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)
    assert grads[1][0].abs().max() > 0


@pytest.mark.parametrize("cls", ROWS_LAYERS, ids=ROWS_IDS)
def test_rows_short_path_under_checkpointing_matches_torch(cls) -> None:
    ref, ours = _rows_pair(cls=cls)
    x = torch.randn(10, 7, dtype=torch.float64)
    results = []
    for layer in (ref, ours):
        xi = x.clone().requires_grad_(True)
        y = torch.utils.checkpoint.checkpoint(lambda t, layer=layer: layer(t).tanh(), xi, use_reentrant=False)
        y.sum().backward()
        results.append((xi.grad, layer.weight.grad, layer.running_mean.clone(), layer.num_batches_tracked))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not fast.available(), reason="no fused kernels here")
def test_fused_rows_short_path_equals_the_general_fused_path() -> None:
    """The C++ node calls the same kernels, so the same numbers as FusedBatchNormFunction, bit for bit."""
    from bnbook.nn import _batchnorm as eager

    x, dy = torch.randn(24, 9) * 2 + 1, torch.randn(24, 9)
    results = []
    for short in (True, False):
        layer = fast.BatchNorm1d(9)
        saved = eager.TRAIN_ROWS_PATHS.copy()
        if not short:
            eager.TRAIN_ROWS_PATHS.clear()
        try:
            xi = x.clone().requires_grad_()
            y = layer(xi)
        finally:
            eager.TRAIN_ROWS_PATHS.update(saved)
        assert ("TrainRows" in y.grad_fn.name()) == short
        y.backward(dy)
        grads = (xi.grad, layer.weight.grad, layer.bias.grad)
        results.append((y, *grads, layer.running_mean, layer.running_var))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", ROWS_LAYERS, ids=ROWS_IDS)
@pytest.mark.parametrize("shape", [(16, 4), (16, 4, 3)], ids=["rows", "3d"])
def test_training_under_cpu_autocast_matches_torch(cls, shape) -> None:
    """Under torch.autocast a float32 input keeps float32 statistics, as in torch's layer."""
    x, dy = torch.randn(shape) * 2 + 1, torch.randn(shape)
    outs = []
    for layer in (torch.nn.BatchNorm1d(4), cls(4)):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xi)
        y.backward(dy)
        outs.append((y, xi.grad, layer.weight.grad, layer.running_mean, layer.running_var))
    for got, ref in zip(outs[1], outs[0], strict=True):
        assert got.dtype == ref.dtype
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", ROWS_LAYERS, ids=ROWS_IDS)
def test_parametrized_weight_matches_torch(cls) -> None:
    """torch.nn.utils.parametrize moves the weight out of _parameters; the layer still finds it."""
    from torch.nn.utils import parametrize

    class Positive(torch.nn.Module):
        def forward(self, w):
            return torch.nn.functional.softplus(w)

    x, dy = torch.randn(12, 5) * 2 + 1, torch.randn(12, 5)
    outs = []
    for layer in (torch.nn.BatchNorm1d(5), cls(5)):
        parametrize.register_parametrization(layer, "weight", Positive())
        xi = x.clone().requires_grad_()
        layer(xi).backward(dy)
        outs.append((layer(x), xi.grad, layer.parametrizations.weight.original.grad))
    for got, ref in zip(outs[1], outs[0], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 4), (8, 4, 5)], ids=["rows", "3d"])
def test_renorm_and_meta_input_under_cpu_autocast(shape) -> None:
    """Batch renorm is left alone by autocast too; a meta input under CPU autocast still runs."""
    x = torch.randn(shape) * 2 + 100
    outs = []
    for enabled in (False, True):
        layer = bnn.BatchRenorm1d(4)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            y = layer(x)
        outs.append((y, layer.running_mean, layer.running_var))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bnn.BatchNorm1d(4, device="meta")(torch.empty(shape, device="meta")).shape == shape
