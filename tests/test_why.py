"""Tests for the experiments of chapter 12 (``bnbook.demos.why``), against closed forms and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bnbook.demos import why


def _noisy(c: int = 4000, m: float = 1.0, s: float = 3.0, tau: float = 0.5, seed: int = 0) -> why.NoisyShift:
    return why.NoisyShift(c, m, s, tau, generator=torch.Generator().manual_seed(seed))


def test_noisy_shift_draws_follow_the_stated_schedule():
    """Within one step: shifts ~ N(c_t, tau^2), scales ~ U(1, d_t); c_t in [-M, M], d_t in [1, S]."""
    layer = _noisy()
    for _ in range(5):
        layer.resample()
        c, d = layer.step_params.tolist()
        assert -1.0 <= c <= 1.0 and 1.0 <= d <= 3.0
        shift, scale = layer.shift.double(), layer.scale.double()
        n = shift.numel()
        # sample mean within 5 standard errors of c_t, sample variance close to tau^2 = 0.25
        assert abs(shift.mean().item() - c) < 5 * 0.5 / math.sqrt(n)
        assert abs(shift.var().item() - 0.25) < 5 * 0.25 * math.sqrt(2 / n)
        # U(1, d): all inside, mean (1 + d) / 2, variance (d - 1)^2 / 12
        assert scale.min().item() >= 1.0 and scale.max().item() <= d + 1e-6
        assert abs(scale.mean().item() - (1 + d) / 2) < 5 * (d - 1) / math.sqrt(12 * n)
        assert abs(scale.var().item() - (d - 1) ** 2 / 12) < 0.1 * (d - 1) ** 2 / 12


def test_noisy_shift_step_parameters_are_uniform_over_time():
    """Over many steps c_t ~ U(-M, M) (mean 0, variance M^2/3) and d_t ~ U(1, S) (mean (1+S)/2)."""
    layer = _noisy(c=2, m=2.0, s=5.0)
    params = []
    for _ in range(4000):
        layer.resample()
        params.append(layer.step_params.clone())
    c, d = torch.stack(params).double().T
    assert abs(c.mean().item()) < 5 * 2.0 / math.sqrt(3 * 4000)
    assert abs(c.var().item() - 4.0 / 3.0) < 0.1
    assert abs(d.mean().item() - 3.0) < 5 * 4.0 / math.sqrt(12 * 4000)
    assert c.abs().max().item() <= 2.0 and d.min().item() >= 1.0 and d.max().item() <= 5.0


def test_noisy_shift_forward_train_and_eval():
    layer = _noisy(c=3)
    layer.resample()
    x = torch.randn(8, 3)
    torch.testing.assert_close(layer(x), x * layer.scale + layer.shift)
    layer.eval()  # expected scale E[s] = E[(1 + d) / 2] = (1 + (1 + S) / 2) / 2 = (3 + S) / 4, E[m] = 0
    torch.testing.assert_close(layer(x), x * 1.5)
    with pytest.raises(ValueError, match="scale_max"):
        why.NoisyShift(3, 1.0, 0.5, 0.5, generator=torch.Generator())


def test_noisy_bn_output_has_the_injected_mean_and_spread():
    """BN then NoisyShift: over the batch, unit j has mean s_j * beta_j + m_j and std s_j * gamma_j."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5, eps=1e-12).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    layer = _noisy(c=5).double()
    layer.resample()
    out = layer(bn(torch.randn(64, 5, dtype=torch.float64) * 3 + 2))
    torch.testing.assert_close(out.mean(0), layer.scale * bn.bias + layer.shift)
    torch.testing.assert_close(out.std(0, correction=0), layer.scale * bn.weight)


def test_distribution_moves_closed_form():
    means = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 3.0]])
    stds = np.array([[1.0, 2.0], [2.0, 2.0], [2.0, 4.0]])
    mean_move, std_move = why.distribution_moves(means, stds)
    # mean moves: |1-0|/1, 0/2, 0/2, |3-1|/2 -> mean 0.5; log-std moves: ln2, 0, 0, ln2 -> ln2/2
    assert mean_move == pytest.approx(0.5)
    assert std_move == pytest.approx(math.log(2) / 2)
    with pytest.raises(ValueError):
        why.distribution_moves(means[:1], stds[:1])


