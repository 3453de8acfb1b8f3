"""Browser tests of the quiz on the summary page: answers, feedback, keyboard, accessible names.

They share the server, Chromium and page visits of the other browser tests (``browsing.py``): the built book
(``_build/html``, or ``$BNBOOK_HTML_DIR``) is served on 127.0.0.1, every request to another host is blocked
and recorded, and each test ends by asserting that the page logged no script error and made no external
request. The right answers are read from the page's own "Answer and explanation" sections (plain HTML,
present without JavaScript), so the tests check the script against the answers the reader is shown.

The grading rule is Python's (``Question.grade``); the page only looks verdicts up. The tests here compare the
page's verdicts with Python's for the same typed input, on the book's page and on a bare page holding a small
quiz (which needs no built book), including the numeric tolerance's boundary.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from browsing import SITE, Browser, _ok

from bnbook.widgets import Choice, MultiChoice, Numeric, Quiz, book_quiz
from bnbook.widgets._quiz import SCORE_TEMPLATE
from bnbook.widgets._quiz._questions import _plain

pytestmark = pytest.mark.browser

PAGE = "chapters/11_summary_and_quiz.html"
MIN_QUESTIONS = 24
SCORE = re.compile(r"Score: (\d+) of (\d+) solved, (\d+) at the first try; answers shown: (\d+)\.")


@pytest.fixture
def quiz(site: Browser) -> Any:
    if PAGE not in SITE["pages"]:
        pytest.skip(f"the built book has no {PAGE}")
    visit = site.open(PAGE)
    root = visit.page.locator(".bnbook-quiz")
    assert root.count() == 1, f"{PAGE}: expected one quiz, found {root.count()}"
    return visit


def _answer(question: Any) -> str:
    """The text after 'Answer:' in a question's folded answer section."""
    text = question.locator(".bnq-explain p").first.text_content() or ""
    return text.split("Answer:", 1)[1].strip()


def _check(question: Any) -> tuple[str, str]:
    """Press the question's Check button; return (verdict, result attribute)."""
    question.locator("button.bnq-check").click()
    verdict = question.locator(".bnq-verdict")
    return (verdict.text_content() or "").strip(), question.get_attribute("data-result") or ""


def _explained(question: Any) -> list[str]:
    """Problems with the feedback shown after a right answer: explanation open, chapter link present."""
    problems = []
    details = question.locator("details.bnq-explain")
    if not details.evaluate("d => d.open"):
        problems.append("the explanation did not open after a right answer")
    elif not details.locator("a[href$='.html']").first.is_visible():
        problems.append("the explanation has no visible link to its chapter")
    return problems


def _is_open(question: Any) -> bool:
    return bool(question.locator("details.bnq-explain").evaluate("d => d.open"))


def _score(page: Any) -> tuple[int, ...]:
    text = (page.locator(".bnbook-quiz .bnq-score").text_content() or "").strip()
    m = SCORE.fullmatch(text)
    assert m, f"score line {text!r} does not follow {SCORE_TEMPLATE!r}"
    return tuple(int(g) for g in m.groups())


def _reset(question: Any) -> None:
    question.evaluate(
        "q => { q.querySelectorAll('input').forEach(i => { i.checked = false; i.value = ''; });"
        " q.querySelector('details').open = false; }"
    )


