"""Browser tests: headless Chromium reads the built HTML book, page by page.

The site (``_build/html``, or ``$BNBOOK_HTML_DIR``) is served by a
``http.server`` on 127.0.0.1 in a background thread. Every request to any
other host is blocked and counted as a failure: the book must work offline.
Chromium is ``/usr/bin/chromium`` (or ``$BNBOOK_CHROMIUM``), driven by
Playwright's sync API; Playwright's own browser downloads are not needed.

What is checked:

* every page: no JavaScript errors (``pageerror`` and console errors), no
  failed or 4xx/5xx requests, no request to another host, every ``<img>``
  loaded, and where a page has math, MathJax typeset all of it without errors
  and no raw TeX delimiters are left in the text;
* every chapter: the launch buttons (Binder, Colab, Live Code), the
  repository, issue and ``.ipynb`` download buttons, pointing at the
  repository and branch of ``_config.yml``; its load time is measured and
  reported (a slow load on a busy machine is not a failure; a page that
  does not reach its load event within ``HANG_MS`` is); a full-page
  screenshot goes to ``_build/screenshots/``;
* explorers: moving each slider changes the picture;
* exercises: solutions stay folded until clicked, then open;
* glossary links: hovering one shows its definition (math typeset), and other
  links show no tooltip;
* search: ``search.html?q=momentum`` returns results;
* the whole site weighs less than ``SITE_BUDGET_MB`` (bytes, not time: the
  same on any machine).

The load times and the site's weight are printed in a summary at the end of
the run (``pytest -q -m browser``) and written to ``METRICS_FILE``
(``_build/browser-metrics.json``). The tests skip, saying why, when Chromium,
Playwright or the built site is missing.
"""

from __future__ import annotations

import functools
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

pytestmark = pytest.mark.browser

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
        if re.search(r'<a class="reference internal" href="[^"]*#term-', html):
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
    """A pytest plugin, registered by the ``summary`` fixture, that prints the figures."""

    def __init__(self) -> None:
        self.loads: dict[str, list[float]] = {}
        self.site_bytes: int | None = None
        self.site_parts: list[tuple[str, int]] = []
        self.screenshots: list[Path] = []

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


@pytest.fixture(scope="session")
def summary(request: pytest.FixtureRequest) -> _Summary:
    plugin = _Summary()
    request.config.pluginmanager.register(plugin, "bnbook-browser-summary")
    return plugin


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


# --- the site as a whole -------------------------------------------------------------
def test_site_weight(summary: _Summary, record_property: Any) -> None:
    if not SITE["pages"]:
        pytest.skip(NO_SITE)
    parts: dict[str, int] = {}
    for path in HTML_DIR.rglob("*"):
        if path.is_file():
            rel = path.relative_to(HTML_DIR).parts
            key = "/".join(rel[:2]) if rel[0] == "_static" and len(rel) > 2 else rel[0]
            parts[key] = parts.get(key, 0) + path.stat().st_size
    total = sum(parts.values())
    summary.site_bytes = total
    summary.site_parts = sorted(parts.items(), key=lambda kv: -kv[1])
    record_property("site_mb", round(total / 2**20, 2))
    assert total < SITE_BUDGET_MB * 2**20, (
        f"the built site weighs {total / 2**20:.1f} MB, over the {SITE_BUDGET_MB:.0f} MB budget; "
        f"largest parts: {summary.site_parts[:5]}"
    )


# --- every page ------------------------------------------------------------------------
@pytest.mark.parametrize("path", _params("pages", "pages"))
def test_page_loads_cleanly(site: Browser, summary: _Summary, path: str) -> None:
    """No JS errors, no failed or external requests, images loaded, all math typeset."""
    visit = site.open(path)
    state = visit.page.evaluate(_PAGE_STATE)
    problems = visit.problems()
    problems += [f"image did not load: {src}" for src in state["badImages"]]
    if state["mathCount"]:
        if visit.mathjax != "typeset":
            problems.append(f"MathJax: {visit.mathjax}")
        problems += [f"math not typeset: {t!r}" for t in state["untypeset"][:5]]
        problems += [f"MathJax error: {e!r}" for e in state["mathErrors"]]
        if not state["mjx"]:
            problems.append("the page has math but no mjx-container")
    problems += [f"raw display math left in the text: {t!r}" for t in state["rawDisplay"]]
    problems += [f"raw inline math left in the text: {t!r}" for t in state["rawInline"]]
    problems += [f"raw TeX delimiters left in the text: {t!r}" for t in state["rawDelims"]]
    problems += [f"raw TeX command left in the text: {t!r}" for t in state["rawCommands"]]
    if path in SITE["chapters"]:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOT_DIR / (Path(path).stem + ".png")
        visit.page.screenshot(path=str(shot), full_page=True)
        summary.screenshots.append(shot)
    _ok(problems, path)


