"""Layer, group and instance norm from scratch (bnbook.scratch) against PyTorch and finite differences.

Forward passes are compared with ``torch.nn.functional.layer_norm``,
``group_norm`` and ``instance_norm`` in float64 (to 1e-9); backward passes with
centred differences in float64 (relative error below 1e-7) and with torch's
autograd (to 1e-9). Neither reference comes from the code under test.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnbook import scratch
from bnbook.gradcheck import numerical_gradient, relative_error

#: Largest accepted relative error between analytic and numerical gradients (float64).
REL_TOL = 1e-7
#: Agreement with torch in float64.
TOL = 1e-9
EPS = 1e-5


class Case(NamedTuple):
    """One row of the table: which norm, the input shape, its argument, whether affine."""

    kind: str  # "layer", "group" or "instance"
    shape: tuple[int, ...]
    arg: object  # normalized_shape for layer norm, num_groups for group norm, None otherwise
    affine: bool


CASES = [
    Case("layer", (5, 4), 4, True),
    Case("layer", (5, 4), (4,), False),
    Case("layer", (3, 2, 6), 6, True),  # a sequence: (batch, positions, features)
    Case("layer", (3, 2, 6), (2, 6), False),
    Case("layer", (2, 3, 2, 3), (3, 2, 3), True),  # a CNN's (N, C, H, W), over (C, H, W)
    Case("layer", (2, 3, 2, 3), (2, 3), False),
    Case("group", (4, 8), 2, True),
    Case("group", (4, 6), 2, False),
    Case("group", (3, 4, 5), 2, True),
    Case("group", (2, 6, 2, 3), 3, True),
    Case("group", (2, 6, 2, 3), 1, False),  # one group: layer norm with per-channel affine
    Case("group", (2, 4, 2, 3), 4, True),  # one channel per group: instance norm
    Case("instance", (3, 4, 5), None, True),
    Case("instance", (3, 4, 5), None, False),
    Case("instance", (2, 3, 2, 3), None, True),
    Case("instance", (2, 2, 2, 2, 3), None, False),  # 5D, a volume
]


def _case_id(case: Case) -> str:
    arg = "" if case.arg is None else f"-{case.arg}"
    return f"{case.kind}-{'x'.join(map(str, case.shape))}{arg}-{'affine' if case.affine else 'plain'}"


def _weight_shape(case: Case) -> tuple[int, ...]:
    if case.kind == "layer":
        return (case.arg,) if isinstance(case.arg, int) else tuple(case.arg)
    return (case.shape[1],)


def _data(case: Case, rng: np.random.Generator):
    x = rng.uniform(-2.0, 2.0) + rng.uniform(0.5, 2.0) * rng.normal(size=case.shape)
    w = _weight_shape(case)
    gamma = rng.uniform(0.5, 2.0, w) if case.affine else None
    beta = rng.normal(size=w) if case.affine else None
    return x, gamma, beta, rng.normal(size=case.shape)


def _scratch(case: Case, x, gamma, beta):
    if case.kind == "layer":
        return scratch.layer_norm(x, case.arg, gamma, beta, EPS)
    if case.kind == "group":
        return scratch.group_norm(x, case.arg, gamma, beta, EPS)
    return scratch.instance_norm(x, gamma, beta, EPS)


def _backward(case: Case):
    return {
        "layer": scratch.layer_norm_backward,
        "group": scratch.group_norm_backward,
        "instance": scratch.instance_norm_backward,
    }[case.kind]


def _torch(case: Case, x, gamma, beta):
    if case.kind == "layer":
        shape = (case.arg,) if isinstance(case.arg, int) else tuple(case.arg)
        return F.layer_norm(x, shape, gamma, beta, EPS)
    if case.kind == "group":
        return F.group_norm(x, case.arg, gamma, beta, EPS)
    return F.instance_norm(x, weight=gamma, bias=beta, use_input_stats=True, eps=EPS)


def _t(a):
    return None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_matches_torch(case: Case, rng) -> None:
    x, gamma, beta, _ = _data(case, rng)
    y, cache = _scratch(case, x, gamma, beta)
    ref = _torch(case, _t(x), _t(gamma), _t(beta)).detach().numpy()
    assert y.shape == x.shape and y.dtype == np.float64
    np.testing.assert_allclose(y, ref, rtol=TOL, atol=TOL)
    assert isinstance(cache, scratch.NormCache)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backward_matches_torch_autograd(case: Case, rng) -> None:
    x, gamma, beta, dy = _data(case, rng)
    _, cache = _scratch(case, x, gamma, beta)
    dx, dgamma, dbeta = _backward(case)(dy, cache)
    xt, gt, bt = _t(x), _t(gamma), _t(beta)
    _torch(case, xt, gt, bt).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=TOL, atol=TOL)
    if case.affine:
        np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=TOL, atol=TOL)
        np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=TOL, atol=TOL)
        assert dgamma.shape == gamma.shape and dbeta.shape == beta.shape
    else:
        assert dgamma is None and dbeta is None


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backward_matches_finite_differences(case: Case, rng) -> None:
    x, gamma, beta, dy = _data(case, rng)
    _, cache = _scratch(case, x, gamma, beta)
    dx, dgamma, dbeta = _backward(case)(dy, cache)
    num_dx = numerical_gradient(lambda v: _scratch(case, v, gamma, beta)[0], x, dy)
    assert relative_error(dx, num_dx) < REL_TOL
    if case.affine:
        num_dg = numerical_gradient(lambda g: _scratch(case, x, g, beta)[0], gamma, dy)
        num_db = numerical_gradient(lambda b: _scratch(case, x, gamma, b)[0], beta, dy)
        assert relative_error(dgamma, num_dg) < REL_TOL
        assert relative_error(dbeta, num_db) < REL_TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_low_precision_input_keeps_its_dtype_and_uses_float64_statistics(dtype, rng) -> None:
    # a large mean and a small spread: float16 statistics would lose the spread entirely
    x64 = 100.0 + 0.5 * rng.normal(size=(4, 6, 3))
    x = x64.astype(dtype)
    gamma, beta = rng.uniform(0.5, 2.0, 6), rng.normal(size=6)
    for y, cache in (
        scratch.group_norm(x, 3, gamma, beta),
        scratch.instance_norm(x, gamma, beta),
        scratch.layer_norm(x, (6, 3), None, None),
    ):
        assert y.dtype == dtype
        assert cache.mean.dtype == np.float64 and cache.var.dtype == np.float64
        dx, _, _ = _backward(Case("group", (), 0, True))(np.ones_like(y), cache)
        assert dx.dtype == dtype
    # the result equals the float64 computation on the same (rounded) input, rounded once
    y, _ = scratch.group_norm(x, 3, gamma, beta)
    ref = F.group_norm(torch.from_numpy(x.astype(np.float64)), 3, torch.tensor(gamma), torch.tensor(beta))
    np.testing.assert_array_equal(y, ref.numpy().astype(dtype))


def test_special_cases_agree_with_each_other(rng) -> None:
    """Group norm with G = 1 is layer norm over (C, H, W); with G = C, instance norm."""
    x = rng.normal(size=(3, 4, 2, 5))
    ones, zeros = np.ones(4), np.zeros(4)
    np.testing.assert_allclose(
        scratch.group_norm(x, 1, ones, zeros)[0], scratch.layer_norm(x, (4, 2, 5))[0], atol=1e-12
    )
    np.testing.assert_allclose(scratch.group_norm(x, 4)[0], scratch.instance_norm(x)[0], atol=1e-12)


def test_output_of_a_sample_does_not_depend_on_the_others(rng) -> None:
    x = rng.normal(size=(4, 6, 3))
    x2 = x.copy()
    x2[1:] = rng.normal(5.0, 3.0, size=(3, 6, 3))
    for fn in (
        lambda v: scratch.layer_norm(v, (6, 3))[0],
        lambda v: scratch.group_norm(v, 2)[0],
        lambda v: scratch.instance_norm(v)[0],
    ):
        np.testing.assert_array_equal(fn(x)[0], fn(x2)[0])


def test_integer_input_is_computed_in_float64() -> None:
    y, _ = scratch.layer_norm(np.arange(6).reshape(2, 3), 3)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y[0], [-np.sqrt(1.5), 0.0, np.sqrt(1.5)], rtol=1e-5)


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: scratch.group_norm(x, 4), "divisible by num_groups=4"),
        (lambda x: scratch.group_norm(x, 0), "positive integer"),
        (lambda x: scratch.group_norm(x, 2.0), "positive integer"),
        (lambda x: scratch.group_norm(x, 3, gamma=np.ones(4)), r"gamma must have shape \(6,\)"),
        (lambda x: scratch.group_norm(x[:, :, 0, 0][:, 0], 1), "at least 2D"),
        (lambda x: scratch.instance_norm(x, beta=np.zeros(2)), r"beta must have shape \(6,\)"),
        (lambda x: scratch.instance_norm(x[:, :, 0, 0]), "at least 3D"),
        (lambda x: scratch.layer_norm(x, (2, 3)), "does not end with normalized_shape"),
        (lambda x: scratch.layer_norm(x, 2, gamma=np.ones(3)), r"gamma must have shape \(2,\)"),
        (lambda x: scratch.layer_norm(x, ()), "non-empty"),
        (lambda x: scratch.layer_norm(x, "ab"), "int or a sequence"),
        (lambda x: scratch.layer_norm(x, 2, eps=0.0), "eps"),
        (lambda x: scratch.group_norm(x.astype(bool), 2), "real numeric"),
        (lambda x: scratch.instance_norm(x.astype(complex)), "real numeric"),
    ],
    ids=[
        "groups-not-dividing-C",
        "zero-groups",
        "float-groups",
        "gamma-wrong-shape",
        "1D-input",
        "beta-wrong-shape",
        "instance-2D",
        "layer-wrong-trailing-shape",
        "layer-gamma-wrong-shape",
        "layer-empty-shape",
        "layer-shape-not-ints",
        "eps-zero",
        "bool-input",
        "complex-input",
    ],
)
def test_bad_input_raises_value_error(call, match, rng) -> None:
    x = rng.normal(size=(2, 6, 3, 2))
    with pytest.raises(ValueError, match=match):
        call(x)


def test_backward_rejects_wrong_shape_or_cache(rng) -> None:
    x = rng.normal(size=(2, 4, 3))
    _, cache = scratch.group_norm(x, 2)
    with pytest.raises(ValueError, match="forward output had shape"):
        scratch.group_norm_backward(np.ones((2, 4)), cache)
    with pytest.raises(ValueError, match="NormCache"):
        scratch.group_norm_backward(np.ones_like(x), (x, 1.0))
