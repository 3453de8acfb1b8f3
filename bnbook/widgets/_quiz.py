r"""Quizzes: questions with feedback, live with ipywidgets or static in the HTML book.

Part of :mod:`bnbook.widgets` (import from there); the book's quiz is in
chapter 11, built by :func:`bnbook.widgets.book_quiz`.

>>> quiz = Quiz(
...     [
...         Choice(
...             prompt="In eval mode, which statistics does `BatchNorm1d` normalize with?",
...             options=["the batch's own", "the running averages"],
...             answer=1,
...             feedback=["In eval mode nothing depends on the batch.", ""],
...             explanation="Eval mode reads `running_mean` and `running_var`.",
...             chapter="04_training_vs_inference",
...         ),
...         Numeric(prompt="What is $1 - 0.99$?", answer=0.01, tol=1e-6, explanation="..."),
...     ],
...     name="demo",
... )
>>> quiz.show()  # doctest: +SKIP

Three kinds of question share the fields of :class:`Question` (prompt,
explanation, chapter link, an optional code snippet and an optional figure):
:class:`Choice` (one right option), :class:`MultiChoice` (every right option,
and no other) and :class:`Numeric` (a number within a tolerance).

Text is plain text with three bits of inline markup: ``$...$`` for math,
```...``` for code and ``**...**`` for bold. Everything else is escaped.

Grading, once
-------------
Every question grades a response in Python (:meth:`Question.grade`), and the
page's script does not grade on its own: it looks the verdict up in a table
that Python wrote. A :class:`Choice` stores the verdict of each option, a
:class:`MultiChoice` the verdict of every set of ticks, and a :class:`Numeric`
the accepted interval ``[lo, hi]`` (``|x - answer| <= tol``, inclusive, widened
by ``1e-9`` of the answer's size so that decimal inputs on the boundary, such
as 2.34 for ``answer=2.35, tol=0.01``, count as inside), the pattern a number
must match, and its messages. Python's own check uses the same interval and
pattern, so the notebook and the page agree on every input.

A wrong answer says what is wrong with the chosen option (each option's
``feedback``) and leaves the explanation folded, so the reader can try again;
a right answer, or the reader's "Show the answer", opens it. Below the
questions a score counts the questions solved, those solved at the first try,
and the answers shown.

How each place shows it
-----------------------
:meth:`Quiz.show` picks one of two forms, like :class:`~bnbook.widgets.Explorer`
(a ``Quiz`` that ends a cell shows itself the same way):

* **Static** (``BNBOOK_STATIC=1``, as when the book's notebooks are executed):
  :meth:`Quiz.to_html`, one ``text/html`` output with an inline ``<script>``
  and nothing loaded from the network. Math is written as ``\(...\)`` inside
  ``<span class="math">``, which the book's own offline MathJax typesets.
  Each question is a ``<fieldset>`` with a ``<legend>``, real radio, checkbox
  or text inputs with ``<label>``\ s, a *Check* button, and a verdict in an
  ``aria-live`` region, so it works with the keyboard alone and screen
  readers can name every input. Printed, the buttons and verdicts disappear
  and every answer with its explanation is open.
* **Live** (a kernel runs the notebook: JupyterLab, Jupyter Notebook, Binder):
  :meth:`Quiz.live`, an ipywidgets form that checks answers in Python; every
  prompt, option and explanation is an ``HTMLMath`` widget, so the front end's
  MathJax typesets it. This is needed because JupyterLab does not run inline
  scripts of *untrusted* outputs, and the stored outputs of a notebook that a
  reader opens are untrusted.

Without JavaScript (a stored static output opened in JupyterLab before its
cells are run), the static form degrades gracefully: the questions and inputs
show, the *Check* buttons and the score stay hidden, and each answer with its
explanation sits in a folded "Show the answer" section that the reader can open.

:meth:`Quiz.to_markdown` writes the questions with their answers as plain
Markdown, for a printed version.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bnbook.widgets._explorer import static_mode

__all__ = ["NUMBER_PATTERN", "Choice", "MultiChoice", "Numeric", "Question", "Quiz", "score_text"]

_NAME = re.compile(r"[A-Za-z0-9_-]+")
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


_INCOMPLETE_HTML = {"choice": "Choose an option first.", "numeric": "Enter a number first."}
#: The score line, in Python and in the page.
SCORE_TEMPLATE = "Score: {solved} of {n} solved, {first} at the first try; answers shown: {shown}."


def score_text(solved: int, first: int, shown: int, n: int) -> str:
    """The quiz's score line (the page fills the same template)."""
    return SCORE_TEMPLATE.format(solved=solved, first=first, shown=shown, n=n)


