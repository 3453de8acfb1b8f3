"""The whole book as one PDF (``make pdf``, made by ``tools/make_pdf.py``).

Reads ``_build/pdf/bnbook.pdf`` (or ``$BNBOOK_PDF``) with pypdf and checks it
against the sources, not against the script that made it:

* every page of ``_toc.yml`` is there, in order: each title (a notebook's
  ``# N. Title`` heading, a Markdown page's first heading) is a top-level
  bookmark of the PDF, in ``_toc.yml`` order, and its text is on the page the
  bookmark points to; the bookmarks under it are its sections;
* the bookmarks read as the headings do: no title twice over
  ("NotationNotation"), no words run together at a line break
  ("BatchNormalization");
* there are at least as many pages as the book has pages of its own, plus a
  title page and the contents;
* no raw TeX is left in the text (the math was typeset);
* it holds at least as many images as the chapter notebooks have figures, plus
  the frames the explorers print;
* no code frame is cut from its code: no grey frame (or a piece of one) holds
  no text, and no frame at the foot of a page holds less than two lines of it
  with the rest on the next page (read from the pages' drawing operators);
* cells hidden on the page stay hidden: no "Show code cell source" lines, no
  source of a ``hide-input`` or ``remove-input`` cell, and no page left
  almost blank in the middle of a chapter;
* each explorer prints as a strip: its note and the slider values of every
  frame it prints (its ``data-print-frames``, or the default rule of
  ``bnbook.widgets._explorer.default_print_frames``), in order;
* wording for the screen stays off paper ("Show the answer", "Enter checks
  it", "Swipe sideways"), and the quiz's answers are in a key after it;
* when the HTML book is built, it carries the PDF it links to.

``make pdf`` is not part of ``make test`` (it takes minutes); these tests skip,
saying why, when the PDF has not been built.
"""

from __future__ import annotations

import html
import json
import os
import re
import unicodedata
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PDF = Path(os.environ.get("BNBOOK_PDF") or ROOT / "_build" / "pdf" / "bnbook.pdf")
#: The HTML book that links to the PDF (``make book``; ``make pdf`` copies the PDF into it).
SITE = ROOT / "_build" / "html"
#: TeX that must never reach the reader: typeset math leaves none of it in the text.
RAW_TEX = re.compile(r"\\frac|\$\$|\\\(|\\\)|\\\[|\\(?:mathbf|mathrm|sqrt|hat|sum|epsilon|sigma|gamma)\b")
#: Cells whose outputs the book does not show.
HIDDEN_OUTPUT_TAGS = {"remove-cell", "remove-output"}
#: Cells whose source the book does not show (folded or removed).
HIDDEN_INPUT_TAGS = {"remove-cell", "remove-input", "hide-input", "hide-cell"}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
#: The note that ``_static/bnbook.js`` prints over each explorer's strip of frames.
EXPLORER_NOTE = "pictures of this explorer"
#: Words for the screen that have no business on paper.
SCREEN_ONLY = (
    "Show code cell source",
    "Hide code cell source",
    "Show code cell outputs",
    "Hide code cell outputs",
    "Show the answer",
    "Enter checks it",
    "Run this cell to make the sliders live",
    "Swipe sideways",
)


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


def _markdown(file: str) -> str:
    """The page's Markdown: a notebook's Markdown cells, or the Markdown file."""
    nb = _notebook(file)
    if nb is not None:
        return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    text = (ROOT / f"{file}.md").read_text(encoding="utf-8")
    return re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.DOTALL)  # front matter


def _headings(file: str) -> list[tuple[int, str]]:
    """(level, text) of the page's Markdown headings, outside code fences."""
    found, fence = [], False
    for line in _markdown(file).splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        elif not fence and (m := re.match(r"(#{1,6}) (.+)", line)):
            found.append((len(m.group(1)), m.group(2).strip()))
    return found


