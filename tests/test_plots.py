"""Tests of the shared figure helpers in bnbook.plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from bnbook import plots


def test_histogram_counts_shares_and_keeps_the_tails() -> None:
    fig, ax = plt.subplots()
    edges = np.array([-1.0, 0.0, 1.0, 2.0])
    values = np.array([-5.0, -0.5, 0.5, 0.7, 1.5, 9.0, 1.2, 0.1])  # -5 and 9 lie outside the edges
    patch = plots.histogram(ax, edges, values=values)
    np.testing.assert_allclose(patch.get_data().values, [2 / 8, 3 / 8, 3 / 8])
    assert patch.get_data().values.sum() == pytest.approx(1.0)
    plt.close(fig)


def test_histogram_cuts_tall_bins_and_labels_them() -> None:
    fig, ax = plt.subplots()
    edges = np.linspace(0, 3, 4)
    plots.histogram(ax, edges, shares=np.array([0.1, 0.7, 0.2]), y_max=0.45, fill=True, label="x")
    assert ax.get_ylim() == (0, 0.45)
    assert [t.get_text() for t in ax.texts] == ["70%"]
    plt.close(fig)


def test_histogram_bad_input() -> None:
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="either values or shares"):
        plots.histogram(ax, [0, 1], values=[0.5], shares=[1.0])
    with pytest.raises(ValueError, match="increasing"):
        plots.histogram(ax, [1, 0], values=[0.5])
    with pytest.raises(ValueError, match="shape"):
        plots.histogram(ax, [0, 1, 2], shares=[1.0])
    plt.close(fig)
