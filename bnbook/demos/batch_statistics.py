"""Figures, experiments and the explorer of chapter 2, ``chapters/02_batch_statistics``.

The batch-norm arithmetic itself is not repeated here: every normalization and
every two-pass variance comes from :func:`bnbook.scratch.batch_norm_forward`.
The one formula defined here, :func:`one_pass_variance`, is the numerically
fragile shortcut that the chapter warns against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from bnbook.plots import COLORS
from bnbook.scratch import batch_norm_forward

__all__ = [
    "FEATURE_MEANS",
    "FEATURE_STDS",
    "draw_before_after",
    "draw_shape_kept",
    "explorer_features",
    "make_features",
    "make_normalize_describe",
    "make_normalize_draw",
    "one_pass_variance",
    "plot_variance_errors",
    "skewness",
    "variance_error_sweep",
]

#: Centres of the three example features used throughout chapter 2.
FEATURE_MEANS: tuple[float, float, float] = (10.0, -3.0, 7.0)
#: Spreads (standard deviations) of the three example features: very different scales.
FEATURE_STDS: tuple[float, float, float] = (1.0, 0.3, 4.0)


def make_features(
    z: np.ndarray,
    means: Sequence[float] = FEATURE_MEANS,
    stds: Sequence[float] = FEATURE_STDS,
) -> np.ndarray:
    """Turn standard-normal draws into features with the given centres and spreads.

    Parameters
    ----------
    z : ndarray, shape (N, C)
        Standard-normal draws, one column per feature.
    means, stds : sequence of float, length C
        Centre and standard deviation of each feature.

    Returns
    -------
    ndarray, shape (N, C)
        ``z * stds + means``, column by column.
    """
    z = np.asarray(z, dtype=np.float64)
    means_arr = np.asarray(means, dtype=np.float64)
    stds_arr = np.asarray(stds, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != means_arr.size or means_arr.size != stds_arr.size:
        raise ValueError(
            f"expected z of shape (N, {means_arr.size}) and {means_arr.size} stds, "
            f"got z of shape {z.shape} and {stds_arr.size} stds"
        )
    return z * stds_arr + means_arr


#: Title and x-axis label of the two panels of :func:`draw_before_after`.
_BEFORE = ("before: each feature on its own scale", "activation value")
_AFTER = ("after: zero mean, unit variance", "normalized value")
#: The explorer's split (figure fractions): left of x = 0.508 only the left panel draws, and below
#: y = 0.895 (under the suptitle) to its right only the right panel.
_SPLIT = (0.508, 0.895)

#: Share of a histogram panel's height left free for the data; the legend sits above it.
_DATA_HEIGHT = 0.68


def _label(col: np.ndarray, c: int) -> str:
    mean = np.round(col.mean(), 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"feature {c + 1}: mean {mean:.2f}, std {col.std():.2f}"


def _hist_panel(
    ax: Axes,
    x: np.ndarray,
    bins: np.ndarray,
    title: str,
    xlabel: str,
    ymax: float | None,
) -> None:
    colors = COLORS["features"]
    densities = [np.histogram(x[:, c], bins=bins, density=True)[0] for c in range(x.shape[1])]
    for c, density in enumerate(densities):
        face = (*to_rgb(colors[c]), 0.15)
        ax.stairs(
            density,
            bins,
            fill=True,
            facecolor=face,
            edgecolor=colors[c],
            linewidth=1.8,
            label=_label(x[:, c], c),
        )
    ax.set_xlim(bins[0], bins[-1])
    if ymax is None:
        ymax = max(float(d.max()) for d in densities)
    ax.set_ylim(0.0, ymax / _DATA_HEIGHT)
    ax.set_title(title, y=1.0)  # where the automatic place is; given outright, it saves a layout pass
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=9.5, loc="upper left", handlelength=1.2, labelspacing=0.3)


def _no_layout_engine(fig: Figure) -> None:
    """No layout engine at all: savefig then renders the figure once instead of twice."""
    with rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
        fig.set_layout_engine(None)


def _fixed_boxes(suptitle: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Where :func:`draw_before_after` puts its two panels without a layout engine (figure fractions)."""
    top = 0.8 if suptitle else 0.9
    return (0.085, 0.15, 0.4, top - 0.15), (0.585, 0.15, 0.4, top - 0.15)


class _Pasted(Artist):
    """A block of pixels rendered once and pasted at its place in every picture that shows it.

    ``pixels(dpi)`` returns an RGBA array (top row first) and the pixel column of its left
    edge; the block sits on the bottom edge of the figure.
    """

    def __init__(self, pixels: Callable[[float], tuple[np.ndarray, int]]) -> None:
        super().__init__()
        self._pixels = pixels

    def draw(self, renderer: Any) -> None:
        rgba, left = self._pixels(renderer.dpi)
        gc = renderer.new_gc()
        renderer.draw_image(gc, left, 0, rgba[::-1])
        gc.restore()


