"""Chapter 5 (gradient flow): gradient checks, Jacobians and their heatmaps.

The batch-norm arithmetic itself lives in :mod:`bnbook.scratch` and
:mod:`bnbook.nn`; this module only wraps it in experiments and figures.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bnbook.gradcheck import numerical_gradient, relative_error
from bnbook.plots import COLORS, MARKERS
from bnbook.scratch import batch_norm_backward, batch_norm_forward

__all__ = [
    "GRAD_NAMES",
    "Check",
    "best_time",
    "checks_table",
    "grade_backward",
    "offdiag_scaling",
    "plot_offdiag_scaling",
    "feature_jacobian",
    "gradient_errors",
    "numerical_bn_gradients",
    "plot_jacobians",
    "text_table",
]

#: The three gradients a batch-norm backward pass returns, in that order.
GRAD_NAMES: tuple[str, str, str] = ("dx", "dgamma", "dbeta")


def numerical_bn_gradients(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    dy: np.ndarray,
    eps: float = 1e-5,
    h: float = 1e-5,
) -> dict[str, np.ndarray]:
    r"""Centred-difference gradients of a training-mode batch-norm layer.

    The scalar being differentiated is :math:`L = \sum y \odot dy` with
    ``y = batch_norm_forward(x, gamma, beta, eps)``, so ``dy`` plays the part
    of the upstream gradient :math:`\partial L / \partial y`.

    Parameters
    ----------
    x : ndarray, shape (N, C) or (N, C, *spatial)
        Input; float64 for a meaningful check.
    gamma, beta : ndarray, shape (C,)
        Scale and shift.
    dy : ndarray, same shape as ``x``
        Upstream gradient.
    eps : float
        The layer's epsilon.
    h : float
        Step of the centred difference.

    Returns
    -------
    dict
        ``{"dx": ..., "dgamma": ..., "dbeta": ...}``, shaped like ``x``,
        ``gamma`` and ``beta``.
    """

    def wrt_x(v: np.ndarray) -> np.ndarray:
        return batch_norm_forward(v, gamma, beta, eps)[0]

    def wrt_gamma(v: np.ndarray) -> np.ndarray:
        return batch_norm_forward(x, v, beta, eps)[0]

    def wrt_beta(v: np.ndarray) -> np.ndarray:
        return batch_norm_forward(x, gamma, v, eps)[0]

    return {
        "dx": numerical_gradient(wrt_x, x, dy, h),
        "dgamma": numerical_gradient(wrt_gamma, gamma, dy, h),
        "dbeta": numerical_gradient(wrt_beta, beta, dy, h),
    }


def gradient_errors(grads: Sequence[np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Relative errors of ``(dx, dgamma, dbeta)`` against a reference.

    Parameters
    ----------
    grads : sequence of three ndarrays
        ``(dx, dgamma, dbeta)`` as a backward pass returns them.
    reference : mapping
        The same gradients under the keys of :data:`GRAD_NAMES`, for example
        from :func:`numerical_bn_gradients`.

    Returns
    -------
    dict
        Relative error (:func:`bnbook.gradcheck.relative_error`) per gradient name.
    """
    if len(grads) != len(GRAD_NAMES):
        raise ValueError(f"expected {len(GRAD_NAMES)} gradients (dx, dgamma, dbeta), got {len(grads)}")
    return {name: relative_error(g, reference[name]) for name, g in zip(GRAD_NAMES, grads, strict=True)}


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned plain-text table, ready to ``print``.

    Parameters
    ----------
    header : sequence of str
        Column titles.
    rows : sequence of sequences
        One sequence per row, as long as ``header``; cells are converted with ``str``.

    Returns
    -------
    str
        The header, a rule of dashes, then one line per row; every column is
        left-aligned and as wide as its widest cell.
    """
    width = len(header)
    cells = [[str(h) for h in header]]
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"row {i} has {len(row)} cells, the header has {width}")
        cells.append([str(c) for c in row])
    widths = [max(len(line[k]) for line in cells) for k in range(width)]

    def fmt(line: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(cells[0]), rule] + [fmt(line) for line in cells[1:]])


def best_time(fn: Callable[[], object], number: int = 20, repeat: int = 5) -> float:
    """Seconds per call of ``fn``: the best of ``repeat`` runs of ``number`` calls each.

    The minimum is the least disturbed by other work on the machine.
    """
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def feature_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: np.ndarray,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    r"""Jacobian :math:`J_{ij} = \partial y_i / \partial x_j` of a layer over one feature.

    ``x`` holds the ``m`` values of a single feature across a mini-batch; it
    is passed to ``fn`` as a float64 tensor of shape ``(m, 1)`` (batch, one
    channel), and the output is read back as ``m`` values.

    Parameters
    ----------
    fn : callable
        Maps a ``(m, 1)`` tensor to a ``(m, 1)`` tensor, e.g. a batch-norm layer.
    x : ndarray, shape (m,)
        The feature's values.
    device : torch.device or str
        Where to compute.

    Returns
    -------
    ndarray, shape (m, m), float64
        Row ``i`` is output ``i``, column ``j`` is input ``j``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must hold one feature, shape (m,), got shape {x.shape}")
    xt = torch.as_tensor(x, dtype=torch.float64, device=device).reshape(-1, 1)
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(-1, 1)).reshape(-1), xt.reshape(-1))
    return jac.detach().cpu().numpy()


