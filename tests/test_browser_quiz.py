"""Browser tests of the quiz on the summary page: answers, feedback, keyboard, accessible names.

They share the server, Chromium and page visits of the other browser tests (``browsing.py``): the built book
(``_build/html``, or ``$BNBOOK_HTML_DIR``) is served on 127.0.0.1, every request to another host is blocked
and recorded, and each test ends by asserting that the page logged no script error and made no external
request. The right answers are read from the page's own "Answer and explanation" sections (plain HTML,
present without JavaScript), so the tests check the script against the answers the reader is shown.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from browsing import SITE, Browser, _ok

pytestmark = pytest.mark.browser

PAGE = "chapters/11_summary_and_quiz.html"
MIN_QUESTIONS = 15


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
    """Problems with the feedback shown after an answer: explanation open, chapter link present."""
    problems = []
    details = question.locator("details.bnq-explain")
    if not details.evaluate("d => d.open"):
        problems.append("the explanation did not open after checking")
    elif not details.locator("a[href$='.html']").first.is_visible():
        problems.append("the explanation has no visible link to its chapter")
    return problems


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


def test_choice_question_right_and_wrong(quiz: Any) -> None:
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
    assert result == "wrong" and verdict.startswith("Not quite"), verdict
    assert "bnq-wrong" in (question.locator(".bnq-verdict").get_attribute("class") or "")
    problems = _explained(question)
    radios.nth(right).check()
    verdict, result = _check(question)
    assert (verdict, result) == ("Correct.", "right")
    assert "bnq-right" in (question.locator(".bnq-verdict").get_attribute("class") or "")
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
        assert result == "wrong" and f"1 of the {len(right)} right options" in verdict, verdict
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
    problems = _explained(question)
    box.fill(repr(answer - 10 * tol - 1))
    assert "too low" in _check(question)[0]
    box.fill(repr(answer + 0.5 * tol))
    assert _check(question) == ("Correct.", "right")
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
    page.keyboard.press("Tab")  # the previous question's "Answer and explanation" summary
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
