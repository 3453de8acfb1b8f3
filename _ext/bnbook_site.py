"""Local Sphinx extension: fixes to the Jupyter Book 1 stack that the book relies on.

Registered in ``_config.yml`` under ``sphinx: local_extensions``. It does twelve
things, each at the source of a problem rather than by hiding its symptom:

1. **One THEBE_JS_URL per page.** sphinx-thebe registers its inline
   configuration script (``const THEBE_JS_URL = ...``) with
   ``app.add_js_file(None, body=...)`` after the HTML builder is initialised.
   Sphinx < 8.2.3 hands that ``None`` filename to the builder unchanged, then
   adds the same script again from its registry as ``''``; the two do not
   compare equal, so every page declares the ``const`` twice and the browser
   reports "Identifier 'THEBE_JS_URL' has already been declared". We pass
   ``''`` for ``None`` before the builder sees it, which is the upstream fix
   (sphinx-doc/sphinx#13402), so the duplicate is recognised and dropped.

2. **Vendored scripts load only where asked for.** Jupyter Book adds every
   ``.js`` and ``.css`` file under ``_static/`` to every page. The files under
   ``_static/vendor/`` (popper, tippy) must load in a fixed order, deferred,
   from the extension that uses them (sphinx-tippy's ``tippy_js``), so we take
   them back out of ``html_js_files``/``html_css_files``.

3. **No stale tooltip data.** sphinx-tippy writes ``_static/tippy/<page>.<uuid>.js``
   each time it writes a page and deletes the old one only for top-level pages,
   so pages in ``chapters/`` pile up copies in incremental builds. After the
   build we delete the files that no HTML page of the site refers to.

4. **Glossary tooltips survive incremental builds.** sphinx-tippy builds a
   page's tooltips from data it collects while writing the pages they point
   to, and keeps that data only for the current build. When a chapter is
   rewritten but the glossary is not, the chapter gets no tooltips at all. We
   save the collected data after each html build (in the doctree folder) and
   give it back to sphinx-tippy for the pages the next one does not rewrite
   (singlehtml, which shares the doctree folder, writes its one page whole).

5. **A lighter offline MathJax.** sphinx-mathjax-offline copies all of MathJax
   3 (24 MB) into ``_static/mathjax``, although pages load one combined
   component (``mathjax_path``, ``tex-chtml.js``). We delete the other combined
   components and the Node-only adaptors, about 15 MB; everything
   ``tex-chtml.js`` may load lazily stays (TeX extensions, fonts, the menu and
   its accessibility and SVG-renderer options).

6. **The single-page build knows every node.** Sphinx gives a translator the
   node handlers registered for its builder's name (``singlehtml``) and falls
   back to those of its format (``html``) only when the name has none.
   sphinx-exercise registers its nodes for ``singlehtml`` by name, so the
   handlers myst-nb registers for ``html`` (hidden code cells) went missing
   and ``jupyter-book build --builder singlehtml`` (the PDF's source, see
   ``tools/make_pdf.py``) failed on "unknown node type: HideCodeCellNode".
   We copy the ``html`` handlers that a builder of the html format lacks.

7. **Bibliography entries are list items.** Docutils writes the citations of
   the bibliography as ``<div role="doc-biblioentry">`` children of a
   ``<div role="list">``. DPUB-ARIA 1.1 deprecated ``doc-biblioentry`` and
   assistive technology (and axe-core, rule ``aria-required-children``) no
   longer counts it as a list item, so the list reads as empty. We write
   ``role="listitem"``, as DPUB-ARIA 1.1 advises; the markup is otherwise
   docutils' own.

8. **Glossary links that work in JupyterLab too.** The notebooks link a
   term as ``[text](../glossary.md#term-Batch-statistics)`` (a file JupyterLab
   can open; see ``tools/notebook_parity.py``). MyST resolves ``file#id``
   only for heading anchors, so we register each glossary term's id as an
   anchor of the glossary page; the link then goes to the term's entry, and
   its tooltip shows, as for ``{term}``.

9. **Tooltips by level.** The glossary's front matter lists its
   ``advanced_terms``; every other term is basic. Each term of the glossary
   and each link to one gets the class ``bn-level-basic`` or
   ``bn-level-advanced``, and ``_static/bnbook.js`` shows the tooltips of
   basic terms only to readers who chose "Beginner".

10. **Exercises numbered per chapter.** Sphinx numbers an enumerable node
    (sphinx-exercise's exercises) with one counter across all documents of an
    unnumbered book, so the third chapter's exercises were 8 to 10, where the
    notebook in JupyterLab shows 1 to 3. We number them from 1 in each
    document, in document order.

11. **One citation style.** The text cites author-year ("Ioffe and Szegedy,
    2015"), so the bibliography labels its entries the same way (pybtex's
    ``alpha`` labels, such as "IS15", garble names with accents). The
    formatting style ``bnbook`` is pybtex's ``unsrt`` with those labels, sorted
    by author and year.

12. **Page metadata and the PDF.** Every page gets a ``<meta name="description">``;
    a PDF made by ``tools/make_pdf.py`` is copied into the site
    (``_static/bnbook.pdf``) with ``_static/bnbook-pdf.js`` saying where it is,
    so the download menu offers it (``_static/bnbook.js``).
"""