def test_quiz_is_complete_and_scripted(quiz: Any) -> None:
    page, mark = quiz.page, quiz.mark()
    questions = page.locator(".bnbook-quiz fieldset.bnq-question")
    n = questions.count()
    assert n >= MIN_QUESTIONS, f"{PAGE}: {n} questions, expected at least {MIN_QUESTIONS}"
    kinds = questions.evaluate_all("qs => qs.map(q => q.dataset.kind)")
    assert {"choice", "multi", "numeric"} <= set(kinds), kinds
    # the page script ran: every Check button is shown
    hidden = page.locator(".bnbook-quiz button.bnq-check[hidden]").count()
    assert hidden == 0, f"{hidden} Check buttons are still hidden: the quiz script did not run"
    figures = page.locator(".bnbook-quiz img.bnq-figure")
    assert figures.count() >= 1
    for i in range(figures.count()):
        src = figures.nth(i).get_attribute("src") or ""
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert figures.nth(i).evaluate("img => img.decode().then(() => img.naturalWidth > 0, () => false)")
    # the math of the prompts is typeset by the book's MathJax
    legends_math = page.locator(".bnbook-quiz legend .math")
    assert legends_math.count() > 0
    assert page.locator(".bnbook-quiz legend .math mjx-container").count() == legends_math.count()
    _ok(quiz.new_problems(mark), PAGE)


def test_choice_question_wrong_then_retry(quiz: Any) -> None:
    page, mark = quiz.page, quiz.mark()
    question = page.locator(".bnbook-quiz fieldset[data-kind='choice']").first
    question.scroll_into_view_if_needed()
    letter = re.match(r"\(([a-z])\)", _answer(question)).group(1)
    right = "abcdefghijklmnopqrstuvwxyz".index(letter)
    radios = question.locator("input[type=radio]")
    wrong = 0 if right != 0 else 1

    assert _check(question) == ("Choose an option first.", "")
    radios.nth(wrong).check()
    verdict, result = _check(question)
    assert result == "wrong", verdict
    assert verdict.startswith(f"Not quite: ({'abcdefghijklmnopqrstuvwxyz'[wrong]}) is not right. "), verdict
    assert verdict.endswith("Try again."), verdict
    assert len(verdict) > 60, f"a wrong option's verdict should say what is wrong with it: {verdict!r}"
    assert "bnq-wrong" in (question.locator(".bnq-verdict").get_attribute("class") or "")
    assert not _is_open(question), "a wrong answer opened the explanation: no chance to try again"
    radios.nth(right).check()
    verdict, result = _check(question)
    assert (verdict, result) == ("Correct.", "right")
    assert "bnq-right" in (question.locator(".bnq-verdict").get_attribute("class") or "")
    problems = _explained(question)
    _reset(question)
    _ok(problems + quiz.new_problems(mark), PAGE)


def test_multichoice_question_needs_every_right_option(quiz: Any) -> None:
    page, mark = quiz.page, quiz.mark()
    question = page.locator(".bnbook-quiz fieldset[data-kind='multi']").first
    question.scroll_into_view_if_needed()
    right = [ord(m) - ord("a") for m in re.findall(r"\(([a-z])\)", _answer(question))]
    boxes = question.locator("input[type=checkbox]")
    assert len(right) >= 1 and boxes.count() > len(right)
    boxes.nth(right[0]).check()
    verdict, result = _check(question)
    if len(right) > 1:
        assert result == "wrong", verdict
        assert f"you ticked 1 of the {len(right)} right options and none that is wrong" in verdict, verdict
        assert not _is_open(question)
    for i in right:
        boxes.nth(i).check()
    verdict, result = _check(question)
    assert result == "right" and verdict.startswith("Correct"), verdict
    _reset(question)
    _ok(quiz.new_problems(mark), PAGE)


def test_numeric_question_right_and_wrong(quiz: Any) -> None:
    page, mark = quiz.page, quiz.mark()
    question = page.locator(".bnbook-quiz fieldset[data-kind='numeric']").first
    question.scroll_into_view_if_needed()
    m = re.match(r"([-+0-9.e]+)(?:.*within ([0-9.e-]+))?", _answer(question))
    answer, tol = float(m.group(1)), float(m.group(2) or 0)
    box = question.locator("input.bnq-number")

    assert _check(question)[0] == "Enter a number first."
    box.fill(repr(answer + 10 * tol + 1))
    verdict, result = _check(question)
    assert result == "wrong" and "too high" in verdict, verdict
    assert not _is_open(question)
    box.fill(repr(answer - 10 * tol - 1))
    assert "too low" in _check(question)[0]
    box.fill(repr(answer + 0.5 * tol))
    assert _check(question) == ("Correct.", "right")
    problems = _explained(question)
    _reset(question)
    _ok(problems + quiz.new_problems(mark), PAGE)