def title_of(file: str) -> str:
    """The page's first ``# `` heading: a notebook's first Markdown cell, or the Markdown file."""
    for level, text in _headings(file):
        if level == 1:
            return text
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


def _html_outputs_with(marker: str) -> list[str]:
    found = []
    for file in toc_files():
        nb = _notebook(file)
        if nb is not None:
            for out in _outputs(nb):
                page = "".join(out.get("data", {}).get("text/html", []))
                if marker in page:
                    found.append(page)
    return found


def _script_list(page: str, name: str) -> list[list[str]] | None:
    m = re.search(rf"var {name}=(\[.*?\]\]);", page)
    return json.loads(m.group(1)) if m else None


def explorers_in_book() -> list[dict[str, Any]]:
    """What each stored explorer must print: its frames' captions in order, and how many of how many."""
    from bnbook.widgets._explorer import default_print_frames

    specs = []
    for page in _html_outputs_with('class="bnbook-explorer"'):
        names = [html.unescape(n).strip() for n in re.findall(r'class="bnx-name">([^<]*)<', page)]
        starts = [int(v) for v in re.findall(r'class="bnx-slider"[^>]*?value="(\d+)"', page)]
        shown = _script_list(page, "shown") or []
        spoken = _script_list(page, "spoken") or shown
        shape = [len(v) for v in shown]
        assert len(names) == len(starts) == len(shape) > 0, "an explorer whose sliders this test cannot read"
        named = re.search(r'data-print-frames="([^"]*)"', page)
        if named:
            picks = json.loads(html.unescape(named.group(1)))
        else:  # stored before explorers named their printed frames: the default rule
            picks = [list(i) for i in default_print_frames(shape, starts)]
        varies = [any(p[d] != picks[0][d] for p in picks) for d in range(len(shape))]
        if not any(varies):
            varies = [True] * len(shape)

        # the spoken value carries the unit ("250 steps"), as bnbook.js prints it
        values = [
            [say if say.startswith(show) else show for say, show in zip(says, shows, strict=True)]
            for says, shows in zip(spoken, shown, strict=True)
        ]

        total = 1
        for n in shape:
            total *= n
        specs.append(
            {
                "id": re.search(r'id="([^"]+)"', page).group(1),
                "frames": len(picks),
                "total": total,
                "captions": [
                    " ".join(f"{names[d]} = {values[d][p[d]]}" for d in range(len(shape)) if varies[d])
                    for p in picks
                ],
            }
        )
    return specs


def hidden_sources() -> list[tuple[str, str]]:
    """(file, source) of the code cells whose source the book hides, when it shows nowhere else."""
    found = []
    for file in toc_files():
        nb = _notebook(file)
        if nb is None:
            continue
        visible = _squash(
            " ".join(
                "".join(c["source"])
                for c in nb["cells"]
                if c["cell_type"] == "markdown" or not set(c["metadata"].get("tags", [])) & HIDDEN_INPUT_TAGS
            )
        )
        for cell in nb["cells"]:
            source = "".join(cell["source"]).strip()
            tags = set(cell.get("metadata", {}).get("tags", []))
            if cell["cell_type"] == "code" and tags & HIDDEN_INPUT_TAGS and len(_squash(source)) >= 12:
                if _squash(source) not in visible:
                    found.append((file, source))
    return found


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
    """Without white space, lower case, ligatures split ("ﬀ" as "ff"): extracted text loses or adds
    spaces at line breaks, and keeps the font's ligatures."""
    return "".join(unicodedata.normalize("NFKC", text).split()).lower()


