"""Shared figure style for the chapters (matplotlib; never imported by the numeric core)."""

from __future__ import annotations

import io

import matplotlib
import matplotlib.pyplot as plt

__all__ = ["COLORS", "fig_to_png", "use_style"]

#: One colour per role, used the same way in every chapter.
COLORS = {
    "no_bn": "#d95f02",  # orange: the network without batch norm
    "bn": "#1b9e77",  # green: the network with batch norm
    "batch": "#9a9a9a",  # gray: a single mini-batch's statistic
    "ema": "#1f4e9c",  # blue: the running (exponential moving) average
    "truth": "#222222",  # black: the population value
    "features": ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"],
}


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
        }
    )


def fig_to_png(fig: matplotlib.figure.Figure, dpi: int = 72) -> bytes:
    """Render ``fig`` to PNG bytes without timestamps, so equal figures give equal bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