def _short(v: float) -> str:
    """Two decimals without the leading zero: 0.25 -> '.25', -0.25 -> '-.25', 1.36 -> '1.36'."""
    text = f"{v:.2f}"
    for zero, bare in (("-0.", "-."), ("0.", ".")):
        if text.startswith(zero):
            return bare + text[len(zero) :]
    return text


def plot_jacobians(
    fig: Figure,
    panels: Sequence[tuple[np.ndarray, str]],
    title: str | None = None,
    cmap: str = "RdBu_r",
    annotate: bool = True,
) -> list[Axes]:
    """Heatmaps of square Jacobians side by side, on one colour scale centred at 0.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        An empty figure to draw on.
    panels : sequence of (ndarray, str)
        Each Jacobian (rows: outputs ``i``, columns: inputs ``j``) with its panel title.
    title : str, optional
        Figure title (a ``suptitle``).
    cmap : str
        A diverging colormap; blue is negative, red positive with the default.
    annotate : bool
        Write each non-zero entry's value, rounded to two decimals, in its cell in 10-point type (for small
        matrices); exact zeros stay blank.

    Returns
    -------
    list of Axes
        One per panel.
    """
    if not panels:
        raise ValueError("plot_jacobians needs at least one panel")
    vmax = max(float(np.abs(j).max()) for j, _ in panels) or 1.0
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (jac, name) in zip(axes, panels, strict=True):
        m_out, m_in = jac.shape
        image = ax.imshow(jac, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("input index j")
        ax.set_ylabel("output index i")
        ax.set_xticks(range(m_in))
        ax.set_yticks(range(m_out))
        ax.grid(False)
        if annotate:
            for (i, j), v in np.ndenumerate(jac):
                if v == 0:  # leave exact zeros blank, so that structure stands out
                    continue
                shade = "white" if abs(v) > 0.6 * vmax else "black"
                ax.text(j, i, _short(v), ha="center", va="center", fontsize=10, color=shade)
    fig.colorbar(image, ax=list(axes), label=r"$\partial y_i / \partial x_j$", shrink=0.9)
    if title:
        fig.suptitle(title)
    return list(axes)


class Check(NamedTuple):
    """One verification: what was compared, its largest relative error and the bound it must stay under."""

    name: str
    against: str
    error: float
    bound: float


def checks_table(checks: Sequence[Check]) -> str:
    """The checks as an aligned text table: a passing error is shown only as the bound it stays under.

    A measured error of rounding size differs in its last digits from one CPU
    to another, so the table states the bound and whether it holds, never the
    digits themselves.

    Parameters
    ----------
    checks : sequence of Check

    Returns
    -------
    str
        Columns: check, compared with, max relative error (as ``< bound``), pass.
    """
    rows = [
        [
            c.name,
            c.against,
            f"< {c.bound:.0e}" if c.error < c.bound else f"{c.error:.1e} (bound {c.bound:.0e})",
        ]
        + ["yes" if c.error < c.bound else "NO"]
        for c in checks
    ]
    return text_table(["check", "compared with", "max rel. error", "pass"], rows)


def grade_backward(
    fn: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]],
    shapes: Sequence[tuple[int, ...]] = ((16, 5), (4, 3, 5, 5)),
    eps: float = 1e-5,
    seed: int = 0,
) -> list[Check]:
    """Grade a reader's backward pass ``fn(dy, x, gamma, eps) -> (dx, dgamma, dbeta)``.

    For each input shape, random float64 inputs, scale and upstream gradient
    are drawn, and ``fn``'s three gradients are compared with
    :func:`bnbook.scratch.batch_norm_backward` (bound 1e-10) and with
    centred finite differences of the forward pass (bound 1e-7).

    Parameters
    ----------
    fn : callable
        The backward pass to grade, for inputs of shape ``(N, C, *)``.
    shapes : sequence of tuple of int
        Input shapes to try.
    eps : float
        The layer's epsilon.
    seed : int

    Returns
    -------
    list of Check
        Two per shape; print them with :func:`checks_table`.
    """
    rng = np.random.default_rng(seed)
    checks = []
    for shape in shapes:
        c = shape[1]
        x = rng.normal(3.0, 2.0, size=shape)
        gamma, beta = rng.normal(1.0, 0.5, size=c), rng.normal(0.0, 1.0, size=c)
        dy = rng.normal(size=shape)
        got = fn(dy, x, gamma, eps)
        if len(got) != 3 or any(
            np.shape(g) != np.shape(r) for g, r in zip(got, (x, gamma, beta), strict=False)
        ):
            raise ValueError(f"expected (dx, dgamma, dbeta) shaped like x, gamma and beta for input {shape}")
        _, cache = batch_norm_forward(x, gamma, beta, eps)
        ref = batch_norm_backward(dy, cache)
        err_ref = max(relative_error(g, r) for g, r in zip(got, ref, strict=True))
        numeric = numerical_bn_gradients(x, gamma, beta, dy, eps=eps)
        err_fd = max(gradient_errors(got, numeric).values())
        checks.append(Check(f"your backward, {shape}", "bnbook.scratch", err_ref, 1e-10))
        checks.append(Check(f"your backward, {shape}", "finite differences", err_fd, 1e-7))
    return checks


