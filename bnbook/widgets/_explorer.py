"""Explorers: one drawing function, shown live with sliders or as a static slider in HTML.

Part of :mod:`bnbook.widgets` (import from there).

A chapter writes a function ``draw(fig, **params)`` that draws one picture on
an empty matplotlib figure, and lists a few values per parameter:

>>> ex = Explorer(draw, {"gamma": [0.5, 1, 2], "beta": [-1, 0, 1]}, name="gamma-beta")
>>> ex.show()  # doctest: +SKIP

:meth:`Explorer.show` gives

* **live** ipywidgets sliders that redraw at once, when a kernel runs the
  notebook (Jupyter, Binder), and
* a **static** HTML slider over precomputed frames, which needs no kernel,
  when ``BNBOOK_STATIC=1`` is set (as ``make execute`` and the notebook tests
  do), so the stored output, and hence the HTML book, stays interactive.

Both forms call the same ``draw``; precompute anything expensive before
building the explorer, so that one frame renders well under 150 ms.

On paper (a browser's Print, and the PDF of ``make pdf``) a slider cannot
move, so the static form names the frames a printed page shows, in its
``data-print-frames`` attribute, and the book's ``_static/bnbook.js`` prints
them as a strip, each under its slider values. By default these are the
values of the first slider (an evenly spaced few of them when it has more
than six), the other sliders at their initial values
(:func:`default_print_frames`); ``print_frames=`` names the frames that the
chapter's text talks about instead:

>>> ex = Explorer(draw, {"step": [0, 250, 500, 750, 1000]}, name="steps",
...               print_frames=[0, 500, 1000])  # doctest: +SKIP
>>> Explorer(draw, {"gamma": [0.5, 1, 2], "beta": [-1, 0, 1]}, name="gb",
...          print_frames=[{"gamma": 2}, {"gamma": 2, "beta": 1}])  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

__all__ = ["MAX_PRINT_FRAMES", "STATIC_ENV", "Explorer", "default_print_frames", "static_mode"]

#: Environment variable that selects the static form in :meth:`Explorer.show`.
STATIC_ENV = "BNBOOK_STATIC"
#: The most frames a printed explorer shows: a strip longer than about a page says no more.
MAX_PRINT_FRAMES = 8


def static_mode() -> bool:
    """True when explorers should render as static HTML (``BNBOOK_STATIC`` set, not 0)."""
    return os.environ.get(STATIC_ENV, "0").strip().lower() not in ("", "0", "false", "no")


def _compress_png(png: bytes) -> bytes:
    """Re-encode a PNG with a 256-colour palette: a third of the size, same look."""
    from PIL import Image

    return _palette_png(Image.open(io.BytesIO(png)).convert("RGB"))


def _palette_png(img: Any) -> bytes:
    """A PIL RGB image as a PNG with a 256-colour palette: a third of the size, same look."""
    from PIL import Image

    out = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True
    )
    return out.getvalue()


def default_print_frames(shape: Sequence[int], initial: Sequence[int]) -> list[tuple[int, ...]]:
    """The frames a printed explorer shows when the chapter names none, as grid indices.

    Every value of the first slider when it has at most six, else an evenly
    spaced five (or four or six, whichever divides its range evenly), both ends
    included; the other sliders stay at their initial values. ``_static/bnbook.js``
    applies the same rule to an explorer stored before ``data-print-frames``
    existed.

    >>> default_print_frames((9, 3), (0, 1))
    [(0, 1), (2, 1), (4, 1), (6, 1), (8, 1)]
    >>> default_print_frames((4,), (2,))
    [(0,), (1,), (2,), (3,)]
    """
    n = shape[0]
    if n <= 6:
        picks = list(range(n))
    else:
        k = next((k for k in (5, 4, 6) if (n - 1) % (k - 1) == 0), 5)
        # int(x + 0.5): the rounding of JavaScript's Math.floor(x + 0.5), the same in both
        picks = sorted({int(i * (n - 1) / (k - 1) + 0.5) for i in range(k)})
    return [(i, *initial[1:]) for i in picks]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class Explorer:
    """A picture that depends on a few parameters, explorable with sliders.

    Parameters
    ----------
    draw : callable
        ``draw(fig, **values)`` draws on ``fig``, an empty
        ``matplotlib.figure.Figure``. It must not call ``plt.show()``.
    params : mapping of str to sequence
        The values each slider steps through, in order.
    name : str
        A short unique name; the HTML element ids derive from it, so the
        stored output is the same on every run.
    labels : mapping of str to str, optional
        Slider captions (default: the parameter names).
    initial : mapping of str to value, optional
        Starting values (default: the first value of each parameter).
    figsize : (float, float)
        Figure size in inches.
    dpi : int
        Resolution of the rendered frames.
    max_frames : int
        Refuse a grid of more frames than this, to keep pages light.
    layout : {"constrained", "tight", None}
        Layout engine of each frame's figure; None (fixed margins set by
        ``draw``) renders fastest.
    alt : str, optional
        One sentence saying what the picture shows, for screen readers
        (default: "Explorer: " and the slider captions). The static form's
        image reads this followed by the values it currently shows, and
        updates it as a slider moves.
    describe : callable, optional
        ``describe(**values) -> str``: what the picture at these values shows,
        in a sentence or two ("The histogram has drifted to mean 1.3 by step
        250."). When given, each frame's alt text is ``alt`` followed by this
        description, so a screen reader hears what the current frame shows,
        not only which values it has.
    units : mapping of str to str, optional
        The unit of each parameter ("steps", "%"), read out with its value
        (the sliders' ``aria-valuetext``).
    print_frames : sequence, optional
        The frames a printed page shows, in order (at most
        :data:`MAX_PRINT_FRAMES`): those the text discusses. Each item is a
        mapping of parameter values (a parameter left out keeps its initial
        value) or, as a shorthand, a value of the first parameter. Default:
        :func:`default_print_frames`.
    """

    def __init__(
        self,
        draw: Callable[..., None],
        params: Mapping[str, Sequence[Any]],
        *,
        name: str,
        labels: Mapping[str, str] | None = None,
        initial: Mapping[str, Any] | None = None,
        figsize: tuple[float, float] = (7.5, 3.2),
        dpi: int = 100,
        max_frames: int = 80,
        layout: str | None = "constrained",
        alt: str | None = None,
        describe: Callable[..., str] | None = None,
        units: Mapping[str, str] | None = None,
        print_frames: Sequence[Mapping[str, Any] | Any] | None = None,
    ) -> None:
        if not callable(draw):
            raise ValueError("draw must be a callable draw(fig, **values)")
        if not params:
            raise ValueError("an Explorer needs at least one parameter")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name or ""):
            raise ValueError(f"name must be letters, digits, '-' or '_', got {name!r}")
        self.params = {k: list(v) for k, v in params.items()}
        for key, values in self.params.items():
            if not values:
                raise ValueError(f"parameter {key!r} has no values")
        n = 1
        for values in self.params.values():
            n *= len(values)
        if n > max_frames:
            raise ValueError(f"{n} frames exceed max_frames={max_frames}; use fewer values per parameter")
        if describe is not None and not callable(describe):
            raise ValueError("describe must be a callable describe(**values) -> str")
        for what, given in (("labels", labels), ("initial", initial), ("units", units)):
            unknown = sorted(set(given or {}) - set(self.params))
            if unknown:
                raise ValueError(
                    f"{what} names unknown parameters {unknown}; parameters are {list(self.params)}"
                )
        self.draw = draw
        self.name = name
        self.labels = {k: (labels or {}).get(k, k) for k in self.params}
        self.initial = {}
        for key, values in self.params.items():
            start = (initial or {}).get(key, values[0])
            if start not in values:
                raise ValueError(f"initial value {start!r} of {key!r} is not among its values {values}")
            self.initial[key] = values.index(start)
        self.figsize = figsize
        self.dpi = dpi
        self.layout = layout
        self.alt = alt or "Explorer: " + ", ".join(self.labels.values())
        self.describe_frame = describe
        self.units = {k: (units or {}).get(k, "") for k in self.params}
        self.print_frames = self._print_indices(print_frames)
        self._frames: dict[tuple[int, ...], bytes] = {}
        self._live: dict[tuple[int, ...], bytes] = {}
        self.last_redraw_ms: float | None = None

    def _print_indices(self, frames: Sequence[Mapping[str, Any] | Any] | None) -> list[tuple[int, ...]]:
        """Grid indices of the printed frames: ``frames`` checked, or the default."""
        start = tuple(self.initial.values())
        if frames is None:
            return default_print_frames(self.shape, start)
        if isinstance(frames, (str, bytes, Mapping)) or not isinstance(frames, Sequence):
            raise ValueError(
                "print_frames must be a list of frames, each a dict of parameter values or a value of "
                f"{next(iter(self.params))!r}, got {frames!r}"
            )
        if not 1 <= len(frames) <= MAX_PRINT_FRAMES:
            raise ValueError(f"print_frames names {len(frames)} frames; give 1 to {MAX_PRINT_FRAMES}")
        first = next(iter(self.params))
        picked: list[tuple[int, ...]] = []
        for item in frames:
            given = dict(item) if isinstance(item, Mapping) else {first: item}
            unknown = sorted(set(given) - set(self.params), key=str)
            if unknown:
                raise ValueError(
                    f"print_frames item {item!r} names unknown parameters {unknown}; "
                    f"parameters are {list(self.params)}"
                )
            index = list(start)
            for d, (key, values) in enumerate(self.params.items()):
                if key in given:
                    if given[key] not in values:
                        raise ValueError(
                            f"print_frames item {item!r}: {given[key]!r} is not among the values "
                            f"{values} of {key!r}"
                        )
                    index[d] = values.index(given[key])
            if tuple(index) in picked:
                raise ValueError(f"print_frames names the frame {self.values_at(index)} twice")
            picked.append(tuple(index))
        return picked

    # --- frames ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Number of values per parameter."""
        return tuple(len(v) for v in self.params.values())

    def values_at(self, index: Sequence[int]) -> dict[str, Any]:
        """Parameter values at a grid index."""
        return {k: v[i] for (k, v), i in zip(self.params.items(), index, strict=True)}

    def render(self, **values: Any) -> bytes:
        """PNG bytes of the picture at the given parameter values (cached)."""
        index = tuple(self.params[k].index(values[k]) for k in self.params)
        return self._frame(index)

    def render_live(self, **values: Any) -> bytes:
        """Uncompressed PNG bytes at the given values, as the live widget shows them (cached)."""
        return self._live_frame(tuple(self.params[k].index(values[k]) for k in self.params))

    def _draw_png(self, index: tuple[int, ...]) -> bytes:
        fig = Figure(figsize=self.figsize, layout=self.layout)
        self.draw(fig, **self.values_at(index))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi, metadata={"Software": None})
        return buf.getvalue()

    def _draw_rgb(self, index: tuple[int, ...]) -> Any:
        """The picture at ``index`` as a PIL RGB image: the pixels ``_draw_png`` would encode."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from PIL import Image

        fig = Figure(figsize=self.figsize, layout=self.layout, dpi=self.dpi)
        self.draw(fig, **self.values_at(index))
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return Image.frombuffer(
            "RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1
        ).convert("RGB")

    def _frame(self, index: tuple[int, ...]) -> bytes:
        """A frame for the page: palette-compressed, since every frame is embedded.

        Drawn straight to pixels and compressed from them: the same bytes as
        compressing the live frame's PNG, without encoding and decoding a PNG
        in between (a third of the time of a static frame).
        """
        if index not in self._frames:
            if index in self._live:
                self._frames[index] = _compress_png(self._live[index])
            else:
                self._frames[index] = _palette_png(self._draw_rgb(index))
        return self._frames[index]

    def _live_frame(self, index: tuple[int, ...]) -> bytes:
        """A frame for the live widget: plain PNG, skipping the compression step."""
        if index not in self._live:
            self._live[index] = self._draw_png(index)
        return self._live[index]

    def frames(self) -> list[bytes]:
        """Every frame, last parameter varying fastest."""
        return [self._frame(idx) for idx in itertools.product(*(range(n) for n in self.shape))]

    def describe(self) -> str:
        """One line a test or a reader can check: grid, distinct frames, weight."""
        frames = self.frames()
        kb = sum(len(f) for f in frames) * 4 / 3 / 1024
        grid = ", ".join(f"{k}: {len(v)} values" for k, v in self.params.items())
        return (
            f"Explorer '{self.name}': {len(frames)} frames ({grid}), "
            f"{len(set(frames))} distinct, {kb:.0f} KB embedded"
        )

    def value_text(self, key: str, value: Any) -> str:
        """How a slider reads its value out: the value and its unit ("250 steps")."""
        unit = self.units.get(key, "")
        return f"{_fmt(value)} {unit}".strip()

    def frame_alt(self, **values: Any) -> str:
        """The alt text of the picture at these values: what it shows, then the values."""
        now = "; ".join(f"{self.labels[k]} = {self.value_text(k, values[k])}" for k in self.params)
        text = f"{self.alt.rstrip('. ')}. Shown: {now}."
        if self.describe_frame is not None:
            text += " " + str(self.describe_frame(**values)).strip()
        return text

    # --- static form ------------------------------------------------------------
    def _repr_html_(self) -> str:
        return self.to_html()

    def to_html(self) -> str:
        """A self-contained HTML slider over the precomputed frames; no kernel needed.

        Until its script runs (JupyterLab does not run the scripts of a stored
        output), the explorer says to run the cell; the script removes that hint.
        The ``data-print-frames`` attribute lists the grid indices of the frames
        a printed page shows (``print_frames``), for ``_static/bnbook.js``.
        """
        indices = list(itertools.product(*(range(n) for n in self.shape)))
        frames = [base64.b64encode(f).decode("ascii") for f in self.frames()]
        alts = [self.frame_alt(**self.values_at(idx)) for idx in indices]
        uid = f"bnx-{self.name}"
        start = list(self.initial.values())
        first = self._flat(start)
        rows = []
        for d, (key, values) in enumerate(self.params.items()):
            label = html.escape(self.labels[key])
            rows.append(
                f'<label class="bnx-row">'
                f'<span class="bnx-name">{label}</span>'
                f'<input type="range" class="bnx-slider" data-dim="{d}" min="0" max="{len(values) - 1}" '
                f'step="1" value="{start[d]}" aria-label="{label}" '
                f'aria-valuetext="{html.escape(self.value_text(key, values[start[d]]))}">'
                f'<output class="bnx-value">{html.escape(_fmt(values[start[d]]))}</output></label>'
            )
        shown = [[_fmt(v) for v in values] for values in self.params.values()]
        spoken = [[self.value_text(k, v) for v in values] for k, values in self.params.items()]
        printed = html.escape(json.dumps([list(i) for i in self.print_frames], separators=(",", ":")))
        return (
            f'<div class="bnbook-explorer" id="{uid}" style="max-width:100%" data-print-frames="{printed}">'
            '<p class="bnx-hint"><strong>Run this cell to make the sliders live.</strong> '
            "This is the stored picture; the sliders move once the cell has run.</p>"
            f'<div class="bnx-controls" style="display:grid;gap:0.2em 0;margin-bottom:0.4em">'
            + "".join(rows)
            + "</div>"
            f'<div class="bnx-figure"><img class="bnx-frame" style="max-width:100%;height:auto" '
            f'alt="{html.escape(alts[first])}" src="data:image/png;base64,{frames[first]}"></div>'
            "</div>\n"
            "<style>.bnx-row{display:flex;align-items:center;gap:0.6em;font-size:0.9em}"
            ".bnx-name{min-width:11em}.bnx-slider{flex:0 1 16em;min-height:24px}"
            ".bnx-value{min-width:4em;font-family:monospace}</style>\n"
            "<script>(function(){"
            f"var root=document.getElementById({_script_json(uid)});"
            f"var frames={_script_json(frames)};var shown={_script_json(shown)};"
            f"var spoken={_script_json(spoken)};var alts={_script_json(alts)};"
            f"var shape={_script_json(list(self.shape))};"
            "var hint=root.querySelector('.bnx-hint');if(hint){hint.remove();}"
            "var sliders=root.querySelectorAll('.bnx-slider');var outs=root.querySelectorAll('.bnx-value');"
            "var img=root.querySelector('.bnx-frame');"
            "function update(){var k=0;for(var d=0;d<sliders.length;d++){var i=+sliders[d].value;"
            "k=k*shape[d]+i;outs[d].textContent=shown[d][i];"
            "sliders[d].setAttribute('aria-valuetext',spoken[d][i]);}"
            "img.src='data:image/png;base64,'+frames[k];img.alt=alts[k];}"
            "for(var d=0;d<sliders.length;d++){sliders[d].addEventListener('input',update);}"
            "})();</script>"
        )

    def _flat(self, index: Sequence[int]) -> int:
        k = 0
        for i, n in zip(index, self.shape, strict=True):
            k = k * n + i
        return k

    # --- live form ----------------------------------------------------------------
    def live(self) -> Any:
        """ipywidgets sliders and an image that redraws on every change."""
        import ipywidgets as W

        sliders = []
        for key, values in self.params.items():
            sliders.append(
                W.SelectionSlider(
                    options=[(_fmt(v), i) for i, v in enumerate(values)],
                    value=self.initial[key],
                    description=self.labels[key],
                    continuous_update=True,
                    style={"description_width": "initial"},
                    layout=W.Layout(width="28em"),
                )
            )
        image = W.Image(value=self._live_frame(tuple(self.initial.values())), format="png")

        def redraw(_change: object = None) -> None:
            t0 = time.perf_counter()
            image.value = self._live_frame(tuple(s.value for s in sliders))
            self.last_redraw_ms = (time.perf_counter() - t0) * 1e3

        for s in sliders:
            s.observe(redraw, names="value")
        box = W.VBox([*sliders, image])
        box.sliders, box.image = sliders, image  # handles for tests
        return box

    def show(self) -> None:
        """Display the live form, or the static one when :func:`static_mode` is on."""
        from IPython.display import HTML, display

        if static_mode():
            display(HTML(self.to_html()))
        else:
            display(self.live())


def _script_json(value: object) -> str:
    """JSON that is safe inside an HTML ``<script>`` element.

    A string such as ``"</script>"`` or ``"<!--"`` in plain JSON would end or
    confuse the element, so ``<``, ``>`` and ``&`` are written as ``\\u``
    escapes, which decode to the same string (``json.dumps`` already escapes
    every other non-ASCII character, the two JavaScript line separators included).
    """
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
