"""Make the chapter notebooks read in JupyterLab as the HTML book reads.

    python tools/notebook_parity.py chapters/*.ipynb          # rewrite in place
    python tools/notebook_parity.py --check chapters/*.ipynb  # list what would change; exit 1 if any

The script changes only cell metadata and the targets of cross references in
markdown cells, never code or outputs, and running it twice changes nothing
the second time. It does four things:

1. **Hidden in the HTML, collapsed in the notebook.** A code cell tagged
   ``hide-input``, ``hide-cell``, ``remove-input`` or ``remove-cell`` gets
   ``metadata.jupyter.source_hidden: true`` (JupyterLab shows a collapsed
   input), and one tagged ``remove-cell``, ``remove-output``, ``hide-cell`` or
   ``hide-output`` gets ``outputs_hidden: true`` as well. So the cells that
   build the quiz, glue numbers or set a chapter up stay folded, in Lab as on
   the page.
2. **No bookkeeping line after an explorer.** A cell whose only statement
   prints an explorer's ``describe()`` (a check that strict nbval compares,
   not something a reader needs) is tagged ``remove-cell`` and collapsed.
3. **Cross-chapter links as file links.** ``{doc}`Chapter 8 <08_x>``` becomes
   ``[Chapter 8](08_x.ipynb)``: JupyterLab opens the notebook, and Jupyter Book
   rewrites the link to the chapter's page. A ``{doc}`` without text takes the
   target's first heading as its text, as on the page.
4. **Glossary terms as file links.** ``{term}`BN <batch normalization>```
   becomes ``[BN](../glossary.md#term-batch-normalization)``. Lab opens the
   glossary; on the page the link goes to the term's entry and shows its
   tooltip (``_ext/bnbook_site.py`` registers the glossary's term ids as link
   targets, so Sphinx resolves these links without a warning).

Exercise numbers need no rewrite: the page numbers each chapter's exercises
from 1, in the order of the notebook (``_ext/bnbook_site.py``), as JupyterLab
does; :func:`check` verifies that every exercise label ``chN-exK`` sits at
position K of chapter N.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: Tags whose cells show no input on the page (the input is folded or removed).
SOURCE_HIDDEN_TAGS = frozenset({"hide-input", "hide-cell", "remove-input", "remove-cell"})
#: Tags whose cells show no output on the page until the reader opens them.
OUTPUTS_HIDDEN_TAGS = frozenset({"remove-cell", "remove-output", "hide-cell", "hide-output"})

GLOSSARY = "glossary.md"

_DESCRIBE_PRINT = re.compile(r"\s*print\(\s*\w+\.describe\(\)[^\n]*\)\s*")
_DOC_ROLE = re.compile(r"\{doc\}`([^`<]*?)\s*(?:<([^`>]+)>)?`")
_TERM_ROLE = re.compile(r"\{term\}`([^`<]*?)\s*(?:<([^`>]+)>)?`")
_EXERCISE = re.compile(r"^(`{3,}|:{3,})\{exercise\}[^\n]*\n((?::[^\n]*\n)*)", re.M)
_LABEL = re.compile(r"^:label:\s*(\S+)", re.M)
_MD_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,}|:{3,})(.*)$")
_CODE_SPAN = re.compile(r"(?<![}`])`[^`\n]+`")


def _split_code(text: str) -> list[tuple[bool, str]]:
    """Markdown cut into (is_code, text) runs: fenced code is code, directive fences are not."""
    runs: list[tuple[bool, str]] = []
    stack: list[tuple[str, bool]] = []  # open fences: (fence, is_code)
    for line in text.splitlines(keepends=True):
        m = _FENCE.match(line.rstrip("\n"))
        in_code = bool(stack) and stack[-1][1]
        if (
            m
            and stack
            and not m.group(2).strip()
            and m.group(1)[0] == stack[-1][0][0]
            and len(m.group(1)) >= len(stack[-1][0])
        ):
            stack.pop()  # a closing fence belongs to the run it closes
        elif m and not in_code:
            stack.append((m.group(1), not m.group(2).strip().startswith("{")))
            in_code = stack[-1][1]
        if runs and runs[-1][0] == in_code:
            runs[-1] = (in_code, runs[-1][1] + line)
        else:
            runs.append((in_code, line))
    return runs


def _prose(text: str) -> str:
    """Markdown without its code (fenced blocks other than directives, and code spans)."""
    return _CODE_SPAN.sub("", "".join(t for code, t in _split_code(text) if not code))


def term_id(term: str) -> str:
    """The HTML id Sphinx gives a glossary term (``make_id``, prefix ``term``): ``term-Batch-statistics``."""
    try:
        from sphinx.util.nodes import _make_id
    except ImportError:  # the same rule, for a checkout without Sphinx
        text = unicodedata.normalize("NFKD", f"term-{term}").encode("ascii", "ignore").decode("ascii")
        return re.sub(r"[^A-Za-z0-9_.]+", "-", " ".join(text.split())).strip("-._")
    return _make_id(f"term-{term}")


def glossary_terms(path: Path) -> dict[str, str]:
    """Term (lower case) -> id, for every term of the glossary's ``{glossary}`` directive."""
    text = path.read_text(encoding="utf-8")
    terms: dict[str, str] = {}
    for block in re.finditer(r"^(`{3,}|:{3,})\{glossary\}[^\n]*\n(.*?)^\1\s*$", text, re.M | re.S):
        for line in block.group(2).splitlines():
            if line and not line[0].isspace() and not line.startswith(":"):
                term = line.strip()
                terms[term.lower()] = term_id(term)
    return terms


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _set_source(cell: dict[str, Any], text: str) -> None:
    cell["source"] = text.splitlines(keepends=True) if isinstance(cell.get("source"), list) else text


