"""Make the whole book as one PDF: ``_build/pdf/bnbook.pdf`` (``make pdf``).

    .venv/bin/python tools/make_pdf.py [--path-output .] [--skip-build] [--out _build/pdf/bnbook.pdf]
                                       [--only chapters/01_internal_covariate_shift ...]

1. Builds the book as one HTML page (Jupyter Book's ``singlehtml`` builder,
   into ``<path-output>/_build/singlehtml``): every page of ``_toc.yml`` in
   its order, with the book's offline MathJax.
2. Serves it on 127.0.0.1 and opens it in headless Chromium (Debian's
   ``/usr/bin/chromium`` or ``$BNBOOK_CHROMIUM``, driven by Playwright), with
   every request to another host blocked: the PDF is made offline.
3. Readies the page for paper: typesets all the math (MathJax typesets lazily
   on screen, ``ui/lazy``), loads every image, opens the folded exercise
   solutions (the book's ``toggleOpenOnPrint``), and puts a title page and a
   table of contents in front. Then, laid out as on paper (print media, the
   width of the printed column), the book's own print preparation
   (``window.bnbookPreparePrint`` of ``_static/bnbook.js``, the same that a
   browser's Print runs) turns each explorer into a strip of frames with
   their slider values, puts the quiz's answers in a key after the quiz, and
   marks the blocks too tall to keep on one page. The print rules of
   ``_static/bnbook.css`` do the rest: no sidebars or buttons, no hidden
   cells, code cells kept whole with their frame, each chapter on a new page.
4. Prints it to PDF twice: the first print tells on which page each chapter
   starts (from the PDF's outline), the second carries those page numbers
   in the table of contents.
5. Replaces Chromium's outline (bookmarks), whose titles lose the spaces at
   line breaks, repeat themselves and drop their math, and which hangs every
   chapter under the introduction: the new one has the book's pages at the
   top level (the contents, the introduction, each chapter, the glossary and
   the bibliography), their sections under them, each title as the page
   shows it, and each entry pointing where Chromium's did.
6. When the default output was made and the HTML book is built
   (``_build/html``), copies the PDF into it, where the download menu and
   the introduction link to it (``publish_pdf`` of ``_ext/bnbook_site.py``;
   ``make book`` does the same for a PDF that is already there).

The PDF is tagged (accessible structure). ``--only`` prints the introduction
and the named pages alone, a quick look while editing the print rules.
``tests/test_pdf.py`` checks the result.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from localsite import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402

DEFAULT_OUT = ROOT / "_build" / "pdf" / "bnbook.pdf"
#: Any URL with a scheme and host other than the local server.
EXTERNAL_URL = re.compile(r"^(?!https?://127\.0\.0\.1[:/])[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# Chromium's PDFs count their objects one way and pypdf another ("Object count ... exceeds defined
# trailer size"): a harmless warning on every read.
logging.getLogger("pypdf").setLevel(logging.ERROR)
#: How long the page may take to typeset its math and load its images (the machine may be busy).
READY_MS = 600_000

PDF_OPTIONS: dict[str, Any] = {
    "format": "A4",
    "margin": {"top": "16mm", "bottom": "18mm", "left": "16mm", "right": "16mm"},
    "print_background": True,
    "scale": 0.85,  # body text about 10 pt
    "display_header_footer": True,
    "header_template": "<span></span>",
    "tagged": True,
    "outline": True,
}
#: The printed column in CSS pixels (96 per inch) at the print's scale: the layout Chromium prints.
_MM = 96 / 25.4
PRINT_WIDTH_PX = round((210 - 16 - 16) * _MM / PDF_OPTIONS["scale"])
PRINT_HEIGHT_PX = round((297 - 16 - 18) * _MM / PDF_OPTIONS["scale"])
#: Outline depth: a page of the book, its sections, their subsections.
OUTLINE_DEPTH = 3
FOOTER = (
    '<div style="width:100%;font-size:8px;color:#555;padding:0 16mm;display:flex;'
    'justify-content:space-between;font-family:sans-serif">'
    "<span>{title}</span><span><span class='pageNumber'></span> / <span class='totalPages'></span></span>"
    "</div>"
)

#: Styles for the pieces this script adds (title page, contents); print-only by nature.
_PDF_CSS = """
/* the theme prints a page's title and contents of its own, and hides the page's first h1 */
#jb-print-docs-body { display: none !important; }
.bd-main .bd-content .bd-article h1:first-of-type { display: block !important; }
.bnbook-pdf-front { break-after: page; }
.bnbook-pdf-front h1 { font-size: 2.2em; margin: 30vh 0 0.3em; border: none; }
.bnbook-pdf-front .bnbook-pdf-sub { font-size: 1.1em; color: #444; margin: 0 0 2em; }
.bnbook-pdf-front .bnbook-pdf-note { font-size: 0.9em; color: #444; max-width: 36em; }
.bnbook-pdf-toc { break-after: page; }
.bnbook-pdf-toc h2 { margin-top: 0; }
.bnbook-pdf-toc ol { list-style: none; padding: 0; margin: 0 0 0.8em; }
.bnbook-pdf-toc .bnbook-pdf-part { font-weight: 600; margin: 1em 0 0.3em; }
.bnbook-pdf-toc li a { display: flex; gap: 0.4em; color: inherit; text-decoration: none; padding: 0.15em 0; }
.bnbook-pdf-toc li a .bnbook-pdf-dots { flex: 1; border-bottom: 1px dotted #999; margin-bottom: 0.35em; }
/* the introduction's link to this PDF, which the HTML site shows */
#bnbook-pdf { display: none !important; }
"""

_WAIT_FOR_MATHJAX = """async () => {
  const t0 = performance.now();
  while (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    if (performance.now() - t0 > 60000) return 'MathJax never started';
    await new Promise(r => setTimeout(r, 100));
  }
  await MathJax.startup.promise;
  return 'ready';
}"""

# The title page and the contents (one entry per _toc.yml file, grouped by its part); each page's
# heading is marked (data-bnbook-page) for the outline. ``toc`` is [[part caption, [file, ...]], ...].
_PREPARE = r"""({toc, title, author}) => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') ||
                  document.body;
  const style = document.createElement('style');
  style.textContent = %(css)s;
  document.head.appendChild(style);

  // each page of the book: the heading that follows its document marker (the root page: the first h1)
  const heading = (file, root) => {
    const marker = document.getElementById('document-' + file);
    let el = marker;
    if (!marker) return root ? article.querySelector('h1') : null;
    while (el && !(el.matches && el.matches('section'))) el = el.nextElementSibling;
    return el ? el.querySelector('h1, h2, h3') : null;
  };
  const text = h => h ? Array.from(h.childNodes).filter(n => !(n.classList &&
                        n.classList.contains('headerlink'))).map(n => n.textContent).join('').trim() : '';
  const entries = [];
  const nav = document.createElement('nav');
  nav.className = 'bnbook-pdf-toc';
  nav.setAttribute('aria-label', 'Contents');
  nav.innerHTML = '<h2>Contents</h2>';
  toc.forEach(([caption, files], part) => {
    if (caption) {
      const p = document.createElement('p');
      p.className = 'bnbook-pdf-part';
      p.textContent = caption;
      nav.appendChild(p);
    }
    const ol = document.createElement('ol');
    files.forEach((file, k) => {
      const h = heading(file, part === 0 && k === 0);
      if (!h) { entries.push({file, title: '', missing: true}); return; }
      h.dataset.bnbookPage = file;
      const section = h.closest('section');
      const id = section && section.id ? section.id : (h.id || '');
      const li = document.createElement('li');
      const a = document.createElement('a');
      a.href = '#' + id;
      const name = document.createElement('span');
      name.textContent = text(h);
      const dots = document.createElement('span');
      dots.className = 'bnbook-pdf-dots';
      const page = document.createElement('span');
      page.className = 'bnbook-pdf-page';
      page.dataset.file = file;
      a.append(name, dots, page);
      li.appendChild(a);
      ol.appendChild(li);
      entries.push({file, title: text(h), missing: false});
    });
    nav.appendChild(ol);
  });
  const front = document.createElement('section');
  front.className = 'bnbook-pdf-front';
  front.innerHTML = '<h1></h1><p class="bnbook-pdf-sub"></p><p class="bnbook-pdf-note">' +
    'This is the printable edition of an interactive book. In the HTML edition the explorers have ' +
    'sliders that redraw their pictures, the quiz checks your answers, and every chapter opens as a ' +
    'notebook you can run (Binder, Colab, or on your own machine). Here each explorer prints a few of ' +
    'its pictures, each under the values that drew it, the quiz\u2019s answers follow the quiz, and ' +
    'the exercises\u2019 solutions follow the exercises.</p>';
  front.querySelector('h1').textContent = title;
  front.querySelector('.bnbook-pdf-sub').textContent = author;
  article.prepend(front, nav);

  // links to other pages of the HTML book (the quiz's "More in Chapter N"): to their place in this one
  const markers = Array.from(document.querySelectorAll('span[id^="document-"]'));
  const here = location.origin + location.pathname;
  document.querySelectorAll('a[href]').forEach(a => {
    const url = new URL(a.getAttribute('href'), location.href);
    if (url.origin !== location.origin || url.origin + url.pathname === here) return;
    const stem = url.pathname.split('/').pop().replace(/\.html$/, '');
    const marker = markers.find(m => m.id.split('/').pop() === stem);
    let el = marker;
    while (el && !(el.matches && el.matches('section'))) el = el.nextElementSibling;
    const anchor = url.hash && document.getElementById(decodeURIComponent(url.hash.slice(1)));
    if (anchor) a.setAttribute('href', url.hash);
    else if (el && el.id) a.setAttribute('href', '#' + el.id);
    else a.removeAttribute('href');  // a file of the site (a download, a source): not in the PDF
  });

  return entries;
}"""

# Everything on paper: images loaded, all math typeset, folded solutions open, fonts ready.
_READY = r"""async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null :
    new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  const doc = MathJax.startup.document;
  if (doc.lazyTypesetAll) await doc.lazyTypesetAll();  // ui/lazy: typeset what is off screen too
  else await MathJax.typesetPromise();
  window.dispatchEvent(new Event('beforeprint'));  // sphinx-togglebutton opens the folded solutions
  await new Promise(r => setTimeout(r, 800));      // its 0.3 s transitions
  await document.fonts.ready;
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.src || '').slice(0, 80));
  return {
    images: imgs.length,
    broken,
    lazy: document.querySelectorAll('mjx-lazy').length,
    math: document.querySelectorAll('mjx-container').length,
    errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.textContent).slice(0, 5),
    folded: document.querySelectorAll('.admonition.toggle-hidden').length,
  };
}"""

# Laid out as on paper: the book's own print preparation (_static/bnbook.js), then every image
# loaded, the strips' frames included.
_PREPARE_PRINT = r"""async (pageHeight) => {
  if (typeof window.bnbookPreparePrint !== 'function') return {error: 'bnbookPreparePrint is missing'};
  const done = window.bnbookPreparePrint({pageHeight});
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.complete ? null :
    new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  done.explorersOnPage = document.querySelectorAll('.bnbook-explorer').length;
  done.broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  return done;
}"""

# Every heading on paper, in order, for the outline: its text as printed (math as Unicode text,
# from MathJax's MathML), its key (the text without math, as Chromium's outline has it) and its level
# (1: a page of the book or the contents; the front page's title is left out).
_HEADINGS = r"""() => {
  const SUP = {'0':'\u2070','1':'\u00b9','2':'\u00b2','3':'\u00b3','4':'\u2074','5':'\u2075','6':'\u2076',
               '7':'\u2077','8':'\u2078','9':'\u2079','+':'\u207a','-':'\u207b','\u2212':'\u207b',
               '(':'\u207d',')':'\u207e','n':'\u207f','i':'\u2071','T':'\u1d40'};
  const SUB = {'0':'\u2080','1':'\u2081','2':'\u2082','3':'\u2083','4':'\u2084','5':'\u2085','6':'\u2086',
               '7':'\u2087','8':'\u2088','9':'\u2089','+':'\u208a','-':'\u208b','\u2212':'\u208b',
               '(':'\u208d',')':'\u208e','i':'\u1d62','j':'\u2c7c','m':'\u2098','n':'\u2099'};
  const ACCENT = {'^':'\u0302','\u02c6':'\u0302','\u00af':'\u0304','\u2015':'\u0304','~':'\u0303',
                  '\u02dc':'\u0303','\u02d9':'\u0307','\u2192':'\u20d7'};
  const script = (t, map, mark) => Array.from(t).every(c => c in map) ?
    Array.from(t).map(c => map[c]).join('') : mark + (t.length > 1 ? '(' + t + ')' : t);
  const wrap = t => t.length > 1 ? '(' + t + ')' : t;
  const flat = node => {
    if (node.nodeType === 3) return node.textContent;
    const kids = Array.from(node.children);
    switch (node.localName) {
      case 'msup': return flat(kids[0]) + script(flat(kids[1]), SUP, '^');
      case 'msub': return flat(kids[0]) + script(flat(kids[1]), SUB, '_');
      case 'msubsup':
        return flat(kids[0]) + script(flat(kids[1]), SUB, '_') + script(flat(kids[2]), SUP, '^');
      case 'mfrac': return wrap(flat(kids[0])) + '/' + wrap(flat(kids[1]));
      case 'msqrt': return '\u221a' + wrap(kids.map(flat).join(''));
      case 'mover': case 'munder': {
        const base = flat(kids[0]), mark = flat(kids[1]).trim();
        return mark in ACCENT ? base + ACCENT[mark] : base;
      }
      default: return kids.length ? kids.map(flat).join('') : node.textContent;
    }
  };
  const items = new Map();
  const doc = window.MathJax && MathJax.startup && MathJax.startup.document;
  if (doc) for (const item of doc.math) items.set(item.typesetRoot, item);
  const mathText = el => {
    const item = items.get(el);
    if (!item) return el.textContent;
    try {
      const mml = new DOMParser().parseFromString(MathJax.startup.toMML(item.root), 'application/xml');
      return flat(mml.documentElement).replace(/[\u2061-\u2064]/g, '').replace(/\s+/g, '');
    } catch (e) { return item.math; }
  };
  const walk = (node, math) => {
    if (node.nodeType === 3) return node.textContent;
    if (node.nodeType !== 1 || node.classList.contains('headerlink')) return '';
    if (node.localName === 'mjx-container') return math ? mathText(node) : ' ';
    return Array.from(node.childNodes).map(n => walk(n, math)).join('');
  };
  const clean = t => t.replace(/\s+/g, ' ').trim();
  const out = [];
  let base = 1;
  document.querySelectorAll('h1, h2, h3, h4, h5, h6').forEach(h => {
    if (!h.getClientRects().length) return;  // not on paper
    const tag = +h.localName[1];
    const front = !!h.closest('.bnbook-pdf-front');
    const contents = !!h.closest('.bnbook-pdf-toc');
    const page = h.dataset.bnbookPage || null;
    if (page) base = tag;
    const level = front || contents || page ? 1 : Math.max(2, tag - base + 1);
    out.push({text: clean(walk(h, true)), key: clean(walk(h, false)), level, page, front});
  });
  return out;
}"""

# --only: the introduction and the named pages; the other pages of the book go.
_KEEP_ONLY = """files => {
  document.querySelectorAll('span[id^="document-"]').forEach(marker => {
    if (files.includes(marker.id.slice('document-'.length))) return;
    let el = marker.nextElementSibling;
    while (el && !(el.matches && el.matches('section'))) el = el.nextElementSibling;
    if (el) el.remove();
    marker.remove();
  });
}"""

_SET_PAGES = """pages => {
  document.querySelectorAll('.bnbook-pdf-toc .bnbook-pdf-page').forEach(el => {
    el.textContent = pages[el.dataset.file] || '';
  });
}"""


def toc_files(root: Path = ROOT) -> list[tuple[str, list[str]]]:
    """[(part caption, [file, ...]), ...] from ``_toc.yml``, the root page first (no caption)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    parts: list[tuple[str, list[str]]] = [("", [str(toc["root"])])]
    for part in toc.get("parts", []):
        files = [str(c["file"]) for c in part.get("chapters", [])]
        parts.append((str(part.get("caption", "")), files))
    for chapter in toc.get("chapters", []):  # a toc without parts
        parts[0][1].append(str(chapter["file"]))
    return parts


