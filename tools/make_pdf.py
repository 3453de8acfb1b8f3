"""Make the whole book as one PDF: ``_build/pdf/bnbook.pdf`` (``make pdf``).

    .venv/bin/python tools/make_pdf.py [--path-output .] [--skip-build] [--out _build/pdf/bnbook.pdf]

1. Builds the book as one HTML page (Jupyter Book's ``singlehtml`` builder,
   into ``<path-output>/_build/singlehtml``): every page of ``_toc.yml`` in
   its order, with the book's offline MathJax.
2. Serves it on 127.0.0.1 and opens it in headless Chromium (Debian's
   ``/usr/bin/chromium`` or ``$BNBOOK_CHROMIUM``, driven by Playwright), with
   every request to another host blocked: the PDF is made offline.
3. Readies the page for paper: typesets all the math (MathJax typesets lazily
   on screen, ``ui/lazy``), loads every image, opens the folded exercise
   solutions (the book's ``toggleOpenOnPrint``), moves the quiz's answers to
   the end of the quiz, and puts a title page and a table of contents in
   front. The print rules of ``_static/bnbook.css`` do the rest: no
   sidebars or buttons, explorers as their first picture with their values
   and a caption, each chapter on a new page.
4. Prints it to PDF twice: the first print tells on which page each chapter
   starts (from the PDF's outline), the second carries those page numbers
   in the table of contents.

The PDF is tagged (accessible structure) and has an outline (bookmarks) of
the headings. ``tests/test_pdf.py`` checks the result.
"""

from __future__ import annotations

import argparse
import html
import json
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
FOOTER = (
    '<div style="width:100%;font-size:8px;color:#555;padding:0 16mm;display:flex;'
    'justify-content:space-between;font-family:sans-serif">'
    "<span>{title}</span><span><span class='pageNumber'></span> / <span class='totalPages'></span></span>"
    "</div>"
)

#: Styles for the pieces this script adds (title page, contents, quiz answers); print-only by nature.
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
.bnq-print-answers { break-before: page; }
.bnq-print-answers .bnq-print-answer { margin: 0 0 0.8em; break-inside: avoid; }
.bnq-print-answers .bnq-print-answer p { margin: 0.15em 0; }
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

# The title page, the contents (one entry per _toc.yml file, grouped by its part) and the quiz's answers
# moved to the end of the quiz. ``toc`` is [[part caption, [file, ...]], ...].
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
    'notebook you can run (Binder, Colab, or on your own machine). Here each explorer shows its first ' +
    'picture, the quiz\u2019s answers follow the quiz, and the exercises\u2019 solutions follow the ' +
    'exercises.</p>';
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

  // the quiz: its answers, with their explanations, in a section after the questions
  document.querySelectorAll('.bnbook-quiz').forEach(quiz => {
    const answers = document.createElement('section');
    answers.className = 'bnq-print-answers';
    answers.setAttribute('aria-label', 'Answers to the quiz');
    const h = document.createElement('p');
    h.innerHTML = '<strong>Answers to the quiz</strong>';
    answers.appendChild(h);
    quiz.querySelectorAll('fieldset.bnq-question').forEach((q, n) => {
      const details = q.querySelector('details.bnq-explain');
      if (!details) return;
      const item = document.createElement('div');
      item.className = 'bnq-print-answer';
      const label = document.createElement('p');
      label.innerHTML = '<strong></strong>';
      label.firstChild.textContent = 'Question ' + (n + 1) + '.';
      item.appendChild(label);
      details.querySelectorAll(':scope > p').forEach(p => item.appendChild(p));
      details.remove();
      answers.appendChild(item);
    });
    quiz.after(answers);
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


def chapter_pages(pdf: Path, entries: list[dict[str, Any]]) -> dict[str, int]:
    """The page on which each entry's heading starts, read from the PDF's outline, in order."""
    outline = _outline_pages(pdf)
    pages: dict[str, int] = {}
    start = 0
    for entry in entries:
        title = _norm(entry["title"])
        for k in range(start, len(outline)):
            # a title broken over lines may come twice in the outline ("AbAb"): compare its start
            if title and _norm(outline[k][0]).startswith(title) and outline[k][1] > 1:
                pages[entry["file"]] = outline[k][1]
                start = k + 1
                break
    return pages


def make_pdf(html_dir: Path, out: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    title = str(config.get("title", "bnbook"))
    author = str(config.get("author", ""))
    index = "intro.html" if (html_dir / "intro.html").is_file() else "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    draft = out.with_name(out.stem + ".draft.pdf")
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
        parts = toc_files()
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
        page.emulate_media(media="print")
        options = dict(PDF_OPTIONS, footer_template=FOOTER.format(title=html.escape(title)))
        page.pdf(path=str(draft), **options)
        pages = chapter_pages(draft, entries)
        unplaced = [e["file"] for e in entries if e["file"] not in pages]
        if unplaced:
            print(f"make_pdf: no outline entry found for {unplaced}; their page numbers stay blank")
        page.evaluate(_SET_PAGES, {k: str(v) for k, v in pages.items()})
        page.pdf(path=str(out), **options)
        browser.close()
    draft.unlink(missing_ok=True)
    check = chapter_pages(out, entries)
    moved = {k: (pages[k], check.get(k)) for k in pages if check.get(k) != pages[k]}
    if moved:  # the numbers themselves moved a heading to another page: should not happen
        print(f"make_pdf: contents page numbers off for {moved}")
    from pypdf import PdfReader

    n_pages = len(PdfReader(str(out)).pages)
    return {
        "pages": n_pages,
        "images": ready["images"],
        "formulas": ready["math"],
        "chapters": len(entries),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path-output", type=Path, default=ROOT, help="jupyter-book's --path-output")
    parser.add_argument("--skip-build", action="store_true", help="use the singlehtml build already there")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    html_dir = args.path_output.resolve() / "_build" / "singlehtml"
    if not args.skip_build:
        html_dir = build_singlehtml(args.path_output.resolve())
    if not (html_dir / "intro.html").is_file() and not (html_dir / "index.html").is_file():
        raise SystemExit(f"make_pdf: no singlehtml build in {html_dir}")
    info = make_pdf(html_dir, args.out)
    size = args.out.stat().st_size / 2**20
    print(
        f"wrote {args.out} ({size:.1f} MB): {info['pages']} pages, {info['chapters']} pages of the book, "
        f"{info['images']} images, {info['formulas']} formulas; {info['seconds']:.0f} s in Chromium"
    )


if __name__ == "__main__":
    main()
