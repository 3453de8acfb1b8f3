"""Numbers for the prose: rounded to what matters before they are stored.

A full-precision float differs in its last bits from one CPU to another (and
between thread counts), so a stored output that carries all of its digits
does not reproduce on a reader's machine. Every number a chapter glues or
prints goes through :func:`sig` first; :func:`glue` does it for you.
"""

from __future__ import annotations

import ast
import json
import math
import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VERDICTS", "glue", "glued", "markdown_table", "sig", "verdict_word"]

#: The prefix of the output types under which ``myst_nb.glue`` stores a value in a notebook.
RECORD_PREFIX = "application/papermill.record/"


def sig(value: Any, digits: int = 3) -> Any:
    """Round ``value`` to ``digits`` significant digits.

    Floats (Python or NumPy, and 0-d tensors via ``float``) come back as Python
    floats; integers and bools unchanged; arrays, lists and tuples element by
    element (as lists or tuples, never arrays). Non-finite values pass through.

    >>> sig(0.4880847930908203)
    0.488
    >>> sig([1234.5, 0.000123456], 2)
    [1200.0, 0.00012]
    """
    if not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be a positive integer, got {digits!r}")
    if isinstance(value, (bool, np.bool_, numbers.Integral)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(sig(v, digits) for v in value)
    if isinstance(value, np.ndarray):
        return [sig(v, digits) for v in value.tolist()] if value.ndim else sig(value.item(), digits)
    try:
        x = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"sig rounds numbers, got {type(value).__name__}") from err
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def glue(name: str, value: Any, digits: int = 3) -> Any:
    """``myst_nb.glue(name, sig(value, digits), display=False)``; returns the rounded value.

    Strings and integers are glued unchanged. Use ``{glue:text}`name``` in
    the prose, with a format such as ``:.2f`` when the trailing zeros matter.

    The output is the one ``myst_nb.glue`` writes (its four lines are repeated
    here): importing ``myst_nb.ext.glue`` pulls in ``nbformat`` and
    ``jsonschema``, which cost a kernel about a second of CPU time, once per
    chapter, for a display call. ``tests/test_quick_imports.py`` checks that both
    write the same output.
    """
    from IPython.core.formatters import format_display_data
    from IPython.display import display

    stored = value if isinstance(value, str) else sig(value, digits)
    bundle, metadata = format_display_data(stored)
    metadata["scrapbook"] = {"name": name, "mime_prefix": RECORD_PREFIX}
    display({RECORD_PREFIX + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)
    return stored


def glued(notebook: str | Path, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The values a notebook glued, read back from its stored outputs.

    ``myst_nb.glue`` stores each value as a ``display_data`` output whose
    ``metadata.scrapbook.name`` is the key and whose data hold the value under
    ``application/papermill.record/<mime type>``. This reads the JSON form if
    there is one, else the ``text/plain`` form (a Python literal, as
    :func:`glue` stores numbers and strings). When a key is glued twice, the
    later output wins, as in the rendered book.

    Parameters
    ----------
    notebook : str or Path
        An executed ``.ipynb`` file.
    keys : iterable of str, optional
        The keys wanted. Every one must be there, else ``KeyError`` names the
        notebook and all the missing keys; the result then holds exactly these.

    Returns
    -------
    dict
        Key to value (numbers, strings, lists; a text form that is not a Python
        literal comes back as the text).

    Used by the reproductions appendix, which quotes numbers measured in the chapters.
    """
    path = Path(notebook)
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a notebook: {err}") from err
    values: dict[str, Any] = {}
    for cell in cells:
        for out in cell.get("outputs", ()):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            data = out.get("data", {})
            if name is None:
                continue
            if RECORD_PREFIX + "application/json" in data:
                values[name] = data[RECORD_PREFIX + "application/json"]
            elif RECORD_PREFIX + "text/plain" in data:
                text = data[RECORD_PREFIX + "text/plain"]
                text = "".join(text) if isinstance(text, list) else text
                try:
                    values[name] = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    values[name] = text
    if keys is None:
        return values
    keys = list(keys)
    missing = [k for k in keys if k not in values]
    if missing:
        raise KeyError(f"{path.name} has no glued value for {', '.join(map(repr, missing))}")
    return {k: values[k] for k in keys}


def markdown_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """A Markdown (pipe) table: one header row, then one row per item of ``rows``.

    Cells are written with ``str``; a ``|`` inside a cell is escaped and line breaks become spaces.
    Every row must have as many cells as the header (else ``ValueError``).

    >>> print(markdown_table(["a", "b"], [[1, "x|y"]]))
    | a | b |
    |---|---|
    | 1 | x\\|y |
    """
    header = [str(h) for h in header]

    def cell(value: Any) -> str:
        return " ".join(str(value).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells, the header {len(header)}")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


#: What :func:`verdict_word` returns: the first side of a comparison against the second.
VERDICTS = ("better", "worse", "about the same")


def verdict_word(word: Any, words: dict[str, str], *, flip: bool = False, where: str = "") -> str:
    """A chapter's verdict word, read as ``"better"``, ``"worse"`` or ``"about the same"``.

    Chapters word their verdicts in their own terms ("BN faster", "no BN better", "higher"). ``words``
    maps each word a chapter may use to one of :data:`VERDICTS`, for the first side of its difference
    against the second. A word that is not in ``words`` raises ``ValueError``, so a verdict reworded in
    a chapter stops the reader instead of silently counting as something else.

    Parameters
    ----------
    word : str
        The glued verdict.
    words : dict
        The chapter's words, each mapped to one of :data:`VERDICTS`.
    flip : bool
        Swap "better" and "worse": for a quantity where the chapter's "higher" is the worse side
        (a loss, an error, a smoothness constant).
    where : str
        Names the value in the error message (chapter and key).

    >>> verdict_word("BN faster", {"BN faster": "better", "BN slower": "worse"})
    'better'
    >>> verdict_word("higher", {"higher": "better", "lower": "worse"}, flip=True)
    'worse'
    """
    bad = sorted({v for v in words.values() if v not in VERDICTS})
    if bad:
        raise ValueError(f"verdict words must map to {VERDICTS}, got {bad}")
    if not isinstance(word, str) or word not in words:
        known = ", ".join(map(repr, words))
        raise ValueError(f"{where or 'verdict'}: unknown verdict word {word!r} (known: {known})")
    said = words[word]
    if flip and said != "about the same":
        said = "worse" if said == "better" else "better"
    return said
