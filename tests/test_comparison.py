"""Tests of chapter 8's demo module, bnbook.demos.comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnbook.batched import BatchedMLP
from bnbook.demos import comparison as cmp


@pytest.fixture(scope="module")
def data() -> cmp.Data:
    return cmp.digits_splits(0, n_val=100, device=torch.device("cpu"))


def test_paired_matches_a_hand_computed_t_interval() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([0.5, 1.0, 2.5, 3.0, 4.0])
    d = a - b
    p = cmp.paired(a, b)
    se = d.std(ddof=1) / math.sqrt(5)
    assert p.mean == pytest.approx(d.mean()) and p.se == pytest.approx(se)
    assert p.hi - p.mean == pytest.approx(2.7764451 * se, rel=1e-6)  # t_{0.975, 4}
    assert p.n == 5 and p.n_pos == 5
    assert cmp.verdict(p, "up", "down") == "up"
    assert cmp.verdict(cmp.paired(b, a), "up", "down") == "down"
    assert cmp.verdict(cmp.paired(a, a + np.array([1, -1, 1, -1, 0.0])), "up", "down") == "about the same"


def test_paired_leaves_out_seeds_with_nan() -> None:
    p = cmp.paired(np.array([1.0, np.nan, 3.0]), np.array([0.0, 1.0, 1.0]))
    assert p.n == 2 and p.mean == pytest.approx(1.5)


def test_roughness_of_a_known_curve() -> None:
    loss = np.array([[1.0, 2.0, 1.0, 2.0, 1.0]])
    jump, rel = cmp.roughness(loss, 0, 5)
    assert jump[0] == pytest.approx(1.0) and rel[0] == pytest.approx(1.0 / 1.4)


def test_steps_to_reach() -> None:
    acc = np.array([[0.1, 0.5, 0.95, 0.99], [0.1, 0.2, 0.3, 0.4]])
    got = cmp.steps_to_reach(acc, np.array([0, 10, 20, 30]), 0.9)
    assert got[0] == 20 and np.isnan(got[1])


def test_run_nets_splits_networks_and_lsuv_touches_only_its_members(data) -> None:
    res = cmp.run_nets(
        data,
        ["no_bn", "lsuv", "bn"],
        [dict(lr=0.5)],
        [3, 4],
        steps=5,
        eval_every=0,
        depth=2,
        width=8,
        batch_size=16,
    )
    assert list(res) == ["no_bn", "lsuv", "bn"]
    assert res["no_bn"].model is res["lsuv"].model and res["bn"].model is not res["no_bn"].model
    plain = res["no_bn"].model
    # the default-init members start where torch.nn.Linear starts: retrain one from scratch and compare
    fresh = BatchedMLP([64, 8, 8, 10], seeds=[3, 4, 3, 4])
    assert not torch.equal(fresh.weights[0][0], plain.weights[0][0])  # it has trained
    # member_index finds the right member of the shared model
    assert res["lsuv"].member_index(0, 1) == 3 and res["no_bn"].member_index(0, 1) == 1
    assert res["bn"].loss.shape == (1, 2, 5)


def test_lsuv_members_start_with_unit_pre_activations(data) -> None:
    model = BatchedMLP([64, 16, 16, 10], seeds=[0, 1])
    before = [p.detach().clone() for p in model.parameters()]
    x = data.x_train[: cmp.LSUV_BATCH]
    cmp._apply_lsuv(model, [False, True], x)
    for p, old in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p[0], old[0])  # member 0 untouched
    z = x @ model.weights[0][1] + model.biases[0][1]
    assert z.std(0, unbiased=False).mean().item() == pytest.approx(1.0, abs=1e-4)
    assert z.mean(0).abs().max().item() < 1e-4


def test_stages_record_validation_and_test_after_each(data) -> None:
    res = cmp.run(
        data,
        [dict(lr=0.5)],
        [7],
        batch_norm=True,
        depth=1,
        width=8,
        steps=12,
        batch_size=8,
        eval_every=4,
        stages=(5,),
    )
    assert res.stages == (5, 12) and res.val_at.shape == (1, 1, 2) and res.loss.shape == (1, 1, 12)
    assert list(res.eval_steps) == [0, 4, 5, 9, 12]
    with pytest.raises(ValueError, match="stages"):
        cmp.run(
            data,
            [dict(lr=0.5)],
            [7],
            batch_norm=True,
            depth=1,
            width=8,
            steps=4,
            batch_size=8,
            eval_every=0,
            stages=(4,),
        )


def test_forward_stats_with_whole_batch_groups_is_batch_norm() -> None:
    torch.manual_seed(0)
    model = BatchedMLP([5, 6, 6, 3], seeds=[0, 1], batch_norm=True, dtype=torch.float64)
    x = torch.randn(2, 8, 5, dtype=torch.float64)
    torch.testing.assert_close(cmp.forward_stats(model, x, [(2, 8)]), model(x))
    # ghost groups of 4 are batch norm on each half of the batch
    ghost = cmp.forward_stats(model, x, [(2, 4)])
    torch.testing.assert_close(ghost[:, :4], model(x[:, :4]))
    # full-set statistics are batch norm over the whole set, applied to the batch
    full = torch.randn(20, 5, dtype=torch.float64)
    got = cmp.forward_stats(model, full[None, :3].expand(2, -1, -1), [(2, None)], full)
    torch.testing.assert_close(got, model(full)[:, :3])
    with pytest.raises(ValueError, match="x_full"):
        cmp.forward_stats(model, x, [(2, None)])
    with pytest.raises(ValueError, match="divide"):
        cmp.forward_stats(model, x, [(2, 3)])


def test_train_members_adam_matches_torch_optim_adam(data) -> None:
    model = BatchedMLP([64, 8, 10], seeds=[5, 6], dtype=torch.float64)
    x, y = data.x_train.double(), data.y_train
    refs = [model.member(k) for k in range(2)]
    loss = cmp.train_members(model, x, y, 0.01, 6, 4, optimizer="adam")
    for k, net in enumerate(refs):
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(5 + k)
        idx = torch.randint(0, x.shape[0], (6, 4), generator=gen)
        for t in range(6):
            opt.zero_grad()
            out = F.cross_entropy(net(x[idx[t]]), y[idx[t]])
            out.backward()
            opt.step()
            assert loss[k, t] == pytest.approx(out.item(), rel=1e-10)
        lin = [m for m in net if isinstance(m, nn.Linear)][0]
        torch.testing.assert_close(model.weights[0][k].T, lin.weight.detach(), rtol=1e-9, atol=1e-12)


def test_overfit_and_run_optimizer_shapes(data) -> None:
    out = cmp.overfit(
        data, 40, [0, 1], lrs=[0.5, 1.0, 2.0], steps=3, depth=1, width=8, batch_size=8, ghost_sizes=(4,)
    )
    assert list(out) == ["xavier", "lsuv", "ghost4", "bn", "full"]
    assert all(v["test_acc"].shape == (3, 2) for v in out.values())
    # the first learning rate's runs are those of a run at that learning rate alone
    one = cmp.overfit(data, 40, [0, 1], lrs=[0.5], steps=3, depth=1, width=8, batch_size=8, ghost_sizes=(4,))
    for k, v in one.items():
        np.testing.assert_allclose(v["test_loss"][0], out[k]["test_loss"][0], rtol=1e-5)
    res = cmp.run_optimizer(
        data, ["xavier", "bn"], [0, 1], optimizer="sgd", lr=0.5, steps=3, depth=1, width=8, batch_size=8
    )
    assert res["bn"][0].shape == (2, 3) and res["xavier"][1].shape == (2,)
    with pytest.raises(ValueError, match="optimizer"):
        cmp.train_members(
            BatchedMLP([64, 4, 10], seeds=[0]), data.x_train, data.y_train, 0.1, 1, 4, optimizer="x"
        )


def test_output_lsuv_members_start_with_unit_logits_and_others_stay(data) -> None:
    model = BatchedMLP([64, 16, 16, 10], seeds=[0, 1, 2])
    before = [p.detach().clone() for p in model.parameters()]
    x = data.x_train[: cmp.LSUV_BATCH]
    cmp._apply_lsuv(model, [False, True, "output"], x)
    for p, old in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p[0], old[0])  # member 0 untouched
    logits = model.eval()(x.unsqueeze(0).expand(3, -1, -1))
    sd = logits.std(1, unbiased=False)  # (members, classes)
    assert sd[2].sub(1).abs().max().item() < 1e-3  # member 2: the output layer too
    assert sd[1].sub(1).abs().max().item() > 0.1  # member 1: hidden layers only
    torch.testing.assert_close(model.weights[-1][1], before[len(model.weights) - 1][1])


def test_output_lsuv_makes_the_start_independent_of_the_weight_scale(data) -> None:
    x = data.x_train[: cmp.LSUV_BATCH]
    outs = []
    for scale in (0.01, 1.0, 10.0):
        model = BatchedMLP([64, 8, 8, 10], seeds=[3], init="normal", init_scale=scale, dtype=torch.float64)
        cmp._apply_lsuv(model, ["output"], x.double())
        outs.append(model.eval()(data.x_test.double()[None]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[1], outs[2], rtol=1e-6, atol=1e-6)


def test_train_members_with_one_lr_per_member_matches_separate_runs(data) -> None:
    x, y = data.x_train.double(), data.y_train
    both = BatchedMLP([64, 8, 10], seeds=[5, 5], batch_norm=True, dtype=torch.float64)
    loss = cmp.train_members(both, x, y, [0.1, 0.7], 5, 8)
    for k, lr in enumerate((0.1, 0.7)):
        alone = BatchedMLP([64, 8, 10], seeds=[5], batch_norm=True, dtype=torch.float64)
        ref = cmp.train_members(alone, x, y, lr, 5, 8)
        np.testing.assert_allclose(loss[k], ref[0], rtol=1e-8)
        torch.testing.assert_close(both.weights[0][k], alone.weights[0][0])
    with pytest.raises(ValueError, match="one learning rate per member"):
        cmp.train_members(both, x, y, [0.1], 1, 8)


def test_smoothness_measures_the_loss_on_a_fixed_set(data) -> None:
    res = cmp.smoothness(
        data, ["lsuv", "bn"], [0.5, 1.0], [0, 1], steps=6, start=3, depth=1, width=8, batch_size=8, n_eval=50
    )
    batch_loss, fixed = res["bn"]
    assert batch_loss.shape == (2, 2, 6) and fixed.shape == (2, 2, 4) and np.isfinite(fixed).all()
    # after the last step: the loss on the fixed set, batch norm with that set's own statistics
    model = cmp._members(data, ["bn"], [0, 1, 0, 1], [64, 8, 10], data.x_train[: cmp.LSUV_BATCH])[True][1]
    cmp.train_members(model, data.x_train, data.y_train, [0.5, 0.5, 1.0, 1.0], 6, 8)
    xe, ye = data.x_train[:50], data.y_train[:50]
    logits = cmp.forward_stats(model, xe.expand(4, -1, -1), [(4, 50)])
    want = F.cross_entropy(logits.reshape(-1, 10), ye.repeat(4), reduction="none").view(4, 50).mean(1)
    np.testing.assert_allclose(fixed[:, :, -1].reshape(-1), want.detach().numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="start"):
        cmp.smoothness(data, ["bn"], [0.5], [0], steps=3, start=3, depth=1, width=8, batch_size=8)


def test_every_network_has_a_look() -> None:
    assert set(cmp.LOOKS) == set(cmp.NETS)
    labels = [cmp.look(k)["label"] for k in cmp.NETS]
    assert len(set(labels)) == len(labels) and cmp.look("xavier")["label"] == "no BN, Xavier init"


def test_a_fixed_set_measured_during_a_sweep_is_what_smoothness_measures(data) -> None:
    """Measuring some runs of a sweep while they train gives smoothness()'s numbers, bit for bit."""
    net = dict(depth=2, width=8, batch_size=8)
    fs = cmp.FixedSet(names=["lsuv", "bn"], lrs=[0.5, 2.0], start=4, n_eval=50)
    sweep = cmp.run_nets(
        data,
        ["no_bn", "lsuv", "bn"],
        [dict(lr=lr) for lr in (0.1, 0.5, 2.0)],
        [0, 1],
        steps=9,
        eval_every=3,
        fixed_set=fs,
        **net,
    )
    assert sweep["no_bn"].fixed_loss.shape == (3, 2, 6) and np.isnan(sweep["no_bn"].fixed_loss).all()
    got = cmp.smoothness_of(sweep, fs)
    want = cmp.smoothness(data, ["lsuv", "bn"], [0.5, 2.0], [0, 1], steps=9, start=4, n_eval=50, **net)
    for name in ("lsuv", "bn"):
        np.testing.assert_array_equal(got[name][0], want[name][0])
        np.testing.assert_array_equal(got[name][1], want[name][1])
    with pytest.raises(ValueError, match="fixed set"):
        cmp.run_nets(
            data, ["bn"], [dict(lr=0.5)], [0], steps=9, eval_every=0, stages=(3,), fixed_set=fs, **net
        )