def build_singlehtml(path_output: Path) -> Path:
    """Build the book as one page with Jupyter Book; returns the folder of ``index.html``."""
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", str(ROOT), "--builder", "singlehtml"]
    cmd += ["--path-output", str(path_output)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return path_output / "_build" / "singlehtml"


def _outline_pages(pdf: Path) -> list[tuple[str, int]]:
    """(title, 1-based page) for every entry of the PDF's outline, depth first."""
    from pypdf import PdfReader

    reader = PdfReader(str(pdf))
    found: list[tuple[str, int]] = []

    def walk(items: Any) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
            else:
                page = reader.get_destination_page_number(item)
                found.append((" ".join(str(item.title).split()), page + 1))

    walk(reader.outline)
    return found


def _norm(text: str) -> str:
    """Text without white space, lower case: outline titles lose the spaces at their line breaks."""
    return "".join(text.split()).lower()


def _same_heading(title: str, key: str) -> bool:
    """Whether Chromium's outline title (normalized) is the heading ``key`` (normalized).

    Chromium's title of a heading over two lines may be the heading (its spaces at the line
    break lost) or the heading twice ("AbAb"), or its first line then the heading ("AAb").
    """
    if not key:
        return False
    if title.startswith(key):
        return True
    return title.endswith(key) and key.startswith(title[: len(title) - len(key)])


def _outline_items(reader: Any) -> list[Any]:
    """Every entry of a PDF's outline, depth first."""
    found: list[Any] = []

    def walk(items: Any) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
            else:
                found.append(item)

    walk(reader.outline)
    return found


def rewrite_outline(pdf: Path, headings: list[dict[str, Any]]) -> dict[str, Any]:
    """Replace the outline of ``pdf`` by one made of ``headings`` (from ``_HEADINGS``), in place.

    Chromium's outline has an entry for each heading on paper, in order, with a title that may
    be repeated ("NotationNotation"), lack the spaces at its line breaks or its math, and nested
    by the HTML's heading levels. Each heading finds its entry by its text without math (spaces
    and case aside) and keeps that entry's place on the page; its title and its depth come from
    the heading.
    """
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import Fit, NameObject

    reader = PdfReader(str(pdf))
    old = _outline_items(reader)
    titles = [_norm(str(item.title)) for item in old]
    placed: list[tuple[dict[str, Any], Any]] = []
    lost: list[str] = []
    k = 0
    for h in headings:
        key = _norm(h["key"])
        hit = next((j for j in range(k, min(k + 8, len(old))) if _same_heading(titles[j], key)), None)
        if hit is None:
            lost.append(h["text"])
            continue
        k = hit + 1
        if not h["front"] and h["level"] <= OUTLINE_DEPTH:
            placed.append((h, old[hit]))
    writer = PdfWriter(clone_from=reader)
    writer.root_object.pop(NameObject("/Outlines"), None)
    parents: list[Any] = []
    for h, item in placed:
        level = min(h["level"], len(parents) + 1)
        del parents[level - 1 :]
        page = reader.get_destination_page_number(item)
        left, top = item.get("/Left"), item.get("/Top")
        fit = Fit.xyz(left=left, top=top) if top is not None else Fit.fit()
        parent = parents[-1] if parents else None
        parents.append(
            writer.add_outline_item(title=h["text"], page_number=page, parent=parent, fit=fit, is_open=False)
        )
    writer.page_mode = "/UseOutlines"
    tmp = pdf.with_name(pdf.stem + ".outline.pdf")
    with tmp.open("wb") as fh:
        writer.write(fh)
    tmp.replace(pdf)
    return {"entries": len(placed), "lost": lost}


def publish(pdf: Path, html_dir: Path) -> bool:
    """Copy the PDF into a built HTML book, for its links (``publish_pdf`` of ``_ext/bnbook_site.py``)."""
    if not (html_dir / "intro.html").is_file():
        return False
    sys.path.insert(0, str(ROOT / "_ext"))
    from bnbook_site import publish_pdf

    publish_pdf(html_dir / "_static", pdf)
    return True


def chapter_pages(pdf: Path, entries: list[dict[str, Any]]) -> dict[str, int]:
    """The page on which each entry's heading starts, read from the PDF's outline, in order."""
    outline = _outline_pages(pdf)
    pages: dict[str, int] = {}
    start = 0
    for entry in entries:
        title = _norm(entry["title"])
        for k in range(start, len(outline)):
            if _same_heading(_norm(outline[k][0]), title) and outline[k][1] > 1:
                pages[entry["file"]] = outline[k][1]
                start = k + 1
                break
    return pages


def make_pdf(html_dir: Path, out: Path, only: list[str] | None = None) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    title = str(config.get("title", "bnbook"))
    author = str(config.get("author", ""))
    index = "intro.html" if (html_dir / "intro.html").is_file() else "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    draft = out.with_name(out.stem + ".draft.pdf")
    parts = toc_files()
    if only:
        unknown = sorted(set(only) - {f for _, files in parts for f in files})
        if unknown:
            raise SystemExit(f"make_pdf: --only names pages that _toc.yml does not: {unknown}")
        keep = {parts[0][1][0], *only}
        parts = [(caption, [f for f in files if f in keep]) for caption, files in parts]
        parts = [(caption, files) for caption, files in parts if files]
    external: list[str] = []
    with serve(html_dir) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 1400}, service_workers="block")

        def abort(route: Any) -> None:
            external.append(route.request.url)
            route.abort("blockedbyclient")

        context.route(EXTERNAL_URL, abort)
        page = context.new_page()
        page.set_default_timeout(READY_MS)
        t0 = time.perf_counter()
        page.goto(base + index, wait_until="load", timeout=READY_MS)
        status = page.evaluate(_WAIT_FOR_MATHJAX)
        if status != "ready":
            raise SystemExit(f"make_pdf: {status}")
        if only:
            page.evaluate(_KEEP_ONLY, [f for _, files in parts for f in files])
        entries = page.evaluate(
            _PREPARE % {"css": json.dumps(_PDF_CSS)}, {"toc": parts, "title": title, "author": author}
        )
        missing = [e["file"] for e in entries if e["missing"]]
        if missing:
            raise SystemExit(f"make_pdf: no heading found for {missing} in {html_dir / index}")
        ready = page.evaluate(_READY)
        problems = []
        if ready["broken"]:
            problems.append(f"images that did not load: {ready['broken'][:5]}")
        if ready["lazy"]:
            problems.append(f"{ready['lazy']} formulas were not typeset")
        if ready["errors"]:
            problems.append(f"MathJax errors: {ready['errors']}")
        if external:
            problems.append(f"requests to other hosts (blocked): {external[:5]}")
        if problems:
            raise SystemExit("make_pdf: " + "; ".join(problems))
        # from here on the page is laid out as it prints: print rules, the printed column's width
        page.emulate_media(media="print")
        page.set_viewport_size({"width": PRINT_WIDTH_PX, "height": PRINT_HEIGHT_PX})
        paper = page.evaluate(_PREPARE_PRINT, PRINT_HEIGHT_PX)
        if paper.get("error"):
            raise SystemExit(f"make_pdf: {paper['error']} (is _static/bnbook.js in the build?)")
        if paper["explorers"] < paper["explorersOnPage"] or paper["broken"]:
            raise SystemExit(
                f"make_pdf: {paper['explorers']} of {paper['explorersOnPage']} explorers got a strip of "
                f"frames; {paper['broken']} images did not load"
            )
        options = dict(PDF_OPTIONS, footer_template=FOOTER.format(title=html.escape(title)))
        page.pdf(path=str(draft), **options)
        pages = chapter_pages(draft, entries)
        unplaced = [e["file"] for e in entries if e["file"] not in pages]
        if unplaced:
            print(f"make_pdf: no outline entry found for {unplaced}; their page numbers stay blank")
        page.evaluate(_SET_PAGES, {k: str(v) for k, v in pages.items()})
        page.pdf(path=str(out), **options)
        headings = page.evaluate(_HEADINGS)
        browser.close()
    draft.unlink(missing_ok=True)
    check = chapter_pages(out, entries)
    moved = {k: (pages[k], check.get(k)) for k in pages if check.get(k) != pages[k]}
    if moved:  # the numbers themselves moved a heading to another page: should not happen
        print(f"make_pdf: contents page numbers off for {moved}")
    outline = rewrite_outline(out, headings)
    if outline["lost"]:
        print(f"make_pdf: {len(outline['lost'])} headings found no outline entry: {outline['lost'][:5]}")
    from pypdf import PdfReader

    n_pages = len(PdfReader(str(out)).pages)
    return {
        "pages": n_pages,
        "images": ready["images"],
        "formulas": ready["math"],
        "chapters": len(entries),
        "explorers": paper["explorers"],
        "frames": paper["frames"],
        "tall": paper["tall"],
        "bookmarks": outline["entries"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path-output", type=Path, default=ROOT, help="jupyter-book's --path-output")
    parser.add_argument("--skip-build", action="store_true", help="use the singlehtml build already there")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--only", nargs="+", metavar="FILE", help="print the introduction and these pages of _toc.yml alone"
    )
    args = parser.parse_args()
    html_dir = args.path_output.resolve() / "_build" / "singlehtml"
    if not args.skip_build:
        html_dir = build_singlehtml(args.path_output.resolve())
    if not (html_dir / "intro.html").is_file() and not (html_dir / "index.html").is_file():
        raise SystemExit(f"make_pdf: no singlehtml build in {html_dir}")
    info = make_pdf(html_dir, args.out, args.only)
    size = args.out.stat().st_size / 2**20
    print(
        f"wrote {args.out} ({size:.1f} MB): {info['pages']} pages, {info['chapters']} pages of the book, "
        f"{info['images']} images, {info['formulas']} formulas, {info['explorers']} explorers as "
        f"{info['frames']} frames, {info['tall']} blocks free to break across pages, "
        f"{info['bookmarks']} bookmarks; {info['seconds']:.0f} s in Chromium"
    )
    site = args.path_output.resolve() / "_build" / "html"
    if args.out.resolve() == DEFAULT_OUT.resolve() and not args.only and publish(args.out, site):
        print(f"copied it into {site / '_static'}, where the book's pages link to it")


if __name__ == "__main__":
    main()
