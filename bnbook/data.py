"""Datasets the chapters use. Nothing is downloaded: the digits ship with scikit-learn."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Split", "load_digits"]


class Split(NamedTuple):
    """A train/test split as float32 features and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(test_fraction: float = 0.25, seed: int = 0, scale: bool = True) -> Split:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Parameters
    ----------
    test_fraction : float in (0, 1)
        Share of the images held out, chosen at random with ``seed``.
    seed : int
    scale : bool
        Divide pixel values (0..16) by 16, so features lie in [0, 1].

    Returns
    -------
    Split
        ``x_*`` of shape (n, 64), float32; ``y_*`` of shape (n,), int64.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    table = _digits_table()
    x = table[:, :-1].astype(np.float32)
    if scale:
        x /= 16.0
    y = table[:, -1].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train], x[test], y[test])


def _digits_table() -> np.ndarray:
    """The digits as scikit-learn ships them: shape (1797, 65), 64 pixel values and the label.

    Read from scikit-learn's ``datasets/data/digits.csv.gz`` as its own
    ``load_digits`` reads it, but without importing scikit-learn, whose import
    costs a kernel more than half a second of CPU time for a 400 KB file. Falls
    back to ``sklearn.datasets.load_digits`` when the file is not where it
    usually is.
    """
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                return np.loadtxt(f, delimiter=",")
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    return np.column_stack([bunch.data, bunch.target])
