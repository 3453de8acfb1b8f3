"""The shared training loop, its evaluation and checkpoints (bnbook.training), and the chapter-7 CNN.

References are independent of the code under test: a training loop written out here
with ``torch.utils.data.DataLoader`` and ``torch.optim``, ``torch.nn.functional``'s
cross-entropy on the whole set, and models that record the mode they were called in.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from bnbook import nn as bnn
from bnbook.data import load_digits
from bnbook.models import mlp, small_cnn
from bnbook.training import FitHistory, evaluate, fit, load_checkpoint, save_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    split = load_digits(seed=0)
    return tuple(torch.from_numpy(a) for a in split)


def _images(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, 1, 8, 8)


def _hand_loop(model, x, y, optimizer, epochs, batch_size, seed):
    """The textbook loop, written out independently of bnbook.training."""
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    losses = []
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return np.array(losses)


# --- small_cnn -------------------------------------------------------------------------


@pytest.mark.parametrize("norm_layer", [nn.BatchNorm2d, bnn.BatchNorm2d], ids=["torch", "bnbook"])
def test_small_cnn_structure(norm_layer) -> None:
    model = small_cnn(norm_layer=norm_layer)
    kinds = [type(m) for m in model]
    block = [nn.Conv2d, norm_layer, nn.ReLU, nn.MaxPool2d]
    assert kinds == block + block + [nn.Flatten, nn.Linear]
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)  # bias=False before each batch norm
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 16), (16, 32)]
    assert [m.num_features for m in model if isinstance(m, norm_layer)] == [16, 32]
    assert model[-1].bias is not None and model[-1].in_features == 32 * 2 * 2
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)


def test_small_cnn_without_batch_norm_keeps_conv_biases() -> None:
    model = small_cnn(batch_norm=False, channels=(4, 6), num_classes=3)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model)
    assert all(m.bias is not None for m in model if isinstance(m, nn.Conv2d))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_small_cnn_conv_bias_would_be_cancelled_by_batch_norm() -> None:
    """Why bias=False: a per-channel constant before batch norm does not change its training-mode output."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(1, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4)
    x = torch.randn(8, 1, 8, 8)
    before = bn(conv(x))
    with torch.no_grad():
        conv.bias.add_(torch.tensor([3.0, -2.0, 0.5, 10.0]))
    np.testing.assert_allclose(bn(conv(x)).detach(), before.detach(), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [{"channels": (0, 4)}, {"channels": (4,)}, {"channels": (4, 2.5)}, {"num_classes": 1}], ids=repr
)
def test_small_cnn_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError, match="channels|num_classes"):
        small_cnn(**kwargs)


