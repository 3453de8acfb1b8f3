"""The question types of a quiz and the one grading rule they share; see :mod:`bnbook.widgets`."""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BOUNDARY_SLACK",
    "MAX_MULTI_OPTIONS",
    "NUMBER_PATTERN",
    "Choice",
    "MultiChoice",
    "Numeric",
    "Question",
]

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_INCOMPLETE_HTML = {"choice": "Choose an option first.", "numeric": "Enter a number first."}
_CHAPTER = re.compile(r"[A-Za-z0-9_-]*")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Inline markup: $math$, `code` or **bold**.
_INLINE = re.compile(r"\$([^$]+)\$|`([^`]+)`|\*\*(.+?)\*\*")


# --- text ---------------------------------------------------------------------------
def _inline_html(text: str, *, math_as: str = "span") -> str:
    """Escape ``text`` for HTML and turn its inline markup into elements.

    ``math_as="span"`` writes math as Sphinx does (``\\(...\\)`` in a ``span.math``);
    ``math_as="dollar"`` keeps ``$...$`` for a front end that typesets it (ipywidgets' HTMLMath).
    """
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos : m.start()]))
        tex, code, bold = m.groups()
        if tex is not None:
            if math_as == "span":
                out.append(f'<span class="math notranslate nohighlight">\\({html.escape(tex)}\\)</span>')
            else:
                out.append(f"${html.escape(tex)}$")
        elif code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        else:
            out.append(f"<strong>{html.escape(bold)}</strong>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _plain(text: str) -> str:
    """Text without the markup characters, for places that show only plain text."""
    return _INLINE.sub(lambda m: next(g for g in m.groups() if g is not None), text)


def _fmt_number(x: float) -> str:
    return f"{x:g}"


def _png_bytes(figure: Any) -> bytes:
    """PNG bytes of a matplotlib figure (no timestamp, so every build gives the same bytes)."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=figure.dpi, metadata={"Software": None})
    return buf.getvalue()


# --- questions -------------------------------------------------------------------------
RIGHT, WRONG, INCOMPLETE = "right", "wrong", "incomplete"
#: What a typed number must look like, in Python and in the page (a decimal comma is allowed).
NUMBER_PATTERN = r"^[+-]?(?:[0-9]+(?:[.,][0-9]*)?|[.,][0-9]+)(?:[eE][+-]?[0-9]+)?$"
_NUMBER = re.compile(NUMBER_PATTERN)
#: Relative widening of a Numeric's interval: decimal inputs on the boundary count as inside.
BOUNDARY_SLACK = 1e-9
#: MultiChoice tabulates the verdict of every set of ticks, so it takes at most this many options.
MAX_MULTI_OPTIONS = 8


def _sentence(text: str) -> str:
    """``text`` ending in one full stop (or its own ``.``, ``?`` or ``!``)."""
    text = text.rstrip()
    return text if text.endswith((".", "?", "!")) else text + "."


@dataclass(frozen=True, kw_only=True)
class Question:
    """What every kind of question has.

    Parameters
    ----------
    prompt : str
        The question, with inline markup (``$math$``, ```code```, ``**bold**``).
    explanation : str
        Why the answer is right; shown on a right answer, or when the reader asks for the answer.
    chapter : str
        File name of the chapter that teaches it, without suffix (for example
        ``"04_training_vs_inference"``), or ``""`` for no link. The static form
        links ``<chapter>.html``, the live form ``<chapter>.ipynb``.
    code : str, optional
        A code snippet shown under the prompt, as it is.
    figure : bytes or matplotlib Figure, optional
        A picture shown under the prompt, embedded as a ``data:`` PNG.
    figure_alt : str
        Alt text of the figure; required with a figure.
    """

    prompt: str
    explanation: str
    chapter: str = ""
    code: str | None = None
    figure: Any = None
    figure_alt: str = ""

    def __post_init__(self) -> None:
        kind = type(self).__name__
        for attr in ("prompt", "explanation"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{kind}: {attr} must be a non-empty string, got {value!r}")
        if not isinstance(self.chapter, str) or not _CHAPTER.fullmatch(self.chapter):
            raise ValueError(
                f"{kind}: chapter must be a file name without suffix (letters, digits, '-', '_'), "
                f"got {self.chapter!r}"
            )
        if self.code is not None and (not isinstance(self.code, str) or not self.code.strip()):
            raise ValueError(f"{kind}: code must be a non-empty string or None, got {self.code!r}")
        if self.figure is not None:
            png = self.figure
            if hasattr(png, "savefig"):
                png = _png_bytes(png)
            if not isinstance(png, bytes) or not png.startswith(_PNG_MAGIC):
                raise ValueError(f"{kind}: figure must be PNG bytes or a matplotlib figure")
            object.__setattr__(self, "figure", png)
            if not isinstance(self.figure_alt, str) or not self.figure_alt.strip():
                raise ValueError(f"{kind}: a figure needs figure_alt, one sentence saying what it shows")

    # what each kind defines
    kind: str = field(default="", init=False, repr=False)

    def grade(self, response: Any) -> tuple[str, str]:
        """``(status, verdict)``: status ``"right"``, ``"wrong"`` or ``"incomplete"`` (nothing chosen yet);
        the verdict is text with inline markup. Raises ValueError for a response no input can give."""
        raise NotImplementedError

    def check(self, response: Any) -> tuple[bool, str]:
        """``(correct, verdict)`` for a response (see :meth:`grade`)."""
        status, text = self.grade(response)
        return status == RIGHT, text

    def answer_text(self) -> str:
        """The right answer, as text with inline markup."""
        raise NotImplementedError

    def _spec(self) -> dict[str, Any]:
        """What the page script needs: the verdicts Python computed (as HTML), never a rule of its own."""
        raise NotImplementedError


def _check_options(kind: str, options: Any) -> tuple[str, ...]:
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise ValueError(f"{kind}: options must be a list of strings, got {options!r}")
    options = tuple(options)
    if len(options) < 2:
        raise ValueError(f"{kind}: needs at least 2 options, got {len(options)}")
    for opt in options:
        if not isinstance(opt, str) or not opt.strip():
            raise ValueError(f"{kind}: every option must be a non-empty string, got {opt!r}")
    if len(set(options)) != len(options):
        raise ValueError(f"{kind}: options must differ from each other, got {list(options)}")
    return options


def _check_feedback(kind: str, feedback: Any, n: int, right: set[int]) -> tuple[str, ...]:
    """One string per option; every wrong option's is non-empty (a right option's may be empty)."""
    if feedback is None:
        return ("",) * n
    if isinstance(feedback, str) or not isinstance(feedback, Sequence) or len(feedback) != n:
        raise ValueError(f"{kind}: feedback must be a list of {n} strings, one per option, got {feedback!r}")
    for j, text in enumerate(feedback):
        if not isinstance(text, str) or (j not in right and not text.strip()):
            raise ValueError(
                f"{kind}: feedback for the wrong option ({_letter(j)}) must say what is wrong with it, "
                f"got {text!r}"
            )
    return tuple(feedback)


def _check_index(kind: str, index: Any, n: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(f"{kind}: answer must be an option index in 0..{n - 1}, got {index!r}")
    return index


def _check_response_index(kind: str, index: Any, n: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(f"{kind}: a response must be an option index in 0..{n - 1}, got {index!r}")
    return index


def _letter(i: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz"[i]


def _wrong_option(j: int, feedback: str) -> str:
    return f"({_letter(j)}) is not right." + (f" {_sentence(feedback)}" if feedback.strip() else "")


@dataclass(frozen=True, kw_only=True)
class Choice(Question):
    """One right option among several (radio buttons).

    Parameters
    ----------
    options : sequence of str
        At least two distinct options, with inline markup.
    answer : int
        Index of the right option.
    feedback : sequence of str, optional
        One entry per option: for each wrong option, what is wrong with it (shown when the reader
        chooses it); the right option's entry may be empty.
    """

    options: Sequence[str]
    answer: int
    feedback: Sequence[str] | None = None
    kind: str = field(default="choice", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "options", _check_options("Choice", self.options))
        _check_index("Choice", self.answer, len(self.options))
        object.__setattr__(
            self, "feedback", _check_feedback("Choice", self.feedback, len(self.options), {self.answer})
        )

    def grade(self, response: Any) -> tuple[str, str]:
        """``response``: the index of the chosen option, or None."""
        if response is None:
            return INCOMPLETE, "Choose an option first."
        j = _check_response_index("Choice", response, len(self.options))
        if j == self.answer:
            return RIGHT, "Correct."
        return WRONG, f"Not quite: {_wrong_option(j, self.feedback[j])} Try again."

    def answer_text(self) -> str:
        return f"({_letter(self.answer)}) {self.options[self.answer]}"

    def _spec(self) -> dict[str, Any]:
        verdicts = [self.grade(j) for j in range(len(self.options))]
        return {
            "kind": "choice",
            "none": _INCOMPLETE_HTML["choice"],
            "verdicts": [[s, _inline_html(t)] for s, t in verdicts],
        }


@dataclass(frozen=True, kw_only=True)
class MultiChoice(Question):
    """Several right options (checkboxes): right when exactly those are ticked.

    Parameters
    ----------
    options : sequence of str
        Two to eight distinct options, with inline markup.
    answers : sequence of int
        Indices of the right options (at least one).
    feedback : sequence of str, optional
        One entry per option: for each wrong option, what is wrong with it (shown when the reader
        ticks it); the right options' entries may be empty.
    """

    options: Sequence[str]
    answers: Sequence[int]
    feedback: Sequence[str] | None = None
    kind: str = field(default="multi", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        options = _check_options("MultiChoice", self.options)
        if len(options) > MAX_MULTI_OPTIONS:
            raise ValueError(f"MultiChoice: at most {MAX_MULTI_OPTIONS} options, got {len(options)}")
        object.__setattr__(self, "options", options)
        if isinstance(self.answers, (str, int)) or not isinstance(self.answers, Sequence):
            raise ValueError(f"MultiChoice: answers must be a list of option indices, got {self.answers!r}")
        answers = tuple(sorted(_check_index("MultiChoice", a, len(options)) for a in self.answers))
        if not answers:
            raise ValueError("MultiChoice: answers must name at least one option")
        if len(set(answers)) != len(answers):
            raise ValueError(f"MultiChoice: answers repeat an option: {list(self.answers)}")
        object.__setattr__(self, "answers", answers)
        object.__setattr__(
            self, "feedback", _check_feedback("MultiChoice", self.feedback, len(options), set(answers))
        )

    def grade(self, response: Any) -> tuple[str, str]:
        """``response``: the indices of the ticked options (any iterable, possibly empty)."""
        if response is None:
            response = ()
        if isinstance(response, (str, bytes, int)):
            raise ValueError(
                f"MultiChoice: a response must be a collection of option indices, got {response!r}"
            )
        chosen = {_check_response_index("MultiChoice", j, len(self.options)) for j in response}
        if not chosen:
            return INCOMPLETE, "Tick at least one option first."
        right = set(self.answers)
        if chosen == right:
            return RIGHT, "Correct: you found every right option."
        wrong = sorted(chosen - right)
        if wrong:
            text = f"Not quite: {_wrong_option(wrong[0], self.feedback[wrong[0]])}"
            if len(wrong) > 1:
                others = ", ".join(f"({_letter(j)})" for j in wrong[1:])
                text += f" {others} {'is' if len(wrong) == 2 else 'are'} not right either."
            return WRONG, text + " Try again."
        return WRONG, (
            f"Not quite: you ticked {len(chosen)} of the {len(right)} right options and none that is wrong. "
            "Try again."
        )

    def answer_text(self) -> str:
        return "; ".join(f"({_letter(i)}) {self.options[i].rstrip().rstrip('.')}" for i in self.answers)

    def _spec(self) -> dict[str, Any]:
        """Verdicts for every set of ticks, indexed by the bit mask of the ticked options."""
        n = len(self.options)
        verdicts = []
        for mask in range(2**n):
            status, text = self.grade([j for j in range(n) if mask >> j & 1])
            verdicts.append([status, _inline_html(text)])
        return {"kind": "multi", "verdicts": verdicts}


@dataclass(frozen=True, kw_only=True)
class Numeric(Question):
    """A number, right when within ``tol`` of ``answer``.

    Parameters
    ----------
    answer : float
        The right value.
    tol : float
        Absolute tolerance, >= 0: a response ``x`` is right when ``|x - answer| <= tol``, boundary
        included (see :attr:`bounds`).
    unit : str
        Shown after the input box (for example ``"%"``); may be empty.
    hint : str
        Added to the verdict of a wrong number; may be empty.
    """

    answer: float
    tol: float
    unit: str = ""
    hint: str = ""
    kind: str = field(default="numeric", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for attr in ("answer", "tol"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Numeric: {attr} must be a finite number, got {value!r}")
            object.__setattr__(self, attr, float(value))
        if self.tol < 0:
            raise ValueError(f"Numeric: tol must be >= 0, got {self.tol!r}")
        for attr in ("unit", "hint"):
            if not isinstance(getattr(self, attr), str):
                raise ValueError(f"Numeric: {attr} must be a string, got {getattr(self, attr)!r}")

    @property
    def bounds(self) -> tuple[float, float]:
        """``(lo, hi)``: a number ``x`` is right when ``lo <= x <= hi``, in Python and in the page.

        ``answer -+ tol``, widened by ``BOUNDARY_SLACK`` times the larger of ``|answer|`` and ``tol``,
        so that a decimal input on the boundary (2.34 for 2.35 within 0.01, whose binary difference
        is 0.010000000000000231) counts as inside, as the reader means it.
        """
        slack = BOUNDARY_SLACK * max(abs(self.answer), self.tol)
        return self.answer - self.tol - slack, self.answer + self.tol + slack

    def _templates(self) -> dict[str, str]:
        hint = f" {_sentence(self.hint)}" if self.hint.strip() else ""
        return {
            "high": f"Not quite: {{x}} is too high.{hint} Try again.",
            "low": f"Not quite: {{x}} is too low.{hint} Try again.",
        }

    def grade(self, response: Any) -> tuple[str, str]:
        """``response``: text as typed (a decimal comma is allowed), a number, or None."""
        if response is None:
            return INCOMPLETE, "Enter a number first."
        if isinstance(response, bool):
            raise ValueError(f"Numeric: a response must be a number or text, got {response!r}")
        if isinstance(response, (int, float)):
            if not math.isfinite(response):
                return INCOMPLETE, "Enter a number first."
            raw, x = repr(float(response)), float(response)
        elif isinstance(response, str):
            raw = response.strip()
            if not _NUMBER.fullmatch(raw):
                return INCOMPLETE, "Enter a number first."
            x = float(raw.replace(",", "."))
        else:
            raise ValueError(f"Numeric: a response must be a number or text, got {response!r}")
        lo, hi = self.bounds
        if lo <= x <= hi:
            return RIGHT, "Correct."
        return WRONG, self._templates()["high" if x > hi else "low"].replace("{x}", raw)

    def answer_text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        tol = f" (within {_fmt_number(self.tol)})" if self.tol else ""
        return f"{_fmt_number(self.answer)}{unit}{tol}"

    def _spec(self) -> dict[str, Any]:
        lo, hi = self.bounds
        return {
            "kind": "numeric",
            "pattern": NUMBER_PATTERN,
            "lo": lo,
            "hi": hi,
            "none": _INCOMPLETE_HTML["numeric"],
            "right": "Correct.",
            **{k: _inline_html(v) for k, v in self._templates().items()},
        }