# --- chapters ----------------------------------------------------------------------------
def _repository() -> tuple[str, str, str, str]:
    """(repository url, branch, binderhub url, colab url) from _config.yml."""
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    repo = config.get("repository", {})
    launch = config.get("launch_buttons", {})
    return (
        str(repo["url"]).rstrip("/"),
        str(repo.get("branch", "main")),
        str(launch.get("binderhub_url", "")).rstrip("/"),
        str(launch.get("colab_url", "")).rstrip("/"),
    )


@pytest.mark.parametrize("path", _params("chapters", "chapters"))
def test_chapter_launch_buttons(site: Browser, path: str) -> None:
    repo_url, branch, binderhub, colab = _repository()
    slug = urlparse(repo_url).path.strip("/")
    notebook = Path(path).with_suffix(".ipynb").as_posix()
    page = site.open(path).page
    expected = {
        "Binder": f'a[href^="{binderhub}/v2/gh/{slug}/{branch}?"][href$="{notebook}"]',
        "Colab": f'a[href="{colab}/github/{slug}/blob/{branch}/{notebook}"]',
        "Live Code (Thebe)": "button.btn-launch-thebe",
        "repository": f'a.btn-source-repository-button[href="{repo_url}"]',
        "issues": f'a.btn-source-issues-button[href^="{repo_url}/issues/new"]',
        "download .ipynb": 'a.btn-download-source-button[href$=".ipynb"]',
    }
    missing = [name for name, selector in expected.items() if page.locator(selector).count() != 1]
    assert not missing, f"{path}: missing or wrong launch/source buttons: {missing}"

    thebe = page.locator('script[type="text/x-thebe-config"]').first.text_content() or ""
    assert f'repo: "{slug}"' in thebe and f'ref: "{branch}"' in thebe, f"{path}: Thebe config {thebe!r}"

    # the rocket menu opens and shows its entries
    page.locator(".dropdown-launch-buttons button.dropdown-toggle").click()
    page.locator(expected["Binder"]).wait_for(state="visible", timeout=5000)
    assert page.locator("button.btn-launch-thebe").is_visible()
    page.keyboard.press("Escape")

    # the .ipynb download is served and is a notebook
    href = page.locator(expected["download .ipynb"]).get_attribute("href")
    response = page.request.get(page.url.rsplit("/", 1)[0] + "/" + href)
    assert response.ok, f"{path}: download link {href} answers HTTP {response.status}"
    assert '"cells"' in response.text(), f"{path}: download link {href} is not a notebook"


@pytest.mark.parametrize("path", _params("chapters", "chapters"))
def test_chapter_load_time(site: Browser, summary: _Summary, record_property: Any, path: str) -> None:
    """Measure each chapter's load event (reported, not judged); fail only if a load hangs."""
    times = [site.open(path).load_ms]
    while len(times) < LOAD_ATTEMPTS:
        times.append(site.time_load(path))  # a cold cache again: the best try is the least disturbed
    summary.loads[path] = times
    record_property("load_ms", round(min(times)))
    # page.goto raised already if the load event did not come within HANG_MS; a NaN means no timing.
    assert all(t == t and t >= 0 for t in times), f"{path}: no load timing recorded ({times})"


# --- explorers ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", _params("explorers", "an explorer"))
def test_explorer_sliders_change_picture(site: Browser, path: str) -> None:
    visit = site.open(path)
    page, mark = visit.page, visit.mark()
    explorers = page.locator(".bnbook-explorer")
    assert explorers.count() > 0
    stuck = []
    for i in range(explorers.count()):
        explorer = explorers.nth(i)
        name = explorer.get_attribute("id")
        image = explorer.locator("img.bnx-frame")
        sliders = explorer.locator("input.bnx-slider")
        assert image.count() == 1 and sliders.count() > 0, f"{path}: explorer {name} has no image or sliders"
        for j in range(sliders.count()):
            slider = sliders.nth(j)
            label = slider.get_attribute("aria-label")
            if int(slider.get_attribute("max") or 0) == 0:
                continue  # a single value: nothing to move
            slider.scroll_into_view_if_needed()
            before = image.get_attribute("src")
            start = slider.input_value()
            slider.focus()
            slider.press("End" if int(start) < int(slider.get_attribute("max")) else "Home")
            if slider.input_value() == start:
                stuck.append(f"explorer {name}: slider {label!r} did not move")
            elif image.get_attribute("src") == before:
                stuck.append(f"explorer {name}: moving slider {label!r} did not change the picture")
            elif not image.evaluate("img => img.decode().then(() => img.naturalWidth > 0, () => false)"):
                stuck.append(f"explorer {name}: the picture for slider {label!r} does not decode")
            slider.fill(start)  # back to where it was, so later tests see the page as served
    _ok(stuck + visit.new_problems(mark), path)