@dataclass
class _Progress:
    """One reader's progress on one question: the rule shared by the live form and (in JS) the page."""

    tries: int = 0
    solved: bool = False
    first: bool = False
    shown: bool = False

    def checked(self, status: str) -> None:
        if status == INCOMPLETE:
            return
        self.tries += 1
        if status == RIGHT and not self.solved and not self.shown:
            self.solved, self.first = True, self.tries == 1

    def reveal(self) -> None:
        if not self.solved:
            self.shown = True


def _score(progress: Sequence[_Progress]) -> str:
    return score_text(
        sum(p.solved for p in progress),
        sum(p.first for p in progress),
        sum(p.shown for p in progress),
        len(progress),
    )


# --- the quiz ----------------------------------------------------------------------------
_CSS = (
    ".bnbook-quiz{margin:0.5em 0}"
    ".bnq-question{border:1px solid #c8c8c8;border-radius:6px;padding:0.6em 1em 0.8em;margin:0 0 1em}"
    # sized as body text: page themes (Bootstrap's reboot) style legends like headings
    ".bnbook-quiz .bnq-question legend{font-size:1em;font-weight:600;line-height:1.45;padding:0 0.3em;"
    "margin-bottom:0.3em}"
    ".bnq-option{display:flex;gap:0.5em;align-items:baseline;margin:0.25em 0}"
    ".bnq-option input{flex:none}"
    ".bnq-numeric{display:flex;gap:0.5em;align-items:baseline;flex-wrap:wrap}"
    ".bnq-numeric input{width:9em}"
    ".bnq-figure{max-width:100%;height:auto;display:block;margin:0.3em 0}"
    ".bnq-code{margin:0.3em 0;padding:0.4em 0.6em;background:#f5f5f5;border-radius:4px;overflow-x:auto}"
    ".bnq-check{margin-top:0.5em;padding:0.2em 1em}"
    ".bnq-verdict{font-weight:600;margin:0.4em 0 0;min-height:1em}"
    ".bnq-verdict.bnq-right{color:#1b7837}.bnq-verdict.bnq-wrong{color:#b2182b}"
    ".bnq-explain{margin-top:0.3em}.bnq-explain summary{cursor:pointer}"
    ".bnq-score{font-weight:600;margin:0.5em 0}"
    # on paper: no buttons, verdicts or score, and every answer open (the script opens them before printing)
    "@media print{.bnbook-quiz .bnq-check,.bnbook-quiz .bnq-verdict,.bnbook-quiz .bnq-score,"
    ".bnbook-quiz .bnq-hint{display:none!important}"
    ".bnbook-quiz .bnq-explain summary{list-style:none}.bnq-question{break-inside:avoid}}"
)

# The page script: one per quiz, finds its own root by id. It grades nothing itself: every verdict and
# the numeric interval come from Python (the ``specs``), and the score fills Python's template.
_JS = r"""(function(){
var root=document.getElementById(%(uid)s);if(!root)return;
var specs=%(specs)s,template=%(score)s;
function verdict(spec,q){
 if(spec.kind==='choice'){
  var c=q.querySelector('input[type=radio]:checked');
  return c?spec.verdicts[+c.value]:['incomplete',spec.none];}
 if(spec.kind==='multi'){
  var mask=0;q.querySelectorAll('input[type=checkbox]').forEach(function(b){if(b.checked)mask|=1<<+b.value;});
  return spec.verdicts[mask];}
 var raw=q.querySelector('input.bnq-number').value.trim();
 if(!new RegExp(spec.pattern).test(raw))return['incomplete',spec.none];
 var x=Number(raw.replace(',','.'));
 if(spec.lo<=x&&x<=spec.hi)return['right',spec.right];
 return['wrong',(x>spec.hi?spec.high:spec.low).replace('{x}',raw)];}
var states=[],score=root.querySelector('.bnq-score');
function rescore(){var s=0,f=0,w=0;states.forEach(function(t){s+=t.solved;f+=t.first;w+=t.shown;});
 score.textContent=template.replace('{solved}',s).replace('{n}',states.length).replace('{first}',f)
  .replace('{shown}',w);}
root.querySelectorAll('.bnq-question').forEach(function(q,n){
 var spec=specs[n],button=q.querySelector('.bnq-check'),out=q.querySelector('.bnq-verdict'),
     more=q.querySelector('.bnq-explain'),st={tries:0,solved:0,first:0,shown:0};
 states.push(st);button.hidden=false;
 function check(){var v=verdict(spec,q);out.innerHTML=v[1];
  if(window.MathJax&&MathJax.typesetPromise)MathJax.typesetPromise([out]).catch(function(){});
  out.classList.toggle('bnq-right',v[0]==='right');out.classList.toggle('bnq-wrong',v[0]==='wrong');
  q.setAttribute('data-result',v[0]==='incomplete'?'':v[0]);
  if(v[0]!=='incomplete'){st.tries+=1;
   if(v[0]==='right'&&!st.solved&&!st.shown){st.solved=1;st.first=st.tries===1?1:0;}}
  if(v[0]==='right')more.open=true;
  rescore();}
 more.addEventListener('toggle',function(){
  if(more.open&&!st.solved&&!more.hasAttribute('data-print-open')){st.shown=1;rescore();}});
 button.addEventListener('click',check);
 var num=q.querySelector('input.bnq-number');
 if(num)num.addEventListener('keydown',function(e){if(e.key==='Enter'){e.preventDefault();check();}});
});
score.hidden=false;rescore();
window.addEventListener('beforeprint',function(){
 root.querySelectorAll('details.bnq-explain:not([open])').forEach(function(d){
  d.setAttribute('data-print-open','');d.open=true;});});
window.addEventListener('afterprint',function(){
 root.querySelectorAll('details[data-print-open]').forEach(function(d){
  d.open=false;d.removeAttribute('data-print-open');});});
})();"""

