"""Make docs/screenshot.png, the picture of the book in the README.

    .venv/bin/python docs/make_screenshot.py [--html _build/html] [--page chapters/...html]

Serves the built book on 127.0.0.1, opens the page in headless Chromium
(/usr/bin/chromium or $BNBOOK_CHROMIUM) 1200 px wide, scrolls so that the
page's first explorer (or, failing that, first figure) sits at the bottom of
the window, with the text and code before it above, and saves the window as
a 256-colour PNG.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from localsite import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--page", default="chapters/02_batch_statistics.html")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=820)
    args = parser.parse_args()

    with serve(args.html) as base, sync_playwright() as p:
        url = base + args.page
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.route(lambda u: not u.startswith(("http://127.0.0.1", "data:")), lambda r: r.abort())
        page.goto(url, wait_until="load")
        page.evaluate("MathJax && MathJax.startup ? MathJax.startup.promise : null")
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
        # let MathJax typeset what scrolled into view (it typesets lazily)
        page.wait_for_function(
            "!document.querySelector('mjx-lazy') || Array.from("
            "document.querySelectorAll('mjx-lazy')).every(e => {"
            "const r = e.closest('mjx-container').getBoundingClientRect();"
            "return r.bottom < 0 || r.top > innerHeight || !e.checkVisibility("
            "{visibilityProperty: true}); })",
            timeout=15_000,
        )
        page.wait_for_timeout(300)
        png = page.screenshot()
        browser.close()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, format="PNG", optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB, {image.width}x{image.height})")


if __name__ == "__main__":
    main()