# --- exercises ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", _params("solutions", "exercise solutions"))
def test_solutions_hidden_until_opened(site: Browser, path: str) -> None:
    visit = site.open(path)
    page, mark = visit.page, visit.mark()
    solutions = page.locator(".solution.dropdown")
    problems = []
    for i in range(solutions.count()):
        solution = solutions.nth(i)
        title = solution.locator(":scope > .admonition-title")
        body = solution.locator(":scope > .admonition-title ~ *").first
        name = (title.text_content() or f"solution {i + 1}").strip()
        if body.is_visible():
            problems.append(f"{name!r} is visible before the reader opens it")
            continue
        title.scroll_into_view_if_needed()
        title.click()
        try:
            body.wait_for(state="visible", timeout=3000)
        except Exception:
            problems.append(f"{name!r} did not open when its title was clicked")
            continue
        if solution.locator(".math").count():
            try:  # MathJax typesets the math of an opened solution as it comes into view
                solution.locator("mjx-lazy").first.wait_for(state="detached", timeout=5000)
            except Exception:
                problems.append(f"the math in {name!r} was not typeset once it was opened")
        title.click()  # fold it again
        body.wait_for(state="hidden", timeout=3000)
    assert solutions.count() > 0
    _ok(problems + visit.new_problems(mark), path)


# --- glossary tooltips -------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _glossary() -> dict[str, tuple[str, str]]:
    """term id -> (term, the first plain words of its definition), from the built glossary."""
    from bs4 import BeautifulSoup

    terms: dict[str, tuple[str, str]] = {}
    for path in HTML_DIR.rglob("*.html"):
        html = path.read_text(encoding="utf-8", errors="replace")
        if 'class="simple glossary"' not in html and "glossary" not in html:
            continue
        soup = BeautifulSoup(html, "html.parser")
        for dt in soup.select("dl.glossary > dt[id]"):
            dd = dt.find_next_sibling("dd")
            words = ""
            if dd is not None and dd.p is not None:
                for child in dd.p.children:
                    if getattr(child, "name", None) == "span" and "math" in (child.get("class") or []):
                        break
                    words += child.get_text() if hasattr(child, "get_text") else str(child)
            for link in dt.select("a.headerlink"):
                link.decompose()
            terms[dt["id"]] = (dt.get_text().strip(), " ".join(words.split()[:5]))
    return terms


_VISIBLE_TIP = "[data-tippy-root] .tippy-box[data-state='visible']"


@pytest.mark.parametrize("path", _params("terms", "glossary term links"))
def test_glossary_terms_show_definition_on_hover(site: Browser, path: str) -> None:
    visit = site.open(path)
    page, mark = visit.page, visit.mark()
    glossary = _glossary()
    links = page.locator("article a.reference.internal[href*='#term-']")
    seen: dict[str, int] = {}
    for i in range(links.count()):
        target = (links.nth(i).get_attribute("href") or "").split("#", 1)[1]
        seen.setdefault(target, i)
    assert seen, f"{path}: no glossary links"
    problems = []
    for target, index in list(seen.items())[:MAX_TERMS_PER_PAGE]:
        link = links.nth(index)
        term, words = glossary.get(target, ("", ""))
        if not term:
            problems.append(f"link to #{target} has no glossary entry")
            continue
        link.scroll_into_view_if_needed()
        link.hover()
        tip = page.locator(_VISIBLE_TIP)
        try:
            tip.first.wait_for(state="visible", timeout=4000)
        except Exception:
            problems.append(f"hovering the link to {term!r} shows no tooltip")
            page.mouse.move(0, 0)
            continue
        if tip.first.locator(".math").count():
            try:  # typeset, not just a lazy placeholder
                page.wait_for_function(
                    "box => box.querySelector('mjx-container mjx-math') && !box.querySelector('mjx-lazy')",
                    arg=tip.first.element_handle(),
                    timeout=5000,
                )
            except Exception:
                problems.append(f"tooltip for {term!r}: its math was not typeset")
        text = " ".join((tip.first.inner_text() or "").split())
        if term.lower() not in text.lower() or (words and words.lower() not in text.lower()):
            problems.append(f"tooltip for {term!r} does not show its definition: {text[:120]!r}")
        if re.search(r"\\[(\[]", text):
            problems.append(f"tooltip for {term!r} shows raw TeX: {text[:120]!r}")
        page.mouse.move(0, 0)
        page.locator(_VISIBLE_TIP).first.wait_for(state="detached", timeout=4000)

    # other links get no tooltip (they would be noise)
    other = page.locator("article a.reference.internal:not([href*='#term-'])")
    if other.count():
        other.first.scroll_into_view_if_needed()
        other.first.hover()
        page.wait_for_timeout(600)
        if page.locator(_VISIBLE_TIP).count():
            problems.append(f"a non-glossary link ({other.first.get_attribute('href')}) shows a tooltip")
        page.mouse.move(0, 0)
    _ok(problems + visit.new_problems(mark), path)


# --- search ------------------------------------------------------------------------------
def test_search_finds_momentum(site: Browser) -> None:
    if not (HTML_DIR / "search.html").is_file():
        pytest.skip("the built site has no search.html")
    visit = site.open("search.html?q=momentum")
    results = visit.page.locator("#search-results ul.search li")
    results.first.wait_for(state="attached", timeout=20_000)
    hrefs = results.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert hrefs, "search for 'momentum' returned no results"
    assert any("glossary" in h or "chapters/" in h for h in hrefs), f"search results: {hrefs}"
    _ok(visit.problems(), "search.html?q=momentum")