def test_probe_along_gradient_on_a_quadratic():
    """L(w) = w'Aw/2: g = Aw, loss at w - eta g and ||grad change|| = eta ||A g|| in closed form."""
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    eig = np.array([0.1, 0.5, 1.0, 2.0, 3.0, 7.0])
    a = q @ np.diag(eig) @ q.T
    w0 = rng.normal(size=6)
    w = torch.tensor(w0, requires_grad=True)
    a_t = torch.tensor(a)
    etas = [0.05, 0.1, 0.2]
    probe = why.probe_along_gradient([w], lambda: 0.5 * w @ a_t @ w, etas)
    g = a @ w0
    assert probe.loss0 == pytest.approx(0.5 * w0 @ a @ w0, rel=1e-12)
    for eta, loss, change in zip(etas, probe.loss, probe.grad_change, strict=True):
        v = w0 - eta * g
        assert loss == pytest.approx(0.5 * v @ a @ v, rel=1e-12)
        assert change == pytest.approx(eta * np.linalg.norm(a @ g), rel=1e-10)
    beta = np.linalg.norm(a @ g) / np.linalg.norm(g)  # the same for every eta on a quadratic
    assert probe.beta == pytest.approx(beta, rel=1e-10)
    assert probe.beta <= eig.max() + 1e-12
    assert probe.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
    np.testing.assert_array_equal(w.detach().numpy(), w0)  # parameters put back
    assert w.grad is None


def test_probing_does_not_change_the_training_trajectory():
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    y = torch.randint(0, 3, (200,))
    data = (x, y, x[:50], y[:50])
    plain = why.train_run("bn", 1, data, [8, 16, 3], steps=12, lr=0.1, eval_every=4)
    probed = why.train_run(
        "bn", 1, data, [8, 16, 3], steps=12, lr=0.1, eval_every=4, probe_every=3, step_sizes=(1, 2)
    )
    np.testing.assert_array_equal(plain.loss, probed.loss)
    np.testing.assert_array_equal(plain.test_acc, probed.test_acc)
    assert len(probed.probes) == 4 and probed.probe_steps.tolist() == [0, 3, 6, 9]


def test_train_run_effective_step_matches_the_update():
    """Without weight decay the first weight matrix (followed by BN) moves by lr * grad, orthogonally:
    ||W_t||^2 = ||W_{t-1}||^2 + ||dW_t||^2 up to epsilon and rounding."""
    torch.manual_seed(0)
    x = torch.randn(300, 8, dtype=torch.float32)
    y = torch.randint(0, 3, (300,))
    run = why.train_run("bn", 2, (x, y, x, y), [8, 16, 3], steps=30, lr=0.5)
    norms = np.concatenate([[run.weight_norm[0] / math.sqrt(1 + run.eff_step[0] ** 2)], run.weight_norm])
    pred = norms[:-1] ** 2 * (1 + run.eff_step**2)
    np.testing.assert_allclose(norms[1:] ** 2, pred, rtol=1e-4)
    assert np.all(np.diff(run.weight_norm) > 0)


def test_residual_zero_gamma_is_the_identity_and_bn_branch_has_unit_variance():
    torch.manual_seed(0)
    x = torch.randn(256, 16, dtype=torch.float32)
    v = why.residual_variances(x, 6, "bn_zero_gamma", seed=0)
    np.testing.assert_allclose(v, v[0], rtol=1e-6)
    net = why.residual_net(16, 3, "bn", seed=0).train()
    with torch.no_grad():
        branch = net[0].branch(x)
    # biased per-unit variance of a BN output with gamma = 1, beta = 0 is var / (var + eps), about 1
    torch.testing.assert_close(branch.var(0, correction=0), torch.ones(16), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="variant"):
        why.residual_net(16, 3, "layer_norm", seed=0)


def test_residual_without_bn_kaiming_branch_preserves_variance():
    """Kaiming init (gain sqrt 2, then 1): a branch's output has about the second moment of its input."""
    torch.manual_seed(0)
    x = torch.randn(4096, 256)
    net = why.residual_net(256, 1, "no_bn", seed=3)
    with torch.no_grad():
        out = net[0].branch(x)
    ratio = out.pow(2).mean().item() / x.pow(2).mean().item()
    assert 0.85 < ratio < 1.15


def test_scale_invariant_weights_are_the_linear_weights_before_batch_norm():
    net = why.build_mlp("bn", [8, 16, 16, 3], seed=0, device=torch.device("cpu"))
    found = why.scale_invariant_weights(net)
    assert [w.shape for w in found] == [(16, 8), (16, 16)]
    assert all(w is m.weight for w, m in zip(found, [net[0], net[3]], strict=True))
    assert why.scale_invariant_weights(why.build_mlp("no_bn", [8, 16, 3], 0, torch.device("cpu"))) == []


