"""Make docs/screenshot-light.png and docs/screenshot-dark.png, the pictures of the book in the README.

    .venv/bin/python docs/make_screenshot.py [--html _build/html] [--page chapters/...html] [--mode both]

Serves the built book on 127.0.0.1, opens the page in headless Chromium
(/usr/bin/chromium or $BNBOOK_CHROMIUM) 1280x800, in the theme's light or dark
colour mode (the reader's choice, which the theme keeps in localStorage),
scrolls so that the page's first explorer (or, failing that, first figure)
sits at the bottom of the window, with the text and code before it above,
and saves the window as a 256-colour PNG.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from localsite import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402

MODES = ("light", "dark")

#: The theme (pydata-sphinx-theme) reads the reader's colour mode from localStorage before it paints.
_SET_MODE = "localStorage.setItem('mode', '{mode}'); localStorage.setItem('theme', '{mode}');"

#: Every formula on screen typeset (MathJax typesets lazily, as formulas scroll into view).
_MATH_ON_SCREEN = (
    "!document.querySelector('mjx-lazy') || Array.from("
    "document.querySelectorAll('mjx-lazy')).every(e => {"
    "const r = e.closest('mjx-container').getBoundingClientRect();"
    "return r.bottom < 0 || r.top > innerHeight || !e.checkVisibility("
    "{visibilityProperty: true}); })"
)


def shoot(browser: Any, url: str, mode: str, width: int, height: int) -> bytes:
    """PNG bytes of the window at ``url`` in the given colour mode."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_init_script(_SET_MODE.format(mode=mode))
    context.route(lambda u: not u.startswith(("http://127.0.0.1", "data:")), lambda r: r.abort())
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.evaluate("window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
    theme = page.evaluate("document.documentElement.dataset.theme")
    if theme != mode:
        raise SystemExit(f"the page came up in the {theme!r} colour mode, not {mode!r}")
    explorers = page.locator("article .bnbook-explorer")
    target = explorers.first if explorers.count() else page.locator("article .cell_output img").first
    if explorers.count():  # move the last slider to its end: the picture a reader gets to
        slider = explorers.first.locator("input.bnx-slider").last
        slider.focus()
        slider.press("End")
        slider.evaluate("el => el.blur()")  # no focus ring in the picture
    page.evaluate(
        """el => {
            // the whole explorer (or figure) in the window, its bottom near the window's
            const box = el.getBoundingClientRect();
            window.scrollTo(0, Math.max(0, box.bottom + window.scrollY - innerHeight + 24));
        }""",
        target.element_handle(),
    )
    page.wait_for_function(_MATH_ON_SCREEN, timeout=15_000)
    page.wait_for_timeout(300)
    png = page.screenshot()
    context.close()
    return png


def save(png: bytes, out: Path) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG", optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB, {image.width}x{image.height})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--page", default="chapters/02_batch_statistics.html")
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs", help="writes screenshot-<mode>.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()

    modes = MODES if args.mode == "both" else (args.mode,)
    with serve(args.html) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        shots = {mode: shoot(browser, base + args.page, mode, args.width, args.height) for mode in modes}
        browser.close()
    for mode, png in shots.items():
        save(png, args.out_dir / f"screenshot-{mode}.png")


if __name__ == "__main__":
    main()
