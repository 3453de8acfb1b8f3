"""Quizzes: validation, checking answers, the static HTML form, the live ipywidgets form, ``show()``."""

from __future__ import annotations

import io
import re

import pytest
from bs4 import BeautifulSoup

from bnbook.widgets import Choice, MultiChoice, Numeric, Quiz


def _png() -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.0, 0.8), dpi=40)
    fig.add_subplot().plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _questions() -> list:
    return [
        Choice(
            prompt="Which mode uses $\\hat\\mu$ and `running_var`?",
            options=["training", "eval", "neither"],
            answer=1,
            explanation="Eval mode reads the running statistics.",
            chapter="04_training_vs_inference",
        ),
        MultiChoice(
            prompt="Which are **learnable**?",
            options=["$\\gamma$", "$\\beta$", "running_mean"],
            answers=[1, 0],
            explanation="Only the scale and the shift are learned.",
            chapter="03_scale_and_shift",
            code="bn = nn.BatchNorm1d(3)\nprint(list(bn.parameters()))",
        ),
        Numeric(
            prompt="PyTorch momentum for Keras momentum 0.99?",
            answer=0.01,
            tol=0.001,
            explanation="Subtract from one.",
            figure=_png(),
            figure_alt="A falling line.",
        ),
    ]


def _quiz(name: str = "demo") -> Quiz:
    return Quiz(_questions(), name=name)


# --- checking answers ---------------------------------------------------------------------
def test_choice_check() -> None:
    q = _questions()[0]
    assert q.check(1) == (True, "Correct.")
    right, text = q.check(0)
    assert not right and "(a)" in text
    assert q.check(None) == (False, "Choose an option first.")


def test_multichoice_needs_exactly_the_right_set() -> None:
    q = _questions()[1]
    assert q.answers == (0, 1)  # sorted
    assert q.check([1, 0])[0] and q.check({0, 1})[0]
    right, text = q.check([0])
    assert not right and "1 of the 2 right options and 0 options" in text
    right, text = q.check([0, 1, 2])
    assert not right and "2 of the 2 right options and 1 option that is wrong" in text
    assert q.check([]) == (False, "Tick at least one option first.")


@pytest.mark.parametrize(
    ("response", "right", "words"),
    [
        (0.01, True, "Correct"),
        ("0.0109", True, "Correct"),
        ("0,0091", True, "Correct"),  # a decimal comma
        (0.012, False, "too high"),
        ("0.005", False, "too low"),
        ("abc", False, "Enter a number"),
        ("", False, "Enter a number"),
        (None, False, "Enter a number"),
        ("nan", False, "Enter a number"),
    ],
)
def test_numeric_check_uses_the_tolerance(response, right, words) -> None:
    q = _questions()[2]
    got, text = q.check(response)
    assert got is right and words in text


# --- bad input -----------------------------------------------------------------------------
_OK = {"prompt": "p", "explanation": "e"}


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (Choice, {"options": ["a", "b"], "answer": 2}),
        (Choice, {"options": ["a", "b"], "answer": -1}),
        (Choice, {"options": ["a", "b"], "answer": True}),
        (Choice, {"options": ["a"], "answer": 0}),
        (Choice, {"options": "ab", "answer": 0}),
        (Choice, {"options": ["a", "a"], "answer": 0}),
        (Choice, {"options": ["a", ""], "answer": 0}),
        (Choice, {"options": ["a", "b"], "answer": 0, "prompt": " "}),
        (Choice, {"options": ["a", "b"], "answer": 0, "explanation": ""}),
        (Choice, {"options": ["a", "b"], "answer": 0, "chapter": "../x.html"}),
        (Choice, {"options": ["a", "b"], "answer": 0, "figure": b"not a png", "figure_alt": "x"}),
        (Choice, {"options": ["a", "b"], "answer": 0, "figure": _png()}),
        (Choice, {"options": ["a", "b"], "answer": 0, "code": ""}),
        (MultiChoice, {"options": ["a", "b"], "answers": []}),
        (MultiChoice, {"options": ["a", "b"], "answers": [0, 0]}),
        (MultiChoice, {"options": ["a", "b"], "answers": [3]}),
        (MultiChoice, {"options": ["a", "b"], "answers": 0}),
        (Numeric, {"answer": float("nan"), "tol": 0.1}),
        (Numeric, {"answer": 1.0, "tol": -0.1}),
        (Numeric, {"answer": "1", "tol": 0.1}),
        (Numeric, {"answer": 1.0, "tol": float("inf")}),
    ],
    ids=[
        "answer-out-of-range",
        "answer-negative",
        "answer-bool",
        "one-option",
        "options-a-string",
        "duplicate-options",
        "empty-option",
        "blank-prompt",
        "empty-explanation",
        "chapter-a-path",
        "figure-not-png",
        "figure-without-alt",
        "empty-code",
        "no-answers",
        "repeated-answer",
        "answers-out-of-range",
        "answers-an-int",
        "nan-answer",
        "negative-tol",
        "string-answer",
        "infinite-tol",
    ],
)
def test_bad_questions_raise_value_error(cls, kwargs) -> None:
    with pytest.raises(ValueError):
        cls(**(_OK | kwargs))