#: Names of the quizzes made in this process, with a fingerprint of their content: HTML ids derive
#: from the name, so two different quizzes with one name would collide on a page.
_NAMES: dict[str, str] = {}


def _fingerprint(title: str, questions: Sequence[Question]) -> str:
    return hashlib.sha256(repr((title, list(questions))).encode()).hexdigest()


class Quiz:
    """A list of questions with a *Check* button and feedback for each, and a score.

    Parameters
    ----------
    questions : sequence of Question
        :class:`Choice`, :class:`MultiChoice` and :class:`Numeric` questions, in order.
    name : str
        A short name (letters, digits, ``-``, ``_``), unique among the quizzes of a page; the HTML
        element ids derive from it, so the stored output is the same on every run. Making the same
        quiz again (a cell run twice) is fine; another quiz with a name already taken raises ValueError.
    title : str, optional
        Read by screen readers as the name of the quiz region.

    Notes
    -----
    See the module docstring for the static (HTML book) and live (JupyterLab,
    Binder) forms, and how each behaves without JavaScript. Chapter 11 uses it.
    """

    def __init__(self, questions: Sequence[Question], *, name: str, title: str = "Quiz") -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"name must be letters, digits, '-' or '_', got {name!r}")
        if isinstance(questions, Question) or not isinstance(questions, Sequence):
            raise ValueError("questions must be a list of Choice, MultiChoice or Numeric questions")
        questions = list(questions)
        if not questions:
            raise ValueError("a Quiz needs at least one question")
        for i, q in enumerate(questions):
            if not isinstance(q, (Choice, MultiChoice, Numeric)):
                raise ValueError(
                    f"question {i + 1} is a {type(q).__name__}, expected Choice, MultiChoice or Numeric"
                )
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"title must be a non-empty string, got {title!r}")
        fingerprint = _fingerprint(title, questions)
        if _NAMES.get(name, fingerprint) != fingerprint:
            raise ValueError(
                f"a different quiz named {name!r} exists already, and the element ids of two quizzes "
                "with one name collide on a page: choose another name"
            )
        _NAMES[name] = fingerprint
        self.questions = questions
        self.name = name
        self.title = title

    def __len__(self) -> int:
        return len(self.questions)

    def describe(self) -> str:
        """One line a test or a reader can check: how many questions of each kind."""
        kinds: dict[str, int] = {}
        for q in self.questions:
            kinds[q.kind] = kinds.get(q.kind, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in kinds.items())
        extras = (
            sum(q.figure is not None for q in self.questions),
            sum(q.code is not None for q in self.questions),
        )
        return (
            f"Quiz '{self.name}': {len(self)} questions ({parts}); "
            f"{extras[0]} with a figure, {extras[1]} with code"
        )

    # --- static form ---------------------------------------------------------------------
    def _qid(self, i: int) -> str:
        return f"bnq-{self.name}-q{i + 1}"

    @staticmethod
    def _chapter_link(q: Question, suffix: str) -> str:
        if not q.chapter:
            return ""
        m = re.match(r"0*(\d+)_", q.chapter)
        text = f"Chapter {m.group(1)}" if m else q.chapter
        return f'More in <a href="{html.escape(q.chapter)}{suffix}">{html.escape(text)}</a>.'

    @staticmethod
    def _extras_html(q: Question) -> str:
        parts = []
        if q.figure is not None:
            b64 = base64.b64encode(q.figure).decode("ascii")
            parts.append(
                f'<img class="bnq-figure" alt="{html.escape(q.figure_alt)}" '
                f'src="data:image/png;base64,{b64}">'
            )
        if q.code is not None:
            parts.append(f'<pre class="bnq-code"><code>{html.escape(q.code)}</code></pre>')
        return "".join(parts)

    def _question_html(self, i: int, q: Question) -> str:
        qid = self._qid(i)
        rows = []
        if isinstance(q, (Choice, MultiChoice)):
            kind = "radio" if isinstance(q, Choice) else "checkbox"
            for j, opt in enumerate(q.options):
                oid = f"{qid}-o{j}"
                rows.append(
                    f'<div class="bnq-option"><input type="{kind}" id="{oid}" name="{qid}" value="{j}">'
                    f'<label for="{oid}">({_letter(j)}) {_inline_html(opt)}</label></div>'
                )
            hint = "Choose one." if kind == "radio" else "Tick every right option."
        else:
            assert isinstance(q, Numeric)
            unit = f'<span class="bnq-unit">{_inline_html(q.unit)}</span>' if q.unit else ""
            rows.append(
                f'<div class="bnq-numeric"><label for="{qid}-x">Your answer</label>'
                f'<input type="text" inputmode="decimal" autocomplete="off" class="bnq-number" id="{qid}-x" '
                f'name="{qid}">{unit}</div>'
            )
            hint = "Type a number; Enter checks it."
        link = self._chapter_link(q, ".html")
        return (
            f'<fieldset class="bnq-question" id="{qid}" data-kind="{q.kind}">'
            f'<legend><span class="bnq-number-label">Question {i + 1}.</span> '
            f"{_inline_html(q.prompt)}</legend>"
            f"{self._extras_html(q)}"
            f'<p class="bnq-hint" style="margin:0.2em 0;font-size:0.9em">{hint}</p>'
            f'<div class="bnq-inputs">{"".join(rows)}</div>'
            f'<button type="button" class="bnq-check" hidden>Check</button>'
            f'<p class="bnq-verdict" role="status" aria-live="polite"></p>'
            f'<details class="bnq-explain"><summary>Show the answer</summary>'
            f"<p><strong>Answer:</strong> {_inline_html(q.answer_text())}</p>"
            f"<p>{_inline_html(q.explanation)} {link}</p></details>"
            "</fieldset>"
        )

    def to_html(self) -> str:
        """Self-contained HTML with an inline script: works in the HTML book without a kernel."""
        uid = f"bnq-{self.name}"
        body = "".join(self._question_html(i, q) for i, q in enumerate(self.questions))
        js = _JS % {
            "uid": json.dumps(uid),
            "specs": json.dumps([q._spec() for q in self.questions]).replace("</", "<\\/"),
            "score": json.dumps(SCORE_TEMPLATE),
        }
        score = html.escape(score_text(0, 0, 0, len(self)))
        return (
            f'<section class="bnbook-quiz" id="{uid}" aria-label="{html.escape(self.title)}">'
            f'{body}<p class="bnq-score" role="status" aria-live="polite" hidden>{score}</p></section>\n'
            f"<style>{_CSS}</style>\n<script>{js}</script>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def _ipython_display_(self) -> None:
        self.show()

    # --- printable form ------------------------------------------------------------------
    def to_markdown(self, answers: bool = True) -> str:
        """The questions as Markdown, each followed by its answer and explanation (``answers=True``).

        Math stays ``$...$`` and code stays in backticks; figures are embedded as ``data:`` PNGs.
        """
        out = []
        for i, q in enumerate(self.questions):
            lines = [f"**Question {i + 1}.** {q.prompt}", ""]
            if q.figure is not None:
                b64 = base64.b64encode(q.figure).decode("ascii")
                lines += [f"![{q.figure_alt}](data:image/png;base64,{b64})", ""]
            if q.code is not None:
                lines += ["```python", q.code.rstrip("\n"), "```", ""]
            if isinstance(q, (Choice, MultiChoice)):
                lines += [f"- ({_letter(j)}) {opt}" for j, opt in enumerate(q.options)] + [""]
            else:
                lines += [f"Answer with a number{f' in {q.unit}' if q.unit else ''}.", ""]
            if answers:
                where = ""
                if q.chapter:
                    m = re.match(r"0*(\d+)_", q.chapter)
                    where = f" (Chapter {m.group(1)})" if m else f" ({q.chapter})"
                lines += [f"*Answer:* {_sentence(q.answer_text())} {_sentence(q.explanation)}{where}", ""]
            out.append("\n".join(lines))
        return "\n".join(out)

    # --- live form -----------------------------------------------------------------------
    def live(self) -> Any:
        """An ipywidgets form that checks answers in Python (JupyterLab, Binder).

        Returns a ``VBox`` with handles for tests: ``.questions`` (one ``VBox`` per question, each with
        ``.inputs``, ``.button``, ``.show_button``, ``.verdict``, ``.explanation``, ``.progress``) and
        ``.score``.
        """
        import ipywidgets as W

        progress = [_Progress() for _ in self.questions]
        score = W.HTML(f"<b>{html.escape(_score(progress))}</b>")

        def rescore() -> None:
            score.value = f"<b>{html.escape(_score(progress))}</b>"

        def dollar(text: str) -> str:
            return _inline_html(text, math_as="dollar")

        boxes = []
        for i, q in enumerate(self.questions):
            parts: list[Any] = [W.HTMLMath(f"<b>Question {i + 1}.</b> {dollar(q.prompt)}")]
            if q.figure is not None:
                parts.append(W.Image(value=q.figure, format="png", layout=W.Layout(max_width="100%")))
            if q.code is not None:
                parts.append(W.HTML(f'<pre class="bnq-code"><code>{html.escape(q.code)}</code></pre>'))
            if isinstance(q, (Choice, MultiChoice)):
                ticks = [
                    W.Checkbox(
                        value=False,
                        description=f"({_letter(j)})",
                        indent=False,
                        layout=W.Layout(width="auto"),
                    )
                    for j in range(len(q.options))
                ]
                rows = [
                    W.HBox([t, W.HTMLMath(dollar(o))], layout=W.Layout(align_items="baseline"))
                    for t, o in zip(ticks, q.options, strict=True)
                ]
                if isinstance(q, Choice):  # one at a time, like radio buttons

                    def only_one(change: Any, ticks: list = ticks) -> None:
                        if change["new"]:
                            for t in ticks:
                                if t is not change["owner"] and t.value:
                                    t.value = False

                    for t in ticks:
                        t.observe(only_one, names="value")
                    read = lambda ticks=ticks: next((j for j, t in enumerate(ticks) if t.value), None)  # noqa: E731
                else:
                    read = lambda ticks=ticks: [j for j, t in enumerate(ticks) if t.value]  # noqa: E731
                inputs, shown_inputs = ticks, rows
            else:
                box = W.Text(
                    value="", placeholder="a number", description="Your answer", continuous_update=False
                )
                read = lambda box=box: box.value  # noqa: E731
                inputs = shown_inputs = [box]
            button = W.Button(description="Check")
            show_button = W.Button(description="Show the answer")
            verdict = W.HTMLMath("")
            link = self._chapter_link(q, ".ipynb")
            explanation = W.HTMLMath(
                f"<b>Answer:</b> {_sentence(dollar(q.answer_text()))} {dollar(q.explanation)} {link}",
                layout=W.Layout(display="none"),
            )

            def check(
                _b: object = None,
                q: Question = q,
                read: Any = read,
                verdict: Any = verdict,
                explanation: Any = explanation,
                p: _Progress = progress[i],
            ) -> None:
                status, text = q.grade(read())
                colour = {RIGHT: "#1b7837", WRONG: "#b2182b"}.get(status)
                style = f' style="color:{colour}"' if colour else ""
                verdict.value = f"<b{style}>{dollar(text)}</b>"
                p.checked(status)
                if status == RIGHT:
                    explanation.layout.display = None
                rescore()

            def show(_b: object = None, explanation: Any = explanation, p: _Progress = progress[i]) -> None:
                p.reveal()
                explanation.layout.display = None
                rescore()

            button.on_click(check)
            show_button.on_click(show)
            box_ = W.VBox(
                [*parts, *shown_inputs, W.HBox([button, show_button]), verdict, explanation],
                layout=W.Layout(margin="0 0 1em 0"),
            )
            box_.inputs, box_.button, box_.show_button = inputs, button, show_button  # handles for tests
            box_.verdict, box_.explanation, box_.progress = verdict, explanation, progress[i]
            boxes.append(box_)
        quiz = W.VBox([*boxes, score])
        quiz.questions, quiz.score = boxes, score
        return quiz

    def show(self) -> None:
        """Display the live form, or the static one when :func:`~bnbook.widgets.static_mode` is on."""
        from IPython.display import HTML, display

        if static_mode():
            display(HTML(self.to_html()))
        else:
            display(self.live())
