"""Local Sphinx extension: fixes to the Jupyter Book 1 stack that the book relies on.

Registered in ``_config.yml`` under ``sphinx: local_extensions``. It does seven
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
"""

from __future__ import annotations

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


def setup(app: Sphinx) -> dict[str, Any]:
    _normalise_inline_js(app)
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
    return {"version": __version__, "parallel_read_safe": True, "parallel_write_safe": True}
