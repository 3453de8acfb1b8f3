"""Train many small MLPs at once as one batched model (chapter 8, training with and without BN).

A comparison worth trusting needs many runs: several seeds, a grid of learning
rates, initial weight scales, depths. Each run is a small network, and on a
CPU a small network spends most of its time in Python and in the overhead of
launching tiny matrix products. :class:`BatchedMLP` therefore stacks ``K``
independent networks ("members") along a leading dimension:

* the weights of layer ``l`` are one tensor of shape ``(K, fan_in, fan_out)``,
  so a layer is one batched matrix product (``torch.baddbmm``) instead of
  ``K`` small ones;
* each member sees its own mini-batch: inputs have shape ``(K, B, D)``,
  gathered with a per-member index tensor drawn from that member's seed;
* batch normalization works per member over dimension 1 (the ``B`` examples
  of its own batch), with per-member ``gamma``, ``beta`` and running
  statistics of shape ``(K, C)``;
* :func:`train_batched` takes a plain SGD step with a per-member learning
  rate. The loss is the *sum* of the members' mean losses, so every member
  gets exactly the gradient of its own loss. The step writes the backward
  pass out, each operation's derivative as autograd computes it, in
  autograd's order: the same numbers, bit for bit, without the engine's
  bookkeeping (``tests/test_batched.py`` compares the two with ``torch.equal``).

Nothing couples the members: member ``k`` trained here follows the same
trajectory, up to floating-point rounding, as a ``torch.nn.Sequential`` of
``Linear``/``BatchNorm1d``/activation layers trained alone with the same
initial weights, the same batches and plain SGD (``tests/test_batched.py``
checks this). A member whose loss becomes NaN or infinite is marked as
diverged; its NaNs stay inside its own slices of the tensors.

Three tools keep the cost of a study down without changing a single number:
``train_batched(record=...)`` calls a function of yours every
``record_every`` steps (to measure the members while they train, instead of
training them again to measure them), ``evaluate_batched(members=...)``
evaluates only the members you name, and :meth:`BatchedMLP.select` takes
some members out as a model of their own, to train them on. A member's
numbers never depend on which other members share its model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnbook import nn as bnn

__all__ = ["ACTIVATIONS", "INITS", "BatchedHistory", "BatchedMLP", "evaluate_batched", "train_batched"]

#: Activation functions by name, applied elementwise after each hidden layer (and its batch norm).
ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}

_MODULES: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}

#: Weight initialization schemes that :class:`BatchedMLP` understands.
INITS = ("default", "xavier", "kaiming", "normal")


def _as_vector(value: float | Sequence[float], k: int, name: str) -> list[float]:
    """A scalar or a length-``k`` sequence as a list of ``k`` floats."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        values = [float(value)] * k
    else:
        values = [float(v) for v in np.asarray(value, dtype=float).reshape(-1)]
    if len(values) != k:
        raise ValueError(f"{name} must be a number or have one entry per member ({k}), got {len(values)}")
    return values


def _init_weight(
    fan_in: int, fan_out: int, scheme: str, scale: float, activation: str, gen: torch.Generator
) -> torch.Tensor:
    """One layer's weight in ``torch.nn.Linear``'s layout ``(fan_out, fan_in)``, drawn from ``gen``.

    Drawn in float32, as ``torch.nn.Linear`` draws it, so that the same seed gives the same numbers.
    """
    w = torch.empty(fan_out, fan_in, dtype=torch.float32)
    if scheme == "default":  # exactly what torch.nn.Linear.reset_parameters does
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
    elif scheme == "xavier":
        nn.init.xavier_normal_(w, gain=nn.init.calculate_gain(activation), generator=gen)
    elif scheme == "kaiming":
        nn.init.kaiming_normal_(w, nonlinearity="relu", generator=gen)
    else:  # "normal": N(0, scale^2), CS231n's experiment
        nn.init.normal_(w, 0.0, 1.0, generator=gen)
    return w.double() * scale