def test_decay_on_scale_invariant_leaves_gamma_beta_and_head_alone():
    """Decay on every parameter and decay on the scale-invariant weights alone give different runs."""
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    y = torch.randint(0, 3, (200,))
    data = (x, y, x[:50], y[:50])
    plain = why.train_run("bn", 4, data, [8, 16, 3], steps=5, lr=0.1, eval_every=5)
    both = why.train_run("bn", 4, data, [8, 16, 3], steps=5, lr=0.1, weight_decay=0.5, eval_every=5)
    only = why.train_run(
        "bn", 4, data, [8, 16, 3], steps=5, lr=0.1, weight_decay=0.5, decay_on="scale_invariant", eval_every=5
    )
    # the first weight matrix is decayed in both: its norm falls below the undecayed run's
    assert only.weight_norm[-1] < plain.weight_norm[-1] and both.weight_norm[-1] < plain.weight_norm[-1]
    # the first loss comes before any update; after it, decaying gamma, beta and the head as well
    # changes the path
    assert plain.loss[0] == only.loss[0] == both.loss[0]
    assert not np.array_equal(only.loss, both.loss)
    with pytest.raises(ValueError, match="decay_on"):
        why.train_run("bn", 4, data, [8, 16, 3], steps=1, lr=0.1, decay_on="gamma")
    with pytest.raises(ValueError, match="scale-invariant"):
        why.train_run(
            "no_bn", 4, data, [8, 16, 3], steps=1, lr=0.1, weight_decay=0.1, decay_on="scale_invariant"
        )


def test_bn_networks_use_the_books_layer():
    from bnbook.nn import BatchNorm1d

    net = why.build_mlp("noisy_bn", [8, 16, 3], seed=0, device=torch.device("cpu"))
    assert any(isinstance(m, BatchNorm1d) for m in net)
    assert isinstance(why.residual_net(8, 1, "bn", seed=0)[0].branch[1], BatchNorm1d)