def draw_before_after(
    fig: Figure,
    x: np.ndarray,
    *,
    bins_before: np.ndarray | None = None,
    bins_after: np.ndarray | None = None,
    ymax_before: float | None = None,
    ymax_after: float | None = None,
    suptitle: str | None = None,
    fixed_layout: bool = False,
) -> np.ndarray:
    """Histograms of each feature before (left) and after (right) batch normalization.

    The normalization is :func:`bnbook.scratch.batch_norm_forward` (no scale or
    shift, default epsilon). Each legend entry gives the feature's batch mean
    and standard deviation in that panel; the y-axis leaves room for the
    legend above the tallest bar.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        An empty figure; two axes are added to it.
    x : ndarray, shape (N, C)
        The batch, C <= 4 features.
    bins_before, bins_after : ndarray, optional
        Histogram bin edges of each panel; they also fix its x-axis. By
        default 60 bins over the data range and 36 bins over [-4.5, 4.5].
    ymax_before, ymax_after : float, optional
        The highest density the y-axis must hold, to fix it across figures;
        by default the tallest bar of this figure.
    suptitle : str, optional
        Figure title, best a sentence that states what the figure shows.
    fixed_layout : bool
        Place the panels at fixed positions instead of using the figure's
        layout engine: several times faster to render, for explorer frames.

    Returns
    -------
    ndarray, shape (N, C)
        The normalized batch.
    """
    x = np.asarray(x, dtype=np.float64)
    y, _ = batch_norm_forward(x)
    if bins_before is None:
        bins_before = np.linspace(x.min(), x.max(), 61)
    if bins_after is None:
        bins_after = np.linspace(-4.5, 4.5, 37)
    if fixed_layout:
        _no_layout_engine(fig)
        boxes = _fixed_boxes(bool(suptitle))
        ax_before, ax_after = fig.add_axes(boxes[0]), fig.add_axes(boxes[1])
    else:
        ax_before, ax_after = fig.subplots(1, 2)
    _hist_panel(ax_before, x, bins_before, *_BEFORE, ymax_before)
    _hist_panel(ax_after, y, bins_after, *_AFTER, ymax_after)
    if suptitle:
        fig.suptitle(suptitle)
    return y


def _frame_bins(x: np.ndarray) -> np.ndarray:
    """Bin edges that fit one frame's raw data: padded range, more bins for bigger batches."""
    lo, hi = float(x.min()), float(x.max())
    pad = 0.08 * (hi - lo)
    n_bins = int(np.clip(6.0 * np.sqrt(x.shape[0]), 24, 60))
    return np.linspace(lo - pad, hi + pad, n_bins + 1)


def explorer_features(z: np.ndarray, spread2: float, offset: float, batch_size: int) -> np.ndarray:
    """The raw batch of one frame of the chapter-2 explorer.

    Feature 2 gets standard deviation ``spread2``, every feature mean is
    shifted by ``offset``, and the first ``batch_size`` rows of the
    standard-normal draws ``z`` (shape (N_max, 3)) are used.
    """
    means = [m + offset for m in FEATURE_MEANS]
    return make_features(np.asarray(z)[:batch_size], means, [FEATURE_STDS[0], spread2, FEATURE_STDS[2]])


def make_normalize_describe(z: np.ndarray) -> Callable[..., str]:
    """The chapter-2 explorer's ``describe(spread2, offset, batch_size)``: what the frame shows, in words.

    It measures the frame's own batch (:func:`explorer_features`) before and
    after :func:`bnbook.scratch.batch_norm_forward`, the numbers the frame's
    legends show.
    """
    z = np.asarray(z, dtype=np.float64)

    def describe(spread2: float, offset: float, batch_size: int) -> str:
        x = explorer_features(z, spread2, offset, batch_size)
        y, _ = batch_norm_forward(x)

        def listed(values: np.ndarray, decimals: int) -> str:
            v = [f"{np.round(a, decimals) + 0.0:.{decimals}f}" for a in values]
            return f"{v[0]}, {v[1]} and {v[2]}"

        return (
            f"Before normalization the {batch_size} examples of the three features have means "
            f"{listed(x.mean(axis=0), 1)} and standard deviations {listed(x.std(axis=0), 2)}; after it, "
            f"means {listed(y.mean(axis=0), 2)} and standard deviations {listed(y.std(axis=0), 2)}."
        )

    return describe