@pytest.mark.parametrize(
    ("questions", "name"),
    [([], "q"), (_questions()[:1], "has space"), (_questions()[:1], ""), (["not a question"], "q")],
    ids=["no-questions", "space-in-name", "empty-name", "not-a-question"],
)
def test_bad_quiz_raises_value_error(questions, name) -> None:
    with pytest.raises(ValueError):
        Quiz(questions, name=name)


def test_a_matplotlib_figure_becomes_png_bytes() -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=30)
    q = Choice(**_OK, options=["a", "b"], answer=0, figure=fig, figure_alt="Nothing.")
    assert q.figure.startswith(b"\x89PNG\r\n\x1a\n")


# --- the static form ---------------------------------------------------------------------
def test_static_html_is_accessible_and_self_contained() -> None:
    page = _quiz().to_html()
    soup = BeautifulSoup(page, "html.parser")
    fieldsets = soup.select("fieldset.bnq-question")
    assert len(fieldsets) == 3
    assert all(fs.find("legend") is not None for fs in fieldsets)
    inputs = soup.select("input")
    assert [i["type"] for i in inputs] == ["radio"] * 3 + ["checkbox"] * 3 + ["number"]
    for inp in inputs:  # every input has its own label
        labels = soup.select(f'label[for="{inp["id"]}"]')
        assert len(labels) == 1 and labels[0].get_text(strip=True), inp
    assert len(soup.select("button.bnq-check[type=button]")) == 3
    assert len(soup.select('.bnq-verdict[aria-live="polite"][role="status"]')) == 3
    assert len(soup.select("details.bnq-explain")) == 3
    # nothing is loaded from elsewhere: no script or stylesheet by URL, only data: images
    assert not soup.select("script[src], link[href], iframe")
    assert [img["src"][:22] for img in soup.select("img")] == ["data:image/png;base64,"]
    assert soup.select_one("img")["alt"] == "A falling line."
    assert "http" not in page.lower()


def test_static_html_marks_up_math_code_and_links() -> None:
    page = _quiz().to_html()
    soup = BeautifulSoup(page, "html.parser")
    math = [s.get_text() for s in soup.select("span.math")]
    assert "\\(\\hat\\mu\\)" in math and "\\(\\gamma\\)" in math
    assert "$" not in soup.select_one("legend").get_text()
    assert soup.select_one("legend code").get_text() == "running_var"
    assert soup.select_one("pre.bnq-code").get_text().startswith("bn = nn.BatchNorm1d(3)")
    hrefs = [a["href"] for a in soup.select("details a")]
    assert hrefs == ["04_training_vs_inference.html", "03_scale_and_shift.html"]
    assert "(b) eval" in soup.select("details")[0].get_text()


