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
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from browsing import (
    _PAGE_STATE,
    HTML_DIR,
    LOAD_ATTEMPTS,
    MAX_TERMS_PER_PAGE,
    NO_SITE,
    ROOT,
    SCREENSHOT_DIR,
    SITE,
    SITE_BUDGET_MB,
    Browser,
    _ok,
    _params,
    _Summary,
)

pytestmark = pytest.mark.browser


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
    # and closes again, so that the page (reused by later tests) has no menu lying over its text
    page.keyboard.press("Escape")
    page.mouse.move(1, page.viewport_size["height"] - 1)
    page.locator(expected["Binder"]).wait_for(state="hidden", timeout=5000)

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
            lazy = solution.locator("mjx-lazy")
            # MathJax typesets the math of an opened solution as it comes into view. One call finds and
            # shows the first formula still waiting, so one typeset meanwhile cannot make it wait.
            waiting = solution.evaluate(
                "e => { const l = e.querySelector('mjx-lazy');"
                " if (l) l.scrollIntoView({block: 'center'}); return !!l; }"
            )
            if waiting:
                page.mouse.wheel(0, 40)  # nudge the scroll as a reader's wheel would
                page.mouse.wheel(0, -40)
                try:
                    lazy.first.wait_for(state="detached", timeout=3000)
                except Exception:
                    # Headless Chromium on a busy machine sometimes misses the visibility change
                    # that starts lazy typesetting (a reader scrolling again triggers it). Not a
                    # failure of the page: typeset what is left, as printing does, and check that.
                    page.evaluate("() => MathJax.startup.document.lazyTypesetAll()")
            if lazy.count() or not solution.locator("mjx-container").count():
                problems.append(f"the math in {name!r} was never typeset")
            if solution.locator("mjx-merror").count():
                problems.append(f"the math in {name!r} has a MathJax error")
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


def _hover_tip(page: Any, link: Any) -> Any:
    """Hover ``link``; its visible tooltip (a locator), or None when none appears within 4 s."""
    # Centred, not just scrolled in: at the top edge the sticky header's menus lie over the link.
    link.evaluate("e => e.scrollIntoView({block: 'center'})")
    link.hover()
    tip = page.locator(_VISIBLE_TIP).first
    try:
        tip.wait_for(state="visible", timeout=4000)
    except Exception:
        page.mouse.move(0, 0)
        return None
    return tip


def test_citations_preview_their_reference_on_hover(site: Browser) -> None:
    """Hovering an author-year citation shows the bibliography entry it links to, with its URL."""
    visit = site.open("chapters/01_internal_covariate_shift.html")
    page = visit.page
    links = page.locator("article a.reference.internal[href*='bibliography.html#']")
    assert links.count() >= 3, "chapter 1 cites fewer than 3 works"
    problems = []
    for i in range(3):
        link = links.nth(i)
        cited = " ".join(link.inner_text().split())  # e.g. "Ioffe and Szegedy, 2015"
        author, year = re.split(r"[ ,]", cited)[0], cited[-4:]
        tip = _hover_tip(page, link)
        if tip is None:
            problems.append(f"hovering the citation {cited!r} shows no preview")
            continue
        text = " ".join((tip.inner_text() or "").split())
        if author not in text or year not in text or "URL" not in text:
            problems.append(f"the preview of {cited!r} is not its reference: {text[:300]!r}")
        page.mouse.move(0, 0)
        tip.wait_for(state="hidden", timeout=4000)
    assert not problems, "\n".join(problems)


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
        tip = _hover_tip(page, link)
        if tip is None:
            problems.append(f"hovering the link to {term!r} shows no tooltip")
            continue
        if tip.locator(".math").count():
            try:  # typeset, not just a lazy placeholder
                page.wait_for_function(
                    "box => box.querySelector('mjx-container mjx-math') && !box.querySelector('mjx-lazy')",
                    arg=tip.element_handle(),
                    timeout=5000,
                )
            except Exception:
                problems.append(f"tooltip for {term!r}: its math was not typeset")
        text = " ".join((tip.inner_text() or "").split())
        if term.lower() not in text.lower() or (words and words.lower() not in text.lower()):
            problems.append(f"tooltip for {term!r} does not show its definition: {text[:120]!r}")
        if re.search(r"\\[(\[]", text):
            problems.append(f"tooltip for {term!r} shows raw TeX: {text[:120]!r}")
        page.mouse.move(0, 0)
        page.locator(_VISIBLE_TIP).first.wait_for(state="detached", timeout=4000)

    # other links get no tooltip (they would be noise); citations are tested on their own
    other = page.locator(
        "article a.reference.internal:not([href*='#term-']):not([href*='bibliography.html#'])"
    )
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