# --- fit ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "images", "opt"),
    [
        (
            lambda: mlp([64, 32, 10], activation="relu", batch_norm=True, norm_layer=nn.BatchNorm1d),
            False,
            "adam",
        ),
        (lambda: small_cnn(channels=(4, 8)), True, "adam"),
        (lambda: small_cnn(channels=(4, 8), norm_layer=bnn.BatchNorm2d), True, "sgd"),
    ],
    ids=["mlp-adam", "cnn-adam", "cnn-bnbook-sgd"],
)
def test_fit_reproduces_the_hand_written_loop_step_for_step(digits, build, images, opt) -> None:
    x, y = digits[0][:300], digits[1][:300]
    if images:
        x = _images(x)

    def make():
        torch.manual_seed(3)
        model = build()
        if opt == "adam":
            return model, torch.optim.Adam(model.parameters(), lr=0.01)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    ref_model, ref_opt = make()
    expected = _hand_loop(ref_model, x, y, ref_opt, epochs=3, batch_size=32, seed=5)
    model, optimizer = make()
    hist = fit(model, x, y, optimizer=optimizer, epochs=3, batch_size=32, device=CPU, seed=5, progress=False)
    assert isinstance(hist, FitHistory)
    assert hist.step_loss.shape == (3 * (300 // 32),)
    np.testing.assert_array_equal(hist.step_loss, expected)
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # parameters and running statistics alike
    assert model.training
    # a different seed gives a different order of batches
    model2, optimizer2 = make()
    other = fit(
        model2, x, y, optimizer=optimizer2, epochs=1, batch_size=32, device=CPU, seed=6, progress=False
    )
    assert not np.array_equal(other.step_loss, expected[: len(other.step_loss)])


class _ModeRecorder(nn.Module):
    """A tiny classifier that records the mode of each call and the rows it saw (column 0: row id)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 3)
        self.bn = nn.BatchNorm1d(3)
        self.calls: list[tuple[bool, bool, list[int]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled(), x[:, 0].long().tolist()))
        return self.bn(self.linear(x))


def test_fit_uses_train_and_eval_modes_in_the_right_places() -> None:
    n, batch_size, epochs = 50, 8, 3
    x = torch.stack([torch.arange(n, dtype=torch.float32), torch.randn(n)], dim=1)
    y = torch.randint(0, 3, (n,))
    x_val, y_val = x[:10].clone(), y[:10].clone()
    model = _ModeRecorder()
    epochs_seen = []
    hist = fit(
        model,
        x,
        y,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        epochs=epochs,
        batch_size=batch_size,
        device="cpu",
        seed=0,
        progress=False,
        x_val=x_val,
        y_val=y_val,
        on_epoch_end=lambda epoch, m: epochs_seen.append((epoch, m.training)),
    )
    steps = n // batch_size
    calls = model.calls
    assert len(calls) == epochs * (steps + 1)
    orders = []
    for e in range(epochs):
        epoch_calls = calls[e * (steps + 1) : (e + 1) * (steps + 1)]
        train_calls, val_call = epoch_calls[:-1], epoch_calls[-1]
        assert all(training and grad for training, grad, _ in train_calls)
        assert val_call[0] is False and val_call[1] is False  # eval mode, no graph
        assert val_call[2] == list(range(10))  # the validation set, in one batch
        rows = [r for _, _, batch in train_calls for r in batch]
        assert len(rows) == steps * batch_size == len(set(rows))  # drop_last, no repeats
        orders.append(rows)
    assert orders[0] != orders[1]  # reshuffled every epoch
    assert epochs_seen == [(1, True), (2, True), (3, True)]  # after the validation, mode restored
    assert model.training  # left in training mode
    # running statistics were updated by the training steps only, not by the evaluations
    assert int(model.bn.num_batches_tracked) == epochs * steps
    assert hist.val_acc.shape == hist.val_loss.shape == (epochs,)
    assert hist.epoch_loss.shape == (epochs,)
    np.testing.assert_allclose(hist.epoch_loss, hist.step_loss.reshape(epochs, steps).mean(axis=1), rtol=1e-6)


def test_fit_learns_the_digits(digits) -> None:
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    model = small_cnn(channels=(8, 16))
    hist = fit(
        model,
        _images(x_train),
        y_train,
        optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
        epochs=2,
        batch_size=64,
        device=CPU,
        seed=0,
        progress=False,
        x_val=_images(x_test),
        y_val=y_test,
    )
    assert hist.step_loss[:3].mean() > 1.5  # near log(10) at the start
    assert hist.epoch_loss[-1] < 0.5 * hist.epoch_loss[0]
    assert hist.val_acc[-1] > 0.85  # chance is 0.1
    # the recorded validation numbers are those of the final model, computed independently
    model.eval()
    with torch.no_grad():
        logits = model(_images(x_test))
    assert hist.val_acc[-1] == pytest.approx((logits.argmax(1) == y_test).double().mean().item())
    assert hist.val_loss[-1] == pytest.approx(F.cross_entropy(logits, y_test).item(), rel=1e-5)


def test_fit_progress_bar_goes_to_stdout(digits, capsys) -> None:
    pytest.importorskip("tqdm")
    x, y = digits[0][:64], digits[1][:64]
    model = mlp([64, 10])
    fit(
        model,
        x,
        y,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=2,
        batch_size=32,
        device=CPU,
        seed=0,
    )
    out, err = capsys.readouterr()
    assert "2/2" in out and err == ""


# --- evaluate ------------------------------------------------------------------------------


def _bn_classifier() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model.train()
    with torch.no_grad():  # give the running statistics values far from the batch statistics
        model[1].running_mean.fill_(0.7)
        model[1].running_var.fill_(3.0)
    return model


def test_evaluate_matches_eval_mode_forward_and_restores_modes(digits) -> None:
    x, y = digits[2], digits[3]
    model = _bn_classifier()
    frozen = copy.deepcopy(model).eval()
    with torch.no_grad():
        logits = frozen(x)
    expected_loss = F.cross_entropy(logits.double(), y).item()
    expected_acc = (logits.argmax(1) == y).double().mean().item()
    loss, acc = evaluate(model, x, y)
    assert loss == pytest.approx(expected_loss, rel=1e-6) and acc == pytest.approx(expected_acc)
    assert model.training and all(m.training for m in model.modules())
    # nothing was updated: running statistics as they were, no batch counted
    assert torch.all(model[1].running_mean == 0.7) and int(model[1].num_batches_tracked) == 0
    # train-mode outputs differ (the control: the mode matters for this model)
    with torch.no_grad():
        train_loss = F.cross_entropy(model(x).double(), y).item()
    assert model[1].num_batches_tracked == 1 and train_loss != pytest.approx(expected_loss, rel=1e-2)
    # an eval-mode model stays in eval mode; mixed modes come back as they were
    model.eval()
    evaluate(model, x, y)
    assert not any(m.training for m in model.modules())
    model[1].train()
    evaluate(model, x, y)
    assert [m.training for m in model] == [False, True, False, False]


def test_evaluate_in_chunks_equals_one_batch(digits) -> None:
    x, y = digits[2], digits[3]
    model = _bn_classifier()
    whole = evaluate(model, x, y)
    for batch_size in (1, 7, 100, len(y) + 5):
        loss, acc = evaluate(model, x, y, batch_size=batch_size)
        assert loss == pytest.approx(whole[0], rel=1e-5) and acc == whole[1]


def test_evaluate_restores_modes_when_the_forward_pass_raises() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    with pytest.raises(RuntimeError):
        evaluate(model, torch.randn(5, 2), torch.zeros(5, dtype=torch.long))  # wrong input width
    assert all(m.training for m in model.modules())


# --- checkpoints ----------------------------------------------------------------------------


def _trained_cnn(digits) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(2)
    model = small_cnn(channels=(4, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    fit(model, _images(digits[0][:256]), digits[1][:256], optimizer=optimizer, epochs=2, batch_size=32,
        device=CPU, seed=2, progress=False)  # fmt: skip
    return model, optimizer


def test_checkpoint_round_trip_gives_identical_eval_outputs(digits, tmp_path) -> None:
    model, optimizer = _trained_cnn(digits)
    x = _images(digits[2][:64])
    model.eval()
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "cnn.pt"
    save_checkpoint(path, model, optimizer, epoch=2, note="test")

    torch.manual_seed(99)
    fresh = small_cnn(channels=(4, 8)).eval()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), expected, atol=1e-3)  # the control: an unloaded model differs
    extra = load_checkpoint(path, fresh, fresh_opt)
    assert extra == {"epoch": 2, "note": "test"}
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    for name, buf in model.named_buffers():  # running statistics travelled with the model
        assert torch.equal(dict(fresh.named_buffers())[name], buf)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(optimizer.state[p]["exp_avg"], fresh_opt.state[q]["exp_avg"])
        assert torch.equal(optimizer.state[p]["exp_avg_sq"], fresh_opt.state[q]["exp_avg_sq"])


def test_loading_parameters_alone_is_not_enough(digits) -> None:
    """The buffers matter: without the running statistics, eval-mode outputs differ."""
    model, _ = _trained_cnn(digits)
    x = _images(digits[2][:64])
    params_only = small_cnn(channels=(4, 8))
    params_only.load_state_dict(dict(model.named_parameters()), strict=False)
    model.eval(), params_only.eval()
    with torch.no_grad():
        assert not torch.allclose(params_only(x), model(x), atol=1e-3)


def test_checkpoint_without_optimizer_and_bad_paths(digits, tmp_path) -> None:
    model = small_cnn(channels=(2, 2))
    path = tmp_path / "m.pt"
    save_checkpoint(path, model)
    other = small_cnn(channels=(2, 2))
    assert load_checkpoint(path, other) == {}
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, other, torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt", other)
    with pytest.raises(ValueError, match="folder"):
        save_checkpoint(tmp_path / "no" / "such" / "m.pt", model)
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="save_checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt", other)
    with pytest.raises(RuntimeError):  # a different architecture does not load silently
        load_checkpoint(path, small_cnn(channels=(3, 2)))


# --- bad arguments ---------------------------------------------------------------------------


def _args():
    torch.manual_seed(0)
    model = mlp([4, 3])
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    kwargs = dict(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=1,
        batch_size=4,
        device="cpu",
        seed=0,
        progress=False,
    )
    return model, x, y, kwargs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"batch_size": 1}, "batch_size"),
        ({"batch_size": 21}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"device": "gpu0"}, "device"),
        ({"device": "cuda"}, "model is not on cuda"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"on_epoch_end": 3}, "on_epoch_end"),
        ({"x_val": torch.randn(3, 4)}, "x_val and y_val"),
        ({"x_val": torch.randn(3, 4), "y_val": torch.zeros(2, dtype=torch.long)}, "x_val"),
        ({"y": torch.zeros(20)}, "y_train"),
        ({"y": torch.zeros(19, dtype=torch.long)}, "x_train"),
        ({"x": np.zeros((20, 4))}, "torch tensors"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(v),
)
def test_fit_bad_arguments_raise_value_error(change, message) -> None:
    model, x, y, kwargs = _args()
    x = change.pop("x", x)
    y = change.pop("y", y)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        fit(model, x, y, **kwargs)


def test_fit_rejects_an_optimizer_of_another_model() -> None:
    model, x, y, kwargs = _args()
    kwargs["optimizer"] = torch.optim.SGD(mlp([4, 3]).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="none of the model's parameters"):
        fit(model, x, y, **kwargs)


def test_evaluate_bad_arguments() -> None:
    model = mlp([4, 3])
    x, y = torch.randn(6, 4), torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match="y_eval"):
        evaluate(model, x, y.float())
    with pytest.raises(ValueError, match="shape"):
        evaluate(model, x, y[:5])


def test_fit_switches_to_training_mode_every_epoch() -> None:
    """A callback (or anything else) that leaves the model in eval mode does not leak into the next epoch."""
    n, batch_size = 24, 8
    x = torch.stack([torch.arange(n, dtype=torch.float32), torch.randn(n)], dim=1)
    y = torch.randint(0, 3, (n,))
    model = _ModeRecorder()
    fit(model, x, y, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epochs=3,
        batch_size=batch_size, device=CPU, seed=0, progress=False,
        on_epoch_end=lambda epoch, m: m.eval())  # fmt: skip
    assert len(model.calls) == 3 * (n // batch_size)
    assert all(training for training, _, _ in model.calls)
    assert int(model.bn.num_batches_tracked) == 3 * (n // batch_size)
