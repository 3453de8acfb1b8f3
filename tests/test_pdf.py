"""The whole book as one PDF (``make pdf``, made by ``tools/make_pdf.py``).

Reads ``_build/pdf/bnbook.pdf`` (or ``$BNBOOK_PDF``) with pypdf and checks it
against the sources, not against the script that made it:

* every page of ``_toc.yml`` is there, in order: each title (a notebook's
  ``# N. Title`` heading, a Markdown page's first heading) is a bookmark of
  the PDF, in ``_toc.yml`` order, and its text is on the page the bookmark
  points to;
* there are at least as many pages as the book has pages of its own, plus a
  title page and the contents;
* no raw TeX is left in the text (the math was typeset);
* it holds at least as many images as the chapter notebooks have figures;
* explorers carry their caption, and the quiz's answers are printed.

``make pdf`` is not part of ``make test`` (it takes minutes); these tests skip,
saying why, when the PDF has not been built.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PDF = Path(os.environ.get("BNBOOK_PDF") or ROOT / "_build" / "pdf" / "bnbook.pdf")
#: TeX that must never reach the reader: typeset math leaves none of it in the text.
RAW_TEX = re.compile(r"\\frac|\$\$|\\\(|\\\)|\\\[|\\(?:mathbf|mathrm|sqrt|hat|sum|epsilon|sigma|gamma)\b")
#: Cells whose outputs the book does not show.
HIDDEN_OUTPUT_TAGS = {"remove-cell", "remove-output"}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
#: The caption that ``_static/bnbook.css`` prints under each explorer.
EXPLORER_CAPTION = "sliders change these values"


# --- the sources -------------------------------------------------------------------------
def toc_files() -> list[str]:
    """Every page of the book, in ``_toc.yml`` order (the root page first)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [str(toc["root"])]
    for part in toc.get("parts", []):
        files += [str(c["file"]) for c in part.get("chapters", [])]
    files += [str(c["file"]) for c in toc.get("chapters", [])]
    return files


