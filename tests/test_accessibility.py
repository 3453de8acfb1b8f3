"""Accessibility of the built HTML book: axe-core on every page, the keyboard, names and alt text.

They share the server, Chromium and page visits of the other browser tests
(``browsing.py``): the built book (``_build/html``, or ``$BNBOOK_HTML_DIR``)
is served on 127.0.0.1 and every request to another host is blocked, so
axe-core runs offline (``axe-playwright-python`` bundles its script).

What is checked:

* every page: axe-core finds no "serious" or "critical" violation, in the
  light theme (all rules) and in the dark theme (colour contrast, the rule
  the theme changes), except those listed in ``ALLOWED`` with the reason
  they cannot be fixed from the book's side;
* explorers: a slider reached with Tab and moved with an arrow key alone
  changes the picture, the value shown, and the picture's alt text;
* every form control of the explorers and the quiz has an accessible name;
* every image in a page's content has alt text (from the cell metadata
  ``mystnb.image.alt``, or the widgets' own), not empty and not a file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from browsing import HELPER_PAGES, HTML_DIR, NO_SITE, SITE, Browser, _ok, _params

pytestmark = pytest.mark.browser

#: Impact levels of axe-core that fail a page.
FAILING_IMPACTS = {"minor", "moderate", "serious", "critical"}


@dataclass(frozen=True)
class Allowed:
    """A violation that belongs to the theme or a Sphinx extension and cannot be fixed from our side."""

    rule: str
    #: A regular expression searched in the node's CSS selector (axe's ``target``).
    selector: str
    reason: str


#: Known violations we accept, each with its reason. Keep this list short: fix what we can.
ALLOWED: tuple[Allowed, ...] = ()

#: Switch the theme's colour mode and wait for its colour transitions to end (axe reads the colours).
_MODE = """async mode => {
  document.documentElement.dataset.theme = mode;
  document.documentElement.dataset.mode = mode;
  await new Promise(r => requestAnimationFrame(r));
  await Promise.all(document.getAnimations().map(a => a.finished.catch(() => null)));
}"""


#: ``preload``: axe-core fetches the page's stylesheets again to read them (for its one CSSOM rule,
#: css-orientation-lock), and resolves the theme's ``@import "../basic.css"`` against the page rather than
#: the stylesheet: a request that 404s on every top-level page. The browser itself resolves it right.
AXE_OPTIONS: dict[str, Any] = {"resultTypes": ["violations"], "preload": False}


def _axe(page: Any, **options: Any) -> list[dict[str, Any]]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={**AXE_OPTIONS, **options})
    return results.response["violations"]


def _failures(violations: list[dict[str, Any]]) -> list[str]:
    """Serious and critical violations that ``ALLOWED`` does not cover, one line per node."""
    found = []
    for v in violations:
        if v.get("impact") not in FAILING_IMPACTS:
            continue
        for node in v["nodes"]:
            target = " ".join(str(t) for t in node["target"])
            if any(a.rule == v["id"] and re.search(a.selector, target) for a in ALLOWED):
                continue
            summary = " ".join((node.get("failureSummary") or "").split())[:200]
            found.append(f"{v['id']} ({v['impact']}): {target}: {summary} [{v['helpUrl']}]")
    return found


# --- axe-core ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", _params("pages", "pages"))
def test_axe_finds_no_violation(site: Browser, path: str) -> None:
    visit = site.open(path)
    mark = visit.mark()
    _ok(_failures(_axe(visit.page)) + visit.new_problems(mark), f"{path} (light theme)")


@pytest.mark.parametrize("path", _params("pages", "pages"))
def test_axe_finds_no_violation_in_dark_mode(site: Browser, path: str) -> None:
    visit = site.open(path)
    page, mark = visit.page, visit.mark()
    page.evaluate(_MODE, "dark")
    try:
        problems = _failures(_axe(page))
    finally:
        page.evaluate(_MODE, "light")
    _ok(problems + visit.new_problems(mark), f"{path} (dark theme)")


# --- the keyboard -------------------------------------------------------------------------------
_ACTIVE = "el => document.activeElement === el"


@pytest.mark.parametrize("path", _params("explorers", "an explorer"))
def test_explorer_slider_works_with_the_keyboard_alone(site: Browser, path: str) -> None:
    visit = site.open(path)
    page, mark = visit.page, visit.mark()
    explorers = page.locator("article .bnbook-explorer")
    problems = []
    for i in range(explorers.count()):
        explorer = explorers.nth(i)
        name = explorer.get_attribute("id")
        image = explorer.locator("img.bnx-frame")
        sliders = explorer.locator("input.bnx-slider")
        movable = [j for j in range(sliders.count()) if int(sliders.nth(j).get_attribute("max") or 0) > 0]
        if not movable:
            continue
        slider = sliders.nth(movable[0])
        value = explorer.locator("output.bnx-value").nth(movable[0])
        slider.scroll_into_view_if_needed()
        # reach it with the keyboard: from the slider, Shift+Tab leaves and Tab comes back
        slider.focus()
        page.keyboard.press("Shift+Tab")
        page.keyboard.press("Tab")
        if not slider.evaluate(_ACTIVE):
            problems.append(f"explorer {name}: Tab does not reach its first slider")
            continue
        before = (image.get_attribute("src"), image.get_attribute("alt"), value.text_content())
        at_end = int(slider.input_value()) == int(slider.get_attribute("max") or 0)
        page.keyboard.press("ArrowLeft" if at_end else "ArrowRight")
        after = (image.get_attribute("src"), image.get_attribute("alt"), value.text_content())
        if after[0] == before[0]:
            problems.append(f"explorer {name}: an arrow key on the slider did not change the picture")
        if after[2] == before[2]:
            problems.append(f"explorer {name}: an arrow key on the slider did not change the value shown")
        if after[1] == before[1] or (after[2] or "").strip() not in (after[1] or ""):
            problems.append(
                f"explorer {name}: the picture's alt text does not follow the slider ({after[1]!r}); "
                "a stored output older than bnbook.widgets' alt update needs its notebook re-executed"
            )
        page.keyboard.press("ArrowRight" if at_end else "ArrowLeft")  # back to the page as served
        if image.get_attribute("src") != before[0]:
            problems.append(f"explorer {name}: the opposite arrow key did not bring the first picture back")
    _ok(problems + visit.new_problems(mark), path)


def _pages_with_controls() -> list[Any]:
    pages = []
    for path in SITE["chapters"]:
        html = (HTML_DIR / path).read_text(encoding="utf-8", errors="replace")
        if 'class="bnbook-explorer"' in html or 'class="bnbook-quiz"' in html:
            pages.append(pytest.param(path, id=path))
    if not SITE["pages"]:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_SITE), id="no-site")]
    return pages or [pytest.param(None, marks=pytest.mark.skip(reason="no explorer or quiz"), id="none")]


@pytest.mark.parametrize("path", _pages_with_controls())
def test_every_form_control_has_an_accessible_name(site: Browser, path: str) -> None:
    from playwright.sync_api import expect

    visit = site.open(path)
    page, mark = visit.page, visit.mark()
    controls = page.locator(
        "article input, article select, article textarea, .bnbook-explorer button, .bnbook-quiz button"
    )
    assert controls.count() > 0, f"{path}: no form controls found"
    problems = []
    for i in range(controls.count()):
        control = controls.nth(i)
        try:
            expect(control).to_have_accessible_name(re.compile(r"\S"), timeout=1000)
        except AssertionError:
            html = control.evaluate("el => el.outerHTML.slice(0, 160)")
            problems.append(f"a form control without an accessible name: {html}")
    _ok(problems + visit.new_problems(mark), path)


# --- alt text ---------------------------------------------------------------------------------------
def _content_pages() -> list[Any]:
    params = _params("pages", "pages")
    return [p for p in params if p.values[0] is None or p.values[0] not in HELPER_PAGES]


#: An alt text that is only a file name or a data URL (docutils' fallback when a figure has none).
_FILE_NAME = re.compile(r"^(?:data:|.*\.(?:png|jpe?g|svg|gif|webp)$)", re.IGNORECASE)


@pytest.mark.parametrize("path", _content_pages())
def test_every_figure_has_alt_text(path: str) -> None:
    """Read from the built HTML: every image of the page's content says what it shows."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup((HTML_DIR / path).read_text(encoding="utf-8"), "html.parser")
    article = soup.select_one("article.bd-article") or soup
    missing = []
    for img in article.find_all("img"):
        alt = " ".join((img.get("alt") or "").split())
        if alt and not _FILE_NAME.match(alt):
            continue
        src = str(img.get("src") or "")
        cell = img.find_parent(class_="cell")
        code = cell.select_one(".cell_input pre") if cell is not None else None
        where = " ".join(code.get_text().split())[:80] if code is not None else "(no code cell)"
        missing.append(f"image {src[:60]!r} after code {where!r}: alt {alt!r}")
    assert not missing, (
        f"{path}: {len(missing)} images without alt text (cell metadata mystnb.image.alt):\n  "
        + "\n  ".join(missing)
    )
