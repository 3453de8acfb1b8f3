"""Tests of chapter 2's helpers (bnbook.demos.batch_statistics): the explorer's frames, described."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure

from bnbook.demos import batch_statistics as demo
from bnbook.scratch import batch_norm_forward


def test_explorer_features_shift_and_stretch_the_same_draws() -> None:
    z = np.random.default_rng(0).standard_normal((64, 3))
    x = demo.explorer_features(z, spread2=2.0, offset=10.0, batch_size=16)
    assert x.shape == (16, 3)
    np.testing.assert_allclose(x[:, 1], 2.0 * z[:16, 1] + demo.FEATURE_MEANS[1] + 10.0)
    y_small, _ = batch_norm_forward(demo.explorer_features(z, 0.3, 0.0, 16))
    y_big, _ = batch_norm_forward(x)
    np.testing.assert_allclose(y_small, y_big, atol=1e-3)  # the same normalized batch, up to epsilon


def test_describe_reads_the_frame_it_names() -> None:
    z = np.random.default_rng(1).standard_normal((64, 3))
    text = demo.make_normalize_describe(z)(spread2=8.0, offset=25.0, batch_size=64)
    x = demo.explorer_features(z, 8.0, 25.0, 64)
    assert "the 64 examples" in text
    assert f"{x[:, 1].std():.2f}" in text and f"{np.round(x[:, 0].mean(), 1) + 0.0:.1f}" in text
    assert text.endswith("standard deviations 1.00, 1.00 and 1.00.")


def test_normalize_draw_fills_a_figure() -> None:
    z = np.random.default_rng(2).standard_normal((64, 3))
    draw = demo.make_normalize_draw(z, [0.3, 2.0], [0.0, 10.0], [8, 64])
    fig = Figure(figsize=(8, 3.2))
    draw(fig, spread2=2.0, offset=10.0, batch_size=8)
    assert len(fig.axes) == 1 and len(fig.artists) == 1  # the left panel drawn, the right one pasted
    with pytest.raises(ValueError, match="batch sizes"):
        demo.make_normalize_draw(z, [1.0], [0.0], [128])


def test_explorer_frames_are_the_pictures_draw_before_after_draws() -> None:
    import io

    from PIL import Image

    def pixels(fig: Figure) -> np.ndarray:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return np.asarray(Image.open(buf).convert("RGB"))

    z = np.random.default_rng(3).standard_normal((512, 3))
    spreads, offsets, sizes = [0.3, 8.0], [0.0, 25.0], [8, 512]
    draw = demo.make_normalize_draw(z, spreads, offsets, sizes)
    bins_after = np.linspace(-4.5, 4.5, 19)
    for spread2, offset, n in [(0.3, 0.0, 8), (8.0, 25.0, 8), (8.0, 0.0, 512)]:  # the second pastes a panel
        frame = Figure(figsize=(8, 3.2))
        draw(frame, spread2=spread2, offset=offset, batch_size=n)
        x = demo.explorer_features(z, spread2, offset, n)
        ymax = max(
            np.histogram(y, bins=bins_after, density=True)[0].max() for y in batch_norm_forward(z[:n])[0].T
        )
        whole = Figure(figsize=(8, 3.2))
        demo.draw_before_after(
            whole,
            x,
            bins_before=demo._frame_bins(x),
            bins_after=bins_after,
            ymax_after=ymax,
            suptitle=f"{n} samples: whatever the scales, each feature ends at mean 0, std 1",
            fixed_layout=True,
        )
        np.testing.assert_array_equal(pixels(frame), pixels(whole))
