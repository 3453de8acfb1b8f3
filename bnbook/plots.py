"""Shared figure style for the chapters (matplotlib; never imported by the numeric core)."""

from __future__ import annotations

import io

import matplotlib
import matplotlib.pyplot as plt

__all__ = [
    "COLORS",
    "MARKERS",
    "PALETTE",
    "SERIES",
    "band",
    "fig_to_png",
    "histogram",
    "series",
    "use_style",
]

#: Okabe and Ito's colour-blind-safe palette, in the order series take it.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]

#: One colour per role, used the same way in every chapter (all from :data:`PALETTE`).
COLORS = {
    "no_bn": "#D55E00",  # vermillion: the network without batch norm
    "bn": "#0072B2",  # blue: the network with batch norm
    "batch": "#8c8c8c",  # gray: a single mini-batch's statistic
    "ema": "#009E73",  # bluish green: the running (exponential moving) average
    "truth": "#222222",  # black: the population value
    "features": ["#0072B2", "#D55E00", "#009E73", "#CC79A7"],
}

#: Markers that go with :data:`PALETTE`, so overlapping series stay distinct in grey too.
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


#: One look per series across the book: every chapter draws a series with this colour, marker
#: and line style, so "no BN" is the same vermillion circle in chapter 1 and in chapter 8.
SERIES: dict[str, dict[str, str]] = {
    "no_bn": {"color": "#D55E00", "marker": "o", "linestyle": "-", "label": "no BN, default init"},
    "xavier": {"color": "#E69F00", "marker": "v", "linestyle": "--", "label": "no BN, Xavier/Kaiming init"},
    "lsuv": {"color": "#CC79A7", "marker": "D", "linestyle": "-.", "label": "no BN, data-dependent init"},
    "bn": {"color": "#0072B2", "marker": "s", "linestyle": "-", "label": "BN"},
    "bn_after": {"color": "#56B4E9", "marker": "^", "linestyle": "--", "label": "BN after the activation"},
    "noisy_bn": {"color": "#56B4E9", "marker": "P", "linestyle": ":", "label": "BN with added noise"},
    "renorm": {"color": "#009E73", "marker": "^", "linestyle": "-", "label": "batch renorm"},
    "ghost": {"color": "#56B4E9", "marker": "P", "linestyle": "--", "label": "ghost BN"},
    "gn": {"color": "#CC79A7", "marker": "X", "linestyle": "-", "label": "group norm"},
    "ln": {"color": "#E69F00", "marker": "v", "linestyle": "-", "label": "layer norm"},
    "frozen": {"color": "#000000", "marker": "D", "linestyle": ":", "label": "frozen BN statistics"},
    "in": {"color": "#8c8c8c", "marker": "<", "linestyle": ":", "label": "instance norm"},
    "bn_position": {"color": "#0072B2", "marker": ">", "linestyle": "--", "label": "BN per position"},
}


def series(name: str, **overrides) -> dict[str, str]:
    """Keyword arguments for ``ax.plot`` that draw series ``name`` in its book-wide look.

    >>> series("bn")["marker"]
    's'
    """
    if name not in SERIES:
        raise ValueError(f"unknown series {name!r}; known: {sorted(SERIES)}")
    return {**SERIES[name], **overrides}


def use_style() -> None:
    """Readable defaults: larger labels, light grid, no top/right spines, tight layout."""
    plt.rcParams.update(
        {
            "figure.figsize": (7.0, 3.6),
            "figure.dpi": 100,
            "savefig.dpi": 100,
            "figure.autolayout": False,
            "figure.constrained_layout.use": True,
            "font.size": 10.5,
            "axes.titlesize": 11.5,
            "axes.labelsize": 10.5,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "svg.hashsalt": "bnbook",
            "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
        }
    )


def band(ax, x, runs, color: str, label: str, marker: str | None = None, alpha: float = 0.2, **line_kw):
    """Plot the mean of ``runs`` (shape ``(seeds, len(x))``) with a min-max band over seeds.

    Returns the line. NaN entries (a run that diverged) are left out of the
    mean and the band at that point.
    """
    import numpy as np

    runs = np.asarray(runs, dtype=float)
    if runs.ndim != 2 or runs.shape[1] != len(x):
        raise ValueError(f"runs must have shape (seeds, {len(x)}), got {runs.shape}")
    import warnings

    with warnings.catch_warnings():  # a column where every run diverged stays NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, lo, hi = np.nanmean(runs, axis=0), np.nanmin(runs, axis=0), np.nanmax(runs, axis=0)
    (line,) = ax.plot(
        x, mean, color=color, label=label, marker=marker, markevery=max(1, len(x) // 8), **line_kw
    )
    ax.fill_between(x, lo, hi, color=color, alpha=alpha, linewidth=0)
    return line


def histogram(ax, edges, values=None, shares=None, y_max: float | None = None, **stairs_kw):
    """Draw a histogram as steps: the share of the values in each bin of ``edges`` (chapters 1 and 6).

    Give either the raw ``values`` or their precomputed per-bin ``shares``.
    Raw values outside ``[edges[0], edges[-1]]`` are counted in the first or
    last bin, so no tail is lost from the picture, and every bin's height is
    the share of *all* values that fall in it (the heights add up to 1), so
    samples of different sizes compare directly. With ``y_max`` the y axis
    stops there and a bin taller than ``y_max`` is cut at the top and
    labelled with its height.

    Parameters
    ----------
    ax : matplotlib Axes
    edges : array of float, shape (bins + 1,)
        Increasing bin edges.
    values : array of float, any shape, optional
    shares : array of float, shape (bins,), optional
    y_max : float, optional
    **stairs_kw
        Passed to ``ax.stairs`` (``color``, ``fill``, ``alpha``, ``label``, ``linestyle``, ...).

    Returns
    -------
    matplotlib.patches.StepPatch
        The drawn steps; their heights are the shares.
    """
    import numpy as np

    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges must be an increasing 1-d array of at least 2 values, got {edges!r}")
    if (values is None) == (shares is None):
        raise ValueError("give either values or shares, not both and not neither")
    if values is not None:
        flat = np.ravel(np.asarray(values, dtype=float))
        if flat.size == 0:
            raise ValueError("values holds nothing to count")
        shares = np.histogram(np.clip(flat, edges[0], edges[-1]), bins=edges)[0] / flat.size
    shares = np.asarray(shares, dtype=float)
    if shares.shape != (len(edges) - 1,):
        raise ValueError(f"shares must have shape ({len(edges) - 1},), got {shares.shape}")
    patch = ax.stairs(shares, edges, **stairs_kw)
    if y_max is not None:
        centres = (edges[:-1] + edges[1:]) / 2
        for c, h in zip(centres, shares, strict=True):
            if h > y_max:
                ax.annotate(
                    f"{h:.0%}",
                    (c, y_max),
                    xytext=(5, -12),
                    textcoords="offset points",
                    fontsize=8,
                    color=COLORS["truth"],
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                )
        ax.set_ylim(0, y_max)
    return patch


def fig_to_png(fig: matplotlib.figure.Figure, dpi: int = 72) -> bytes:
    """Render ``fig`` to PNG bytes without timestamps, so equal figures give equal bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