def _toy_data(n: int = 300, d: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return (x, y, x[:60], y[:60])


@pytest.mark.parametrize("kind", why.KINDS)
def test_train_seeds_follows_train_run_seed_by_seed(kind):
    """The batched trainer gives every seed the trajectory of train_run, up to rounding."""
    data = _toy_data()
    sizes = [8, 16, 16, 3]
    batched = why.train_seeds(kind, [0, 3], data, sizes, steps=15, lr=0.1, batch_size=32, eval_at=(0, 5, 15))
    assert batched.eval_steps.tolist() == [0, 5, 15]
    for row, seed in enumerate([0, 3]):
        run = why.train_run(kind, seed, data, sizes, steps=15, lr=0.1, batch_size=32, eval_every=5)
        np.testing.assert_allclose(batched.loss[row], run.loss, atol=1e-5)
        at = [0, 1, 3]  # train_run evaluated at steps 0, 5, 10 and 15
        np.testing.assert_allclose(batched.test_acc[row], run.test_acc[at], atol=1e-9)
        np.testing.assert_allclose(batched.train_acc[row], run.train_acc[at], atol=1e-9)
    with pytest.raises(ValueError):
        why.train_seeds(kind, [0], data, sizes, steps=5, lr=0.1, eval_at=(6,))


def test_lsuv_network_starts_at_unit_scale_and_needs_images():
    data = _toy_data()
    x = data[0][:100]
    model = why.build_mlp("lsuv", [8, 16, 16, 3], 1, torch.device("cpu"), init_x=x)
    kaiming = why.build_mlp("no_bn_kaiming", [8, 16, 16, 3], 1, torch.device("cpu"))
    h = x
    with torch.no_grad():
        for layer in list(model)[:-1]:
            h = layer(h)
            if isinstance(layer, nn.Linear):
                torch.testing.assert_close(h.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
                torch.testing.assert_close(h.std(0, correction=0), torch.ones(16), atol=1e-4, rtol=0)
    # same directions as the Kaiming network of the same seed, only rescaled per unit
    cos = nn.functional.cosine_similarity(model[0].weight, kaiming[0].weight, dim=1)
    torch.testing.assert_close(cos, torch.ones(16))
    with pytest.raises(ValueError, match="init_x"):
        why.build_mlp("lsuv", [8, 16, 3], 1, torch.device("cpu"))


def test_probe_per_unit_steps_fixed_distances():
    """per_unit=True moves by exactly the given distances: on a quadratic the loss is known in closed form."""
    rng = np.random.default_rng(1)
    a = np.diag([0.5, 1.0, 3.0])
    w0 = rng.normal(size=3)
    w = torch.tensor(w0, requires_grad=True)
    a_t = torch.tensor(a)
    probe = why.probe_along_gradient([w], lambda: 0.5 * w @ a_t @ w, [0.1, 0.3], per_unit=True)
    g = a @ w0
    u = g / np.linalg.norm(g)
    for d, loss in zip([0.1, 0.3], probe.loss, strict=True):
        v = w0 - d * u
        assert loss == pytest.approx(0.5 * v @ a @ v, rel=1e-12)
    assert probe.beta == pytest.approx(np.linalg.norm(a @ g) / np.linalg.norm(g), rel=1e-10)
    np.testing.assert_array_equal(w.detach().numpy(), w0)


def test_matched_learning_rate_reproduces_weight_decay_on_scale_invariant_weights():
    """Hoffer et al.'s control: no decay, lr_W = lr ||W||^2 / (||W_decay||^2 (1 - lr wd)): same losses."""
    data = _toy_data()
    sizes = [8, 16, 16, 3]
    decayed = why.train_run(
        "bn", 0, data, sizes, steps=20, lr=0.2, weight_decay=0.05, decay_on="scale_invariant"
    )
    assert decayed.si_norms.shape == (21, 2)
    control = why.train_run(
        "bn", 0, data, sizes, steps=20, lr=0.2, match_norms=decayed.si_norms, match_shrink=1 - 0.2 * 0.05
    )
    np.testing.assert_allclose(control.loss, decayed.loss, atol=1e-5)
    ratio = control.si_norms / decayed.si_norms  # the same factor c_t for every matrix: V_t = c_t W_t
    np.testing.assert_allclose(ratio[:, 0], ratio[:, 1], rtol=1e-4)
    assert np.all(np.diff(ratio[:, 0]) > 0)
    with pytest.raises(ValueError, match="match_norms"):
        why.train_run("bn", 0, data, sizes, steps=20, lr=0.2, match_norms=decayed.si_norms[:5])


def test_run_records_training_accuracy_and_first_signal():
    data = _toy_data()
    run = why.train_run("no_bn", 0, data, [8, 16, 3], steps=10, lr=0.1, eval_every=5)
    assert run.train_acc.shape == run.test_acc.shape == (3,)
    with torch.no_grad():
        model = why.build_mlp("no_bn", [8, 16, 3], 0, torch.device("cpu"))
        idx = torch.randint(0, 300, (64,), generator=torch.Generator().manual_seed(0))
        z = model[0](data[0][idx])
    assert run.signal0 == pytest.approx(float(z.std(0, correction=0).mean()), rel=1e-5)
    assert run.si_norms.shape == (11, 0)


@pytest.mark.parametrize("kinds", [("bn", "noisy_bn"), ("no_bn_kaiming", "lsuv")])
def test_train_seeds_stacks_kinds_that_share_an_architecture(kinds):
    data = _toy_data()
    sizes = [8, 16, 16, 3]
    together = why.train_seeds(kinds, [0, 2], data, sizes, steps=12, lr=0.1, batch_size=32, eval_at=(12,))
    assert set(together) == set(kinds)
    for kind in kinds:
        alone = why.train_seeds(kind, [0, 2], data, sizes, steps=12, lr=0.1, batch_size=32, eval_at=(12,))
        np.testing.assert_allclose(together[kind].loss, alone.loss, atol=1e-6)
        np.testing.assert_array_equal(together[kind].test_acc, alone.test_acc)


def test_train_seeds_refuses_kinds_of_different_architectures():
    with pytest.raises(ValueError, match="architecture"):
        why.train_seeds(("bn", "no_bn"), [0], _toy_data(), [8, 16, 3], steps=2, lr=0.1)


@pytest.mark.parametrize("kind", ["bn", "noisy_bn", "lsuv"])
def test_train_runs_follows_train_run_seed_by_seed(kind):
    """Everything train_run records, for several seeds at once: losses, evaluations, moments, probes."""
    data = _toy_data()
    sizes = [8, 16, 16, 3]
    kw = dict(
        steps=12,
        lr=0.1,
        batch_size=32,
        eval_every=4,
        probe_every=5,
        step_sizes=(1, 2),
        probe_distances=(0.1, 0.2),
    )
    runs = why.train_runs(kind, [0, 3], data, sizes, **kw)
    for seed, got in zip([0, 3], runs, strict=True):
        ref = why.train_run(kind, seed, data, sizes, **kw)
        np.testing.assert_allclose(got.loss, ref.loss, atol=1e-5)
        np.testing.assert_array_equal(got.eval_steps, ref.eval_steps)
        np.testing.assert_allclose(got.test_acc, ref.test_acc, atol=1e-9)
        np.testing.assert_allclose(got.train_acc, ref.train_acc, atol=1e-9)
        np.testing.assert_allclose(got.moves, ref.moves, rtol=1e-4)
        assert got.signal0 == pytest.approx(ref.signal0, rel=1e-5)
        np.testing.assert_allclose(got.weight_norm, ref.weight_norm, rtol=1e-5)
        np.testing.assert_allclose(got.eff_step, ref.eff_step, rtol=1e-3)
        np.testing.assert_allclose(got.si_norms, ref.si_norms, rtol=1e-5)
        np.testing.assert_array_equal(got.probe_steps, ref.probe_steps)
        for mine, theirs in zip(got.probes + got.probes_eq, ref.probes + ref.probes_eq, strict=True):
            assert mine.loss0 == pytest.approx(theirs.loss0, rel=1e-5)
            np.testing.assert_allclose(mine.loss, theirs.loss, rtol=1e-5)
            np.testing.assert_allclose(mine.grad_change, theirs.grad_change, rtol=1e-3, atol=1e-6)
            assert mine.beta == pytest.approx(theirs.beta, rel=1e-3)
            assert mine.grad_norm == pytest.approx(theirs.grad_norm, rel=1e-5)


def test_train_runs_with_weight_decay_and_matched_norms():
    """Decay on the scale-invariant weights, then Hoffer et al.'s control, both for two seeds at once."""
    data = _toy_data()
    sizes = [8, 16, 16, 3]
    kw = dict(steps=10, lr=0.2, eval_every=5)
    decayed = why.train_runs("bn", [0, 1], data, sizes, weight_decay=0.05, decay_on="scale_invariant", **kw)
    control = why.train_runs(
        "bn",
        [0, 1],
        data,
        sizes,
        match_norms=[r.si_norms for r in decayed],
        match_shrink=1 - 0.2 * 0.05,
        **kw,
    )
    for seed, d, c in zip([0, 1], decayed, control, strict=True):
        ref_d = why.train_run("bn", seed, data, sizes, weight_decay=0.05, decay_on="scale_invariant", **kw)
        ref_c = why.train_run(
            "bn", seed, data, sizes, match_norms=ref_d.si_norms, match_shrink=1 - 0.2 * 0.05, **kw
        )
        np.testing.assert_allclose(d.loss, ref_d.loss, atol=1e-5)
        np.testing.assert_allclose(d.si_norms, ref_d.si_norms, rtol=1e-5)
        np.testing.assert_allclose(c.loss, ref_c.loss, atol=1e-5)
        np.testing.assert_allclose(c.weight_norm, ref_c.weight_norm, rtol=1e-5)
    with pytest.raises(ValueError, match="match_norms"):
        why.train_runs("bn", [0, 1], data, sizes, match_norms=[decayed[0].si_norms[:3]] * 2, **kw)
    with pytest.raises(ValueError, match="decay_on"):
        why.train_runs("bn", [0], data, sizes, decay_on="gamma", **kw)
    # the chained call that runs both in one worker gives the same runs
    both = why.train_runs_matched([0, 1], data, sizes, 10, 0.2, 64, 0.05)
    for mine, theirs in zip((*both[0], *both[1]), (*decayed, *control), strict=True):
        np.testing.assert_array_equal(mine.loss, theirs.loss)
        np.testing.assert_array_equal(mine.si_norms, theirs.si_norms)


def test_blew_up_reads_the_loss_of_every_step():
    loss = np.full((4, 6), 2.3)
    loss[1, 4] = 10.5  # above 10 once, late
    loss[2, 1] = np.nan  # a run whose loss stopped being a number
    loss[3, 2] = 10.0  # at the threshold, not above it
    runs = why.SeedRuns(np.array([6]), np.zeros((4, 1)), np.zeros((4, 1)), loss)
    assert runs.blew_up().tolist() == [False, True, True, False]
    assert runs.blew_up(before=4).tolist() == [False, False, True, False]
    assert runs.blew_up(threshold=5.0).tolist() == [False, True, True, True]