def _first_heading(path: Path) -> str | None:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            m = re.search(r"^#\s+(.+?)\s*$", _source(cell), re.M)
            if m:
                return m.group(1)
    return None


class Rewriter:
    """Rewrites one notebook's metadata and link targets; collects what it changed."""

    def __init__(self, path: Path, glossary: dict[str, str], glossary_link: str) -> None:
        self.path = path
        self.glossary = glossary
        self.glossary_link = glossary_link
        self.changes: list[str] = []
        self.problems: list[str] = []

    def _doc(self, m: re.Match[str]) -> str:
        text, target = m.group(1).strip(), m.group(2)
        if target is None:
            target, text = text, ""
        target = target.strip()
        file = target if target.endswith((".ipynb", ".md")) else None
        if file is None:
            for ext in (".ipynb", ".md"):
                if (self.path.parent / f"{target}{ext}").is_file():
                    file = f"{target}{ext}"
                    break
        if file is None:
            self.problems.append(f"{{doc}} target {target!r} is not a notebook or page next to it")
            return m.group(0)
        if not text:
            text = _first_heading(self.path.parent / file) if file.endswith(".ipynb") else None
            text = text or target
        return f"[{text}]({file})"

    def _term(self, m: re.Match[str]) -> str:
        text, target = m.group(1).strip(), m.group(2)
        term = (target or text).strip()
        tid = self.glossary.get(term.lower())
        if tid is None:
            self.problems.append(f"{{term}} {term!r} is not in the glossary")
            return m.group(0)
        return f"[{text}]({self.glossary_link}#{tid})"

    def cell(self, i: int, cell: dict[str, Any]) -> None:
        meta = cell.setdefault("metadata", {})
        if cell.get("cell_type") == "code":
            source = _source(cell)
            tags = list(meta.get("tags", []))
            if _DESCRIBE_PRINT.fullmatch(source) and not set(tags) & {"remove-cell"}:
                tags.append("remove-cell")
                meta["tags"] = tags
                self.changes.append(f"cell {i}: explorer summary tagged remove-cell")
            jup = meta.get("jupyter", {})
            want: dict[str, bool] = {}
            if set(tags) & SOURCE_HIDDEN_TAGS:
                want["source_hidden"] = True
            if set(tags) & OUTPUTS_HIDDEN_TAGS:
                want["outputs_hidden"] = True
            for key, value in want.items():
                if jup.get(key) is not value:
                    jup[key] = value
                    self.changes.append(f"cell {i}: jupyter.{key}")
            if jup:
                meta["jupyter"] = jup
        elif cell.get("cell_type") == "markdown":
            before = _source(cell)
            after = "".join(
                t if code else _TERM_ROLE.sub(self._term, _DOC_ROLE.sub(self._doc, t))
                for code, t in _split_code(before)
            )
            if after != before:
                _set_source(cell, after)
                self.changes.append(f"cell {i}: cross references as links")