def offdiag_scaling(
    fn: Callable[[torch.Tensor], torch.Tensor],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    r"""Mean size of the Jacobian's off-diagonal and diagonal entries against the batch size.

    For every batch size ``m`` and seed, ``m`` standard normal values of one
    feature pass through ``fn`` (a training-mode batch norm with
    :math:`\gamma = 1`), and the Jacobian (:func:`feature_jacobian`) is
    measured in units of the slope :math:`1/\sqrt{\sigma^2+\epsilon}` of the
    direct path, which frozen statistics would give on the diagonal.

    Parameters
    ----------
    fn : callable
        Maps a ``(m, 1)`` float64 tensor to its batch-normalized ``(m, 1)`` output.
    batch_sizes : sequence of int
    seeds : sequence of int
    device : torch.device or str

    Returns
    -------
    dict
        ``"m"``: the batch sizes; ``"offdiag"`` and ``"diag_deficit"``: arrays of
        shape ``(len(seeds), len(batch_sizes))`` with the mean
        :math:`|J_{ij}|` over :math:`i \ne j`, and the mean of
        :math:`1 - J_{ii}`, both divided by the slope.
    """
    off = np.zeros((len(seeds), len(batch_sizes)))
    deficit = np.zeros_like(off)
    for a, seed in enumerate(seeds):
        rng = np.random.default_rng([seed, 5])
        for b, m in enumerate(batch_sizes):
            x = rng.normal(size=m)
            jac = feature_jacobian(fn, x, device)
            slope = 1.0 / np.sqrt(x.var() + 1e-5)
            mask = ~np.eye(m, dtype=bool)
            off[a, b] = np.abs(jac[mask]).mean() / slope
            deficit[a, b] = (1.0 - np.diag(jac) / slope).mean()
    return {"m": np.asarray(batch_sizes), "offdiag": off, "diag_deficit": deficit}


def plot_offdiag_scaling(ax: Axes, scaling: Mapping[str, np.ndarray]) -> None:
    """Log-log plot of the measured off-diagonal size (markers, band over seeds) with the line 1/m.

    Parameters
    ----------
    ax : matplotlib Axes
    scaling : mapping
        From :func:`offdiag_scaling`.
    """
    from bnbook.plots import band

    m = scaling["m"].astype(float)
    band(ax, m, scaling["offdiag"], COLORS["bn"], "mean |off-diagonal entry|", marker=MARKERS[0])
    band(
        ax,
        m,
        scaling["diag_deficit"],
        COLORS["no_bn"],
        "mean (1 - diagonal entry)",
        marker=MARKERS[1],
        ls="--",
    )
    ax.plot(m, 1.0 / m, color=COLORS["truth"], ls=":", lw=1.5, label="1/m")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("values per feature m (log scale)")
    ax.set_ylabel("size, in units of the slope (log)")
    ax.legend(fontsize=8.5, loc="lower left")