from __future__ import annotations

import html
import pickle
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

__version__ = "0.1.0"

logger = logging.getLogger(__name__)

#: Folder under ``_static/`` whose scripts and stylesheets are not added to every page.
VENDOR_PREFIX = "vendor/"


def _normalise_inline_js(app: Sphinx) -> None:
    """Make ``app.add_js_file(None, body=...)`` register ``''``, as Sphinx >= 8.2.3 does."""
    original = app.add_js_file

    def add_js_file(
        filename: str | None, priority: int = 500, loading_method: str | None = None, **kwargs: Any
    ) -> None:
        original(
            "" if filename is None else filename, priority=priority, loading_method=loading_method, **kwargs
        )

    add_js_file.__doc__ = original.__doc__
    app.add_js_file = add_js_file  # type: ignore[method-assign]


def _asset_name(entry: Any) -> str:
    """The filename of an ``html_js_files``/``html_css_files`` entry (a str or (str, attrs))."""
    if isinstance(entry, (tuple, list)):
        entry = entry[0] if entry else ""
    return str(entry or "")


def _drop_vendor_assets(app: Sphinx, config: Config) -> None:
    for key in ("html_js_files", "html_css_files"):
        entries = list(getattr(config, key, None) or [])
        kept = [e for e in entries if not _asset_name(e).replace("\\", "/").startswith(VENDOR_PREFIX)]
        if len(kept) != len(entries):
            setattr(config, key, kept)


def _check_tippy_js(app: Sphinx, config: Config) -> None:
    """Warn when sphinx-tippy would fetch its scripts from a CDN (pages must work offline)."""
    for url in getattr(config, "tippy_js", ()) or ():
        if "://" in url:
            logger.warning(
                "[bnbook_site] tippy_js loads %s from the network; vendor it under "
                "_static/vendor/ so pages work offline",
                url,
            )


