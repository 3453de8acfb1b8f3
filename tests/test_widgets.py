"""Explorers: frames, the static HTML slider, the live ipywidgets form, and ``show()``."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from bnbook import widgets
from bnbook.widgets import Explorer

SMALL = {"figsize": (1.6, 1.2), "dpi": 40}


def _draw(fig, color, size):
    """A simple draw: a coloured background and one text label."""
    fig.set_facecolor(color)
    fig.text(0.5, 0.5, "x", fontsize=size)


PARAMS = {"color": ["red", "green", "blue"], "size": [8, 16]}


def _explorer(name="demo", **kwargs) -> Explorer:
    return Explorer(_draw, PARAMS, name=name, **(SMALL | kwargs))


def test_frames_differ_between_parameter_values() -> None:
    ex = _explorer()
    frames = ex.frames()
    assert len(frames) == 6 and ex.shape == (3, 2)
    assert len(set(frames)) == 6
    assert all(f.startswith(b"\x89PNG\r\n\x1a\n") for f in frames)
    # last parameter varies fastest, and render() picks the same frame
    assert ex.render(color="green", size=16) == frames[1 * 2 + 1]
    assert ex.values_at((2, 0)) == {"color": "blue", "size": 8}
    assert "6 frames" in ex.describe() and "6 distinct" in ex.describe()


def test_identical_parameters_give_identical_frames() -> None:
    """A draw that ignores a parameter gives equal frames: the bytes carry no timestamp."""
    ex = Explorer(lambda fig, a: fig.set_facecolor("red"), {"a": [1, 2]}, name="same", **SMALL)
    a, b = ex.frames()
    assert a == b


def test_to_html_is_a_static_slider_over_all_frames() -> None:
    ex = _explorer(name="gamma-beta_1", labels={"color": "background colour"}, initial={"size": 16})
    page = ex.to_html()
    assert len(re.findall(r'<input type="range"', page)) == len(PARAMS)
    assert 'id="bnx-gamma-beta_1"' in page
    assert "background colour" in page and ">size<" in page
    for frame in ex.frames():
        assert base64.b64encode(frame).decode("ascii") in page
    # the image shown first is the initial frame (color=red, size=16)
    first = base64.b64encode(ex.render(color="red", size=16)).decode("ascii")
    assert f'src="data:image/png;base64,{first}"' in page
    assert re.search(r'data-dim="1"[^>]*value="1"', page)


def test_to_html_is_the_same_on_every_build() -> None:
    assert _explorer().to_html() == _explorer().to_html()
    assert _explorer().to_html() != _explorer(name="other").to_html()
    assert _explorer()._repr_html_() == _explorer().to_html()


def test_labels_and_values_are_escaped() -> None:
    ex = Explorer(lambda fig, v: None, {"v": ["<b>", "a&b"]}, name="esc", labels={"v": "<i>"}, **SMALL)
    page = ex.to_html()
    assert "<i>" not in page and "&lt;i&gt;" in page
    assert "&lt;b&gt;" in page


def test_live_slider_change_updates_image() -> None:
    ex = _explorer()
    box = ex.live()
    sliders, image = box.sliders, box.image
    assert len(sliders) == len(PARAMS)
    assert image.value == ex.render_live(color="red", size=8)
    timings = []
    for color_index in (1, 2):  # frames not yet rendered
        sliders[0].value = color_index
        assert image.value == ex.render_live(color=PARAMS["color"][color_index], size=8)
        timings.append(ex.last_redraw_ms)
    sliders[1].value = 1
    assert image.value == ex.render_live(color="blue", size=16)
    # the page's frames are the same pictures, palette-compressed
    assert len(ex.render(color="blue", size=16)) < len(image.value)
    # each redraw was timed (how long it took is a measurement, reported, never a pass/fail condition)
    assert all(t is not None and t > 0 for t in timings)


@pytest.mark.parametrize(
    ("params", "kwargs"),
    [
        ({}, {}),
        ({"a": []}, {}),
        ({"a": list(range(9)), "b": list(range(10))}, {}),  # 90 frames > 80
        ({"a": [1, 2, 3]}, {"max_frames": 2}),
        ({"a": [1, 2]}, {"name": "has space"}),
        ({"a": [1, 2]}, {"name": ""}),
        ({"a": [1, 2]}, {"name": "x/y"}),
        ({"a": [1, 2]}, {"initial": {"a": 3}}),
    ],
    ids=[
        "no-params",
        "no-values",
        "too-many-frames",
        "max_frames",
        "space-in-name",
        "empty-name",
        "slash-in-name",
        "initial-not-a-value",
    ],
)
def test_bad_arguments(params, kwargs) -> None:
    kwargs = {"name": "ok"} | kwargs
    with pytest.raises(ValueError):
        Explorer(_draw, params, **kwargs)


def test_draw_must_be_callable() -> None:
    with pytest.raises(ValueError):
        Explorer("not callable", {"a": [1]}, name="x")


def test_initial_for_an_unknown_parameter_is_rejected() -> None:
    """A misspelt key in ``initial`` must not be ignored silently."""
    with pytest.raises(ValueError):
        Explorer(_draw, PARAMS, name="typo", initial={"colour": "blue"})


# --- show() picks the form -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "static"),
    [("1", True), ("true", True), ("0", False), ("", False), ("no", False), ("false", False)],
)
def test_static_mode_reads_env(monkeypatch, value, static) -> None:
    monkeypatch.setenv("BNBOOK_STATIC", value)
    assert widgets.static_mode() is static
    monkeypatch.delenv("BNBOOK_STATIC")
    assert widgets.static_mode() is False


def _capture_display(monkeypatch) -> list:
    import IPython.display

    shown: list = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    return shown


def test_show_is_static_when_env_set(monkeypatch) -> None:
    import IPython.display

    shown = _capture_display(monkeypatch)
    monkeypatch.setenv("BNBOOK_STATIC", "1")
    ex = _explorer()
    ex.show()
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.HTML)
    assert shown[0].data == ex.to_html()


def test_show_is_live_otherwise(monkeypatch) -> None:
    import ipywidgets

    shown = _capture_display(monkeypatch)
    monkeypatch.delenv("BNBOOK_STATIC", raising=False)
    _explorer().show()
    assert len(shown) == 1 and isinstance(shown[0], ipywidgets.VBox)


def test_a_value_that_looks_like_markup_cannot_end_the_script() -> None:
    import json
    import re

    evil = "</script><script>alert(1)</script><!--"
    ex = Explorer(lambda fig, v: None, {"v": [evil, "a&b"]}, name="esc2", **SMALL)
    page = ex.to_html()
    assert page.lower().count("</script") == 1  # the element's own end tag, only
    assert "<!--" not in page
    shown = json.loads(re.search(r"var shown=(\[.*?\]\]);", page).group(1))
    assert shown[0][0] == evil  # the escapes decode to the same string


# --- reading the explorer without sight, and in a notebook that has not run -------------------
def _small_explorer(**kwargs):
    from matplotlib.figure import Figure  # noqa: F401

    from bnbook.widgets import Explorer

    def draw(fig, step, scale):
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, step * scale])

    grid = {"step": [0, 250, 500], "scale": [1.0, 2.0]}
    return Explorer(draw, grid, name="t-read", figsize=(2, 1), **kwargs)


def test_sliders_read_out_value_and_unit() -> None:
    ex = _small_explorer(units={"step": "steps"}, initial={"step": 250})
    page = ex.to_html()
    assert 'aria-valuetext="250 steps"' in page and 'aria-valuetext="1"' in page
    assert ex.value_text("step", 500) == "500 steps" and ex.value_text("scale", 2.0) == "2"


def test_alt_text_describes_each_frame() -> None:
    ex = _small_explorer(describe=lambda step, scale: f"The line ends at {step * scale:g}.")
    page = ex.to_html()
    assert 'alt="Explorer: step, scale. Shown: step = 0; scale = 1. The line ends at 0."' in page
    for step in (0, 250, 500):  # one description per frame, carried by the page's script
        for scale in (1.0, 2.0):
            assert f"The line ends at {step * scale:g}." in page
    # without describe, the alt text stays as it was: the description and the values on show
    plain = _small_explorer().frame_alt(step=250, scale=2.0)
    assert plain == "Explorer: step, scale. Shown: step = 250; scale = 2."


def test_stored_explorer_asks_to_run_the_cell() -> None:
    page = _small_explorer().to_html()
    assert "Run this cell to make the sliders live." in page
    # the page's own script removes the hint: on a page where scripts run, the sliders already work
    assert "root.querySelector('.bnx-hint')" in page and "hint.remove()" in page


def test_units_and_describe_are_checked() -> None:
    with pytest.raises(ValueError, match="units"):
        _small_explorer(units={"nope": "s"})
    with pytest.raises(ValueError, match="describe"):
        _small_explorer(describe="not callable")


# --- on paper: the frames a printed page shows ---------------------------------------------
def _printed(page: str) -> list[list[int]]:
    import html
    import json

    return json.loads(html.unescape(re.search(r'data-print-frames="([^"]*)"', page).group(1)))


def test_print_frames_default_to_the_first_slider_at_the_other_initial_values() -> None:
    ex = _explorer(initial={"size": 16})
    assert ex.print_frames == [(0, 1), (1, 1), (2, 1)]
    assert _printed(ex.to_html()) == [[0, 1], [1, 1], [2, 1]]


def test_default_print_frames_space_a_long_slider_evenly() -> None:
    from bnbook.widgets._explorer import default_print_frames

    assert default_print_frames((6, 2), (0, 1)) == [(i, 1) for i in range(6)]  # six or fewer: all
    assert [i for (i,) in default_print_frames((9,), (0,))] == [0, 2, 4, 6, 8]  # 8 steps: five frames
    assert [i for (i,) in default_print_frames((7,), (3,))] == [0, 2, 4, 6]  # 6 steps: four frames
    for n in range(7, 41):  # both ends, four to six frames, in order, none twice
        picks = [i for (i,) in default_print_frames((n,), (0,))]
        assert picks[0] == 0 and picks[-1] == n - 1 and 4 <= len(picks) <= 6
        assert picks == sorted(set(picks))


def test_print_frames_named_by_the_chapter() -> None:
    frames = ["blue", {"color": "red", "size": 8}, {"color": "green"}]
    ex = _explorer(initial={"size": 16}, print_frames=frames)
    # a bare value is one of the first parameter; a parameter left out keeps its initial value;
    # the order is the chapter's
    assert ex.print_frames == [(2, 1), (0, 0), (1, 1)]
    assert _printed(ex.to_html()) == [[2, 1], [0, 0], [1, 1]]
    # the screen is unchanged: the first picture is still the initial one
    first = base64.b64encode(ex.render(color="red", size=16)).decode("ascii")
    assert f'src="data:image/png;base64,{first}"' in ex.to_html()


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "1 to"),
        (["red"] * 9, "1 to"),
        ("red", "list of frames"),
        ({"color": "red"}, "list of frames"),
        (["purple"], "not among the values"),
        ([{"colour": "red"}], "unknown parameters"),
        ([{"size": 12}], "not among the values"),
        (["red", {"color": "red", "size": 8}], "twice"),
    ],
    ids=["none", "too-many", "a-string", "a-dict", "unknown-value", "unknown-name", "bad-second", "twice"],
)
def test_bad_print_frames_are_refused_with_a_reason(frames, message) -> None:
    with pytest.raises(ValueError, match=message):
        _explorer(print_frames=frames)


def test_static_frame_drawn_to_pixels_equals_the_compressed_live_png() -> None:
    """A static frame skips the PNG round trip; its bytes must be those the round trip gives."""
    from bnbook.plots import use_style
    from bnbook.widgets._explorer import _compress_png

    use_style()

    def draw(fig, a):
        left, right = fig.subplots(1, 2)
        left.plot(np.sin(np.linspace(0, a, 50)))
        left.set_title(f"a = {a}")
        right.hist(np.random.default_rng(0).normal(size=200) * a, bins=20)

    ex = Explorer(draw, {"a": [1, 2, 3]}, name="pixels")
    for i in range(3):
        assert ex._frame((i,)) == _compress_png(ex._live_frame((i,)))