class BatchedMLP(nn.Module):
    """``K`` independent fully connected networks, evaluated as one (chapter 8).

    Each member is the network that :func:`bnbook.models.mlp` builds: hidden
    blocks ``Linear -> [BatchNorm] -> activation`` and a final ``Linear``
    that outputs logits. With batch norm the hidden ``Linear`` layers have no
    bias (the norm's shift ``beta`` takes its place). A hidden batch-norm
    layer of member ``k`` computes, over the ``B`` examples of that member's
    batch,

    .. math::

        y = \\gamma_k \\frac{z - \\mu_\\mathcal{B}}{\\sqrt{\\sigma^2_\\mathcal{B} + \\epsilon}} + \\beta_k

    with the biased batch variance, and updates its running statistics with
    PyTorch's convention ``running = (1 - momentum) * running + momentum * batch``,
    using the *unbiased* batch variance for ``running_var``. In eval mode
    (``model.eval()``) it normalizes with the running statistics instead.

    Parameters
    ----------
    sizes : list of int
        Layer widths ``[D, hidden..., classes]``, at least two entries.
    seeds : sequence of int
        One seed per member; ``K = len(seeds)``. Member ``k``'s initial
        weights are drawn from ``torch.Generator().manual_seed(seeds[k])``
        in the order ``torch.nn.Linear`` draws them, so with
        ``init="default"`` and ``init_scale=1`` member ``k`` starts exactly
        where ``torch.manual_seed(seeds[k]); bnbook.models.mlp(sizes, ...)``
        starts.
    activation : {"sigmoid", "tanh", "relu"}
    batch_norm : bool
        Batch norm before every hidden activation (the same for all members).
    init : str or sequence of str
        Weight initialization, one scheme for all or one per member:
        ``"default"`` (``torch.nn.Linear``'s uniform
        :math:`\\pm 1/\\sqrt{\\text{fan\\_in}}`, biases too), ``"xavier"``
        (Glorot normal with ``torch.nn.init.calculate_gain(activation)``),
        ``"kaiming"`` (He normal for ReLU, std :math:`\\sqrt{2/\\text{fan\\_in}}`),
        ``"normal"`` (weights :math:`\\mathcal{N}(0, s^2)` with ``s = init_scale``).
        Biases start at zero except with ``"default"``.
    init_scale : float or sequence of float
        Factor on every initial weight, one for all or one per member; for
        ``"normal"`` it is the standard deviation.
    momentum : float in (0, 1]
        Running-statistics momentum, PyTorch's convention (weight of the new batch).
    eps : float
        Added to the variance before the square root.
    device, dtype
        Where the parameters live (default: CPU, float32).

    Attributes
    ----------
    weights : ParameterList
        Layer ``l``'s weights, shape ``(K, fan_in, fan_out)`` (the transpose of
        ``torch.nn.Linear.weight`` per member, so that ``x @ W`` applies it).
    biases : ParameterList
        Shape ``(K, fan_out)``; only for layers without batch norm.
    gammas, betas : ParameterList
        Shape ``(K, C)`` per hidden layer, when ``batch_norm``.
    running_means, running_vars : list of buffers, shape ``(K, C)``

    Examples
    --------
    >>> model = BatchedMLP([64, 32, 10], seeds=[0, 1, 2], batch_norm=True)
    >>> model(torch.zeros(3, 5, 64)).shape
    torch.Size([3, 5, 10])
    """

    def __init__(
        self,
        sizes: Sequence[int],
        seeds: Sequence[int],
        activation: str = "sigmoid",
        batch_norm: bool = False,
        init: str | Sequence[str] = "default",
        init_scale: float | Sequence[float] = 1.0,
        momentum: float = 0.1,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s <= 0 for s in sizes):
            raise ValueError(f"sizes must list at least two positive widths, got {sizes}")
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds must name at least one member")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        k = len(seeds)
        inits = [init] * k if isinstance(init, str) else list(init)
        if len(inits) != k:
            raise ValueError(f"init must be a string or have one entry per member ({k}), got {len(inits)}")
        bad = sorted({s for s in inits if s not in INITS})
        if bad:
            raise ValueError(f"init must be one of {list(INITS)}, got {bad}")
        scales = _as_vector(init_scale, k, "init_scale")
        if any(not (s > 0 and math.isfinite(s)) for s in scales):
            raise ValueError(f"init_scale must be positive and finite, got {init_scale}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        dtype = dtype or torch.float32
        self.sizes, self.seeds, self.activation = sizes, seeds, activation
        self.batch_norm, self.inits, self.init_scales = bool(batch_norm), inits, scales
        self.momentum, self.eps = float(momentum), float(eps)

        n_layers = len(sizes) - 1
        has_bias = [not batch_norm or i == n_layers - 1 for i in range(n_layers)]
        ws: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        bs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        for seed, scheme, scale in zip(seeds, inits, scales, strict=True):
            gen = torch.Generator().manual_seed(seed)
            for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
                ws[i].append(_init_weight(fan_in, fan_out, scheme, scale, activation, gen).T)
                if has_bias[i]:
                    b = torch.zeros(fan_out, dtype=torch.float32)
                    if scheme == "default":
                        bound = 1.0 / math.sqrt(fan_in)
                        b = torch.empty(fan_out, dtype=torch.float32)
                        nn.init.uniform_(b, -bound, bound, generator=gen)
                    bs[i].append(b)

        def param(tensors: list[torch.Tensor]) -> nn.Parameter:
            return nn.Parameter(torch.stack(tensors).to(device=device, dtype=dtype).contiguous())

        self.weights = nn.ParameterList([param(w) for w in ws])
        self.biases = nn.ParameterList([param(b) for b in bs if b])
        self._has_bias = has_bias
        hidden = sizes[1:-1] if batch_norm else []
        self.gammas = nn.ParameterList(
            [nn.Parameter(torch.ones(k, c, device=device, dtype=dtype)) for c in hidden]
        )
        self.betas = nn.ParameterList(
            [nn.Parameter(torch.zeros(k, c, device=device, dtype=dtype)) for c in hidden]
        )
        for i, c in enumerate(hidden):
            self.register_buffer(f"running_mean_{i}", torch.zeros(k, c, device=device, dtype=dtype))
            self.register_buffer(f"running_var_{i}", torch.ones(k, c, device=device, dtype=dtype))

    @property
    def k(self) -> int:
        """Number of members."""
        return len(self.seeds)

    @property
    def running_means(self) -> list[torch.Tensor]:
        """Running means of the batch-norm layers, each ``(K, C)``."""
        return [getattr(self, f"running_mean_{i}") for i in range(len(self.gammas))]

    @property
    def running_vars(self) -> list[torch.Tensor]:
        """Running (unbiased) variances of the batch-norm layers, each ``(K, C)``."""
        return [getattr(self, f"running_var_{i}") for i in range(len(self.gammas))]

    def _norm(self, z: torch.Tensor, i: int) -> torch.Tensor:
        """Batch norm of ``z`` (K, B, C) per member over dim 1, for hidden layer ``i``."""
        gamma, beta = self.gammas[i].unsqueeze(1), self.betas[i].unsqueeze(1)
        rm, rv = self.running_means[i], self.running_vars[i]
        if self.training:
            m = z.shape[1]
            if m < 2:
                raise ValueError(f"batch norm in training mode needs at least 2 examples per batch, got {m}")
            mean = z.mean(dim=1, keepdim=True)
            centred = z - mean
            var = (centred * centred).mean(dim=1, keepdim=True)  # biased: divides by m
            with torch.no_grad():
                rm.lerp_(mean.squeeze(1), self.momentum)
                rv.lerp_(var.squeeze(1) * (m / (m - 1)), self.momentum)  # unbiased: divides by m - 1
        else:
            centred, var = z - rm.unsqueeze(1), rv.unsqueeze(1)
        return torch.addcmul(beta, centred * torch.rsqrt(var + self.eps), gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every member.

        Parameters
        ----------
        x : Tensor, shape (K, B, D) or (B, D)
            Member ``k``'s batch is ``x[k]``; a 2-D ``x`` is one batch shared by all members.

        Returns
        -------
        Tensor, shape (K, B, classes)
        """
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.k, -1, -1)
        if x.dim() != 3 or x.shape[0] != self.k or x.shape[2] != self.sizes[0]:
            raise ValueError(
                f"x must have shape ({self.k}, B, {self.sizes[0]}) or (B, {self.sizes[0]}), "
                f"got {tuple(x.shape)}"
            )
        act = ACTIVATIONS[self.activation]
        h, b = x, 0
        last = len(self.weights) - 1
        for i, w in enumerate(self.weights):
            if self._has_bias[i]:
                h = torch.baddbmm(self.biases[b].unsqueeze(1), h, w)
                b += 1
            else:
                h = torch.bmm(h, w)
            if i < last:
                if self.batch_norm:
                    h = self._norm(h, i)
                h = act(h)
        return h

    def member(self, k: int) -> nn.Sequential:
        """Member ``k`` as a plain ``torch.nn.Sequential`` of ``Linear``, ``BatchNorm1d`` and activations.

        The copy carries the member's current weights, batch-norm parameters,
        running statistics and mode; it shares no memory with this model.
        """
        if not 0 <= k < self.k:
            raise ValueError(f"member index must be in [0, {self.k}), got {k}")
        layers: list[nn.Module] = []
        b, last = 0, len(self.weights) - 1
        p = self.weights[0]
        for i, w in enumerate(self.weights):
            fan_in, fan_out = w.shape[1:]
            lin = nn.Linear(fan_in, fan_out, bias=self._has_bias[i], device=p.device, dtype=p.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[k].T)
                if self._has_bias[i]:
                    lin.bias.copy_(self.biases[b][k])
                    b += 1
            layers.append(lin)
            if i < last:
                if self.batch_norm:
                    bn = bnn.BatchNorm1d(
                        fan_out, eps=self.eps, momentum=self.momentum, device=p.device, dtype=p.dtype
                    )
                    with torch.no_grad():
                        bn.weight.copy_(self.gammas[i][k])
                        bn.bias.copy_(self.betas[i][k])
                        bn.running_mean.copy_(self.running_means[i][k])
                        bn.running_var.copy_(self.running_vars[i][k])
                    layers.append(bn)
                layers.append(_MODULES[self.activation]())
        return nn.Sequential(*layers).train(self.training)

    def select(self, members: Sequence[int]) -> BatchedMLP:
        """A new batched model of the chosen members only, in that order (copies, in this model's mode).

        Each member keeps its seed, weights, batch-norm parameters and running
        statistics, so training the selection goes on exactly as training
        those members inside this model would: members never interact. Use it
        to continue some runs of a study for longer without training the
        others.
        """
        idx = [int(m) for m in members]
        if not idx or any(not 0 <= m < self.k for m in idx):
            raise ValueError(f"members must be indices in [0, {self.k}), at least one, got {list(members)}")
        p = self.weights[0]
        out = BatchedMLP(
            self.sizes,
            [self.seeds[m] for m in idx],
            self.activation,
            self.batch_norm,
            [self.inits[m] for m in idx],
            [self.init_scales[m] for m in idx],
            self.momentum,
            self.eps,
            device=p.device,
            dtype=p.dtype,
        )
        pick = torch.tensor(idx, device=p.device)
        with torch.no_grad():
            for mine, theirs in zip(self.state_dict().values(), out.state_dict().values(), strict=True):
                theirs.copy_(mine.index_select(0, pick))
        return out.train(self.training)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, k={self.k}, activation={self.activation!r}, batch_norm={self.batch_norm}"


class BatchedHistory(NamedTuple):
    """What :func:`train_batched` recorded (chapter 8).

    Attributes
    ----------
    loss : ndarray, shape (K, steps)
        Training loss of each member's mini-batch at each step (before the
        update); NaN from the step a member diverged.
    eval_steps : ndarray of int, shape (n_evals,)
        Steps after which the model was evaluated (0 is before training).
    eval_loss, eval_acc : ndarray, shape (K, n_evals)
        Cross-entropy and accuracy on the evaluation set, in eval mode
        (running statistics). A diverged member has loss NaN and accuracy
        ``1 / classes`` (chance) from the evaluation at which it had diverged.
    diverged : ndarray of bool, shape (K,)
        Whether the member's loss became NaN or infinite.
    records : list
        What ``record(step, model)`` returned, in order (empty without ``record``).
    """

    loss: np.ndarray
    eval_steps: np.ndarray
    eval_loss: np.ndarray
    eval_acc: np.ndarray
    diverged: np.ndarray
    records: Sequence[Any] = ()


def _member_index(model: BatchedMLP, members: Sequence[int] | None) -> torch.Tensor | None:
    """``members`` as an index tensor on the model's device, checked; None for all members."""
    if members is None:
        return None
    idx = [int(m) for m in members]
    if not idx or any(not 0 <= m < model.k for m in idx):
        raise ValueError(f"members must be indices in [0, {model.k}), at least one, got {list(members)}")
    return torch.tensor(idx, device=model.weights[0].device)


def member_forward(
    model: BatchedMLP,
    x: torch.Tensor,
    idx: torch.Tensor,
    normalize: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Logits (len(idx), N, classes) of the members ``idx`` alone, on one shared batch ``x`` (N, D).

    The operations of :meth:`BatchedMLP.forward` on the members' slices of the
    parameters, so a member's numbers do not depend on which others are computed
    with it. ``normalize(i, h, idx)`` is hidden layer ``i``'s batch norm (for a
    model with ``batch_norm=True``), given its pre-activations ``h``.
    """
    act = ACTIVATIONS[model.activation]
    h = x.unsqueeze(0).expand(len(idx), -1, -1)
    b, last = 0, len(model.weights) - 1
    for i, w in enumerate(model.weights):
        w = w.index_select(0, idx)
        if model._has_bias[i]:
            h = torch.baddbmm(model.biases[b].index_select(0, idx).unsqueeze(1), h, w)
            b += 1
        else:
            h = torch.bmm(h, w)
        if i < last:
            if model.batch_norm:
                h = normalize(i, h, idx)
            h = act(h)
    return h


def _running_norm(model: BatchedMLP) -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Eval-mode batch norm of hidden layer ``i`` for the members ``idx``: the running statistics."""

    def normalize(i: int, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        gamma = model.gammas[i].index_select(0, idx).unsqueeze(1)
        beta = model.betas[i].index_select(0, idx).unsqueeze(1)
        centred = h - model.running_means[i].index_select(0, idx).unsqueeze(1)
        var = model.running_vars[i].index_select(0, idx).unsqueeze(1)
        return torch.addcmul(beta, centred * torch.rsqrt(var + model.eps), gamma)

    return normalize


def _eval_logits(model: BatchedMLP, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """:meth:`BatchedMLP.forward` in eval mode for the members ``idx`` only: bit for bit the whole model's."""
    return member_forward(model, x, idx, _running_norm(model))


@torch.no_grad()
def evaluate_batched(
    model: BatchedMLP, x: torch.Tensor, y: torch.Tensor, members: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy of every member on ``(x, y)`` in eval mode (chapter 8).

    Parameters
    ----------
    model : BatchedMLP
    x : Tensor, shape (N, D)
    y : Tensor of int, shape (N,)
    members : sequence of int, optional
        Evaluate only these members (in this order), for example the runs of
        a study that still need a reading; the others cost nothing. Default:
        all of them.

    Returns
    -------
    loss, acc : ndarray, shape (K,) or (len(members),)
        Mean cross-entropy (NaN where it is not finite) and accuracy; a member
        whose loss is not finite gets the chance accuracy ``1 / classes``.
        The model's mode is restored afterwards. A member's numbers do not
        depend on which other members are evaluated with it.
    """
    idx = _member_index(model, members)
    if idx is not None:
        if x.dim() != 2 or x.shape[1] != model.sizes[0]:
            raise ValueError(f"with members, x must have shape (N, {model.sizes[0]}), got {tuple(x.shape)}")
        logits = _eval_logits(model, x, idx)
    else:
        was_training = model.training
        model.eval()
        try:
            logits = model(x)
        finally:
            model.train(was_training)
    k, n, c = logits.shape
    # The softmax runs along the N axis of the transposed logits: on a CPU that is many times
    # faster than along a last axis of only `classes` entries.
    loss = F.cross_entropy(logits.transpose(1, 2).contiguous(), y.expand(k, -1), reduction="none").mean(1)
    acc = (logits.argmax(dim=2) == y).to(torch.float64).mean(1)
    ok = torch.isfinite(loss)
    loss = torch.where(ok, loss, torch.full_like(loss, float("nan")))
    acc = torch.where(ok, acc, torch.full_like(acc, 1.0 / c))
    return loss.double().cpu().numpy(), acc.cpu().numpy()


#: Each activation's derivative, from its output, as autograd computes it.
_ACT_BACKWARD = {
    "sigmoid": lambda grad, out: torch.ops.aten.sigmoid_backward(grad, out),  # grad * (1 - out) * out
    "tanh": lambda grad, out: torch.ops.aten.tanh_backward(grad, out),  # grad * (1 - out**2)
    "relu": lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0),  # grad where out > 0
}


def _sum_to_row(g: torch.Tensor) -> torch.Tensor:
    """The gradient of a (K, 1, C) tensor broadcast over B, from ``g`` (K, B, C), as autograd sums it."""
    return g.sum([1], keepdim=True)


@torch.no_grad()
def _sgd_step(model: BatchedMLP, xb: torch.Tensor, yb: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """One plain SGD step of every member on its batch; returns each member's loss before it, (K,).

    ``xb`` (K, B, D), ``yb`` (K, B), ``lr`` (K,). This is, bit for bit, the
    step that ``loss.sum().backward()`` on :meth:`BatchedMLP.forward` followed
    by ``p -= lr * p.grad`` takes (``tests/test_batched.py`` compares them
    with ``torch.equal``): the same forward operations, then each node's
    backward formula from PyTorch's ``derivatives.yaml``, evaluated with the
    same ATen kernels and summed in the order the autograd engine sums them.
    Writing the chain rule out skips the engine's bookkeeping (graph nodes,
    saved-tensor checks, gradient buffers), which for networks this small
    costs more than the arithmetic; it also never creates a ``.grad``.
    """
    k, b, _ = xb.shape
    # Each list fetched once: indexing a ParameterList, or building the buffer lists, per layer per step
    # costs more Python time than this small step's arithmetic.
    ws, biases = list(model.weights), list(model.biases)
    if model.batch_norm:
        gammas, betas = list(model.gammas), list(model.betas)
        running_means, running_vars = model.running_means, model.running_vars
    last = len(ws) - 1
    act, act_backward = ACTIVATIONS[model.activation], _ACT_BACKWARD[model.activation]
    inputs, saved = [], []
    h = xb
    for i in range(last):
        inputs.append(h)
        if model.batch_norm:  # BatchedMLP._norm in training mode
            z = torch.bmm(h, ws[i])
            mean = z.mean(dim=1, keepdim=True)
            centred = z - mean
            var = (centred * centred).mean(dim=1, keepdim=True)
            running_means[i].lerp_(mean.squeeze(1), model.momentum)
            running_vars[i].lerp_(var.squeeze(1) * (b / (b - 1)), model.momentum)
            rstd = torch.rsqrt(var + model.eps)
            normed = centred * rstd
            a = act(torch.addcmul(betas[i].unsqueeze(1), normed, gammas[i].unsqueeze(1)))
            saved.append((a, centred, rstd, normed))
        else:
            a = act(torch.baddbmm(biases[i].unsqueeze(1), h, ws[i]))
            saved.append((a,))
        h = a
    logits = torch.baddbmm(biases[-1].unsqueeze(1), h, ws[last])
    c = logits.shape[2]
    log_p = torch.log_softmax(logits.reshape(k * b, c), 1)  # F.cross_entropy: log_softmax, then nll_loss
    target = yb.reshape(-1)
    per, total_weight = torch.ops.aten.nll_loss_forward(log_p, target, None, 0, -100)
    loss = per.view(k, b).mean(1)

    grads = {}  # parameter -> gradient
    # SumBackward, MeanBackward, NllLossBackward, LogSoftmaxBackward
    g = torch.ones(k, dtype=loss.dtype, device=loss.device).unsqueeze(1).expand(k, b) / b
    g = torch.ops.aten.nll_loss_backward(g.reshape(k * b), log_p, target, None, 0, -100, total_weight)
    g = torch.ops.aten._log_softmax_backward_data(g, log_p, 1, log_p.dtype).view(k, b, c)
    # BaddbmmBackward of the output layer
    grads[biases[-1]] = _sum_to_row(g).squeeze(1)
    grads[ws[last]] = h.transpose(1, 2).bmm(g)
    dh = g.bmm(ws[last].transpose(1, 2))
    for i in reversed(range(last)):
        a = saved[i][0]
        g = act_backward(dh, a)
        if model.batch_norm:
            _, centred, rstd, normed = saved[i]
            gamma = gammas[i].unsqueeze(1)
            # AddcmulBackward: beta, normed, gamma
            grads[betas[i]] = _sum_to_row(g).squeeze(1)
            g_normed = g * (gamma * 1)
            grads[gammas[i]] = _sum_to_row(g * (normed * 1)).squeeze(1)
            # MulBackward (centred * rstd), then RsqrtBackward, AddBackward, MeanBackward (of the variance)
            g_centred = g_normed * rstd
            g_rstd = _sum_to_row(g_normed * centred)
            g_var = -0.5 * g_rstd * rstd.pow(3)
            g_sq = g_var.expand(k, b, -1) / b
            # MulBackward (centred * centred): two contributions, added to the first in this order
            g_centred = g_centred + g_sq * centred
            g_centred = g_centred + g_sq * centred
            # SubBackward (z - mean), then MeanBackward (of z)
            g_mean = _sum_to_row(-g_centred)
            g = g_centred + g_mean.expand(k, b, -1) / b
        else:
            grads[biases[i]] = _sum_to_row(g).squeeze(1)
        grads[ws[i]] = inputs[i].transpose(1, 2).bmm(g)
        if i > 0:
            dh = g.bmm(ws[i].transpose(1, 2))
    params = [p for p in grads if p.requires_grad]  # a frozen parameter keeps its value, as with autograd
    if params:
        lrs = [lr.view(-1, *([1] * (p.dim() - 1))) for p in params]
        torch._foreach_sub_(params, torch._foreach_mul([grads[p] for p in params], lrs))  # p -= lr * grad
    return loss


def train_batched(
    model: BatchedMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    lrs: float | Sequence[float],
    steps: int,
    batch_size: int = 60,
    seeds: Sequence[int] | None = None,
    eval_every: int = 0,
    x_eval: torch.Tensor | None = None,
    y_eval: torch.Tensor | None = None,
    record: Callable[[int, BatchedMLP], Any] | None = None,
    record_every: int = 1,
) -> BatchedHistory:
    """Train every member of ``model`` with plain SGD on cross-entropy (chapter 8).

    At each step member ``k`` draws ``batch_size`` indices into ``x`` with
    replacement from ``torch.Generator().manual_seed(seeds[k])`` (the same
    draws as ``torch.randint(0, N, (batch_size,), generator=g)`` once per
    step), computes its mean loss, and updates every parameter ``p`` as
    ``p -= lrs[k] * grad``. All members run as one batched computation. The
    backward pass is written out (see :func:`_sgd_step`): autograd's numbers,
    faster, with no ``.grad`` created, and training also runs inside
    ``torch.no_grad()``.

    Parameters
    ----------
    model : BatchedMLP
        Trained in place (it is put in training mode).
    x : Tensor, shape (N, D)
    y : Tensor of int, shape (N,)
    lrs : float or sequence of K floats
        Learning rate of each member (positive).
    steps : int
        Number of SGD steps (>= 0).
    batch_size : int
        Examples per member per step (>= 2 with batch norm, >= 1 without).
    seeds : sequence of K int, optional
        Data-order seed of each member (default: ``model.seeds``).
    eval_every : int
        Evaluate on ``(x_eval, y_eval)`` before training and after every
        ``eval_every`` steps (and after the last step); 0 means only before
        and after training.
    x_eval, y_eval : Tensor, optional
        Evaluation set (for example validation or test data); when omitted the
        evaluation columns of the result are empty.
    record : callable, optional
        ``record(step, model)`` is called before the first step (step 0) and
        after every ``record_every`` steps, with the model in training mode
        (it must leave the parameters alone; a measurement in training mode
        should put back any running statistics it changes). Its return
        values are collected in :attr:`BatchedHistory.records`. Use it to
        measure the members while they train rather than training them twice.
    record_every : int
        Steps between calls of ``record`` (>= 1).

    Returns
    -------
    BatchedHistory
        Arrays shaped ``(K, steps)`` and ``(K, n_evals)``.
    """
    k = model.k
    lr_list = _as_vector(lrs, k, "lrs")
    if any(not (lr > 0 and math.isfinite(lr)) for lr in lr_list):
        raise ValueError(f"learning rates must be positive and finite, got {lrs}")
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if batch_size < (2 if model.batch_norm else 1):
        raise ValueError(f"batch_size must be at least {2 if model.batch_norm else 1}, got {batch_size}")
    if eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {eval_every}")
    if record is not None and not callable(record):
        raise ValueError("record must be a callable record(step, model)")
    if not isinstance(record_every, (int, np.integer)) or record_every < 1:
        raise ValueError(f"record_every must be a positive integer, got {record_every!r}")
    seeds = model.seeds if seeds is None else [int(s) for s in seeds]
    if len(seeds) != k:
        raise ValueError(f"seeds must have one entry per member ({k}), got {len(seeds)}")
    if x.dim() != 2 or x.shape[1] != model.sizes[0] or y.shape != (x.shape[0],):
        raise ValueError(
            f"need x of shape (N, {model.sizes[0]}) and y of shape (N,), "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if (x_eval is None) != (y_eval is None):
        raise ValueError("give both x_eval and y_eval, or neither")

    device = model.weights[0].device
    lr_t = torch.tensor(lr_list, device=device, dtype=model.weights[0].dtype)
    n, c = x.shape[0], model.sizes[-1]
    # Every member's batch indices for all steps, drawn once per member (one CPU generator each).
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    chunk = 256
    eval_at = set(range(0, steps + 1, eval_every)) if eval_every else {0}
    eval_at.add(steps)
    eval_steps = sorted(eval_at) if x_eval is not None else []
    losses = torch.empty(steps, k, device=device, dtype=model.weights[0].dtype)
    ev_loss, ev_acc, records = [], [], []
    model.train()
    if 0 in eval_steps:
        lo, ac = evaluate_batched(model, x_eval, y_eval)
        ev_loss.append(lo)
        ev_acc.append(ac)
    if record is not None:
        records.append(record(0, model))
        model.train()
    for start in range(0, steps, chunk):
        m = min(chunk, steps - start)
        idx = torch.stack([torch.randint(0, n, (m, batch_size), generator=g) for g in gens], dim=1)
        idx = idx.to(device)  # (m, K, B)
        for j in range(m):
            step = start + j + 1
            ij = idx[j].view(-1)  # index_select: a faster gather than x[idx] for a 2-D index
            xb = x.index_select(0, ij).view(k, batch_size, -1)
            losses[step - 1] = _sgd_step(model, xb, y.index_select(0, ij).view(k, batch_size), lr_t)
            if step in eval_at and x_eval is not None:
                lo, ac = evaluate_batched(model, x_eval, y_eval)
                ev_loss.append(lo)
                ev_acc.append(ac)
            if record is not None and step % record_every == 0:
                records.append(record(step, model))
                model.train()
    loss = losses.T.double().cpu().numpy()
    bad = ~np.isfinite(loss)
    diverged = bad.any(axis=1)
    # The step whose loss was first not finite (argmax of an empty row is undefined: no steps, no divergence).
    first_bad = np.where(diverged, bad.argmax(axis=1) + 1 if steps else 0, steps + 1)
    loss[np.arange(steps)[None, :] + 1 >= first_bad[:, None]] = np.nan
    es = np.asarray(eval_steps, dtype=np.int64)
    if eval_steps:
        e_loss, e_acc = np.stack(ev_loss, axis=1), np.stack(ev_acc, axis=1)
        gone = es[None, :] >= first_bad[:, None]
        e_loss[gone], e_acc[gone] = np.nan, 1.0 / c
        diverged |= ~np.isfinite(e_loss[:, -1])
    else:
        e_loss = e_acc = np.zeros((k, 0))
    return BatchedHistory(loss, es, e_loss, e_acc, diverged, records)