def _remove_stale_tippy_files(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    tippy_dir = outdir / "_static" / "tippy"
    if not tippy_dir.is_dir():
        return
    # Pages an incremental build did not rewrite still refer to their old file,
    # so keep every file that some page of the site refers to, and only those.
    pattern = re.compile(r'src="(?:\.\./)*(_static/tippy/[^"?#]+\.js)')
    referenced = set()
    for page in outdir.rglob("*.html"):
        referenced.update(pattern.findall(page.read_text(encoding="utf-8", errors="replace")))
    for path in tippy_dir.rglob("*.js"):
        if path.relative_to(outdir).as_posix() not in referenced:
            path.unlink()


_TIPPY_STATE = "bnbook_tippy_pages.pickle"


def _restore_tippy_data(app: Sphinx, env: Any) -> None:
    """Before writing: sphinx-tippy's data for the pages this build will not rewrite."""
    if app.builder.name != "html":
        return  # singlehtml writes its one page whole, with links of its own (#document-...)
    path = Path(app.doctreedir, _TIPPY_STATE)
    if not path.is_file():
        return
    try:
        saved = pickle.loads(path.read_bytes())
    except Exception:  # an unreadable or outdated file: the next full write replaces it
        return
    if not hasattr(env, "tippy_data"):
        env.tippy_data = {"pages": {}, "wiki_titles": set()}  # as sphinx_tippy.get_tippy_data
    pages = env.tippy_data.setdefault("pages", {})
    for name, page in saved.items():
        if name in env.all_docs and name not in pages:
            pages[name] = page


def _save_tippy_data(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.name != "html":
        return
    data = getattr(app.env, "tippy_data", None)
    if data and data.get("pages"):
        Path(app.doctreedir, _TIPPY_STATE).write_bytes(pickle.dumps(data["pages"]))


#: Top-level MathJax files that are alternative entry points, never loaded by ``tex-chtml.js``.
_MATHJAX_ENTRY_POINTS = ("tex-*.js", "mml-*.js", "node-main.js", "latest.js")


def _prune_offline_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    mathjax_path = str(getattr(app.config, "mathjax_path", "") or "")
    root = Path(app.outdir, "_static", "mathjax")
    if "://" in mathjax_path or not mathjax_path.startswith("mathjax/") or not root.is_dir():
        return  # MathJax is not served by sphinx-mathjax-offline: nothing to prune
    used = Path(app.outdir, "_static", mathjax_path).resolve()
    if not used.is_file():
        logger.warning("[bnbook_site] mathjax_path %s is missing from the build", mathjax_path)
        return
    for pattern in _MATHJAX_ENTRY_POINTS:
        for path in root.glob(pattern):
            if path.resolve() != used:
                path.unlink()
    adaptors = root / "adaptors"  # liteDOM: for MathJax under Node, not in a browser
    if adaptors.is_dir():
        for path in sorted(adaptors.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        adaptors.rmdir()


def _share_html_handlers(app: Sphinx) -> None:
    """Give an html-format builder with its own handler table (singlehtml) the ``html`` node handlers."""
    builder = app.builder
    if builder.format != "html" or builder.name == "html":
        return
    tables = app.registry.translation_handlers
    own = tables.get(builder.name)
    if own is None:
        return  # Sphinx falls back to the html table by itself
    for node_name, handlers in tables.get("html", {}).items():
        own.setdefault(node_name, handlers)


def _visit_citation(self: Any, node: nodes.citation) -> None:
    """docutils' HTML5 ``visit_citation``, with ``role="listitem"`` for the deprecated ``doc-biblioentry``."""
    if not isinstance(node.previous_sibling(), type(node)):
        self.body.append('<div role="list" class="citation-list">\n')
    self.body.append(self.starttag(node, "div", classes=[node.tagname], role="listitem"))


def _depart_citation(self: Any, node: nodes.citation) -> None:
    self.body.append("</div>\n")
    if not isinstance(node.next_node(descend=False, siblings=True), type(node)):
        self.body.append("</div>\n")


# --- glossary links from notebooks, and term levels ----------------------------------------
LEVELS = ("basic", "advanced")


def _glossary_targets(app: Sphinx, doctree: nodes.document) -> None:
    """Register glossary term ids as MyST anchors of their page, and note each term's level."""
    from sphinx import addnodes

    env = app.env
    if not any(True for _ in doctree.findall(addnodes.glossary)):
        return
    meta = env.metadata.setdefault(env.docname, {})
    listed = meta.get("advanced_terms", []) or []
    if isinstance(listed, str):  # MyST keeps front matter values as JSON text
        import json

        listed = json.loads(listed) if listed.lstrip().startswith("[") else [listed]
    advanced = {str(t).strip().lower() for t in listed}
    slugs = meta.setdefault("myst_slugs", {})
    levels = {}
    for term in doctree.findall(nodes.term):
        text = term.astext().strip()
        level = "advanced" if text.lower() in advanced else "basic"
        term["classes"].append(f"bn-level-{level}")
        for node_id in term["ids"]:
            slugs.setdefault(node_id, (term.line or 0, node_id, text))
            levels[node_id] = level
    unknown = advanced - {t.astext().strip().lower() for t in doctree.findall(nodes.term)}
    if unknown:
        logger.warning("[bnbook_site] advanced_terms names unknown glossary terms: %s", sorted(unknown))
    meta["bnbook_term_levels"] = levels


def _term_levels(env: Any) -> dict[str, str]:
    levels: dict[str, str] = {}
    for meta in env.metadata.values():
        levels.update(meta.get("bnbook_term_levels", {}))
    return levels


def _mark_term_links(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Give every link to a glossary term the class of the term's level."""
    levels = _term_levels(app.env)
    for ref in doctree.findall(nodes.reference):
        uri = ref.get("refuri", "") or ""
        anchor = uri.partition("#")[2] if "#" in uri else ref.get("refid", "")
        if anchor.startswith("term-") and anchor in levels:
            ref["classes"].append(f"bn-level-{levels[anchor]}")


# --- exercises numbered per document ------------------------------------------------------
def _number_exercises_per_document(app: Sphinx, env: Any) -> list[str]:
    changed = []
    for docname, figtypes in env.toc_fignumbers.items():
        numbers = figtypes.get("exercise")
        if not numbers:
            continue
        ordered = sorted(numbers, key=lambda k: numbers[k])
        renumbered = {key: (i + 1,) for i, key in enumerate(ordered)}
        if renumbered != numbers:
            figtypes["exercise"] = renumbered
            changed.append(docname)
    return []  # numbers only: nothing needs reading again


# --- author-year labels in the bibliography ----------------------------------------------
def _register_bibliography_style() -> None:
    from pybtex.plugin import register_plugin
    from pybtex.richtext import Text
    from pybtex.style.formatting.unsrt import Style as UnsrtStyle
    from pybtex.style.labels import BaseLabelStyle
    from pybtex.style.sorting.author_year_title import SortingStyle

    def surname(person: Any) -> str:
        return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")

    class AuthorYearLabels(BaseLabelStyle):
        """Labels as the text cites: "Welford, 1962", "Wu and He, 2018", "Goyal et al., 2017"."""

        def format_labels(self, sorted_entries: Any) -> Any:
            labels = []
            for entry in sorted_entries:
                people = entry.persons.get("author") or entry.persons.get("editor") or []
                names = [surname(p) for p in people]
                if len(names) > 2:
                    who = f"{names[0]} et al."
                else:
                    who = " and ".join(names) or entry.fields.get("title", entry.key)
                labels.append(f"{who}, {entry.fields.get('year', 'n.d.')}")
            seen: dict[str, int] = {}
            for label in labels:
                seen[label] = seen.get(label, 0) + 1
            counts: dict[str, int] = {}
            for label in labels:  # "He et al., 2016a" and "He et al., 2016b"
                if seen[label] > 1:
                    counts[label] = counts.get(label, 0) + 1
                    yield label + "abcdefghijklmnopqrstuvwxyz"[counts[label] - 1]
                else:
                    yield label

    class Style(UnsrtStyle):
        default_label_style = AuthorYearLabels
        default_sorting_style = SortingStyle

    register_plugin("pybtex.style.formatting", "bnbook", Style, force=True)


# --- page metadata and the PDF ------------------------------------------------------------
DESCRIPTION = (
    "An open, interactive textbook on batch normalization: every idea implemented in a small "
    "Python package, tested against PyTorch, and explored with figures that run offline."
)
PDF_NAME = "bnbook.pdf"


def _page_context(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    title = re.sub(r"<[^>]+>", "", str(context.get("title") or "")).strip()
    text = f"{title}: {DESCRIPTION}" if title and pagename != app.config.root_doc else DESCRIPTION
    tag = f'<meta name="description" content="{html.escape(text, quote=True)}" />\n'
    context["metatags"] = context.get("metatags", "") + tag


def _publish_pdf(app: Sphinx, exception: Exception | None) -> None:
    """Copy a PDF made by ``make pdf`` into the site and tell the pages where it is."""
    if exception is not None or app.builder.name != "html":
        return
    static = Path(app.outdir, "_static")
    pdf = Path(app.outdir).parent / "pdf" / PDF_NAME
    publish_pdf(static, pdf if pdf.is_file() else None)


def publish_pdf(static: Path, pdf: Path | None) -> None:
    """Write ``bnbook-pdf.js`` under ``static`` (and copy ``pdf`` there when it exists)."""
    import shutil

    static.mkdir(parents=True, exist_ok=True)
    url = "null"
    if pdf is not None:
        if pdf.resolve() != (static / PDF_NAME).resolve():
            shutil.copyfile(pdf, static / PDF_NAME)
        url = f'"{PDF_NAME}"'
    (static / "bnbook-pdf.js").write_text(
        "// Written by the build: the whole book as a PDF, relative to _static/ (null: not built).\n"
        f"window.BNBOOK_PDF = {url};\n",
        encoding="utf-8",
    )


def setup(app: Sphinx) -> dict[str, Any]:
    _normalise_inline_js(app)
    _register_bibliography_style()
    app.add_node(nodes.citation, override=True, html=(_visit_citation, _depart_citation))
    # priority > 500: run after Jupyter Book's config handling and after
    # sphinx-tippy has registered its defaults.
    app.connect("config-inited", _drop_vendor_assets, priority=900)
    app.connect("config-inited", _check_tippy_js, priority=900)
    # every extension has registered its nodes by now; translators are made when writing
    app.connect("builder-inited", _share_html_handlers)
    # after reading, before writing: the tooltip data of pages that are not rewritten
    app.connect("env-updated", _restore_tippy_data)
    # after sphinx-tippy's build-finished handler (priority 500) wrote the new files
    app.connect("build-finished", _remove_stale_tippy_files, priority=900)
    app.connect("build-finished", _save_tippy_data, priority=900)
    # after sphinx-mathjax-offline's build-finished handler (priority 500) copied MathJax
    app.connect("build-finished", _prune_offline_mathjax, priority=900)
    app.connect("doctree-read", _glossary_targets)
    app.connect("doctree-resolved", _mark_term_links)
    # after Sphinx's TocTreeCollector (priority 500) numbered the figures across the book
    app.connect("env-get-updated", _number_exercises_per_document, priority=900)
    app.connect("html-page-context", _page_context)
    app.connect("build-finished", _publish_pdf, priority=900)
    return {"version": __version__, "parallel_read_safe": True, "parallel_write_safe": True}