def _notebook(file: str) -> dict[str, Any] | None:
    path = ROOT / f"{file}.ipynb"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def title_of(file: str) -> str:
    """The page's first ``# `` heading: a notebook's first Markdown cell, or the Markdown file."""
    nb = _notebook(file)
    if nb is not None:
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    else:
        text = (ROOT / f"{file}.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    raise AssertionError(f"{file} has no '# ' title")


def _outputs(nb: dict[str, Any]) -> list[dict[str, Any]]:
    shown = []
    for cell in nb["cells"]:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if cell["cell_type"] == "code" and not tags & HIDDEN_OUTPUT_TAGS:
            shown += cell.get("outputs", [])
    return shown


def figures_in_book() -> int:
    """Image outputs the book shows, over the chapter notebooks of ``_toc.yml``."""
    n = 0
    for file in toc_files():
        nb = _notebook(file)
        if nb is not None:
            n += sum(any(t in out.get("data", {}) for t in IMAGE_TYPES) for out in _outputs(nb))
    return n


def _html_outputs_with(marker: str) -> int:
    n = 0
    for file in toc_files():
        nb = _notebook(file)
        if nb is not None:
            for out in _outputs(nb):
                n += marker in "".join(out.get("data", {}).get("text/html", []))
    return n


# --- the PDF ---------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _reader() -> Any:
    if not PDF.is_file():
        pytest.skip(f"no PDF at {PDF}: run `make pdf` (or set BNBOOK_PDF)")
    pypdf = pytest.importorskip("pypdf", reason="pypdf is not installed (make dev)")
    return pypdf.PdfReader(str(PDF))


@lru_cache(maxsize=1)
def _texts() -> list[str]:
    return [page.extract_text() or "" for page in _reader().pages]


def _squash(text: str) -> str:
    """Without white space, lower case: extracted text loses or adds spaces at line breaks."""
    return "".join(text.split()).lower()


def _outline() -> list[tuple[str, int]]:
    """(title, 0-based page) of every bookmark, depth first."""
    reader = _reader()
    found: list[tuple[str, int]] = []

    def walk(items: Any) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
            else:
                found.append((str(item.title), reader.get_destination_page_number(item)))

    walk(reader.outline)
    return found


def _images_in(obj: Any, seen: set[tuple[int, int]]) -> int:
    """Distinct image XObjects under a page's (or form's) resources, forms followed."""
    resources = obj.get("/Resources")
    resources = resources.get_object() if resources is not None else None
    xobjects = resources.get("/XObject") if resources is not None else None
    if xobjects is None:
        return 0
    n = 0
    for ref in xobjects.get_object().values():
        key = (ref.idnum, ref.generation) if hasattr(ref, "idnum") else (id(ref), 0)
        if key in seen:
            continue
        seen.add(key)
        x = ref.get_object()
        if x.get("/Subtype") == "/Image":
            n += 1
        elif x.get("/Subtype") == "/Form":
            n += _images_in(x, seen)
    return n


# --- the tests -----------------------------------------------------------------------------------
def test_every_page_of_the_book_is_there_in_order() -> None:
    outline = _outline()
    assert outline, f"{PDF} has no bookmarks (outline)"
    texts = _texts()
    problems, start = [], 0
    for file in toc_files():
        title = title_of(file)
        want = _squash(title)
        hit = next((k for k in range(start, len(outline)) if _squash(outline[k][0]).startswith(want)), None)
        if hit is None:
            later = any(_squash(t).startswith(want) for t, _ in outline[:start])
            problems.append(f"{file}: {title!r} is {'out of order' if later else 'not a bookmark'}")
            continue
        page = outline[hit][1]
        if want not in _squash(texts[page]):
            problems.append(f"{file}: {title!r} is not on page {page + 1}, where its bookmark points")
        start = hit + 1
    assert not problems, "\n".join(problems)


def test_page_count() -> None:
    pages = len(_reader().pages)
    book = len(toc_files())
    # each page of the book starts a new sheet, after a title page and the contents
    assert pages >= book + 2, f"{pages} pages for {book} pages of the book"
    assert pages < 2000, f"{pages} pages: something printed far too large"


def test_math_is_typeset() -> None:
    raw = []
    for number, text in enumerate(_texts(), start=1):
        raw += [
            f"page {number}: {m.group(0)!r} in {text[max(0, m.start() - 40) : m.end() + 40]!r}"
            for m in RAW_TEX.finditer(text)
        ]
    assert not raw, "raw TeX in the PDF's text:\n" + "\n".join(raw[:20])


def test_every_figure_is_there() -> None:
    seen: set[tuple[int, int]] = set()
    images = sum(_images_in(page, seen) for page in _reader().pages)
    figures = figures_in_book()
    assert figures > 0, "the chapter notebooks show no figures: wrong _toc.yml?"
    assert images >= figures, f"{PDF} holds {images} images; the chapters show {figures} figures"


def test_explorers_and_quiz_are_printed() -> None:
    text = _squash(" ".join(_texts()))
    explorers = _html_outputs_with('class="bnbook-explorer"')
    captions = text.count(_squash(EXPLORER_CAPTION))
    assert captions >= explorers, f"{captions} explorer captions for {explorers} explorers"
    quizzes = _html_outputs_with('class="bnbook-quiz"')
    if quizzes:
        assert _squash("Answers to the quiz") in text, "the quiz's answers are not printed"
        assert text.count(_squash("Answer:")) >= 1


def test_links_stay_in_the_pdf() -> None:
    """Links between the book's pages point inside the PDF, not at the server it was printed from."""
    local = re.compile(r"^https?://(?:127\.0\.0\.1|localhost)[:/]", re.IGNORECASE)
    stray = []
    for number, page in enumerate(_reader().pages, start=1):
        for annot in page.get("/Annots") or []:
            action = annot.get_object().get("/A")
            uri = str(action.get("/URI", "")) if action is not None else ""
            if local.match(uri):
                stray.append(f"page {number}: {uri}")
    assert not stray, "links to the local server the PDF was printed from:\n" + "\n".join(stray[:20])
