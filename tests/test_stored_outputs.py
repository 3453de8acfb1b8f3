"""The committed notebooks store numbers rounded to what they mean, so they reproduce on any machine.

A float's last digits differ between CPUs (AVX2, AVX-512 and AMX kernels sum in
different orders) and between thread counts. A stored output that carries
them fails strict nbval on a reader's machine. These tests read every
committed chapter and fail on:

* a glue record (``myst_nb.glue``) holding a float with more than
  ``GLUE_DIGITS`` significant digits: glue through ``bnbook.report.glue``;
* printed text (stdout, or a cell's plain-text result) with a float of more
  than ``PRINT_DIGITS`` significant digits;
* a printed round-off-level number (nonzero, below ``ROUNDOFF`` in magnitude)
  that is not written as a bound (``< 1e-12``). A glued tiny number is left
  alone: the prose glues closed forms such as ``0.9 ** 300``; a measured
  round-off error is printed.

Outputs of cells tagged ``nbval-ignore-output`` (timings, progress bars) and
HTML, images and widgets are not read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))
GLUE_DIGITS = 4
PRINT_DIGITS = 5
ROUNDOFF = 1e-12

#: A decimal or scientific float literal that is not part of a longer token (a version, an id, a path).
FLOAT = re.compile(
    r"(?<![\w.])(?P<bound>[<≤]\s*)?[-+]?(?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)(?![\w.])"
)


def significant_digits(literal: str) -> int:
    """How many significant digits a float literal carries (``0.0123`` -> 3, ``1.50e-3`` -> 3)."""
    mantissa = re.split(r"[eE]", literal)[0].replace(".", "").lstrip("0")
    return len(mantissa)


def floats_in(text: str) -> list[tuple[str, float, bool]]:
    """Every float literal in ``text``: (literal, value, written as a bound), integers left out."""
    found = []
    for match in FLOAT.finditer(text):
        literal = match.group("num")
        if not re.search(r"[.eE]", literal):
            continue  # an integer is exact
        found.append((literal, float(literal), match.group("bound") is not None))
    return found


def _texts(nb: dict) -> list[tuple[str, str, str]]:
    """(where, kind, text) for every glue record and printed text of the notebook."""
    out = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or "nbval-ignore-output" in cell.get("metadata", {}).get("tags", []):
            continue
        for output in cell.get("outputs", []):
            where = f"cell {index}"
            scrap = output.get("metadata", {}).get("scrapbook")
            if scrap:
                text = output["data"].get(scrap["mime_prefix"] + "text/plain", "")
                out.append((f"{where}, glue {scrap['name']!r}", "glue", text))
            elif output["output_type"] == "stream":
                out.append((where, "print", output["text"]))
            elif output["output_type"] in ("execute_result", "display_data"):
                out.append((where, "print", output.get("data", {}).get("text/plain", "")))
    return out


def _problems(nb: dict) -> list[str]:
    problems = []
    for where, kind, text in _texts(nb):
        text = "".join(text) if isinstance(text, list) else text
        limit = GLUE_DIGITS if kind == "glue" else PRINT_DIGITS
        for literal, value, bound in floats_in(text):
            if significant_digits(literal) > limit:
                problems.append(f"{where}: {literal} has more than {limit} significant digits")
            elif kind == "print" and value != 0 and abs(value) < ROUNDOFF and not bound:
                problems.append(f"{where}: {literal} is round-off; print a bound such as '< 1e-12'")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_numbers_are_rounded(path: Path) -> None:
    problems = _problems(json.loads(path.read_text()))
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems[:30])


# --- the checker itself ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("literal", "digits"),
    [("0.4880847930908203", 16), ("0.488", 3), ("0.0123", 3), ("1.50e-3", 3), ("12.5", 3), ("8e-17", 1)],
)
def test_significant_digits(literal: str, digits: int) -> None:
    assert significant_digits(literal) == digits


def test_checker_flags_what_does_not_reproduce() -> None:
    def nb(outputs):
        return {"cells": [{"cell_type": "code", "metadata": {}, "outputs": outputs}]}

    glue = {
        "output_type": "display_data",
        "data": {"application/papermill.record/text/plain": "0.4880847930908203"},
        "metadata": {"scrapbook": {"mime_prefix": "application/papermill.record/", "name": "acc"}},
    }
    assert _problems(nb([glue])) == [
        "cell 0, glue 'acc': 0.4880847930908203 has more than 4 significant digits"
    ]
    glue["data"]["application/papermill.record/text/plain"] = "0.488"
    assert _problems(nb([glue])) == []
    printed = {"output_type": "stream", "name": "stdout", "text": "max error 8e-17, torch 2.13.0\n"}
    assert len(_problems(nb([printed]))) == 1
    printed["text"] = "max error < 1e-12, step 3, version 2.13.0, accuracy 0.967\n"
    assert _problems(nb([printed])) == []
    ignored = {"cell_type": "code", "metadata": {"tags": ["nbval-ignore-output"]}, "outputs": [glue | {}]}
    glue["data"]["application/papermill.record/text/plain"] = "0.4880847930908203"
    assert _problems({"cells": [ignored]}) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_figure_has_alt_text(path: Path) -> None:
    """A cell that stores a picture says in its metadata what the picture shows (``mystnb.image.alt``)."""
    nb = json.loads(path.read_text())
    missing = []
    for index, cell in enumerate(nb["cells"]):
        images = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        alt = cell.get("metadata", {}).get("mystnb", {}).get("image", {}).get("alt", "")
        if images and len(alt.split()) < 4:
            missing.append(index)
    assert not missing, f"{path.name}: figures without alt text in cells {missing}"


#: A path on the machine that ran the notebook: a reader's run would print another one.
MACHINE_PATH = re.compile(r"(/tmp/|/root/|/home/|/work/|site-packages)")


def _stream_problems(nb: dict) -> list[str]:
    """Stored stderr (a warning is a cause to fix, not an output) and machine paths in any text output."""
    problems = []
    for index, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                problems.append(f"cell {index}: stderr {''.join(output['text'])[:120]!r}")
            text = output.get("text") or output.get("data", {}).get("text/plain", "")
            found = MACHINE_PATH.search("".join(text) if isinstance(text, list) else text)
            if found:
                problems.append(f"cell {index}: a machine path ({found.group(0)}) in the output")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_stored_stderr_or_machine_paths(path: Path) -> None:
    problems = _stream_problems(json.loads(path.read_text()))
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems[:10])


def test_stream_checker_flags_stderr_and_paths() -> None:
    def nb(output: dict) -> dict:
        return {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [output]}]}

    warning = {"output_type": "stream", "name": "stderr", "text": "UserWarning: something\n"}
    path = {"output_type": "stream", "name": "stdout", "text": "built in /tmp/abc/x.so\n"}
    clean = {"output_type": "stream", "name": "stdout", "text": "accuracy 0.97 after 300 steps\n"}
    assert len(_stream_problems(nb(warning))) == 1
    assert len(_stream_problems(nb(path))) == 1
    assert _stream_problems(nb(clean)) == []
