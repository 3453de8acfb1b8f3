"""The shortcuts that spare every chapter's kernel an import give what the imports gave."""

from __future__ import annotations

import numpy as np
from IPython.core.interactiveshell import InteractiveShell

from bnbook import data
from bnbook.report import glue


def _published(fn, *args) -> list[tuple[dict, dict]]:
    """The (data, metadata) of every display call that ``fn(*args)`` makes."""
    shell = InteractiveShell.instance()
    seen: list[tuple[dict, dict]] = []
    publish = shell.display_pub.publish
    shell.display_pub.publish = lambda data, metadata=None, **kw: seen.append((data, metadata or {}))
    try:
        fn(*args)
    finally:
        shell.display_pub.publish = publish
    return seen


def test_glue_writes_what_myst_nb_glue_writes() -> None:
    from myst_nb import glue as myst_glue

    for value in (0.488, 12, "about the same", [0.1, 0.2]):
        ours = _published(glue, "key", value)
        theirs = _published(myst_glue, "key", value, False)
        assert ours and ours == theirs


def test_digits_match_scikit_learn() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    table = data._digits_table()
    np.testing.assert_array_equal(table[:, :-1], bunch.data)
    np.testing.assert_array_equal(table[:, -1].astype(int), bunch.target)
