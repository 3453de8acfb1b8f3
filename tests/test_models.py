"""Data, models and seeding: the digits split, the MLP builder, the training loop."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from bnbook import nn as bnn
from bnbook.data import Split, load_digits
from bnbook.models import History, accuracy, mlp, train_classifier
from bnbook.seeding import seed_everything

# --- data ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Split:
    return load_digits(seed=0)


def test_load_digits_shapes_and_dtypes(digits) -> None:
    assert isinstance(digits, Split)
    n_test = round(0.25 * 1797)
    assert digits.x_train.shape == (1797 - n_test, 64) and digits.x_test.shape == (n_test, 64)
    assert digits.y_train.shape == (1797 - n_test,) and digits.y_test.shape == (n_test,)
    assert digits.x_train.dtype == digits.x_test.dtype == np.float32
    assert digits.y_train.dtype == digits.y_test.dtype == np.int64
    assert digits.x_train.min() >= 0.0 and digits.x_train.max() <= 1.0 and digits.x_train.max() == 1.0
    assert set(np.unique(digits.y_train)) == set(range(10))


def test_load_digits_is_a_partition_of_sklearns_digits(digits) -> None:
    """Train and test together hold every image exactly once, with its label: no overlap, no loss."""
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    full = np.column_stack([bunch.data, bunch.target])
    ours = np.column_stack(
        [np.vstack([digits.x_train, digits.x_test]) * 16, np.concatenate([digits.y_train, digits.y_test])]
    )
    assert ours.shape == full.shape

    def rows(a):
        return a[np.lexsort(a.T[::-1])]

    np.testing.assert_array_equal(rows(ours.astype(np.float64)), rows(full.astype(np.float64)))


def test_load_digits_is_deterministic_by_seed(digits) -> None:
    again = load_digits(seed=0)
    for a, b in zip(digits, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = load_digits(seed=1)
    assert not np.array_equal(digits.y_test, other.y_test)


def test_load_digits_options() -> None:
    raw = load_digits(test_fraction=0.5, seed=3, scale=False)
    assert raw.x_test.shape[0] == round(0.5 * 1797)
    assert raw.x_train.max() == 16.0 and np.all(raw.x_train == np.round(raw.x_train))
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="test_fraction"):
            load_digits(test_fraction=bad)


# --- mlp --------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_layer", [bnn.BatchNorm1d, nn.BatchNorm1d], ids=["bnbook", "torch"])
def test_mlp_with_batch_norm_structure(norm_layer) -> None:
    model = mlp([64, 32, 16, 10], activation="relu", batch_norm=True, norm_layer=norm_layer)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Linear, norm_layer, nn.ReLU, nn.Linear, norm_layer, nn.ReLU, nn.Linear]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 10)]
    # a Linear followed by batch norm has no bias (beta replaces it); the output layer keeps its bias
    assert linears[0].bias is None and linears[1].bias is None and linears[2].bias is not None
    assert [m.num_features for m in model if isinstance(m, norm_layer)] == [32, 16]


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
def test_mlp_without_batch_norm_structure(activation) -> None:
    model = mlp([5, 4, 3], activation=activation)
    assert not any(isinstance(m, (bnn.BatchNorm1d, nn.BatchNorm1d)) for m in model)
    assert all(m.bias is not None for m in model if isinstance(m, nn.Linear))
    assert len(model) == 3 and model[1].__class__.__name__.lower() == activation
    assert model(torch.randn(2, 5)).shape == (2, 3)


def test_mlp_single_layer_and_bad_arguments() -> None:
    model = mlp([4, 2], batch_norm=True)
    assert len(model) == 1 and isinstance(model[0], nn.Linear) and model[0].bias is not None
    for sizes in ([], [3], [3, 0], [3, -1, 2]):
        with pytest.raises(ValueError, match="sizes"):
            mlp(sizes)
    with pytest.raises(ValueError, match="activation"):
        mlp([3, 2], activation="elu")


# --- training ---------------------------------------------------------------------------


def _train(digits, steps=30, batch_norm=True, seed=0, record=None, activation="sigmoid"):
    seed_everything(seed)
    model = mlp([64, 32, 10], activation=activation, batch_norm=batch_norm)
    x, y = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train)
    return model, train_classifier(model, x, y, steps=steps, lr=0.5, batch_size=32, seed=seed, record=record)


@pytest.mark.parametrize(
    ("batch_norm", "activation"),
    [(True, "sigmoid"), (True, "relu"), (False, "relu")],
    ids=["bn-sigmoid", "bn-relu", "plain-relu"],
)
def test_train_classifier_reduces_loss_and_is_deterministic(digits, batch_norm, activation) -> None:
    _, first = _train(digits, batch_norm=batch_norm, activation=activation)
    _, second = _train(digits, batch_norm=batch_norm, activation=activation)
    assert isinstance(first, History) and first.loss.shape == (30,)
    np.testing.assert_array_equal(first.loss, second.loss)
    assert np.all(np.isfinite(first.loss))
    # cross-entropy starts near log(10) = 2.3; 30 SGD steps lower it clearly
    assert first.loss[:5].mean() > 1.5
    assert first.loss[-5:].mean() < 0.75 * first.loss[:5].mean()


def test_plain_sigmoid_network_is_deterministic_too(digits) -> None:
    """Without batch norm the sigmoid network barely learns in 30 steps, but repeatably."""
    _, first = _train(digits, batch_norm=False)
    _, second = _train(digits, batch_norm=False)
    np.testing.assert_array_equal(first.loss, second.loss)


def test_train_classifier_records(digits) -> None:
    steps_seen = []
    _, hist = _train(digits, steps=6, record=lambda step, model: steps_seen.append(step) or step * 10)
    assert steps_seen == list(range(7)) and hist.records == [0, 10, 20, 30, 40, 50, 60]


def test_train_classifier_bad_arguments(digits) -> None:
    model = mlp([64, 10])
    x, y = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train)
    for kwargs in (
        {"steps": -1, "lr": 0.1},
        {"steps": 1, "lr": 0.0},
        {"steps": 1, "lr": 0.1, "batch_size": 1},
    ):
        with pytest.raises(ValueError):
            train_classifier(model, x, y, **kwargs)


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "plain"])
def test_accuracy_leaves_mode_and_beats_chance(digits, batch_norm) -> None:
    model, _ = _train(digits, steps=40, batch_norm=batch_norm, activation="relu")
    x, y = torch.from_numpy(digits.x_test), torch.from_numpy(digits.y_test)
    model.train()
    acc = accuracy(model, x, y)
    assert model.training
    model.eval()
    assert accuracy(model, x, y) == acc and not model.training
    # independent count of correct predictions
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).double().mean().item()
    assert acc == pytest.approx(expected)
    assert acc > 0.5  # chance is 0.1


# --- seeding ------------------------------------------------------------------------------


def _draws():
    return random.random(), np.random.rand(3), torch.rand(3)


def test_seed_everything_makes_draws_repeatable() -> None:
    gen = seed_everything(123)
    first = _draws()
    g_first = gen.normal(size=3)
    gen = seed_everything(123)
    second = _draws()
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    assert torch.equal(first[2], second[2])
    np.testing.assert_array_equal(g_first, gen.normal(size=3))
    np.testing.assert_array_equal(g_first, np.random.default_rng(123).normal(size=3))
    seed_everything(124)
    third = _draws()
    assert first[0] != third[0] and not torch.equal(first[2], third[2])


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3", None])
def test_seed_everything_rejects_bad_seeds(seed) -> None:
    with pytest.raises(ValueError, match="seed"):
        seed_everything(seed)


def test_seed_everything_accepts_numpy_integers() -> None:
    seed_everything(np.int64(5))
    a = torch.rand(2)
    seed_everything(5)
    assert torch.equal(a, torch.rand(2))