def test_static_html_escapes_text() -> None:
    q = Choice(prompt="Is <b> & `<i>` safe?", options=["<x>", "y"], answer=0, explanation="a < b")
    page = Quiz([q], name="esc").to_html()
    assert "<b>" not in page and "<x>" not in page and "&lt;i&gt;" in page and "a &lt; b" in page


def test_static_html_ids_are_deterministic_and_derive_from_the_name() -> None:
    assert _quiz().to_html() == _quiz().to_html()
    ids = re.findall(r'id="([^"]+)"', _quiz("ch11").to_html())
    assert len(ids) == len(set(ids))
    assert all(i.startswith("bnq-ch11") for i in ids)
    assert _quiz()._repr_html_() == _quiz().to_html()


def test_answer_data_for_the_page_script() -> None:
    page = _quiz().to_html()
    assert '"kind": "choice", "answer": 1' in page
    assert '"kind": "multi", "answers": [0, 1]' in page
    assert '"kind": "numeric", "answer": 0.01, "tol": 0.001' in page


# --- printable form -----------------------------------------------------------------------
def test_markdown_lists_questions_and_answers() -> None:
    md = _quiz().to_markdown()
    assert md.count("**Question ") == 3
    assert "*Answer:* (b) eval. Eval mode reads the running statistics. (Chapter 4)" in md
    assert "*Answer:* (a) $\\gamma$; (b) $\\beta$." in md
    assert "*Answer:* 0.01 (within 0.001)." in md
    assert "```python\nbn = nn.BatchNorm1d(3)" in md
    assert "![A falling line.](data:image/png;base64," in md
    assert "*Answer:*" not in _quiz().to_markdown(answers=False)


# --- the live form ---------------------------------------------------------------------------
def test_live_form_checks_answers() -> None:
    form = _quiz().live()
    choice, multi, numeric = form.questions
    choice.button.click()
    assert "Choose an option first" in choice.verdict.value
    choice.inputs[0].value = 0
    choice.button.click()
    assert "Not quite" in choice.verdict.value and "Eval mode reads" in choice.verdict.value
    choice.inputs[0].value = 1
    choice.button.click()
    assert "Correct." in choice.verdict.value and "04_training_vs_inference.ipynb" in choice.verdict.value

    multi.inputs[0].value = True
    multi.button.click()
    assert "Not quite" in multi.verdict.value
    multi.inputs[1].value = True
    multi.button.click()
    assert "Correct" in multi.verdict.value and "$\\gamma$" in multi.verdict.value

    numeric.inputs[0].value = "0.1"
    numeric.button.click()
    assert "too high" in numeric.verdict.value
    numeric.inputs[0].value = "0.0102"
    numeric.button.click()
    assert "Correct." in numeric.verdict.value


def test_live_form_shows_figure_and_code() -> None:
    import ipywidgets

    form = _quiz().live()
    numeric = form.questions[2]
    images = [c for c in numeric.children if isinstance(c, ipywidgets.Image)]
    assert len(images) == 1 and images[0].value == _questions()[2].figure
    assert any("BatchNorm1d(3)" in getattr(c, "value", "") for c in form.questions[1].children)


# --- show() picks the form ----------------------------------------------------------------
def _capture_display(monkeypatch) -> list:
    import IPython.display

    shown: list = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    return shown


def test_show_is_static_when_env_set(monkeypatch) -> None:
    import IPython.display

    shown = _capture_display(monkeypatch)
    monkeypatch.setenv("BNBOOK_STATIC", "1")
    _quiz().show()
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.HTML)
    assert shown[0].data == _quiz().to_html()


def test_show_is_live_otherwise(monkeypatch) -> None:
    import ipywidgets

    shown = _capture_display(monkeypatch)
    monkeypatch.delenv("BNBOOK_STATIC", raising=False)
    _quiz().show()
    assert len(shown) == 1 and isinstance(shown[0], ipywidgets.VBox)
    assert len(shown[0].questions) == 3


def test_describe_counts_kinds() -> None:
    assert _quiz().describe() == (
        "Quiz 'demo': 3 questions (1 choice, 1 multi, 1 numeric); 1 with a figure, 1 with code"
    )
