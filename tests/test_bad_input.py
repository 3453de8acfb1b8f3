"""Bad input: clear errors, and a failed call changes nothing.

``scratch.BatchNorm`` validates everything a user can pass it; ``bnbook.nn``
raises what ``torch.nn`` raises (as ValueError) and, unlike torch, checks
before it counts the batch.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bnbook import nn as bnn
from bnbook import scratch

# --- constructor ------------------------------------------------------------------

NN_CLASSES = [bnn.BatchNorm1d, bnn.BatchNorm2d, bnn.BatchNorm3d]
NN_IDS = ["nn1d", "nn2d", "nn3d"]


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf"), "1e-5", None, True], ids=repr)
def test_scratch_bad_eps_rejected(eps) -> None:
    with pytest.raises(ValueError, match="eps"):
        scratch.BatchNorm(3, eps=eps)


@pytest.mark.parametrize("num_features", [0, -2, 2.5, "3", True, None], ids=repr)
def test_scratch_bad_num_features_rejected(num_features) -> None:
    with pytest.raises(ValueError, match="num_features"):
        scratch.BatchNorm(num_features)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan"), "0.1", True], ids=repr)
def test_scratch_bad_momentum_rejected(momentum) -> None:
    with pytest.raises(ValueError, match="momentum"):
        scratch.BatchNorm(3, momentum=momentum)


# bnbook.nn takes what torch.nn takes, so that converting any torch layer works.
@pytest.mark.parametrize("cls", NN_CLASSES, ids=NN_IDS)
@pytest.mark.parametrize(
    "kwargs", [{"eps": 0.0}, {"eps": -1e-5}, {"momentum": 1.5}, {"momentum": -0.5}], ids=repr
)
def test_nn_accepts_what_torch_accepts_at_construction(cls, kwargs) -> None:
    ours = cls(3, **kwargs)
    theirs = getattr(torch.nn, cls.__name__)(3, **kwargs)
    assert (ours.eps, ours.momentum) == (theirs.eps, theirs.momentum)


@pytest.mark.parametrize("cls", NN_CLASSES, ids=NN_IDS)
def test_nn_accepts_zero_features_like_torch(cls) -> None:
    assert cls(0).num_features == getattr(torch.nn, cls.__name__)(0).num_features == 0


@pytest.mark.parametrize("cls", NN_CLASSES, ids=NN_IDS)
@pytest.mark.parametrize(
    "kwargs",
    [{"eps": float("nan")}, {"eps": float("inf")}, {"eps": "1e-5"}, {"momentum": float("nan")},
     {"momentum": "0.1"}, {"momentum": True}, {"num_features": -2}, {"num_features": 2.5}],
    ids=repr,
)
def test_nn_refuses_what_would_poison_the_statistics(cls, kwargs) -> None:
    """Non-numbers, NaN and infinity: torch takes some silently; bnbook refuses them (documented)."""
    args = {"num_features": 3, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        cls(**args)


@pytest.mark.parametrize("momentum", [1.5, -0.5])
def test_nn_momentum_outside_unit_interval_matches_torch(momentum) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 3) * 2 + 1
    ours, theirs = bnn.BatchNorm1d(3, momentum=momentum), torch.nn.BatchNorm1d(3, momentum=momentum)
    for _ in range(3):
        torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


@pytest.mark.parametrize("eps", [0.0, -1e-5])
def test_nn_nonpositive_eps_refused_when_it_runs_like_torch(eps) -> None:
    x = torch.randn(8, 3)
    ours, theirs = bnn.BatchNorm1d(3, eps=eps), torch.nn.BatchNorm1d(3, eps=eps)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(ValueError, match="eps") as ours_err:
        ours(x)
    with pytest.raises(ValueError, match="eps"):
        theirs(x)
    assert "eps" in str(ours_err.value)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, before[k]), k
    # In eval mode torch accepts eps = 0 (and refuses a negative eps): so does bnbook.
    ours.eval(), theirs.eval()
    if eps == 0.0:
        torch.testing.assert_close(ours(x), theirs(x))
    else:
        with pytest.raises(ValueError, match="eps"):
            ours(x)


def _torch_and_ours(fn):
    """Run ``fn(module_ns)`` with torch.nn and with bnbook.nn; return both exceptions."""
    errors = []
    for ns in (torch.nn, bnn):
        with pytest.raises(Exception) as info:
            fn(ns)
        errors.append(info.value)
    return errors


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(lambda ns: ns.BatchNorm1d(4)(torch.randn(8, 3)), id="wrong-channels"),
        pytest.param(lambda ns: ns.BatchNorm1d(3)(torch.randn(8, 3, dtype=torch.float64)), id="x64-params32"),
        pytest.param(lambda ns: ns.BatchNorm1d(3).double()(torch.randn(8, 3)), id="x32-params64"),
        pytest.param(
            lambda ns: ns.BatchNorm2d(3)(torch.randn(4, 3, 2, 2, dtype=torch.float64)), id="2d-mixed"
        ),
        pytest.param(lambda ns: ns.BatchNorm1d(3)(torch.ones(8, 3, dtype=torch.long)), id="integer-input"),
    ],
)
def test_nn_errors_are_catchable_as_torchs(case) -> None:
    """Each refusal is a ValueError and also of the class torch raises, so either ``except`` catches it."""
    theirs, ours = _torch_and_ours(case)
    assert isinstance(ours, ValueError)
    assert isinstance(ours, type(theirs)), (type(ours), type(theirs))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("which", ["running_mean", "running_var"])
def test_running_statistics_that_require_grad_are_refused_like_torch(training, which) -> None:
    x = torch.randn(8, 3)
    rm, rv = torch.zeros(3), torch.ones(3)
    stats = {"running_mean": rm, "running_var": rv}
    stats[which].requires_grad_(True)
    with pytest.raises(RuntimeError):
        torch.nn.functional.batch_norm(x, rm, rv, training=training)
    with pytest.raises(RuntimeError, match=which) as info:
        bnn.batch_norm(x, rm, rv, training=training)
    assert isinstance(info.value, ValueError)
    assert torch.equal(rm.detach(), torch.zeros(3)) and torch.equal(rv.detach(), torch.ones(3))


def test_half_input_with_float32_parameters_is_accepted_like_torch() -> None:
    x = torch.randn(8, 3).to(torch.bfloat16)
    torch.testing.assert_close(bnn.BatchNorm1d(3)(x), torch.nn.BatchNorm1d(3)(x))


def test_momentum_none_without_a_counter_runs_like_torch() -> None:
    """torch leaves the statistics in place when there is no counter to average with; so does bnbook."""
    x = torch.randn(16, 3) * 3 + 2
    ours, theirs = bnn.BatchNorm1d(3, momentum=None), torch.nn.BatchNorm1d(3, momentum=None)
    ours.num_batches_tracked = None
    theirs.num_batches_tracked = None
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_numpy_scalars_accepted_in_constructor() -> None:
    layer = scratch.BatchNorm(np.int64(3), eps=np.float32(1e-3), momentum=np.float64(0.2))
    assert layer.num_features == 3 and type(layer.num_features) is int
    assert layer.eps == pytest.approx(1e-3) and layer.momentum == 0.2


# --- scratch: bad input to a call -----------------------------------------------


def test_scratch_wrong_rank() -> None:
    for x in (np.zeros(3), np.float64(2.0), [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match=r"\(N, C\)"):
            scratch.BatchNorm(3)(x)


def test_scratch_wrong_channel_count_names_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"\b3\b.*\b5\b"):
        scratch.BatchNorm(3)(np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\b4\b.*\b2\b"):
        scratch.BatchNorm(4).eval()(np.zeros((4, 2, 7)))


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1)], ids=str)
def test_scratch_one_value_per_channel_in_training(shape) -> None:
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        scratch.BatchNorm(3)(np.ones(shape))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_scratch_non_finite_input(bad, mode) -> None:
    x = np.ones((4, 3))
    x[2, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        scratch.BatchNorm(3).train(mode == "train")(x)


@pytest.mark.parametrize(
    "x",
    [
        [["a", "b", "c"], ["d", "e", "f"]],
        np.array([[object(), object()], [object(), object()]], dtype=object),
        [[1.0, 2.0], [3.0]],  # ragged
        np.ones((4, 2), dtype=bool),
        np.ones((4, 2), dtype=complex),
        np.array([[1, 2], [3, 4]], dtype="datetime64[s]"),
    ],
    ids=["strings", "objects", "ragged", "bool", "complex", "datetime"],
)
def test_scratch_non_numeric_input(x) -> None:
    with pytest.raises((ValueError, TypeError)):
        scratch.BatchNorm(2)(x)


def test_scratch_backward_before_forward() -> None:
    with pytest.raises(RuntimeError, match="before"):
        scratch.BatchNorm(3).backward(np.ones((4, 3)))


def test_scratch_dy_of_wrong_shape_or_type() -> None:
    layer = scratch.BatchNorm(3)
    layer(np.random.default_rng(0).normal(size=(4, 3)))
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        layer.backward(np.ones((3, 4)))
    with pytest.raises(ValueError):
        layer.backward(np.ones((4, 3, 1)))
    with pytest.raises((TypeError, ValueError)):
        layer.backward(np.full((4, 3), "x"))


def test_scratch_train_mode_must_be_boolean() -> None:
    layer = scratch.BatchNorm(3)
    for mode in ("yes", 1, None, "False"):
        with pytest.raises(ValueError, match="boolean"):
            layer.train(mode)
    assert layer.training is True
    assert layer.train(False).training is False and layer.eval().training is False


def test_scratch_single_sample_in_eval_mode_is_fine() -> None:
    layer = scratch.BatchNorm(3)
    layer.running_mean = np.array([1.0, 2.0, 3.0])
    layer.running_var = np.array([4.0, 0.25, 1.0])
    layer.gamma = np.array([2.0, 1.0, -1.0])
    layer.beta = np.array([0.0, 1.0, 0.5])
    layer.eval()
    y = layer(np.array([[3.0, 2.5, 3.0]]))
    expected = np.array([[2.0 * 2.0 / np.sqrt(4 + 1e-5), 1.0 + 0.5 / np.sqrt(0.25 + 1e-5), 0.5]])
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    # fixed statistics: the gradient is gamma / sqrt(running_var + eps)
    expected_dx = layer.gamma / np.sqrt(layer.running_var + 1e-5)
    np.testing.assert_allclose(layer.backward(np.ones((1, 3))), expected_dx[None], rtol=1e-12)


# --- scratch: a failed call changes nothing ------------------------------------------


def _snapshot(layer: scratch.BatchNorm) -> dict:
    return {
        "running_mean": copy.deepcopy(layer.running_mean),
        "running_var": copy.deepcopy(layer.running_var),
        "num_batches_tracked": layer.num_batches_tracked,
        "gamma": copy.deepcopy(layer.gamma),
        "beta": copy.deepcopy(layer.beta),
        "grad_gamma": copy.deepcopy(layer.grad_gamma),
        "grad_beta": copy.deepcopy(layer.grad_beta),
        "training": layer.training,
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert a[key].dtype == b[key].dtype, key
        else:
            assert a[key] == b[key], key


BAD_CALLS = {
    "wrong-rank": np.zeros(3),
    "wrong-channels": np.zeros((4, 2)),
    "one-value-per-channel": np.ones((1, 3)),
    "nan": np.array([[1.0, 2.0, np.nan]] * 4),
    "strings": [["a", "b", "c"]] * 4,
}


@pytest.mark.parametrize("bad", BAD_CALLS.values(), ids=list(BAD_CALLS))
def test_scratch_failed_call_leaves_state_and_cache_alone(bad) -> None:
    rng = np.random.default_rng(5)
    layer = scratch.BatchNorm(3)
    layer.gamma = rng.uniform(0.5, 2, 3)
    layer.beta = rng.normal(size=3)
    x = rng.normal(1.0, 2.0, size=(5, 3))
    dy = rng.normal(size=(5, 3))
    layer(x)
    layer(x * 2)
    dx_good = layer.backward(dy)
    before = _snapshot(layer)
    with pytest.raises((ValueError, TypeError)):
        layer(bad)
    _assert_same(_snapshot(layer), before)
    # the cache is still that of the last good call: backward gives the same gradients
    np.testing.assert_array_equal(layer.backward(dy), dx_good)
    _assert_same(_snapshot(layer), before)


def test_scratch_failed_backward_leaves_gradients_alone() -> None:
    layer = scratch.BatchNorm(3)
    layer(np.random.default_rng(0).normal(size=(4, 3)))
    layer.backward(np.ones((4, 3)) * np.arange(3))
    before = _snapshot(layer)
    with pytest.raises(ValueError):
        layer.backward(np.ones((5, 3)))
    _assert_same(_snapshot(layer), before)


# --- scratch: load_state_dict ---------------------------------------------------------


def _trained_layer() -> scratch.BatchNorm:
    rng = np.random.default_rng(7)
    layer = scratch.BatchNorm(3)
    layer.gamma, layer.beta = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    for _ in range(2):
        layer(rng.normal(2.0, 3.0, size=(6, 3)))
    return layer


def _good_state() -> dict:
    return {
        "weight": np.array([1.5, 2.0, 0.5]),
        "bias": np.array([0.1, 0.2, 0.3]),
        "running_mean": np.array([1.0, 2.0, 3.0]),
        "running_var": np.array([1.0, 4.0, 9.0]),
        "num_batches_tracked": np.array(11),
    }


def _drop(key):
    def edit(state):
        del state[key]

    return edit


def _set(key, value):
    def edit(state):
        state[key] = value

    return edit


BAD_STATES = {
    "missing-weight": _drop("weight"),
    "missing-counter": _drop("num_batches_tracked"),
    "unexpected-key": _set("momentum", np.array(0.1)),
    "weight-wrong-shape": _set("weight", np.ones(4)),
    "running_var-wrong-shape": _set("running_var", np.ones((3, 1))),
    "counter-not-scalar": _set("num_batches_tracked", np.array([3])),
    "bool-values": _set("bias", np.array([True, False, True])),
    "string-values": _set("running_mean", np.array(["a", "b", "c"])),
}


@pytest.mark.parametrize("edit", BAD_STATES.values(), ids=list(BAD_STATES))
def test_scratch_bad_state_dict_raises_and_changes_nothing(edit) -> None:
    layer = _trained_layer()
    before = layer.state_dict()
    state = _good_state()
    edit(state)
    with pytest.raises(ValueError):
        layer.load_state_dict(state)
    after = layer.state_dict()
    assert list(after) == list(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_scratch_good_state_dict_loads() -> None:
    layer = _trained_layer()
    layer.load_state_dict(_good_state())
    for key, value in _good_state().items():
        np.testing.assert_array_equal(layer.state_dict()[key], value, err_msg=key)
    assert layer.num_batches_tracked == 11 and isinstance(layer.num_batches_tracked, int)
    assert layer.gamma.dtype == np.float64


def test_scratch_state_dict_returns_copies() -> None:
    layer = _trained_layer()
    state = layer.state_dict()
    state["running_mean"][:] = 123.0
    state["weight"][:] = 0.0
    assert not np.any(layer.running_mean == 123.0) and not np.any(layer.gamma == 0.0)


def test_scratch_state_dict_without_affine_or_tracking_is_empty() -> None:
    layer = scratch.BatchNorm(3, affine=False, track_running_stats=False)
    assert layer.state_dict() == {}
    layer.load_state_dict({})
    with pytest.raises(ValueError):
        layer.load_state_dict({"weight": np.ones(3)})


# --- bnbook.nn ----------------------------------------------------------------------


def _nn_state(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


GOOD_SHAPE = {bnn.BatchNorm1d: (6, 3), bnn.BatchNorm2d: (6, 3, 2, 2), bnn.BatchNorm3d: (6, 3, 2, 2, 2)}

NN_BAD_CALLS = [
    pytest.param(bnn.BatchNorm1d, (4, 3, 2, 2), "expected 2D or 3D input", id="1d-4D-input"),
    pytest.param(bnn.BatchNorm1d, (4,), "expected 2D or 3D input", id="1d-1D-input"),
    pytest.param(bnn.BatchNorm2d, (4, 3, 2), "expected 4D input", id="2d-3D-input"),
    pytest.param(bnn.BatchNorm3d, (4, 3, 2, 2), "expected 5D input", id="3d-4D-input"),
    pytest.param(bnn.BatchNorm1d, (4, 5), r"\b3\b.*\b5\b", id="1d-wrong-channels"),
    pytest.param(bnn.BatchNorm2d, (4, 2, 2, 2), r"\b3\b.*\b2\b", id="2d-wrong-channels"),
    pytest.param(bnn.BatchNorm1d, (1, 3), "more than 1 value per channel", id="1d-one-value"),
    pytest.param(bnn.BatchNorm2d, (1, 3, 1, 1), "more than 1 value per channel", id="2d-one-value"),
    pytest.param(bnn.BatchNorm3d, (1, 3, 1, 1, 1), "more than 1 value per channel", id="3d-one-value"),
]


@pytest.mark.parametrize(("cls", "shape", "message"), NN_BAD_CALLS)
@pytest.mark.parametrize("track", [True, False], ids=["track", "no-track"])
def test_nn_bad_call_raises_and_keeps_state(cls, shape, message, track) -> None:
    """torch.nn counts the batch before checking it; bnbook.nn checks first, so nothing changes."""
    module = cls(3, track_running_stats=track)
    module(torch.randn(GOOD_SHAPE[cls]))
    before = _nn_state(module)
    with pytest.raises(ValueError, match=message):
        module(torch.randn(shape))
    after = _nn_state(module)
    assert list(after) == list(before)
    for key in before:
        assert torch.equal(after[key], before[key]), key
    if track:
        assert int(module.num_batches_tracked) == 1


def test_nn_one_value_per_channel_is_fine_in_eval_mode() -> None:
    module = bnn.BatchNorm1d(3).eval()
    x = torch.tensor([[1.0, 2.0, 3.0]])
    y = module(x)
    torch.testing.assert_close(y, x / torch.sqrt(torch.tensor(1.0 + 1e-5)))


def test_nn_empty_batch_like_torch() -> None:
    """torch.nn accepts an empty batch (N = 0) in training and returns an empty output."""
    x = torch.randn(0, 3, requires_grad=True)
    ref = torch.nn.BatchNorm1d(3)
    y_ref = ref(x)
    ours = bnn.BatchNorm1d(3)
    y = ours(x)
    assert y.shape == y_ref.shape == (0, 3)
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