def _focused(page: Any) -> str:
    return page.evaluate(
        "() => { const e = document.activeElement; return e ? (e.id || e.className || e.tagName) : ''; }"
    )


def test_keyboard_alone_operates_a_question(quiz: Any) -> None:
    """Tab into a choice question, select with the arrow keys and Space, Tab to Check, press Enter."""
    page, mark = quiz.page, quiz.mark()
    questions = page.locator(".bnbook-quiz fieldset.bnq-question")
    kinds = questions.evaluate_all("qs => qs.map(q => q.dataset.kind)")
    n = next(i for i in range(1, len(kinds)) if kinds[i] == "choice")
    previous, question = questions.nth(n - 1), questions.nth(n)
    question.scroll_into_view_if_needed()
    letter = re.match(r"\(([a-z])\)", _answer(question)).group(1)
    right = "abcdefghijklmnopqrstuvwxyz".index(letter)
    radios = question.locator("input[type=radio]")

    _reset(previous)  # its answer section folded: nothing focusable inside
    # start on the previous question's Check button, then only keys
    previous.locator("button.bnq-check").focus()
    page.keyboard.press("Tab")  # the previous question's "Show the answer" summary
    page.keyboard.press("Tab")  # into this question's radio group
    assert _focused(page) == radios.nth(0).get_attribute("id"), _focused(page)
    for _ in range(right):
        page.keyboard.press("ArrowDown")  # moves the focus and the selection
    page.keyboard.press("Space")
    assert radios.nth(right).is_checked()
    page.keyboard.press("Tab")
    assert "bnq-check" in _focused(page), _focused(page)
    page.keyboard.press("Enter")
    assert question.get_attribute("data-result") == "right"
    assert (question.locator(".bnq-verdict").text_content() or "").strip() == "Correct."

    # a numeric question: Enter in the box checks the answer
    numeric = page.locator(".bnbook-quiz fieldset[data-kind='numeric']").first
    numeric.locator("input.bnq-number").focus()
    page.keyboard.type("123456")
    page.keyboard.press("Enter")
    assert numeric.get_attribute("data-result") == "wrong"
    _reset(question)
    _reset(numeric)
    _ok(quiz.new_problems(mark), PAGE)


def test_every_quiz_input_has_an_accessible_name(quiz: Any) -> None:
    from playwright.sync_api import expect

    page, mark = quiz.page, quiz.mark()
    anything = re.compile(r"\S")
    controls = page.locator(".bnbook-quiz input, .bnbook-quiz button")
    assert controls.count() > MIN_QUESTIONS
    for i in range(controls.count()):
        expect(controls.nth(i)).to_have_accessible_name(anything, timeout=1000)
    groups = page.locator(".bnbook-quiz fieldset")
    for i in range(groups.count()):  # a group named by its legend
        expect(groups.nth(i)).to_have_accessible_name(re.compile(r"^Question \d+\."), timeout=1000)
    live = page.locator(".bnbook-quiz .bnq-verdict[aria-live='polite']")
    assert live.count() == groups.count()
    _ok(quiz.new_problems(mark), PAGE)