def make_normalize_draw(
    z: np.ndarray,
    spreads: Sequence[float],
    offsets: Sequence[float],
    batch_sizes: Sequence[int],
) -> Callable[..., None]:
    """The draw function of the chapter-2 explorer, over precomputed draws.

    The left panel (raw features) gets its axes from each frame's own data,
    so that a narrow feature is never squashed into one bin; the right panel
    (normalized features) keeps fixed axes, because the normalized values do
    not depend on the spreads or the offset at all, only on which rows are used.
    For the same reason the right panel is rendered once per batch size and its
    pixels are pasted into every frame of that batch size: each frame is the
    picture :func:`draw_before_after` draws with ``fixed_layout=True``, pixel
    for pixel, at two thirds of the cost.

    Parameters
    ----------
    z : ndarray, shape (N_max, 3)
        Standard-normal draws, drawn once; a frame with batch size ``n`` uses
        the first ``n`` rows, so redrawing needs no random numbers.
    spreads, offsets, batch_sizes : sequence
        The slider values the explorer will offer (see below); the batch sizes
        fix the right panel's y-axis, one per batch size.

    Returns
    -------
    callable
        ``draw(fig, spread2, offset, batch_size)``: feature 2 gets standard
        deviation ``spread2``, every feature mean is shifted by ``offset``, and
        the first ``batch_size`` rows are drawn as histograms before and after
        normalization.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != 3:
        raise ValueError(f"expected z of shape (N, 3), got {z.shape}")
    if not all(2 <= n <= z.shape[0] for n in batch_sizes):
        raise ValueError(f"batch sizes must be in [2, {z.shape[0]}], got {list(batch_sizes)}")
    if not spreads or not offsets:
        raise ValueError("spreads and offsets must not be empty")

    def peak(x: np.ndarray, bins: np.ndarray) -> float:
        return max(float(np.histogram(x[:, c], bins=bins, density=True)[0].max()) for c in range(x.shape[1]))

    bins_after = np.linspace(-4.5, 4.5, 19)
    # The normalized values depend only on which rows are used, not on the means or spreads.
    ymax_after = {n: peak(batch_norm_forward(z[:n])[0], bins_after) for n in batch_sizes}
    # So the right panel is the same picture for every spread and offset of a batch size: it is
    # rendered once per batch size, on its own, and its pixels are pasted into each frame. The
    # left panel ends left of _SPLIT and the right one starts right of it, below the suptitle.
    pasted: dict[tuple, np.ndarray] = {}

    def right_panel(
        y: np.ndarray, batch_size: int, size: tuple[float, float], dpi: float
    ) -> tuple[np.ndarray, int]:
        key = (batch_size, size, dpi)
        if key not in pasted:
            fig = Figure(figsize=size, dpi=dpi)
            _no_layout_engine(fig)
            ax = fig.add_axes(_fixed_boxes(True)[1])
            _hist_panel(ax, y, bins_after, _AFTER[0], _AFTER[1], ymax_after.get(batch_size))
            canvas = FigureCanvasAgg(fig)
            canvas.draw()
            rgba = np.asarray(canvas.buffer_rgba())
            height, width = rgba.shape[:2]
            pasted[key] = rgba[
                int(round(height * (1.0 - _SPLIT[1]))) :, int(round(width * _SPLIT[0])) :
            ].copy()
        block = pasted[key]
        return block, int(round(size[0] * dpi * _SPLIT[0]))

    def draw(fig: Figure, spread2: float, offset: float, batch_size: int) -> None:
        x = explorer_features(z, spread2, offset, batch_size)
        y, _ = batch_norm_forward(x)
        _no_layout_engine(fig)
        ax_before = fig.add_axes(_fixed_boxes(True)[0])
        _hist_panel(ax_before, x, _frame_bins(x), _BEFORE[0], _BEFORE[1], None)
        size = tuple(float(v) for v in fig.get_size_inches())
        fig.add_artist(_Pasted(lambda dpi: right_panel(y, batch_size, size, dpi)))
        fig.suptitle(f"{batch_size} samples: whatever the scales, each feature ends at mean 0, std 1")

    return draw


def skewness(x: np.ndarray, axis: int = 0) -> np.ndarray:
    r"""The sample skewness :math:`E[(x-\mu)^3] / \sigma^3` (biased moments), in float64.

    Zero for a symmetric distribution; positive when the long tail is on the right.
    Standardization does not change it: it is invariant to shifting and to
    rescaling by a positive factor.
    """
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=axis, keepdims=True)
    return (xc**3).mean(axis=axis) / (xc**2).mean(axis=axis) ** 1.5


def draw_shape_kept(fig: Figure, x: np.ndarray, suptitle: str | None = None) -> np.ndarray:
    """One skewed feature before (left) and after (right) normalization, with a standard normal for reference.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        An empty figure; two axes are added to it.
    x : ndarray, shape (N,)
        Values of one feature over a batch.
    suptitle : str, optional

    Returns
    -------
    ndarray, shape (N,)
        The normalized values (:func:`bnbook.scratch.batch_norm_forward`).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = batch_norm_forward(x.reshape(-1, 1))[0].ravel()
    color = COLORS["features"][3]
    ax_before, ax_after = fig.subplots(1, 2)
    for ax, v, title, xlabel in [
        (ax_before, x, "before: the raw feature", "activation value"),
        (ax_after, y, "after: mean 0, std 1, same shape", "normalized value"),
    ]:
        ax.hist(
            v,
            bins=40,
            density=True,
            color=color,
            alpha=0.35,
            edgecolor=color,
            linewidth=1.2,
            label=f"mean {np.round(v.mean(), 2) + 0.0:.2f}, std {v.std():.2f}\nskewness {skewness(v):.2f}",
        )
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
    grid = np.linspace(-4.0, max(4.0, float(y.max())), 300)
    ax_after.plot(
        grid,
        np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi),
        color=COLORS["truth"],
        ls="--",
        lw=1.5,
        label="standard normal, for comparison",
    )
    for ax in (ax_before, ax_after):
        ax.set_ylim(0, ax.get_ylim()[1] * 1.6)  # room for the legend above the bars
        ax.legend(loc="upper right", fontsize=9.5)
    if suptitle:
        fig.suptitle(suptitle)
    return y


