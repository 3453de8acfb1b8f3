"""Quizzes: validation, checking answers, the static HTML form, the live ipywidgets form, ``show()``."""

from __future__ import annotations

import io
import json
import re

import pytest
from bs4 import BeautifulSoup

from bnbook.widgets import Choice, MultiChoice, Numeric, Quiz
from bnbook.widgets._quiz import NUMBER_PATTERN, score_text
from bnbook.widgets._quiz._questions import _inline_html


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
            feedback=["Training mode uses the batch", "", "Eval mode reads them"],
            explanation="Eval mode reads the running statistics.",
            chapter="04_training_vs_inference",
        ),
        MultiChoice(
            prompt="Which are **learnable**?",
            options=["$\\gamma$", "$\\beta$", "running_mean"],
            answers=[1, 0],
            feedback=["", "", "A buffer, not a parameter."],
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
    assert not right and text == "Not quite: (a) is not right. Training mode uses the batch. Try again."
    assert q.check(2) == (False, "Not quite: (c) is not right. Eval mode reads them. Try again.")
    assert q.check(None) == (False, "Choose an option first.")
    assert q.grade(None)[0] == "incomplete" and q.grade(0)[0] == "wrong" and q.grade(1)[0] == "right"


@pytest.mark.parametrize("response", [30, 3, -1, True, 1.0, "1"], ids=repr)
def test_choice_check_refuses_what_no_input_can_give(response) -> None:
    q = _questions()[0]
    with pytest.raises(ValueError, match=r"option index in 0\.\.2"):
        q.check(response)
    assert q.check(1) == (True, "Correct.")  # nothing changed


def test_multichoice_needs_exactly_the_right_set() -> None:
    q = _questions()[1]
    assert q.answers == (0, 1)  # sorted
    assert q.check([1, 0])[0] and q.check({0, 1})[0]
    right, text = q.check([0])
    assert not right and text == (
        "Not quite: you ticked 1 of the 2 right options and none that is wrong. Try again."
    )
    right, text = q.check([0, 1, 2])
    assert not right and text == "Not quite: (c) is not right. A buffer, not a parameter. Try again."
    assert q.check([]) == (False, "Tick at least one option first.")
    assert q.check(None) == (False, "Tick at least one option first.")
    for bad in ([3], [-1], 0, "01"):
        with pytest.raises(ValueError):
            q.check(bad)


@pytest.mark.parametrize(
    ("response", "right", "words"),
    [
        (0.01, True, "Correct"),
        ("0.0109", True, "Correct"),
        ("0,0091", True, "Correct"),  # a decimal comma
        (" 1e-2 ", True, "Correct"),
        (0.012, False, "0.012 is too high"),
        ("0.005", False, "0.005 is too low"),
        ("abc", False, "Enter a number"),
        ("", False, "Enter a number"),
        (None, False, "Enter a number"),
        ("nan", False, "Enter a number"),
        ("inf", False, "Enter a number"),
        ("1_000", False, "Enter a number"),  # Python's float() takes it, a browser's Number() does not
        ("0x10", False, "Enter a number"),  # and the other way round
    ],
)
def test_numeric_check_uses_the_tolerance(response, right, words) -> None:
    q = _questions()[2]
    got, text = q.check(response)
    assert got is right and words in text


@pytest.mark.parametrize(
    ("typed", "right"),
    [("2.34", True), ("2.36", True), ("2.35", True), ("2,34", True), ("2.3399", False), ("2.3601", False)],
)
def test_numeric_boundary_is_inclusive(typed, right) -> None:
    """2.34 is within 0.01 of 2.35 as the reader means it, although 2.35 - 2.34 > 0.01 in binary."""
    q = Numeric(prompt="p", explanation="e", answer=2.35, tol=0.01)
    assert 2.35 - 2.34 > 0.01  # the binary difference the bounds must absorb
    assert q.check(typed)[0] is right
    assert q.check(float(typed.replace(",", ".")))[0] is right
    lo, hi = q.bounds
    assert lo < 2.34 and hi > 2.36 and hi - lo < 0.02 + 1e-7


def test_numeric_hint_joins_a_wrong_verdict() -> None:
    q = Numeric(prompt="p", explanation="e", answer=1.0, tol=0.0, hint="Think of $m$")
    assert q.check("2") == (False, "Not quite: 2 is too high. Think of $m$. Try again.")
    assert q.check("1")[0] and not q.check("1.001")[0]


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
        (Choice, {"options": ["a", "b"], "answer": 0, "feedback": ["", ""]}),
        (Choice, {"options": ["a", "b"], "answer": 0, "feedback": ["x"]}),
        (Choice, {"options": ["a", "b"], "answer": 0, "feedback": "xy"}),
        (MultiChoice, {"options": ["a", "b", "c"], "answers": [0], "feedback": ["", "why", " "]}),
        (MultiChoice, {"options": [str(i) for i in range(9)], "answers": [0]}),
        (Numeric, {"answer": 1.0, "tol": 0.1, "hint": 3}),
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
        "empty-feedback-for-a-wrong-option",
        "feedback-too-short",
        "feedback-a-string",
        "blank-multi-feedback",
        "too-many-multi-options",
        "hint-not-a-string",
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


def test_a_name_belongs_to_one_quiz() -> None:
    """HTML ids derive from the name: a different quiz with a taken name is refused, the same one is fine."""
    first = Quiz(_questions(), name="taken")
    assert Quiz(_questions(), name="taken").to_html() == first.to_html()  # a cell run twice
    with pytest.raises(ValueError, match="'taken' exists already"):
        Quiz(_questions()[:2], name="taken")
    with pytest.raises(ValueError, match="exists already"):
        Quiz(_questions(), name="taken", title="Another title")
    assert Quiz(_questions(), name="taken").to_html() == first.to_html()  # the refusal changed nothing
    assert len(Quiz(_questions()[:2], name="taken-2")) == 2


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
    assert [i["type"] for i in inputs] == ["radio"] * 3 + ["checkbox"] * 3 + ["text"]
    assert soup.select_one("input.bnq-number")["inputmode"] == "decimal"
    for inp in inputs:  # every input has its own label
        labels = soup.select(f'label[for="{inp["id"]}"]')
        assert len(labels) == 1 and labels[0].get_text(strip=True), inp
    assert len(soup.select("button.bnq-check[type=button]")) == 3
    assert len(soup.select('.bnq-verdict[aria-live="polite"][role="status"]')) == 3
    assert len(soup.select("details.bnq-explain")) == 3
    assert [d.get_text() for d in soup.select("details.bnq-explain summary")] == ["Show the answer"] * 3
    assert soup.select_one("p.bnq-score[hidden][aria-live=polite]").get_text() == (
        "Score: 0 of 3 solved, 0 at the first try; answers shown: 0."
    )
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


def _specs(page: str) -> list:
    return json.loads(re.search(r"var specs=(\[.*?\]),template=", page).group(1))


def test_the_page_script_holds_python_s_verdicts() -> None:
    """The script grades nothing itself: it reads the verdicts that Python computed."""
    quiz = _quiz()
    choice, multi, numeric = _specs(quiz.to_html())
    q0, q1, q2 = quiz.questions
    assert choice["verdicts"] == [[q0.grade(j)[0], _inline_html(q0.grade(j)[1])] for j in range(3)]
    assert len(multi["verdicts"]) == 2**3
    for mask, (status, text) in enumerate(multi["verdicts"]):
        ticked = [j for j in range(3) if mask >> j & 1]
        assert (status, text) == (q1.grade(ticked)[0], _inline_html(q1.grade(ticked)[1]))
    assert (numeric["lo"], numeric["hi"]) == q2.bounds  # the same floats, through JSON
    assert numeric["pattern"] == NUMBER_PATTERN
    assert numeric["high"] == "Not quite: {x} is too high. Try again."
    assert "Score: {solved} of {n} solved" in quiz.to_html()


def test_the_page_has_a_print_fallback() -> None:
    page = _quiz().to_html()
    assert "@media print{" in page and ".bnq-check" in page.split("@media print{", 1)[1]
    assert "beforeprint" in page and "afterprint" in page


def test_html_in_the_spec_cannot_end_the_script() -> None:
    q = Choice(prompt="p", explanation="e", options=["</script>", "b"], answer=1, feedback=["</script>x", ""])
    script = Quiz([q], name="script-end").to_html().split("<script>", 1)[1]
    assert script.count("</script>") == 1


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
    assert not re.search(r"\.\.(?!\.)|\.;|\. \.", md)  # no doubled punctuation


# --- the live form ---------------------------------------------------------------------------
def test_live_form_checks_answers_and_allows_a_retry() -> None:
    form = _quiz().live()
    choice, multi, numeric = form.questions
    hidden = lambda box: box.explanation.layout.display == "none"  # noqa: E731
    choice.button.click()
    assert "Choose an option first" in choice.verdict.value and choice.progress.tries == 0
    choice.inputs[0].value = True
    choice.button.click()
    assert "Not quite: (a) is not right. Training mode uses the batch." in choice.verdict.value
    assert hidden(choice)  # a wrong answer keeps the explanation folded: try again
    choice.inputs[1].value = True
    assert [t.value for t in choice.inputs] == [False, True, False]  # one at a time, like radio buttons
    choice.button.click()
    assert "Correct." in choice.verdict.value and not hidden(choice)
    assert "04_training_vs_inference.ipynb" in choice.explanation.value
    assert "Eval mode reads" in choice.explanation.value

    multi.inputs[0].value = True
    multi.button.click()
    assert "Not quite" in multi.verdict.value and hidden(multi)
    multi.inputs[1].value = True
    multi.button.click()
    assert "Correct" in multi.verdict.value and "$\\gamma$" in multi.explanation.value

    numeric.inputs[0].value = "0.1"
    numeric.button.click()
    assert "too high" in numeric.verdict.value and hidden(numeric)
    numeric.inputs[0].value = "0.0102"
    numeric.button.click()
    assert "Correct." in numeric.verdict.value
    assert form.score.value == "<b>" + score_text(3, 0, 0, 3) + "</b>"


def test_live_form_score_counts_first_tries_and_shown_answers() -> None:
    form = _quiz().live()
    choice, multi, numeric = form.questions
    assert score_text(0, 0, 0, 3) in form.score.value
    choice.inputs[1].value = True
    choice.button.click()  # right at the first try
    multi.show_button.click()  # asked for the answer
    assert multi.explanation.layout.display is None
    multi.inputs[0].value = multi.inputs[1].value = True
    multi.button.click()  # right, but after looking: not solved
    numeric.inputs[0].value = "1"
    numeric.button.click()
    numeric.inputs[0].value = "0.01"
    numeric.button.click()  # right at the second try
    assert score_text(2, 1, 1, 3) in form.score.value
    choice.show_button.click()  # already solved: showing the answer again changes nothing
    assert score_text(2, 1, 1, 3) in form.score.value


def test_live_form_typesets_math_everywhere() -> None:
    """Text with math sits only in HTMLMath widgets; no plain-text label carries TeX."""
    import ipywidgets

    form = _quiz().live()

    def walk(w):
        yield w
        for c in getattr(w, "children", ()):
            yield from walk(c)

    widgets = list(walk(form))
    math = [w for w in widgets if isinstance(w, ipywidgets.HTMLMath)]
    assert any("$\\gamma$" in w.value for w in math)  # the options of the MultiChoice
    for w in widgets:
        if isinstance(w, ipywidgets.HTMLMath):
            continue
        for attr in ("description", "value", "placeholder"):
            text = getattr(w, attr, "")
            assert not (isinstance(text, str) and ("\\" in text or "$" in text)), (type(w).__name__, text)


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


# --- the book's quiz ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def book() -> Quiz:
    from bnbook.widgets import book_quiz

    return book_quiz()


def test_book_quiz_covers_every_chapter(book: Quiz) -> None:
    assert len(book) >= 24
    chapters = {q.chapter[:2] for q in book.questions}
    # every chapter but the quiz's own, whose summary restates the others (a link to it would loop back)
    assert chapters == {f"{n:02d}" for n in range(1, 17)} - {"11"}, sorted(chapters)
    kinds = {q.kind for q in book.questions}
    assert kinds == {"choice", "multi", "numeric"}
    text = " ".join(q.prompt + " " + q.explanation for q in book.questions).lower()
    assert "regulariz" in text and "memory" in text and "fold" in text  # regularization and cost


def test_book_quiz_says_what_is_wrong_with_every_wrong_option(book: Quiz) -> None:
    for i, q in enumerate(book.questions):
        if isinstance(q, Choice):
            for j in range(len(q.options)):
                if j != q.answer:
                    status, text = q.grade(j)
                    assert status == "wrong" and len(text) > 60, (i + 1, j, text)
        elif isinstance(q, MultiChoice):
            for j in set(range(len(q.options))) - set(q.answers):
                assert q.feedback[j].strip(), (i + 1, j)


def test_book_quiz_has_no_stray_punctuation(book: Quiz) -> None:
    md = book.to_markdown()
    assert not re.search(r"\.\.(?!\.)|\.;|\. \.|,,|\s[.,;]", md.replace("```", "")), re.findall(
        r".{30}(?:\.\.(?!\.)|\.;|\. \.|,,|\s[.,;]).{10}", md
    )


def test_book_quiz_is_deterministic(book: Quiz) -> None:
    from bnbook.widgets import book_quiz

    assert book_quiz().to_html() == book.to_html()
    ids = re.findall(r'id="([^"]+)"', book.to_html())
    assert len(ids) == len(set(ids)) and all(i.startswith("bnq-ch11-quiz") for i in ids)


def _question(book: Quiz, words: str):
    (q,) = [q for q in book.questions if words in q.prompt]
    return q


def test_book_quiz_numbers_match_torch(book: Quiz) -> None:
    """Every number in the quiz, computed in the bank from a closed form, against PyTorch."""
    import torch
    from torch import nn

    from bnbook.widgets import quiz_bank

    x = torch.tensor([[2.0], [4.0], [6.0], [8.0]], dtype=torch.float64)
    normalized = nn.BatchNorm1d(1, eps=1e-12, dtype=torch.float64)(x)[-1, 0].item()
    assert _question(book, "2, 4, 6 and 8").answer == round(normalized, 2) == 1.34

    namespace: dict = {}
    exec(quiz_bank.RUNNING_VAR_SNIPPET.replace("print(", "_ = ("), namespace)
    assert _question(book, "running variance (two").answer == round(namespace["bn"].running_var.item(), 2)

    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        exec(quiz_bank.SINGLE_EXAMPLE_SNIPPET, {"nn": nn, "torch": torch})

    xg = torch.randn(16, 1, dtype=torch.float64, requires_grad=True)
    nn.BatchNorm1d(1, dtype=torch.float64)(xg).backward(torch.randn(16, 1, dtype=torch.float64))
    assert abs(xg.grad.sum().item() - _question(book, "sum_i").answer) < 1e-12

    bn = nn.BatchNorm1d(1, eps=1e-5, affine=False, dtype=torch.float64)
    z = torch.tensor([[0.0], [2 * 10**-2.5]], dtype=torch.float64)  # variance 1e-5
    spread = bn(z).std(unbiased=False).item()
    assert _question(book, "variance of $10^{-5}$").answer == round(spread, 2) == 0.71

    keras = _question(book, "Keras model")
    assert keras.answer == pytest.approx(1 - 0.99)

    pair = torch.tensor([[0.3], [-1.7]], dtype=torch.float64)
    out = nn.BatchNorm1d(1, eps=1e-300, dtype=torch.float64)(pair)
    assert torch.allclose(out.abs(), torch.ones_like(out), rtol=0, atol=1e-12)
    assert _question(book, "batches of 2").answer == 1.0
    assert _question(book, "4×4 positions").answer == 2 * 4 * 4  # a channel of the batch, all positions

    linear, norm = nn.Linear(1, 1, dtype=torch.float64), nn.BatchNorm1d(1, eps=1.0, dtype=torch.float64)
    with torch.no_grad():
        linear.bias.fill_(0.5)
        for tensor, value in [
            (norm.weight, 2.0),
            (norm.bias, 1.0),
            (norm.running_mean, 3.0),
            (norm.running_var, 3.0),
        ]:
            tensor.fill_(value)
    fused = torch.nn.utils.fusion.fuse_linear_bn_eval(linear.eval(), norm.eval())
    assert _question(book, "folded layer").answer == pytest.approx(fused.bias.item())

    per_process = torch.randn(20000, 32, dtype=torch.float64).mean(1).std().item()
    synced = torch.randn(20000, 256, dtype=torch.float64).mean(1).std().item()
    assert _question(book, "8 processes").answer == pytest.approx(per_process / synced, rel=0.03)


def test_the_chapter_notebook_keeps_the_answer_key_out_of_sight() -> None:
    """Chapter 11 builds the quiz in one hidden cell, with no answers in its source."""
    from pathlib import Path

    nb = json.loads((Path(__file__).parents[1] / "chapters" / "11_summary_and_quiz.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for cell in code:
        source = "".join(cell["source"])
        assert not re.search(r"\banswers?\s*=", source), source[:200]
        if "book_quiz" in source:
            assert cell["metadata"]["jupyter"]["source_hidden"] is True
            assert {"hide-input", "remove-cell", "remove-input"} & set(cell["metadata"]["tags"])
    prose = " ".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "press **Check**" not in prose and "in print" in prose.lower()