def test_score_counts_solved_first_tries_and_shown_answers(quiz: Any) -> None:
    """The score: a retry solves, but not at the first try; "Show the answer" counts as shown."""
    page, mark = quiz.page, quiz.mark()
    questions = page.locator(".bnbook-quiz fieldset.bnq-question")
    kinds = questions.evaluate_all("qs => qs.map(q => q.dataset.kind)")
    assert page.locator(".bnbook-quiz .bnq-score").is_visible()
    solved, n, first, shown = _score(page)
    assert n == len(kinds)
    last_choice = questions.nth(max(i for i, k in enumerate(kinds) if k == "choice"))
    last_choice.scroll_into_view_if_needed()
    right = "abcdefghijklmnopqrstuvwxyz".index(re.match(r"\(([a-z])\)", _answer(last_choice)).group(1))
    radios = last_choice.locator("input[type=radio]")
    radios.nth(0 if right else 1).check()
    assert _check(last_choice)[1] == "wrong"
    assert _score(page) == (solved, n, first, shown)
    radios.nth(right).check()
    assert _check(last_choice) == ("Correct.", "right")
    assert _score(page) == (solved + 1, n, first, shown)  # solved, but not at the first try

    last_multi = questions.nth(max(i for i, k in enumerate(kinds) if k == "multi"))
    last_multi.scroll_into_view_if_needed()
    last_multi.locator("details.bnq-explain summary").click()  # "Show the answer"
    assert _is_open(last_multi)
    page.wait_for_function(
        "n => /answers shown: (\\d+)\\./"
        ".exec(document.querySelector('.bnbook-quiz .bnq-score').textContent)[1] == n",
        arg=str(shown + 1),
    )
    assert _score(page) == (solved + 1, n, first, shown + 1)
    _reset(last_choice)
    _reset(last_multi)
    _ok(quiz.new_problems(mark), PAGE)


def _grade_in_page(page: Any, question: Any, typed: str) -> tuple[str, str]:
    box = question.locator("input.bnq-number")
    box.fill(typed)
    question.locator("button.bnq-check").click()
    return question.get_attribute("data-result") or "", (
        question.locator(".bnq-verdict").text_content() or ""
    )


def _boundary_inputs(q: Numeric) -> list[str]:
    a, t = q.answer, q.tol
    steps = [0.0, 1.0, -1.0, 0.5, 1.0001, -1.0001, 1.01, -1.01, 3.0]
    typed = [f"{a + s * t:.10g}" for s in steps]
    return typed + [typed[1].replace(".", ","), " " + typed[2] + " ", "", "abc", "1e400"]


def test_numeric_grading_agrees_with_python_on_the_page(quiz: Any) -> None:
    """Each numeric question of the book, typed on and around its boundary: the page grades as Python does."""
    page, mark = quiz.page, quiz.mark()
    book = book_quiz()
    questions = page.locator(".bnbook-quiz fieldset.bnq-question")
    assert questions.count() == len(book), "the built page holds another version of the quiz"
    problems = []
    for i, q in enumerate(book.questions):
        if not isinstance(q, Numeric):
            continue
        question = questions.nth(i)
        for typed in _boundary_inputs(q):
            status, text = q.grade(typed)
            got_status, got_text = _grade_in_page(page, question, typed)
            want = "" if status == "incomplete" else status
            if got_status != want or ("$" not in text and got_text.strip() != _plain(text)):
                problems.append(
                    f"question {i + 1}, typed {typed!r}: page {got_status!r} {got_text!r}, "
                    f"Python {want!r} {text!r}"
                )
        _reset(question)
    _ok(problems + quiz.new_problems(mark), PAGE)


# --- a bare page: the grading rule without a built book --------------------------------------
BOUNDARY_QUIZ = Quiz(
    [
        Numeric(prompt="Type 2.35.", explanation="Within 0.01.", answer=2.35, tol=0.01),
        Numeric(prompt="Type 0.", explanation="Exactly.", answer=0.0, tol=0.0),
        Choice(
            prompt="Pick (b).",
            explanation="b.",
            options=["a", "b", "c"],
            answer=1,
            feedback=["Not a.", "", "Not c."],
        ),
        MultiChoice(
            prompt="Tick (a) and (c).",
            explanation="a and c.",
            options=["a", "b", "c"],
            answers=[0, 2],
            feedback=["", "Not b.", ""],
        ),
    ],
    name="boundary",
)