# --- dark mode -----------------------------------------------------------------------------
_DARK = (
    "mode => { document.documentElement.dataset.theme = mode; document.documentElement.dataset.mode = mode; }"
)
_BACKGROUND = "() => getComputedStyle(document.body).backgroundColor"


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", css)[:3])


@pytest.mark.parametrize("path", _params("chapters", "chapters"))
def test_figures_keep_their_colours_in_dark_mode(site: Browser, path: str) -> None:
    """The prose names the palette's colours ("vermillion"), so dark mode must not recolour figures."""
    import io

    import numpy as np
    from PIL import Image

    page = site.open(path).page
    figures = page.locator(".cell_output img")
    if figures.count() == 0:
        pytest.skip(f"{path} has no figure")
    figure = figures.first
    figure.scroll_into_view_if_needed()

    def hsv() -> Any:
        return np.asarray(Image.open(io.BytesIO(figure.screenshot())).convert("RGB").convert("HSV"), float)

    light = hsv()
    page.evaluate(_DARK, "dark")
    try:
        background = _rgb(page.evaluate(_BACKGROUND))
        assert sum(background) < 3 * 80, f"dark mode did not darken the page: {background}"
        dark = hsv()
        css_filter = figure.evaluate("el => getComputedStyle(el).filter")
    finally:
        page.evaluate(_DARK, "light")
    assert "invert" not in css_filter and "hue-rotate" not in css_filter, f"{path}: filter {css_filter}"
    coloured = (light[..., 1] > 100) & (light[..., 2] > 60)
    if light.shape == dark.shape and coloured.sum() > 50:
        diff = np.abs(light[..., 0] - dark[..., 0])[coloured]
        diff = np.minimum(diff, 256 - diff) * 360 / 256
        turn = float(np.median(diff))
        assert turn < 12, f"{path}: dark mode turns the figure's hues by {turn:.0f} degrees"


# --- a phone, a keyboard, the reader's level ----------------------------------------------------
PHONE = {"width": 390, "height": 844}

_PHONE_STATE = """() => {
  const vw = document.documentElement.clientWidth;
  const scrolls = el => {
    for (let e = el; e && e !== document.body; e = e.parentElement) {
      const o = getComputedStyle(e).overflowX;
      if ((o === 'auto' || o === 'scroll') && e.scrollWidth > e.clientWidth) return true;
    }
    return false;
  };
  const clipped = [];
  document.querySelectorAll('article mjx-container[display="true"]').forEach(m => {
    const box = m.getBoundingClientRect();
    const inner = m.firstElementChild ? m.firstElementChild.getBoundingClientRect() : box;
    const cut = inner.width > box.width + 1 && !scrolls(m.firstElementChild || m);
    if (cut) clipped.push(m.textContent.slice(0, 40));
  });
  return {
    pageWidth: document.documentElement.scrollWidth, vw, clipped,
    sliders: Array.from(document.querySelectorAll('.bnx-slider')).map(s => s.getBoundingClientRect().height),
    frames: Array.from(document.querySelectorAll('img.bnx-frame')).map(i => i.getBoundingClientRect().width),
  };
}"""