def one_pass_variance(x: np.ndarray, axis: int | tuple[int, ...] = 0) -> np.ndarray:
    r"""The one-pass shortcut :math:`E[x^2] - E[x]^2`, in the dtype of ``x``.

    Mathematically equal to the biased variance, numerically fragile: when the
    mean is large compared to the spread, the two terms are nearly equal and
    their difference loses most of its digits (catastrophic cancellation). It
    is kept for the comparison in chapter 2, never used to normalize.

    Parameters
    ----------
    x : ndarray
    axis : int or tuple of int
        Axes to reduce over.

    Returns
    -------
    ndarray
        The variance estimate; can be negative.
    """
    x = np.asarray(x)
    return (x * x).mean(axis=axis) - x.mean(axis=axis) ** 2


def variance_error_sweep(
    offsets: Sequence[float],
    rng: np.random.Generator,
    *,
    m: int = 1000,
    std: float = 1.0,
    trials: int = 20,
    dtype: type[np.floating] = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Relative error of the one-pass and two-pass variance against the mean offset.

    For each offset, ``trials`` batches of ``m`` values ``offset + std * z`` are
    drawn and stored in ``dtype``. Each batch's variance is computed in
    ``dtype`` with :func:`one_pass_variance` and with the two-pass formula of
    :func:`bnbook.scratch.batch_norm_forward`, and compared with the exact
    variance of the same stored values (computed in float64).

    Parameters
    ----------
    offsets : sequence of float
        Means of the data.
    rng : numpy.random.Generator
    m : int
        Batch size.
    std : float
        Standard deviation of the data.
    trials : int
        Batches per offset; the errors are averaged over them.
    dtype : numpy floating type
        Precision of the data and of the computation.

    Returns
    -------
    one_pass, two_pass : ndarray, shape (len(offsets),)
        Mean relative error ``|estimate - exact| / exact`` of each formula.
    """
    one = np.empty(len(offsets))
    two = np.empty(len(offsets))
    for k, offset in enumerate(offsets):
        x = (offset + std * rng.standard_normal((m, trials))).astype(dtype)
        exact = x.astype(np.float64).var(axis=0)
        _, cache = batch_norm_forward(x)  # columns act as channels: one variance per trial
        v_one = one_pass_variance(x, axis=0).astype(np.float64)
        v_two = cache.var.astype(np.float64)
        one[k] = np.mean(np.abs(v_one - exact) / exact)
        two[k] = np.mean(np.abs(v_two - exact) / exact)
    return one, two


def plot_variance_errors(
    ax: Axes,
    offsets: Sequence[float],
    one_pass: np.ndarray,
    two_pass: np.ndarray,
    dtype_name: str = "float32",
) -> None:
    """Log-log plot of the relative variance error of both formulas against the offset.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    offsets : sequence of float
    one_pass, two_pass : ndarray, shape (len(offsets),)
        From :func:`variance_error_sweep`.
    dtype_name : str
        Shown in the title.
    """
    ax.loglog(offsets, one_pass, "o-", color=COLORS["no_bn"], label=r"one pass: $E[x^2]-E[x]^2$")
    ax.loglog(offsets, two_pass, "s-", color=COLORS["bn"], label=r"two passes: $E[(x-\mu)^2]$ (bnbook)")
    ax.axhline(1.0, color=COLORS["truth"], linestyle=":", linewidth=1)
    ax.text(offsets[0], 1.3, "100 % error", fontsize=8.5, color=COLORS["truth"])
    ax.set_xlabel("mean of the data (offset), with std 1")
    ax.set_ylabel("relative error of the variance")
    ax.set_title(f"In {dtype_name}, the one-pass variance breaks down as the mean grows")
    ax.legend(loc="upper left")