def rewrite(path: Path, glossary: dict[str, str] | None = None, *, write: bool = True) -> Rewriter:
    """Rewrite one notebook in place (unless ``write`` is false); returns what changed."""
    path = Path(path)
    glossary_file = _find_glossary(path)
    if glossary is None:
        glossary = glossary_terms(glossary_file) if glossary_file else {}
    link = Path(_relpath(glossary_file, path.parent)).as_posix() if glossary_file else GLOSSARY
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    rw = Rewriter(path, glossary, link)
    for i, cell in enumerate(nb.get("cells", [])):
        rw.cell(i, cell)
    if rw.changes and write:
        indent = 1 if raw.startswith('{\n "') else 2
        text = json.dumps(nb, indent=indent, ensure_ascii=False) + "\n"
        path.write_text(text, encoding="utf-8")
    return rw


def _find_glossary(path: Path) -> Path | None:
    for folder in [path.parent, *path.parent.parents]:
        if (folder / GLOSSARY).is_file():
            return folder / GLOSSARY
    return None


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())


# --- checks (used by tests/test_notebook_parity.py) ------------------------------------------
def check(path: Path, glossary: dict[str, str] | None = None) -> list[str]:
    """What keeps a notebook from reading in Lab as on the page; empty when it is in parity."""
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = [f"{path.name}: {c}" for c in rewrite(path, glossary, write=False).changes]
    chapter = re.match(r"(\d+)_", path.name)
    position = 0
    for i, cell in enumerate(nb.get("cells", [])):
        text = _source(cell)
        if cell.get("cell_type") == "code":
            hidden = cell.get("metadata", {}).get("jupyter", {}).get("source_hidden")
            if re.search(r"\banswer\s*=|\bcorrect\s*=", text) and not hidden:
                problems.append(f"{path.name}: cell {i} shows a quiz answer key")
            continue
        if cell.get("cell_type") != "markdown":
            continue
        for m in re.finditer(r"\{(doc|term)\}`", text):
            problems.append(f"{path.name}: cell {i} has a {{{m.group(1)}}} role that Lab cannot follow")
        for m in _MD_LINK.finditer(_prose(text)):
            target = m.group(2)
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            if file.startswith("/") or "/files/" in file:
                problems.append(f"{path.name}: cell {i} links to {target!r}, which Lab cannot open")
                continue
            dest = (path.parent / file).resolve()
            if not dest.is_file():
                problems.append(f"{path.name}: cell {i} links to missing file {target!r}")
            elif dest.name == GLOSSARY and anchor and glossary and anchor not in glossary.values():
                problems.append(f"{path.name}: cell {i} links to unknown glossary entry {anchor!r}")
        for m in _EXERCISE.finditer(text):
            position += 1
            label = _LABEL.search(m.group(2))
            if not label:
                problems.append(f"{path.name}: exercise {position} has no :label:")
                continue
            want = f"ch{int(chapter.group(1))}-ex{position}" if chapter else None
            if want and label.group(1) != want:
                problems.append(
                    f"{path.name}: exercise {position} is labelled {label.group(1)!r}, "
                    f"so its label and its number disagree (expected {want!r})"
                )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="report only; exit 1 if not in parity")
    args = parser.parse_args(argv)
    status = 0
    for path in _expand(args.notebooks):
        if args.check:
            glossary_file = _find_glossary(path)
            problems = check(path, glossary_terms(glossary_file) if glossary_file else None)
            for p in problems:
                print(p)
            status |= bool(problems)
            continue
        rw = rewrite(path)
        for p in rw.problems:
            print(f"{path}: {p}", file=sys.stderr)
            status = 1
        print(f"{path}: {len(rw.changes)} change(s)" if rw.changes else f"{path}: unchanged")
    return status


def _expand(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if p.suffix == ".ipynb"]


if __name__ == "__main__":
    sys.exit(main())