def _fresh(site: Browser, **context: Any) -> Any:
    """A page in a context of its own (viewport, colour scheme), other hosts blocked."""
    from browsing import _EXTERNAL_URL

    ctx = site.browser.new_context(service_workers="block", **context)
    ctx.route(_EXTERNAL_URL, lambda route: route.abort("blockedbyclient"))
    return ctx


@pytest.mark.parametrize("path", _params("explorers", "an explorer"))
def test_phone_layout(site: Browser, path: str) -> None:
    """390 px: nothing pushes the page sideways, wide math scrolls, figures keep their size, big sliders."""
    from browsing import _MATHJAX_DONE, _READ_THROUGH

    ctx = _fresh(site, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        page = ctx.new_page()
        page.goto(site.base_url + path, wait_until="load")
        page.evaluate(_MATHJAX_DONE)
        page.evaluate(_READ_THROUGH)
        state = page.evaluate(_PHONE_STATE)
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT_DIR / f"phone-{Path(path).stem}.png"))
    finally:
        ctx.close()
    problems = []
    if state["pageWidth"] > state["vw"] + 1:
        problems.append(f"the page is {state['pageWidth']} px wide on a {state['vw']} px screen")
    problems += [f"display math cut off without a scroll box: {t!r}" for t in state["clipped"]]
    problems += [f"a slider is {h:.0f} px high (under 24 px)" for h in state["sliders"] if h < 24]
    problems += [f"an explorer's picture shrank to {w:.0f} px" for w in state["frames"] if w < 560]
    _ok(problems, f"{path} at 390 px")


@pytest.mark.parametrize("path", _params("explorers", "an explorer"))
def test_sliders_read_out_values(site: Browser, path: str) -> None:
    page = site.open(path).page
    problems = []
    sliders = page.locator(".bnbook-explorer .bnx-slider")
    for i in range(sliders.count()):
        s = sliders.nth(i)
        shown = s.locator("xpath=following-sibling::output").text_content() or ""
        text = s.get_attribute("aria-valuetext") or ""
        if not text or not text.startswith(shown.strip()):
            problems.append(
                f"slider {s.get_attribute('aria-label')!r}: aria-valuetext {text!r}, shows {shown!r}"
            )
    assert sliders.count(), f"{path}: no sliders"
    _ok(problems, path)


@pytest.mark.parametrize("path", _params("chapters", "chapters"))
def test_formulas_are_not_tab_stops_and_exercises_count_from_one(site: Browser, path: str) -> None:
    page = site.open(path).page
    # a display formula wider than the column scrolls, so it is a Tab stop (to scroll by keyboard)
    stops = page.evaluate(
        "() => document.querySelectorAll('mjx-container[tabindex=\"0\"]:not([data-bn-scroll])').length"
    )
    titles = page.evaluate(
        "() => Array.from(document.querySelectorAll('.exercise .admonition-title'))"
        ".map(t => (t.textContent.match(/Exercise\\s+(\\d+)/) || [])[1]).filter(Boolean).map(Number)"
    )
    problems = [f"{stops} formulas are Tab stops"] if stops else []
    if titles != list(range(1, len(titles) + 1)):
        problems.append(f"exercises numbered {titles}, not 1 to {len(titles)} as in the notebook")
    _ok(problems, path)


def test_first_visit_follows_the_system_colour_mode_and_page_metadata(site: Browser) -> None:
    if not SITE["pages"]:
        pytest.skip(NO_SITE)
    problems = []
    for scheme in ("dark", "light"):
        ctx = _fresh(site, viewport={"width": 1280, "height": 900}, color_scheme=scheme)
        try:
            page = ctx.new_page()
            page.goto(site.base_url + "intro.html", wait_until="load")
            theme = page.evaluate("document.documentElement.dataset.theme")
            meta = page.evaluate("(document.querySelector('meta[name=description]') || {}).content || ''")
            icon = page.evaluate("(document.querySelector('link[rel~=icon]') || {}).href || ''")
        finally:
            ctx.close()
        if theme != scheme:
            problems.append(f"system {scheme}: the page opened in {theme!r}")
    if len(meta) < 50:
        problems.append(f"meta description {meta!r}")
    if not icon:
        problems.append("no favicon link (browsers then ask for /favicon.ico: a 404)")
    _ok(problems, "intro.html")