def test_continue_runs_is_a_staged_run_of_those_runs(data) -> None:
    """Going on from a sweep equals training the chosen runs in two stages from the start, bit for bit."""
    net = dict(depth=2, width=8, batch_size=8)
    lrs = (0.05, 0.5, 2.0)
    sweep = cmp.run_nets(
        data, ["lsuv", "bn", "bn_scaled"], [dict(lr=lr) for lr in lrs], [3, 4], steps=6, eval_every=2, **net
    )
    picks = {"lsuv": [2.0, 0.05], "bn": [0.5], "bn_scaled": [0.5, 2.0]}
    got = cmp.continue_runs(data, sweep, picks, steps=15, batch_size=8)
    for name, chosen in picks.items():
        want = cmp.run_nets(
            data, [name], [dict(lr=lr) for lr in chosen], [3, 4], steps=15, stages=(6,), eval_every=0, **net
        )[name]
        assert [s["lr"] for s in got[name].settings] == chosen
        for field in ("loss", "val_at", "test_at", "diverged"):
            np.testing.assert_array_equal(getattr(got[name], field), getattr(want, field), err_msg=field)
    with pytest.raises(ValueError, match="exceed"):
        cmp.continue_runs(data, sweep, picks, steps=6, batch_size=8)


def test_the_explorer_describes_the_curves_it_draws() -> None:
    rng = np.random.default_rng(0)
    curves = {
        (1.0, 2): {
            "xavier": 2.3 + 0 * rng.random((5, 100)),
            "lsuv": np.full((5, 100), 0.4),
            "bn": np.linspace(1.0, 0.2, 100)[None].repeat(5, 0),
        }
    }
    text = cmp.make_explorer_describe(curves, window=10)(lr=1.0, depth=2)
    bn_end = np.linspace(1.0, 0.2, 100)[90:].mean()
    assert "last 10 of 100 steps" in text and "no BN, Xavier init: 2.3;" in text
    assert f"BN: {bn_end:.2g}" in text and "no BN, data-dependent init: 0.4;" in text
    assert text.endswith("Lowest: BN.")
    # values that round alike are not ranked
    curves[1.0, 2]["lsuv"] = np.full((5, 100), bn_end + 1e-4)
    tied = cmp.make_explorer_describe(curves, window=10)(lr=1.0, depth=2)
    assert tied.endswith("Lowest: no BN, data-dependent init and BN, about the same.")