@pytest.fixture(scope="module")
def bare(browser: Any) -> Any:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_content(f"<!doctype html><html><body>{BOUNDARY_QUIZ.to_html()}</body></html>")
    page.errors = errors
    yield page
    context.close()


@pytest.mark.parametrize(
    "typed",
    [
        "2.34",
        "2.36",
        "2.35",
        "2,34",
        "2.3399",
        "2.3601",
        "2.34000001",
        "2.33999999",
        "1e400",
        "-0",
        "+2.34",
        ".5",
    ],
)
def test_numeric_boundary_is_graded_alike(bare: Any, typed: str) -> None:
    """Numeric(answer=2.35, tol=0.01): 2.34 and 2.36 are right, in the page and in Python; 2.3399 is not."""
    question = bare.locator("fieldset.bnq-question").nth(0)
    status, text = BOUNDARY_QUIZ.questions[0].grade(typed)
    got_status, got_text = _grade_in_page(bare, question, typed)
    assert (got_status, got_text) == ("" if status == "incomplete" else status, text)
    if typed in {"2.34", "2.36", "2,34"}:
        assert status == "right"
    if typed in {"2.3399", "2.3601"}:
        assert status == "wrong"
    assert not bare.errors


def test_zero_tolerance_and_options_are_graded_alike(bare: Any) -> None:
    exact = bare.locator("fieldset.bnq-question").nth(1)
    for typed in ["0", "-0", "0.0", "1e-300", "-1e-300"]:
        status, text = BOUNDARY_QUIZ.questions[1].grade(typed)
        assert _grade_in_page(bare, exact, typed) == (status, text), typed
    choice = bare.locator("fieldset.bnq-question").nth(2)
    for j in range(3):
        choice.locator("input[type=radio]").nth(j).check()
        choice.locator("button.bnq-check").click()
        status, text = BOUNDARY_QUIZ.questions[2].grade(j)
        assert (choice.get_attribute("data-result"), choice.locator(".bnq-verdict").text_content()) == (
            status,
            text,
        )
    multi = bare.locator("fieldset.bnq-question").nth(3)
    boxes = multi.locator("input[type=checkbox]")
    for mask in range(1, 8):
        ticked = [j for j in range(3) if mask >> j & 1]
        for j in range(3):
            boxes.nth(j).set_checked(j in ticked)
        multi.locator("button.bnq-check").click()
        status, text = BOUNDARY_QUIZ.questions[3].grade(ticked)
        assert (multi.get_attribute("data-result"), multi.locator(".bnq-verdict").text_content()) == (
            status,
            text,
        )
    assert not bare.errors


def test_bare_page_score_and_print(bare: Any) -> None:
    """Every answer opens for printing and folds back afterwards, without counting as shown."""
    score = bare.locator(".bnq-score")
    bare.evaluate(
        "() => document.querySelectorAll('details.bnq-explain').forEach((d, i) => { d.open = i > 1; })"
    )
    bare.wait_for_timeout(50)
    before = score.text_content()
    closed = bare.evaluate(
        "() => [...document.querySelectorAll('details.bnq-explain')].filter(d => !d.open).length"
    )
    assert closed >= 1
    bare.evaluate("() => window.dispatchEvent(new Event('beforeprint'))")
    assert bare.evaluate("() => [...document.querySelectorAll('details.bnq-explain')].every(d => d.open)")
    bare.wait_for_timeout(50)
    bare.evaluate("() => window.dispatchEvent(new Event('afterprint'))")
    bare.wait_for_timeout(50)
    reopened = bare.evaluate(
        "() => [...document.querySelectorAll('details.bnq-explain')].filter(d => !d.open).length"
    )
    assert reopened == closed and score.text_content() == before
    bare.emulate_media(media="print")
    assert not bare.locator(".bnq-check").first.is_visible() and not score.is_visible()
    bare.emulate_media(media="screen")
    assert not bare.errors