def _tip_shows(page: Any, link: Any) -> bool:
    """Whether a tooltip opens when the link takes the keyboard focus (tippy: mouseenter or focus)."""
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); }")
    page.mouse.move(0, 0)
    page.wait_for_timeout(300)
    link.focus()
    try:
        page.locator(_VISIBLE_TIP).first.wait_for(state="visible", timeout=2000)
        return True
    except Exception:
        return False


def test_tooltip_level_switch(site: Browser) -> None:
    """Beginner: tooltips on every term; Expert: on advanced terms only; kept across pages."""
    pages = [
        p
        for p in SITE["terms"]
        if "bn-level-advanced" in (HTML_DIR / p).read_text(encoding="utf-8")
        and "bn-level-basic" in (HTML_DIR / p).read_text(encoding="utf-8")
    ]
    if not pages:
        pytest.skip("no page links to both a basic and an advanced glossary term")
    ctx = _fresh(site, viewport={"width": 1280, "height": 900})
    try:
        page = ctx.new_page()
        page.goto(site.base_url + pages[0], wait_until="load")
        page.wait_for_timeout(300)
        switch = page.locator(".bn-level-switch")
        basic = page.locator("article a.bn-level-basic >> visible=true").first
        advanced = page.locator("article a.bn-level-advanced >> visible=true").first
        problems = []
        if switch.get_attribute("aria-pressed") != "false" or "Beginner" not in switch.inner_text():
            problems.append("the first visit is not at the Beginner level")
        if not (_tip_shows(page, basic) and _tip_shows(page, advanced)):
            problems.append("Beginner: a term shows no tooltip")
        switch.focus()  # the keyboard alone switches it
        page.keyboard.press("Enter")
        if switch.get_attribute("aria-pressed") != "true" or "Expert" not in switch.inner_text():
            problems.append("Enter on the switch did not choose Expert")
        if _tip_shows(page, basic):
            problems.append("Expert: a basic term still shows its tooltip")
        if not _tip_shows(page, advanced):
            problems.append("Expert: an advanced term shows no tooltip")
        page.goto(site.base_url + (pages[1] if len(pages) > 1 else pages[0]), wait_until="load")
        page.wait_for_timeout(300)
        if page.locator(".bn-level-switch").get_attribute("aria-pressed") != "true":
            problems.append("the Expert choice was not remembered on the next page")
        if _tip_shows(page, page.locator("article a.bn-level-basic >> visible=true").first):
            problems.append("Expert, next page: a basic term shows its tooltip")
    finally:
        ctx.close()
    _ok(problems, pages[0])


def test_code_fits_the_column_or_scrolls(site: Browser) -> None:
    """88-character lines fit the desktop column; longer ones scroll in their own box."""
    path = next((p for p in SITE["chapters"]), None)
    if path is None:
        pytest.skip(NO_SITE)
    page = site.open(path).page
    state = page.evaluate("""() => Array.from(document.querySelectorAll('.cell_input div.highlight pre'))
      .slice(0, 40).map(pre => {
        const probe = document.createElement('span');
        probe.textContent = 'x'.repeat(88);
        probe.style.cssText = 'position:absolute;visibility:hidden;white-space:pre';
        pre.appendChild(probe);
        const w = probe.getBoundingClientRect().width;
        probe.remove();
        return {fits: w <= pre.clientWidth, over: pre.scrollWidth > pre.clientWidth,
                overflow: getComputedStyle(pre).overflowX, w, col: pre.clientWidth};
      })""")
    problems = [
        f"88 characters take {s['w']:.0f} px in a {s['col']} px code box" for s in state if not s["fits"]
    ]
    problems += [
        "a long code line is cut off (no scroll box)"
        for s in state
        if s["over"] and s["overflow"] not in ("auto", "scroll")
    ]
    _ok(problems[:5], path)
