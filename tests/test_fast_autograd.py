"""bnbook.fast under autograd's other uses: every case the kernels do not serve matches torch's layer.

Second derivatives, Hessian-vector products, ``vmap``, ``jvp`` and forward-mode AD,
``torch.export``, and a training step between a forward and its backward.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from bnbook import fast

pytestmark = pytest.mark.skipif(not fast.available(), reason=f"no fused kernels here: {fast.status()}")

TOL = {"rtol": 1e-9, "atol": 1e-9}


def _pair(cls_name: str = "BatchNorm1d", c: int = 4, train: bool = True):
    torch.manual_seed(0)
    ref = getattr(nn, cls_name)(c, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
        ref.running_mean.normal_()
        ref.running_var.uniform_(0.5, 2.0)
    ours = getattr(fast, cls_name)(c, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    return ref.train(train), ours.train(train)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_hessian_matches_torch(train) -> None:
    ref, ours = _pair(train=train)
    x = torch.randn(6, 4, dtype=torch.float64)
    h_ref = torch.autograd.functional.hessian(lambda z: ref(z).pow(3).sum(), x)
    h_ours = torch.autograd.functional.hessian(lambda z: ours(z).pow(3).sum(), x)
    assert h_ref.abs().max() > 1.0  # not a trivially zero Hessian
    torch.testing.assert_close(h_ours, h_ref, **TOL)


def test_hessian_vector_product_over_parameters_matches_torch() -> None:
    """What PyHessian-style tools compute: d/dθ (∇θ L · v)."""
    results = []
    for layer in _pair("BatchNorm2d", 3):
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        params = [layer.weight, layer.bias]
        loss = layer(x).pow(2).mul(torch.linspace(0, 1, 5, dtype=torch.float64)).sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.ones_like(p) for p in params]
        hv = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v, strict=True)), params)
        results.append(torch.cat([h.flatten() for h in hv]))
    assert results[0].abs().max() > 1e-3
    torch.testing.assert_close(results[1], results[0], **TOL)


def test_gradient_penalty_matches_torch() -> None:
    out = []
    for layer in _pair("BatchNorm2d", 3):
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        x.requires_grad_(True)
        (gx,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
        gx.pow(2).sum().backward()
        out.append(torch.cat([x.grad.flatten(), layer.weight.grad, layer.bias.grad]))
    torch.testing.assert_close(out[1], out[0], **TOL)


def test_vmap_in_eval_matches_torch() -> None:
    ref, ours = _pair(train=False)
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    torch.testing.assert_close(vmap(ours)(x), vmap(ref)(x), **TOL)


def test_jvp_in_eval_matches_torch() -> None:
    """torch.func.jvp (in training mode torch's own layer refuses: it updates captured buffers)."""
    ref, ours = _pair(train=False)
    x, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    y_ref, t_ref = jvp(ref, (x,), (t,))
    y_ours, t_ours = jvp(ours, (x,), (t,))
    torch.testing.assert_close(y_ours, y_ref, **TOL)
    torch.testing.assert_close(t_ours, t_ref, **TOL)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_forward_mode_ad_with_dual_tensors_matches_torch(train) -> None:
    import torch.autograd.forward_ad as fwad

    outs = []
    for layer in _pair(train=train):
        x, t = torch.randn(6, 4, dtype=torch.float64), torch.ones(6, 4, dtype=torch.float64)
        x[:, 0] *= 3
        with fwad.dual_level():
            y = layer(fwad.make_dual(x, t))
            outs.append(fwad.unpack_dual(y).tangent)
    torch.testing.assert_close(outs[1], outs[0], **TOL)


def test_grad_of_grad_with_torch_func_matches_torch() -> None:
    from torch.func import grad

    outs = []
    for layer in _pair(train=False):
        params = {k: v.detach() for k, v in layer.named_parameters()}
        x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

        def loss(p, z, layer=layer):
            return functional_call(layer, p, (z,)).pow(3).sum()

        outs.append(grad(lambda z, p=params, loss=loss: grad(loss, argnums=1)(p, z).pow(2).sum())(x))
    torch.testing.assert_close(outs[1], outs[0], **TOL)


def test_torch_export_matches_torch() -> None:
    ref, ours = _pair("BatchNorm2d", 3, train=False)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    exported = torch.export.export(ours, (x,))
    torch.testing.assert_close(exported.module()(x), ref(x), **TOL)


def test_float64_eval_survives_a_training_step_between_forward_and_backward() -> None:
    """The fused eval path must not save the running buffers themselves."""
    _, ours = _pair(train=False)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = ours(x)
    ours.train()
    ours(torch.randn(6, 4, dtype=torch.float64))  # updates the running statistics in place
    y.sum().backward()
    assert x.grad is not None


# --- the build lock: a killed build must not make every later user wait forever ---------------


def test_stale_lock_file_of_a_killed_build_is_removed(tmp_path) -> None:
    (tmp_path / "lock").write_text("")  # what torch leaves when its build is killed
    with fast._build_lock(tmp_path, wait_s=5):
        assert not (tmp_path / "lock").exists()


def test_a_killed_holder_releases_the_lock(tmp_path) -> None:
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib, bnbook.fast as f\n"
            "with f._build_lock(pathlib.Path(sys.argv[1]), 5):\n    print('held', flush=True); input()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError, match="another process"):
            with fast._build_lock(tmp_path, wait_s=0.5):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with fast._build_lock(tmp_path, wait_s=60):  # free as soon as the holder is gone
        pass


def test_load_falls_back_when_another_build_never_finishes(tmp_path, monkeypatch) -> None:
    """``load`` gives up after the wait, says why, and the layers use the eager path."""
    import fcntl

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setenv(fast.BUILD_WAIT_ENV, "0.3")
    monkeypatch.setattr(fast, "_state", {"module": None, "error": None, "tried": False})
    with open(tmp_path / "bnbook-build.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert fast.load() is None
    assert "another process" in fast.status()
    layer = fast.BatchNorm1d(3)
    torch.testing.assert_close(layer(torch.ones(4, 3)), torch.zeros(4, 3))
