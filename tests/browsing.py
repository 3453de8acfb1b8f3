"""Shared pieces of the browser tests: the built site, a local server, Chromium, and page visits.

The session fixtures (``summary``, ``base_url``, ``browser``, ``site``) are
registered for every test module by ``conftest.py``, so all browser tests
share one Playwright instance, one server and one visit of each page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from localsite import CHROMIUM, CHROMIUM_ARGS, serve

ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = Path(os.environ.get("BNBOOK_HTML_DIR") or ROOT / "_build" / "html").resolve()
SCREENSHOT_DIR = Path(os.environ.get("BNBOOK_SCREENSHOT_DIR") or HTML_DIR.parent / "screenshots")
VIEWPORT = {"width": 1280, "height": 900}
#: A page that has not reached its load event after this long hangs: the only timing that fails a test.
HANG_MS = 30_000
#: Cold loads timed per chapter; the summary reports the best and every try.
LOAD_ATTEMPTS = 2
SITE_BUDGET_MB = 100.0
#: Where the measured load times and site weight are written, for comparison between runs.
METRICS_FILE = HTML_DIR.parent / "browser-metrics.json"
#: Pages Sphinx generates around the content: checked for errors only.
HELPER_PAGES = {"search.html", "genindex.html", "py-modindex.html"}
#: Glossary terms hovered per page (each hover costs about half a second).
MAX_TERMS_PER_PAGE = 4


# --- what the built site holds, found at collection time ------------------------
def _discover() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"pages": [], "chapters": [], "explorers": [], "solutions": [], "terms": []}
    if not (HTML_DIR / "index.html").is_file():
        return found
    for path in sorted(HTML_DIR.rglob("*.html")):
        rel = path.relative_to(HTML_DIR).as_posix()
        if rel.split("/")[0] in {"_static", "_sources", "_images", "_downloads"}:
            continue
        html = path.read_text(encoding="utf-8", errors="replace")
        if re.search(r'<meta\s+http-equiv="refresh"', html[:3000], re.IGNORECASE):
            continue  # a redirect stub such as index.html -> intro.html
        found["pages"].append(rel)
        if rel in HELPER_PAGES:
            continue
        if rel.startswith("chapters/"):
            found["chapters"].append(rel)
        if 'class="bnbook-explorer"' in html:
            found["explorers"].append(rel)
        if re.search(r'class="solution dropdown\b', html):
            found["solutions"].append(rel)
        if re.search(r'<a class="[^"]*\breference internal\b[^"]*" href="[^"]*#term-', html):
            found["terms"].append(rel)
    return found


SITE = _discover()
NO_SITE = f"no built book at {HTML_DIR} (run `make book`, or set BNBOOK_HTML_DIR)"


def _params(key: str, what: str) -> list[Any]:
    if not SITE["pages"]:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_SITE), id="no-site")]
    if not SITE[key]:
        reason = f"no page of the book has {what}"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="none")]
    return [pytest.param(p, id=p) for p in SITE[key]]


#: Any URL with a scheme and host other than the local server (matched by Playwright's driver,
#: which is cheaper than a Python predicate called for every request).
_EXTERNAL_URL = re.compile(r"^(?!https?://127\.0\.0\.1[:/])[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _is_external(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in {"data", "blob", "about", "javascript", "chrome", "chrome-extension", "devtools"}:
        return False
    return parsed.hostname != "127.0.0.1"


# --- the summary printed at the end of the run -------------------------------------
class _Summary:
    """A pytest plugin that prints the figures at the end of the run and writes them to ``METRICS_FILE``.

    Registered once per process (``conftest.py``). Under ``pytest -n`` each worker
    measures its share of the pages and hands its figures to the controlling
    process when it finishes (``workeroutput``); the controller merges them and
    prints and writes the whole set, as one process would.
    """

    _KEY = "bnbook_browser_metrics"

    def __init__(self) -> None:
        self.loads: dict[str, list[float]] = {}
        self.site_bytes: int | None = None
        self.site_parts: list[tuple[str, int]] = []
        self.screenshots: list[Path] = []

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: pass the figures on
            workeroutput[self._KEY] = json.dumps(
                {"loads": self.loads, "site_bytes": self.site_bytes, "site_parts": self.site_parts,
                 "screenshots": [str(p) for p in self.screenshots]}
            )

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        found = getattr(node, "workeroutput", {}).get(self._KEY)
        if found is None:
            return
        part = json.loads(found)
        for page, times in part["loads"].items():
            self.loads.setdefault(page, []).extend(times)
        if part["site_bytes"] is not None:
            self.site_bytes = part["site_bytes"]
            self.site_parts = [tuple(kv) for kv in part["site_parts"]]
        self.screenshots += [Path(p) for p in part["screenshots"]]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if not self.loads and self.site_bytes is None:
            return
        tr.write_sep("-", "bnbook browser summary")
        if self.site_bytes is not None:
            parts = ", ".join(f"{name} {size / 2**20:.1f}" for name, size in self.site_parts[:5])
            tr.write_line(
                f"site weight: {self.site_bytes / 2**20:.1f} MB (budget {SITE_BUDGET_MB:.0f} MB); "
                f"largest parts in MB: {parts}"
            )
        if self.loads:
            tr.write_line(
                f"chapter load event, ms from navigation start (best of {LOAD_ATTEMPTS} cold loads; "
                f"measured, not judged: only a load over {HANG_MS / 1000:.0f} s fails):"
            )
            for page, times in sorted(self.loads.items()):
                tries = ", ".join(f"{t:.0f}" for t in times)
                tr.write_line(f"  {page:<45} {min(times):6.0f} ms   (tries: {tries})")
        if self.screenshots:
            tr.write_line(f"screenshots: {len(self.screenshots)} in {SCREENSHOT_DIR}")
        self.write(METRICS_FILE)
        tr.write_line(f"metrics written to {METRICS_FILE}")

    def write(self, path: Path) -> None:
        """The measurements as JSON: load times in ms per chapter, and the site's weight in bytes."""
        record = {
            "chapter_load_ms": {
                page: {"best": round(min(times)), "tries": [round(t) for t in times]}
                for page, times in sorted(self.loads.items())
            },
            "site_bytes": self.site_bytes,
            "site_largest_parts_bytes": dict(self.site_parts[:10]),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")


SUMMARY_PLUGIN = "bnbook-browser-summary"


def register_summary(config: pytest.Config) -> None:
    """Register the summary plugin in this process (the controller and every worker alike)."""
    if not config.pluginmanager.has_plugin(SUMMARY_PLUGIN):
        config.pluginmanager.register(_Summary(), SUMMARY_PLUGIN)


@pytest.fixture(scope="session")
def summary(request: pytest.FixtureRequest) -> _Summary:
    return request.config.pluginmanager.get_plugin(SUMMARY_PLUGIN)  # registered by conftest.py


# --- server and browser ----------------------------------------------------------
@pytest.fixture(scope="session")
def base_url() -> Iterator[str]:
    if not SITE["pages"]:
        pytest.skip(NO_SITE)
    with serve(HTML_DIR) as url:
        yield url


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set BNBOOK_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    playwright = sync_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as exc:  # a broken install: say so rather than error every test
        playwright.stop()
        pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {exc}")
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()


# --- visiting pages ----------------------------------------------------------------
_NAVIGATION_MS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  return nav.loadEventStart - nav.startTime;
}"""

_MATHJAX_DONE = """async () => {
  if (!document.querySelector('.math')) return 'no math';
  const t0 = performance.now();
  while (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    if (performance.now() - t0 > 20000) return 'MathJax never started';
    await new Promise(r => setTimeout(r, 50));
  }
  await MathJax.startup.promise;
  return 'typeset';
}"""

# MathJax typesets lazily (ui/lazy in _config.yml): a formula is typeset when it
# scrolls into view. Read the page as a reader would, one screen at a time,
# waiting at each screen until the math on it is typeset.
_READ_THROUGH = """async () => {
  const pause = () => new Promise(r => requestAnimationFrame(() => setTimeout(r, 20)));
  const lazyOnScreen = () => Array.from(document.querySelectorAll('mjx-lazy')).filter(e => {
    const box = e.closest('mjx-container') || e;  // empty until typeset, but laid out
    if (!box.checkVisibility({visibilityProperty: true})) return false;  // e.g. a folded solution
    const r = box.getBoundingClientRect();
    return r.bottom >= 0 && r.top <= innerHeight;
  }).length;
  const step = Math.max(300, innerHeight - 100);
  for (let y = 0; ; y += step) {
    window.scrollTo(0, y);
    await pause();
    const t0 = performance.now();
    while (lazyOnScreen() && performance.now() - t0 < 5000) await pause();
    if (y + innerHeight >= document.documentElement.scrollHeight) break;
  }
  window.scrollTo(0, 0);
  await pause();
}"""

_PAGE_STATE = r"""async () => {
  // images first: make lazy ones load, then wait for every image to settle
  const imgs = Array.from(document.images);
  imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null :
    new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  const badImages = imgs.filter(i => !(i.complete && i.naturalWidth > 0))
                        .map(i => (i.currentSrc || i.src).slice(0, 100));
  const article = document.querySelector('article') || document.body;
  const math = Array.from(article.querySelectorAll('.math'));
  // math the reader can see (not inside a folded solution) must be typeset by now
  const untypeset = math.filter(m => m.checkVisibility({visibilityProperty: true}) &&
                                     (!m.querySelector('mjx-container') || m.querySelector('mjx-lazy')))
                        .map(m => m.textContent.trim().slice(0, 80));
  const mathErrors = Array.from(document.querySelectorAll('mjx-merror'))
                        .map(e => e.getAttribute('data-mjx-error') || e.textContent).slice(0, 10);
  const clone = article.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight')
       .forEach(e => e.remove());
  const text = clone.textContent;
  const rawDisplay = (text.match(/\$\$[^$]{0,60}/g) || []).slice(0, 5);
  const rawInline = (text.match(/\$[^$\n]{0,80}?[\\^_{}][^$\n]{0,80}?\$/g) || []).slice(0, 5);
  const rawDelims = (text.match(/\\[(\[][^\n]{0,60}/g) || []).slice(0, 5);
  // a TeX command such as \sigma or \mathcal in prose: math that was not parsed as math
  const rawCommands = (text.match(/\$?\\[A-Za-z]{2,}[^\n]{0,40}/g) || []).slice(0, 5);
  return {badImages, mathCount: math.length, mjx: article.querySelectorAll('mjx-container').length,
          untypeset, mathErrors, rawDisplay, rawInline, rawDelims, rawCommands};
}"""


@dataclass
class Visit:
    """One page, open in its own browser context, with everything it logged."""

    path: str
    context: Any
    page: Any
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    load_ms: float = float("nan")
    mathjax: str = ""

    def problems(self) -> list[str]:
        return (
            [f"JavaScript error: {e}" for e in self.page_errors]
            + [f"console error: {e}" for e in self.console_errors]
            + [f"failed request: {e}" for e in self.failed]
            + [f"external request (blocked): {e}" for e in self.external]
        )

    def mark(self) -> int:
        return len(self.problems())

    def new_problems(self, mark: int) -> list[str]:
        return self.problems()[mark:]


class Browser:
    """Opens each page once, in a fresh context (cold cache), and keeps it open for the tests."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url
        self.visits: dict[str, Visit] = {}

    def _load(self, path: str, read_through: bool = True, block: bool = True) -> Visit:
        context = self.browser.new_context(viewport=VIEWPORT, service_workers="block")
        page = context.new_page()
        visit = Visit(path=path, context=context, page=page)

        def abort(route: Any) -> None:
            visit.external.append(route.request.url)
            route.abort("blockedbyclient")

        if block:
            context.route(_EXTERNAL_URL, abort)
        else:  # still count them: any such request fails the test
            page.on("request", lambda req: _is_external(req.url) and visit.external.append(req.url))
        page.on("pageerror", lambda exc: visit.page_errors.append(str(exc)))
        page.on("console", lambda msg: msg.type == "error" and visit.console_errors.append(msg.text))
        page.on(
            "requestfailed",
            lambda req: _is_external(req.url) or visit.failed.append(f"{req.url} ({req.failure})"),
        )
        page.on(
            "response",
            lambda resp: resp.status >= 400 and visit.failed.append(f"{resp.url} (HTTP {resp.status})"),
        )
        page.on("websocket", lambda ws: _is_external(ws.url) and visit.external.append(ws.url))
        page.goto(self.base_url + path, wait_until="load", timeout=HANG_MS)
        visit.load_ms = page.evaluate(_NAVIGATION_MS)
        visit.mathjax = page.evaluate(_MATHJAX_DONE)
        if read_through:
            page.evaluate(_READ_THROUGH)
        return visit

    def open(self, path: str) -> Visit:
        if path not in self.visits:
            self.visits[path] = self._load(path)
        return self.visits[path]

    def time_load(self, path: str) -> float:
        """Load ``path`` once more in a fresh context and return its load time in ms.

        Without request interception, which costs Chromium 100-150 ms per page;
        the first visit of the page (with interception) already proved that it
        makes no external request, and one here fails all the same.
        """
        visit = self._load(path, read_through=False, block=False)
        try:
            assert not visit.external, f"{path} requested other hosts: {visit.external}"
            return visit.load_ms
        finally:
            visit.context.close()

    def close(self) -> None:
        for visit in self.visits.values():
            visit.context.close()
        self.visits.clear()


@pytest.fixture(scope="session")
def site(browser: Any, base_url: str) -> Iterator[Browser]:
    pages = Browser(browser, base_url)
    try:
        yield pages
    finally:
        pages.close()


def _ok(problems: list[str], where: str) -> None:
    assert not problems, f"{where}:\n  " + "\n  ".join(problems[:20])
