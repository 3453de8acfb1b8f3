"""The notebooks read in JupyterLab as the book reads in the browser (``tools/notebook_parity.py``).

The tool itself is tested on small notebooks written here; the last tests check every
committed chapter: hidden sources, link targets Lab can open, exercise numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import notebook_parity as parity  # noqa: E402

CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
GLOSSARY_MD = """# Glossary

```{glossary}
:sorted:

Batch statistics
  The mean and variance of a mini-batch.

Mini-batch
  A few examples at once.
```
"""


def _cell(kind: str, source: str, tags: list[str] | None = None, **meta: object) -> dict:
    cell: dict = {"cell_type": kind, "metadata": dict(meta), "source": source.splitlines(keepends=True)}
    if tags:
        cell["metadata"]["tags"] = tags
    if kind == "code":
        cell.update(execution_count=1, outputs=[{"output_type": "stream", "name": "stdout", "text": ["x\n"]}])
    return cell


def _book(tmp_path: Path, cells: list[dict], name: str = "03_third.ipynb") -> Path:
    (tmp_path / "glossary.md").write_text(GLOSSARY_MD, encoding="utf-8")
    chapters = tmp_path / "chapters"
    chapters.mkdir(exist_ok=True)
    other = {
        "cells": [_cell("markdown", "# 2. The Second Chapter\n")],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (chapters / "02_second.ipynb").write_text(json.dumps(other, indent=1), encoding="utf-8")
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}
    path = chapters / name
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def test_term_ids_are_sphinx_ids() -> None:
    assert parity.term_id("Batch statistics") == "term-Batch-statistics"
    assert parity.term_id("Mini-batch") == "term-Mini-batch"
    assert parity.term_id("ReLU") == "term-ReLU"


def test_hidden_cells_fold_in_lab(tmp_path: Path) -> None:
    path = _book(
        tmp_path,
        [
            _cell("code", "quiz = make_quiz(answer=0)", ["hide-input"]),
            _cell("code", "glue('x', 1)", ["remove-cell"]),
            _cell("code", "print(ex.describe())"),
            _cell("code", "x = 1  # teaching code stays open"),
        ],
    )
    parity.rewrite(path)
    quiz, glue, summary, teach = _cells(path)
    assert quiz["metadata"]["jupyter"] == {"source_hidden": True}
    assert glue["metadata"]["jupyter"] == {"source_hidden": True, "outputs_hidden": True}
    assert "remove-cell" in summary["metadata"]["tags"]
    assert summary["metadata"]["jupyter"] == {"source_hidden": True, "outputs_hidden": True}
    assert "jupyter" not in teach["metadata"]
    # code and outputs untouched
    assert "".join(quiz["source"]) == "quiz = make_quiz(answer=0)"
    assert summary["outputs"][0]["text"] == ["x\n"]


def test_links_become_files_lab_can_open(tmp_path: Path) -> None:
    text = (
        "As {doc}`Chapter 2 <02_second>` and {doc}`02_second` showed, the {term}`batch statistics`\n"
        "of a {term}`mini-batch <Mini-batch>` move.\n\n"
        "```python\nx = '{term}`not a link`'\n```\n"
    )
    path = _book(tmp_path, [_cell("markdown", text)])
    rw = parity.rewrite(path)
    assert not rw.problems
    out = "".join(_cells(path)[0]["source"])
    assert "[Chapter 2](02_second.ipynb)" in out
    assert "[2. The Second Chapter](02_second.ipynb)" in out  # no text: the target's heading
    assert "[batch statistics](../glossary.md#term-Batch-statistics)" in out
    assert "[mini-batch](../glossary.md#term-Mini-batch)" in out
    assert "x = '{term}`not a link`'" in out  # code is left alone


def test_rewrite_is_idempotent_and_keeps_the_file_format(tmp_path: Path) -> None:
    path = _book(
        tmp_path,
        [_cell("markdown", "See {term}`mini-batch <Mini-batch>`."), _cell("code", "y", ["hide-input"])],
    )
    parity.rewrite(path)
    once = path.read_bytes()
    assert not parity.rewrite(path).changes
    assert path.read_bytes() == once
    assert once.startswith(b'{\n "cells"') and once.endswith(b"}\n")
    assert parity.check(path, parity.glossary_terms(tmp_path / "glossary.md")) == []


def test_check_reports_what_lab_cannot_follow(tmp_path: Path) -> None:
    text = (
        "See [the next chapter](/files/02_second) and {term}`Mini-batch`.\n\n"
        "```{exercise}\n:label: ch3-ex2\n\nWhy?\n```\n"
    )
    path = _book(tmp_path, [_cell("markdown", text), _cell("code", "quiz = Quiz(answer=1)")])
    problems = "\n".join(parity.check(path, parity.glossary_terms(tmp_path / "glossary.md")))
    assert "/files/02_second" in problems
    assert "{term}" in problems
    assert "labelled 'ch3-ex2'" in problems  # the first exercise of chapter 3 is number 1
    assert "quiz answer key" in problems


def test_unknown_terms_are_reported_not_guessed(tmp_path: Path) -> None:
    path = _book(tmp_path, [_cell("markdown", "A {term}`widget`.")])
    rw = parity.rewrite(path)
    assert rw.problems == ["{term} 'widget' is not in the glossary"]
    assert "{term}`widget`" in "".join(_cells(path)[0]["source"])


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _book(tmp_path, [_cell("code", "x", ["remove-cell"])])
    assert parity.main(["--check", str(path)]) == 1
    assert parity.main([str(path)]) == 0
    assert parity.main(["--check", str(path)]) == 0


# --- the committed chapters --------------------------------------------------------------------
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_reads_in_lab_as_on_the_page(path: Path) -> None:
    """Fails until ``python tools/notebook_parity.py chapters/*.ipynb`` has been run on the chapter."""
    problems = parity.check(path, parity.glossary_terms(ROOT / "glossary.md"))
    assert not problems, "run tools/notebook_parity.py on it:\n" + "\n".join(problems[:20])