@lru_cache(maxsize=1)
def _outline() -> list[tuple[int, str, int]]:
    """(depth, title, 0-based page) of every bookmark, depth first; depth 0 is the top level."""
    reader = _reader()
    found: list[tuple[int, str, int]] = []

    def walk(items: Any, depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
            else:
                found.append((depth, str(item.title), reader.get_destination_page_number(item)))

    walk(reader.outline, 0)
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


# --- what a page draws: filled boxes, text and pictures, from its operators ------------------------
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in points, y up


def _mul(a: list[float], b: list[float]) -> list[float]:
    return [
        a[0] * b[0] + a[1] * b[2],
        a[0] * b[1] + a[1] * b[3],
        a[2] * b[0] + a[3] * b[2],
        a[2] * b[1] + a[3] * b[3],
        a[4] * b[0] + a[5] * b[2] + b[4],
        a[4] * b[1] + a[5] * b[3] + b[5],
    ]


def _at(m: list[float], x: float, y: float) -> tuple[float, float]:
    return (m[0] * x + m[2] * y + m[4], m[1] * x + m[3] * y + m[5])


def _bbox(points: list[tuple[float, float]]) -> Box:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def _meet(a: Box | None, b: Box) -> Box:
    return b if a is None else (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


@cache
def _drawn(number: int) -> dict[str, list[Any]]:
    """Page ``number``'s filled areas (visible part, colour, whole area), text origins and pictures.

    A box that a page break cuts is drawn whole and clipped by the page: its visible part is
    smaller than its whole area.
    """
    from pypdf.generic import ContentStream

    reader = _reader()
    page = reader.pages[number]
    resources = page.get("/Resources")
    resources = resources.get_object() if resources is not None else {}
    xobjects = resources.get("/XObject")
    xobjects = xobjects.get_object() if xobjects is not None else {}
    ctm, fill, clip = [1.0, 0, 0, 1.0, 0, 0], (0.0, 0.0, 0.0), None
    stack: list[Any] = []
    path: list[tuple[float, float]] = []
    clipping = False
    tm = [1.0, 0, 0, 1.0, 0, 0]
    tlm = tm
    fills: list[tuple[Box, tuple[float, ...], Box]] = []
    texts: list[tuple[float, float]] = []
    pictures: list[Box] = []
    for args, op in ContentStream(page.get_contents(), reader).operations:
        if op == b"q":
            stack.append((ctm, fill, clip))
        elif op == b"Q" and stack:
            ctm, fill, clip = stack.pop()
        elif op == b"cm":
            ctm = _mul([float(a) for a in args], ctm)
        elif op == b"rg":
            fill = tuple(float(a) for a in args)
        elif op == b"g":
            fill = (float(args[0]),) * 3
        elif op == b"re":
            x, y, w, h = (float(a) for a in args)
            path += [_at(ctm, x, y), _at(ctm, x + w, y + h)]
        elif op in (b"m", b"l"):
            path.append(_at(ctm, float(args[0]), float(args[1])))
        elif op in (b"c", b"v", b"y"):
            path.append(_at(ctm, float(args[-2]), float(args[-1])))
        elif op in (b"W", b"W*"):
            clipping = True
        elif op in (b"f", b"f*", b"F", b"B", b"B*", b"b", b"b*", b"n", b"S", b"s"):
            if path:
                area = _bbox(path)
                if clipping:
                    clip = _meet(clip, area)
                elif op not in (b"n", b"S", b"s"):
                    seen = _meet(clip, area)
                    if seen[2] > seen[0] and seen[3] > seen[1]:
                        fills.append((seen, fill, area))
            path, clipping = [], False
        elif op == b"BT":
            tm = tlm = [1.0, 0, 0, 1.0, 0, 0]
        elif op == b"Tm":
            tm = tlm = [float(a) for a in args]
        elif op in (b"Td", b"TD"):
            tlm = _mul([1.0, 0, 0, 1.0, float(args[0]), float(args[1])], tlm)
            tm = tlm
        elif op in (b"Tj", b"TJ", b"'", b'"'):
            texts.append(_at(_mul(tm, ctm), 0, 0))
        elif op == b"Do" and args[0] in xobjects:
            x = xobjects[args[0]].get_object()
            box: Box = (0.0, 0.0, 1.0, 1.0)
            m = ctm
            if x.get("/Subtype") == "/Form":
                box = tuple(float(v) for v in x.get("/BBox", [0, 0, 1, 1]))  # type: ignore[assignment]
                m = _mul([float(v) for v in x.get("/Matrix", [1, 0, 0, 1, 0, 0])], ctm)
            corners = [
                _at(m, box[0], box[1]),
                _at(m, box[2], box[3]),
                _at(m, box[0], box[3]),
                _at(m, box[2], box[1]),
            ]
            pictures.append(_meet(clip, _bbox(corners)))
    return {"fills": fills, "texts": texts, "pictures": pictures}


def _inside(point: tuple[float, float], box: Box, slack: float = 1.0) -> bool:
    return box[0] - slack <= point[0] <= box[2] + slack and box[1] - slack <= point[1] <= box[3] + slack


def _is_frame(colour: tuple[float, ...], box: Box, page_width: float) -> bool:
    """A light grey (or tinted) box as wide as a code cell: a code or output frame, not the page."""
    return (
        len(colour) == 3
        and 0.85 <= min(colour)
        and max(colour) < 0.99
        and box[2] - box[0] >= 0.35 * page_width
        and box[3] - box[1] >= 4
    )


def frame_faults() -> list[str]:
    """Every frame that lost its code to a page break: empty, or one line at a page's foot."""
    faults = []
    for number, page in enumerate(_reader().pages):
        width = float(page.mediabox.width)
        drawn = _drawn(number)
        for seen, colour, whole in drawn["fills"]:
            if not _is_frame(colour, seen, width):
                continue
            lines = {round(y) for x, y in drawn["texts"] if _inside((x, y), seen)}
            holds_picture = any(
                _inside(((p[0] + p[2]) / 2, (p[1] + p[3]) / 2), seen) for p in drawn["pictures"]
            )
            where = f"page {number + 1}: a frame at y {seen[1]:.0f}-{seen[3]:.0f} pt"
            if not lines and not holds_picture:
                faults.append(f"{where} holds no text")
            elif whole[1] < seen[1] - 1 and len(lines) < 2 and not holds_picture:
                faults.append(
                    f"{where}, at the foot of the page, holds {len(lines)} line; the rest is overleaf"
                )
    return faults


def page_extent(number: int) -> tuple[float, float]:
    """The lowest and highest point the page draws on, text, pictures and frames (footer aside)."""
    page = _reader().pages[number]
    drawn = _drawn(number)
    bottom_margin = 40.0  # the footer's line sits below this
    ys = [y for _, y in drawn["texts"] if y > bottom_margin]
    ys += [v for p in drawn["pictures"] for v in (p[1], p[3]) if p[3] > bottom_margin]
    width = float(page.mediabox.width)
    ys += [v for seen, c, _ in drawn["fills"] if _is_frame(c, seen, width) for v in (seen[1], seen[3])]
    return (min(ys), max(ys)) if ys else (0.0, 0.0)


def _plain(markdown: str) -> str:
    """A Markdown heading as the page shows it, math aside: no markup, one space between words."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    text = re.sub(r"\{[a-z:]+\}`([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # {term}`x`, {ref}`x <y>`
    text = text.replace("**", "").replace("`", "").replace("*", "")
    return " ".join(text.split())


def _words(text: str) -> list[str]:
    """The words of a title that are letters only (math, code and numbers aside), lower case."""
    words = (w.strip(".,:;!?()[]\"'\u2018\u2019\u201c\u201d").lower() for w in text.split())
    return [w for w in words if len(w) > 1 and w.isalpha()]


def _top_level() -> list[tuple[int, str, int]]:
    """(index in the outline, title, page) of the top-level bookmarks."""
    return [(k, title, page) for k, (depth, title, page) in enumerate(_outline()) if depth == 0]


# --- the tests -----------------------------------------------------------------------------------
def test_every_page_of_the_book_is_there_in_order() -> None:
    """Each page of the book is a top-level bookmark, titled as its heading, on the page it starts."""
    top = _top_level()
    assert top, f"{PDF} has no bookmarks (outline)"
    texts = _texts()
    problems, start = [], 0
    for file in toc_files():
        title = _plain(title_of(file))
        hit = next((k for k in range(start, len(top)) if " ".join(top[k][1].split()) == title), None)
        if hit is None:
            nested = any(" ".join(t.split()) == title for d, t, _ in _outline() if d > 0)
            later = any(" ".join(t.split()) == title for _, t, _ in top[:start])
            why = "out of order" if later else "under another bookmark" if nested else "not a bookmark"
            problems.append(f"{file}: {title!r} is {why} at the top level")
            continue
        page = top[hit][2]
        if _squash(title) not in _squash(texts[page]):
            problems.append(f"{file}: {title!r} is not on page {page + 1}, where its bookmark points")
        start = hit + 1
    assert not problems, "\n".join(problems)


def test_bookmarks_read_as_the_headings_do() -> None:
    """No title twice over, no words run together, and each page's sections under its bookmark."""
    vocabulary = {"contents"}
    for file in toc_files():
        for _, heading in _headings(file):
            vocabulary.update(_words(_plain(heading)))
    problems = []
    for _, title, page in _outline():
        text = " ".join(title.split())
        if re.fullmatch(r"(.{2,}?)\s*\1", text):
            problems.append(f"{text!r} (page {page + 1}) is its title twice over")
        unknown = [w for w in _words(text) if w not in vocabulary]
        if unknown:
            problems.append(f"{text!r} (page {page + 1}): {unknown} are no words of the book's headings")
    top = _top_level()
    for n, (k, title, _) in enumerate(top):
        end = top[n + 1][0] if n + 1 < len(top) else len(_outline())
        file = next((f for f in toc_files() if _plain(title_of(f)) == " ".join(title.split())), None)
        if (
            file
            and sum(level == 2 for level, _ in _headings(file))
            and not any(d == 1 for d, _, _ in _outline()[k + 1 : end])
        ):
            problems.append(f"{title!r} has sections, but no bookmarks under its own")
    assert not problems, "\n".join(problems[:30])


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
    frames = sum(spec["frames"] for spec in explorers_in_book())
    assert figures > 0, "the chapter notebooks show no figures: wrong _toc.yml?"
    assert images >= figures + frames, (
        f"{PDF} holds {images} images; the chapters show {figures} figures and print {frames} explorer frames"
    )


def test_no_code_frame_is_cut_from_its_code() -> None:
    faults = frame_faults()
    assert not faults, f"{len(faults)} frames apart from their code:\n" + "\n".join(faults[:20])


def test_hidden_cells_stay_hidden() -> None:
    text = _squash(" ".join(_texts()))
    shown = [f"{file}: {source[:60]!r}" for file, source in hidden_sources() if _squash(source) in text]
    assert not shown, "the source of cells the book hides is printed:\n" + "\n".join(shown)
    # the book's own prose may name them (the quiz's introduction says what "Show the answer" does)
    prose = _squash(" ".join(_markdown(file) for file in toc_files()))
    stubs = [words for words in SCREEN_ONLY if text.count(_squash(words)) > prose.count(_squash(words))]
    assert not stubs, f"words for the screen on paper: {stubs}"


def test_no_page_is_left_almost_blank_within_a_chapter() -> None:
    """A page that the next page's block left mostly empty: a block kept whole that could not be."""
    starts = {page for _, _, page in _top_level()}
    reader = _reader()
    blank = []
    for number in range(2, len(reader.pages) - 1):
        if number + 1 in starts:
            continue  # the last page of a page of the book: it ends where its text ends
        low, high = page_extent(number)
        height = float(reader.pages[number].mediabox.height)
        if high - low < 0.25 * height:
            blank.append(f"page {number + 1}: {100 * (high - low) / height:.0f}% of its height used")
    assert not blank, "pages left almost blank in the middle of a chapter:\n" + "\n".join(blank)


def test_explorers_print_a_strip_of_frames() -> None:
    """Each explorer prints its note and each frame's slider values, in order, in the book's order."""
    text = _squash(" ".join(_texts()))
    specs = explorers_in_book()
    assert specs, "the book has no explorers: wrong _toc.yml?"
    problems, at = [], 0
    for spec in specs:
        shown = "all" if spec["frames"] == spec["total"] else f"{spec['frames']} of the"
        note = _squash(f"{shown} {spec['total']} {EXPLORER_NOTE}")
        found = text.find(note, at)
        if found < 0:
            problems.append(f"{spec['id']}: no note {note!r} after the previous explorer")
            continue
        at = found + len(note)
        for caption in spec["captions"]:
            hit = text.find(_squash(caption), at)
            if hit < 0:
                problems.append(f"{spec['id']}: the frame {caption!r} is not printed (in order)")
                break
            at = hit + len(_squash(caption))
    assert not problems, "\n".join(problems)


def test_quiz_has_its_answer_key() -> None:
    quizzes = _html_outputs_with('class="bnbook-quiz"')
    if not quizzes:
        pytest.skip("the book has no quiz")
    texts = _texts()
    text = _squash(" ".join(texts))
    questions = sum(len(re.findall(r'<fieldset class="bnq-question"', page)) for page in quizzes)
    assert text.count(_squash("Answers to the quiz")) == len(quizzes), "no key of answers after the quiz"
    key = text[text.find(_squash("Answers to the quiz")) :]
    assert key.count(_squash("Answer:")) >= questions, "the key lacks answers"
    # the questions come before their key, and the answers are not also under each question
    questions_start = text.find(_squash("Question 1."))
    assert 0 <= questions_start < text.find(_squash("Answers to the quiz"))
    assert _squash("Answer:") not in text[questions_start : text.find(_squash("Answers to the quiz"))]


def test_quiz_says_how_to_answer_on_paper() -> None:
    """Each question says how to answer it on paper ("Enter checks it" becomes a box to fill in)."""
    quizzes = _html_outputs_with('class="bnbook-quiz"')
    if not quizzes:
        pytest.skip("the book has no quiz")
    text = _squash(" ".join(_texts()))
    kinds = [
        kind for page in quizzes for kind in re.findall(r'class="bnq-question"[^>]*data-kind="(\w+)"', page)
    ]
    wanted = {
        "Choose one.": kinds.count("choice"),
        "Tick every right option.": kinds.count("multi"),
        "Write a number in the box.": kinds.count("numeric"),
    }
    prose = _squash(" ".join(_markdown(file) for file in toc_files()))
    wrong = {
        words: (text.count(_squash(words)) - prose.count(_squash(words)), n)
        for words, n in wanted.items()
        if text.count(_squash(words)) - prose.count(_squash(words)) != n
    }
    assert not wrong, f"instructions printed, and questions that need them: {wrong}"


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


def test_the_html_book_carries_the_pdf_it_links_to() -> None:
    """``make pdf`` copies the PDF into a built HTML book, whose pages then link to it."""
    if "BNBOOK_PDF" in os.environ:
        pytest.skip("BNBOOK_PDF names another PDF than the one `make pdf` makes")
    _reader()  # skips without a PDF
    if not (SITE / "intro.html").is_file():
        pytest.skip(f"no HTML book in {SITE}: run `make book`")
    copy = SITE / "_static" / "bnbook.pdf"
    assert copy.is_file(), f"{copy} is missing: `make pdf` copies the PDF there (or `make book` after it)"
    assert copy.stat().st_size == PDF.stat().st_size and copy.read_bytes() == PDF.read_bytes(), (
        f"{copy} is another PDF than {PDF}: run `make pdf` again"
    )
    where = (SITE / "_static" / "bnbook-pdf.js").read_text(encoding="utf-8")
    assert 'window.BNBOOK_PDF = "bnbook.pdf"' in where, "bnbook-pdf.js does not name the PDF"
    assert 'id="bnbook-pdf"' in (SITE / "intro.html").read_text(encoding="utf-8")
