"""Tests of chapter 1's experiment helpers (bnbook.demos.covariate_shift): the initialization control."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from bnbook.data import load_digits
from bnbook.demos import covariate_shift as demo

SIZES = [64, 24, 24, 10]


@pytest.fixture(scope="module")
def digits():
    return tuple(torch.from_numpy(a) for a in load_digits(seed=0))


def test_control_networks_start_as_described(digits) -> None:
    x_train = digits[0]
    x_fit = demo.lsuv_batch(x_train, seed=3, size=128)
    nets = demo.control_networks(SIZES, seed=3, x_lsuv=x_fit)
    assert list(nets) == list(demo.CONTROLS)
    plain, xavier, lsuv, bn = (nets[k] for k in demo.CONTROLS)
    linear = [[m for m in net if isinstance(m, torch.nn.Linear)] for net in (plain, xavier, lsuv, bn)]
    for a, b in zip(linear[0], linear[3], strict=True):  # BN shares the plain network's weights
        assert torch.equal(a.weight, b.weight)
    assert not torch.equal(linear[0][0].weight, linear[1][0].weight)  # Xavier re-draws them
    for z in demo.hidden_pre_activations(lsuv, x_fit):  # data-dependent: mean 0, std 1 on its batch
        assert np.abs(z.mean(axis=0)).max() < 1e-4
        assert np.abs(z.std(axis=0) - 1).max() < 1e-3


def test_batched_members_start_where_the_sequential_networks_do(digits) -> None:
    x_train = digits[0]
    seeds = [5, 6]
    plain, bn = demo.batched_controls(SIZES, seeds, x_train, lsuv_size=100)
    assert plain.k == 3 * len(seeds) and bn.k == len(seeds)
    for k, seed in enumerate(seeds):
        nets = demo.control_networks(SIZES, seed, x_lsuv=demo.lsuv_batch(x_train, seed, 100))
        for block, name in enumerate(["no_bn", "xavier", "lsuv"]):
            member = plain.member(block * len(seeds) + k)
            for a, b in zip(member.parameters(), nets[name].parameters(), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        member = bn.member(k)
        lin = [m for m in member if isinstance(m, torch.nn.Linear)]
        ref = [m for m in nets["bn"] if isinstance(m, torch.nn.Linear)]
        for a, b in zip(lin, ref, strict=True):
            assert torch.equal(a.weight, b.weight)


def test_train_controls_matches_sequential_training(digits) -> None:
    x_train, y_train, x_held, y_held = digits
    ctrl = demo.train_controls(
        SIZES, [1, 2], 0.5, x_train, y_train, x_held, y_held, steps=30, eval_every=10, lsuv_size=64
    )
    assert ctrl.budget == 30 and ctrl.lr == 0.5 and list(ctrl.steps) == [0, 10, 20, 30]
    assert set(ctrl.accuracy) == set(demo.CONTROLS)
    assert all(a.shape == (2, 4) for a in ctrl.accuracy.values())
    for name in ["no_bn", "bn"]:  # the first seed, trained alone as nn.Sequential, gives the same curve
        net = demo.control_networks(SIZES, 1)[name]
        rec = demo.record_training(
            net, x_train, y_train, x_held, y_held, steps=30, lr=0.5, record_every=10, seed=1
        )
        np.testing.assert_allclose(ctrl.accuracy[name][0], rec.test_accuracy, atol=1.5 / len(y_held))


def test_steps_to_reach_and_censoring() -> None:
    steps = np.array([0, 10, 20, 30])
    curves = np.array([[0.1, 0.5, 0.95, 0.97], [0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_array_equal(demo.steps_to_reach(steps, curves, 0.9), [20.0, np.nan])
    assert demo.steps_to_reach(steps, curves[0], 0.9) == 20.0
    acc = {name: np.tile(curves[0], (3, 1)) for name in demo.CONTROLS}
    acc["no_bn"] = np.tile(curves[1], (3, 1))
    acc["xavier"] = acc["xavier"] + np.array([[0, 0, -0.1, 0], [0, 0, 0, 0], [0, 0, -0.1, 0]])
    ctrl = demo.InitControl(steps, 1.0, (0, 1, 2), acc, {k: np.zeros(3, bool) for k in acc})
    rows = demo.compare_controls(ctrl, 0.9)
    assert rows["no_bn"].n_reached == 0 and rows["no_bn"].reach_censored
    assert rows["no_bn"].reach_diff[0] == pytest.approx(10.0)  # counted at the budget: a lower bound
    assert not rows["xavier"].reach_censored and rows["xavier"].n_reached == 3
    assert rows["xavier"].reach_diff[0] == pytest.approx(20 / 3)
    assert rows["bn"].reach_diff.mean == 0.0 and rows["bn"].reach_diff.se == 0.0
    assert rows["xavier"].reach_diff.n == 3 and rows["xavier"].reach_diff.lo < rows["xavier"].reach_diff.mean


def test_lsuv_vs_bn_matches_train_controls(digits) -> None:
    x_train, y_train, x_held, y_held = digits
    args = (SIZES, [1, 2], 1.0, x_train, y_train, x_held, y_held)
    both = demo.train_lsuv_vs_bn(*args, steps=20, eval_every=5, lsuv_size=64)
    full = demo.train_controls(*args, steps=20, eval_every=5, lsuv_size=64)
    assert set(both.accuracy) == {"lsuv", "bn"} and list(both.steps) == [0, 5, 10, 15, 20]
    for name in ["lsuv", "bn"]:
        np.testing.assert_allclose(both.accuracy[name], full.accuracy[name], atol=1.5 / len(y_held))
    rows = demo.compare_controls(both, 0.5)
    assert set(rows) == {"lsuv", "bn"} and rows["lsuv"].reach_diff.n == 2


def test_controls_many_is_train_controls_per_rate_in_workers_or_not(digits, monkeypatch) -> None:
    x_train, y_train, x_held, y_held = digits
    jobs = {1.0: dict(steps=20, eval_every=5, lsuv_size=64, watch_unit=0, watch_seeds=1, watch_every=10),
            0.3: dict(steps=10, eval_every=5, lsuv_size=64)}
    monkeypatch.setenv("BNBOOK_WORKERS", "2")
    many = demo.train_controls_many(SIZES, [1, 2], x_train, y_train, x_held, y_held, jobs)
    monkeypatch.setenv("BNBOOK_WORKERS", "0")
    for lr, kw in jobs.items():
        one = demo.train_controls(SIZES, [1, 2], lr, x_train, y_train, x_held, y_held, **kw)
        assert many[lr].lr == lr and np.array_equal(many[lr].steps, one.steps)
        for name in demo.CONTROLS:
            assert np.array_equal(many[lr].accuracy[name], one.accuracy[name])
            assert np.array_equal(many[lr].diverged[name], one.diverged[name])
        assert list(many[lr].records) == list(one.records) == (list(demo.CONTROLS) if lr == 1.0 else [])
        for name, recs in one.records.items():
            for a, b in zip(recs, many[lr].records[name], strict=True):
                assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def test_plots_use_the_book_wide_series() -> None:
    from bnbook.plots import series

    steps = np.arange(0, 40, 10)
    acc = {name: np.full((2, 4), 0.5) for name in demo.CONTROLS}
    ctrl = demo.InitControl(steps, 2.0, (0, 1), acc, {k: np.zeros(2, bool) for k in acc})
    fig = demo.plot_controls([ctrl, ctrl._replace(lr=0.5)], "title")
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [demo._label(k) for k in demo.CONTROLS]
    assert demo._color("BN") == demo._color("bn") == series("bn")["color"]
    with pytest.raises(ValueError):
        demo._color("with BN, maybe")


def test_batched_hidden_input_is_last_hidden_input_of_each_member(digits) -> None:
    x_train, _, x_held, _ = digits
    plain, bn = demo.batched_controls(SIZES, [4, 5], x_train, lsuv_size=64)
    for model in (plain, bn):
        before = [b.clone() for b in model.buffers()]
        got = demo.batched_hidden_input(model, x_held, [1, 0])
        for row, k in enumerate([1, 0]):
            want = demo.last_hidden_input(model.member(k), x_held)
            torch.testing.assert_close(got[row], want, rtol=1e-5, atol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(model.buffers(), before, strict=True))


def test_train_controls_watches_a_unit_as_record_training_does(digits) -> None:
    x_train, y_train, x_held, y_held = digits
    args = (SIZES, [1, 2, 3], 0.5, x_train, y_train, x_held, y_held)
    plain = demo.train_controls(*args, steps=20, eval_every=10, lsuv_size=64)
    watched = demo.train_controls(
        *args, steps=20, eval_every=10, lsuv_size=64, watch_unit=3, watch_seeds=2, watch_every=5
    )
    for name in demo.CONTROLS:  # watching changes nothing the control measures
        np.testing.assert_array_equal(plain.accuracy[name], watched.accuracy[name])
    assert set(watched.records) == set(demo.CONTROLS) and plain.records == {}
    for name in ["no_bn", "bn"]:  # seed 1 trained alone as nn.Sequential, watched the same way
        rec = watched.records[name][0]
        assert len(watched.records[name]) == 2 and list(rec.steps) == [0, 5, 10, 15, 20]
        ref = demo.record_training(
            demo.control_networks(SIZES, 1)[name],
            x_train,
            y_train,
            x_held,
            y_held,
            steps=20,
            lr=0.5,
            unit=3,
            record_every=5,
            seed=1,
        )
        np.testing.assert_allclose(rec.unit_inputs, ref.unit_inputs, atol=1e-4)
        np.testing.assert_allclose(rec.layer_medians, ref.layer_medians, atol=1e-4)
        np.testing.assert_allclose(rec.test_accuracy, ref.test_accuracy, atol=1.5 / len(y_held))
        np.testing.assert_allclose(rec.loss, ref.loss, atol=1e-5)


def test_reading_until_a_level_keeps_the_steps_to_it_and_the_final_accuracy(digits) -> None:
    x_train, y_train, x_held, y_held = digits
    args = (SIZES, [1, 2, 3], 2.0, x_train, y_train, x_held, y_held)
    every = demo.train_lsuv_vs_bn(*args, steps=60, eval_every=5, lsuv_size=64)
    until = demo.train_lsuv_vs_bn(*args, steps=60, eval_every=5, lsuv_size=64, until=0.5)
    np.testing.assert_array_equal(until.steps, every.steps)
    full, part = demo.compare_controls(every, 0.5), demo.compare_controls(until, 0.5)
    for name in ["lsuv", "bn"]:
        np.testing.assert_array_equal(part[name].reach, full[name].reach)
        np.testing.assert_array_equal(part[name].final, full[name].final)
        read = ~np.isnan(until.accuracy[name])
        np.testing.assert_array_equal(until.accuracy[name][read], every.accuracy[name][read])
        assert read[:, -1].all() and not read.all()  # the end is always read, the rest only until 0.5
    with pytest.raises(ValueError, match="divide"):
        demo.train_lsuv_vs_bn(*args, steps=12, eval_every=5, until=0.5)


def test_the_histogram_explorer_says_what_each_frame_shows(digits) -> None:
    x_train, y_train, x_held, y_held = digits
    records = {
        name: demo.record_training(net, x_train, y_train, x_held, y_held, steps=10, lr=1.0, record_every=5)
        for name, net in zip(["no BN, default init", "BN"], demo.matched_pair(SIZES, seed=0), strict=True)
    }
    text = demo.make_histogram_describe(records, [0, 10])(step=10)
    for name, rec in records.items():
        assert f"median {np.median(rec.unit_inputs[-1]) + 0.0:.2f} (15th to 85th percentile" in text
        assert f"for {name}" in text
    assert text.startswith("At step 10 the unit's input has median")
    with pytest.raises(ValueError):
        demo.make_histogram_describe(records, [7])
