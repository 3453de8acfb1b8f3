r"""Quizzes: questions with feedback, live with ipywidgets or static in the HTML book.

Part of :mod:`bnbook.widgets` (import from there); the book's quiz is in
chapter 11.

>>> quiz = Quiz(
...     [
...         Choice(
...             prompt="In eval mode, which statistics does `BatchNorm1d` normalize with?",
...             options=["the batch's own", "the running averages"],
...             answer=1,
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

How each place shows it
-----------------------
:meth:`Quiz.show` picks one of two forms, like :class:`~bnbook.widgets.Explorer`:

* **Static** (``BNBOOK_STATIC=1``, as when the book's notebooks are executed):
  :meth:`Quiz.to_html`, one ``text/html`` output with an inline ``<script>``
  and nothing loaded from the network. In the HTML book the script wires the
  *Check* buttons; math is written as ``\(...\)`` inside
  ``<span class="math">``, which the book's own offline MathJax typesets like
  any other inline formula (and which reads fine as text where no MathJax
  runs). Each question is a ``<fieldset>`` with a ``<legend>``, real radio,
  checkbox or number inputs with ``<label>``\ s, a *Check* button, and a
  verdict in an ``aria-live`` region, so it works with the keyboard alone and
  screen readers can name every input.
* **Live** (a kernel runs the notebook: JupyterLab, Jupyter Notebook, Binder):
  :meth:`Quiz.live`, an ipywidgets form that checks answers in Python. This
  is needed because JupyterLab does not run inline scripts of *untrusted*
  outputs, and the stored outputs of a notebook that a reader opens are
  untrusted. ``$...$`` is typeset by the front end's own MathJax (``HTMLMath``).

Without JavaScript (a stored static output opened in JupyterLab before its
cells are run), the static form degrades gracefully: the questions and inputs
show, the *Check* buttons stay hidden, and each answer with its explanation
sits in a folded "Answer and explanation" section that the reader can open.

:meth:`Quiz.to_markdown` writes the questions with their answers as plain
Markdown, for a printed version.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bnbook.widgets._explorer import static_mode

__all__ = ["Choice", "MultiChoice", "Numeric", "Question", "Quiz"]

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
@dataclass(frozen=True, kw_only=True)
class Question:
    """What every kind of question has.

    Parameters
    ----------
    prompt : str
        The question, with inline markup (``$math$``, ```code```, ``**bold**``).
    explanation : str
        Why the answer is right, shown after every check (right or wrong).
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

    def check(self, response: Any) -> tuple[bool, str]:
        """``(correct, verdict)`` for a response; the verdict is one plain sentence."""
        raise NotImplementedError

    def answer_text(self) -> str:
        """The right answer, as text with inline markup."""
        raise NotImplementedError

    def _spec(self) -> dict[str, Any]:
        """What the page script needs to check an answer."""
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


def _check_index(kind: str, index: Any, n: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(f"{kind}: answer must be an option index in 0..{n - 1}, got {index!r}")
    return index


def _letter(i: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz"[i]


@dataclass(frozen=True, kw_only=True)
class Choice(Question):
    """One right option among several (radio buttons).

    Parameters
    ----------
    options : sequence of str
        At least two distinct options, with inline markup.
    answer : int
        Index of the right option.
    """

    options: Sequence[str]
    answer: int
    kind: str = field(default="choice", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "options", _check_options("Choice", self.options))
        _check_index("Choice", self.answer, len(self.options))

    def check(self, response: Any) -> tuple[bool, str]:
        """``response``: the index of the chosen option, or None."""
        if response is None:
            return False, "Choose an option first."
        if response == self.answer:
            return True, "Correct."
        return False, f"Not quite: ({_letter(response)}) is not the best answer."

    def answer_text(self) -> str:
        return f"({_letter(self.answer)}) {self.options[self.answer]}"

    def _spec(self) -> dict[str, Any]:
        return {"kind": "choice", "answer": self.answer}


@dataclass(frozen=True, kw_only=True)
class MultiChoice(Question):
    """Several right options (checkboxes): right when exactly those are ticked.

    Parameters
    ----------
    options : sequence of str
        At least two distinct options, with inline markup.
    answers : sequence of int
        Indices of the right options (at least one).
    """

    options: Sequence[str]
    answers: Sequence[int]
    kind: str = field(default="multi", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        options = _check_options("MultiChoice", self.options)
        object.__setattr__(self, "options", options)
        if isinstance(self.answers, (str, int)) or not isinstance(self.answers, Sequence):
            raise ValueError(f"MultiChoice: answers must be a list of option indices, got {self.answers!r}")
        answers = tuple(sorted(_check_index("MultiChoice", a, len(options)) for a in self.answers))
        if not answers:
            raise ValueError("MultiChoice: answers must name at least one option")
        if len(set(answers)) != len(answers):
            raise ValueError(f"MultiChoice: answers repeat an option: {list(self.answers)}")
        object.__setattr__(self, "answers", answers)

    def check(self, response: Any) -> tuple[bool, str]:
        """``response``: the indices of the ticked options."""
        chosen = set(response or ())
        if not chosen:
            return False, "Tick at least one option first."
        right = set(self.answers)
        if chosen == right:
            return True, "Correct: you found every right option."
        hits, wrong = len(chosen & right), len(chosen - right)
        return False, (
            f"Not quite: you ticked {hits} of the {len(right)} right options"
            + (
                f" and {wrong} option that is wrong."
                if wrong == 1
                else f" and {wrong} options that are wrong."
            )
        )

    def answer_text(self) -> str:
        return "; ".join(f"({_letter(i)}) {self.options[i]}" for i in self.answers)

    def _spec(self) -> dict[str, Any]:
        return {"kind": "multi", "answers": list(self.answers)}


@dataclass(frozen=True, kw_only=True)
class Numeric(Question):
    """A number, right when within ``tol`` of ``answer``.

    Parameters
    ----------
    answer : float
        The right value.
    tol : float
        Absolute tolerance, >= 0: a response ``x`` is right when ``|x - answer| <= tol``.
    unit : str
        Shown after the input box (for example ``"%"``); may be empty.
    """

    answer: float
    tol: float
    unit: str = ""
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
        if not isinstance(self.unit, str):
            raise ValueError(f"Numeric: unit must be a string, got {self.unit!r}")

    def check(self, response: Any) -> tuple[bool, str]:
        """``response``: a number, or text that parses as one."""
        try:
            x = float(str(response).strip().replace(",", ".")) if response is not None else math.nan
        except ValueError:
            x = math.nan
        if not math.isfinite(x):
            return False, "Enter a number first."
        if abs(x - self.answer) <= self.tol:
            return True, "Correct."
        return False, f"Not quite: {_fmt_number(x)} is too {'high' if x > self.answer else 'low'}."

    def answer_text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        tol = f" (within {_fmt_number(self.tol)})" if self.tol else ""
        return f"{_fmt_number(self.answer)}{unit}{tol}"

    def _spec(self) -> dict[str, Any]:
        return {"kind": "numeric", "answer": self.answer, "tol": self.tol}


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
)

# The page script: one per quiz, finds its own root by id, checks answers in the page.
_JS = r"""(function(){
var root=document.getElementById(%(uid)s);if(!root)return;
var specs=%(specs)s;
function fmt(x){return String(+x.toPrecision(6));}
function verdict(spec,q){
 if(spec.kind==='choice'){
  var c=q.querySelector('input[type=radio]:checked');
  if(!c)return[false,'Choose an option first.'];
  var i=+c.value;if(i===spec.answer)return[true,'Correct.'];
  return[false,'Not quite: ('+'abcdefghijklmnopqrstuvwxyz'[i]+') is not the best answer.'];}
 if(spec.kind==='multi'){
  var ticked=[];
  q.querySelectorAll('input[type=checkbox]').forEach(function(b){if(b.checked)ticked.push(+b.value);});
  if(!ticked.length)return[false,'Tick at least one option first.'];
  var hits=ticked.filter(function(i){return spec.answers.indexOf(i)>=0;}).length,wrong=ticked.length-hits;
  if(wrong===0&&hits===spec.answers.length)return[true,'Correct: you found every right option.'];
  return[false,'Not quite: you ticked '+hits+' of the '+spec.answers.length+' right options and '+wrong+
   (wrong===1?' option that is wrong.':' options that are wrong.')];}
 var box=q.querySelector('input.bnq-number');var raw=box.value.trim().replace(',','.');
 var x=raw===''?NaN:Number(raw);
 if(!isFinite(x))return[false,'Enter a number first.'];
 if(Math.abs(x-spec.answer)<=spec.tol+1e-12*Math.abs(spec.answer))return[true,'Correct.'];
 return[false,'Not quite: '+fmt(x)+' is too '+(x>spec.answer?'high':'low')+'.'];}
root.querySelectorAll('.bnq-question').forEach(function(q,n){
 var spec=specs[n],button=q.querySelector('.bnq-check'),out=q.querySelector('.bnq-verdict'),
     more=q.querySelector('.bnq-explain');
 button.hidden=false;
 function check(){var v=verdict(spec,q);out.textContent=v[1];
  out.classList.toggle('bnq-right',v[0]);out.classList.toggle('bnq-wrong',!v[0]);
  var answered=!/first\.$/.test(v[1]);if(answered)more.open=true;
  q.setAttribute('data-result',answered?(v[0]?'right':'wrong'):'');}
 button.addEventListener('click',check);
 var num=q.querySelector('input.bnq-number');
 if(num)num.addEventListener('keydown',function(e){if(e.key==='Enter'){e.preventDefault();check();}});
});
})();"""


class Quiz:
    """A list of questions with a *Check* button and feedback for each.

    Parameters
    ----------
    questions : sequence of Question
        :class:`Choice`, :class:`MultiChoice` and :class:`Numeric` questions, in order.
    name : str
        A short unique name (letters, digits, ``-``, ``_``); the HTML element
        ids derive from it, so the stored output is the same on every run.
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
    def _extras_html(q: Question, i: int) -> str:
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
                f'<input type="number" step="any" inputmode="decimal" class="bnq-number" id="{qid}-x" '
                f'name="{qid}">{unit}</div>'
            )
            hint = "Type a number; Enter checks it."
        link = self._chapter_link(q, ".html")
        return (
            f'<fieldset class="bnq-question" id="{qid}" data-kind="{q.kind}">'
            f'<legend><span class="bnq-number-label">Question {i + 1}.</span> '
            f"{_inline_html(q.prompt)}</legend>"
            f"{self._extras_html(q, i)}"
            f'<p class="bnq-hint" style="margin:0.2em 0;font-size:0.9em">{hint}</p>'
            f'<div class="bnq-inputs">{"".join(rows)}</div>'
            f'<button type="button" class="bnq-check" hidden>Check</button>'
            f'<p class="bnq-verdict" role="status" aria-live="polite"></p>'
            f'<details class="bnq-explain"><summary>Answer and explanation</summary>'
            f"<p><strong>Answer:</strong> {_inline_html(q.answer_text())}</p>"
            f"<p>{_inline_html(q.explanation)} {link}</p></details>"
            "</fieldset>"
        )

    def to_html(self) -> str:
        """Self-contained HTML with an inline script: works in the HTML book without a kernel."""
        uid = f"bnq-{self.name}"
        body = "".join(self._question_html(i, q) for i, q in enumerate(self.questions))
        js = _JS % {"uid": json.dumps(uid), "specs": json.dumps([q._spec() for q in self.questions])}
        return (
            f'<section class="bnbook-quiz" id="{uid}" aria-label="{html.escape(self.title)}">'
            f"{body}</section>\n"
            f"<style>{_CSS}</style>\n<script>{js}</script>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

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
                lines += [f"*Answer:* {q.answer_text()}. {q.explanation}{where}", ""]
            out.append("\n".join(lines))
        return "\n".join(out)

    # --- live form -----------------------------------------------------------------------
    def live(self) -> Any:
        """An ipywidgets form that checks answers in Python (JupyterLab, Binder)."""
        import ipywidgets as W

        boxes = []
        for i, q in enumerate(self.questions):
            parts: list[Any] = [
                W.HTMLMath(f"<b>Question {i + 1}.</b> {_inline_html(q.prompt, math_as='dollar')}")
            ]
            if q.figure is not None:
                parts.append(W.Image(value=q.figure, format="png", layout=W.Layout(max_width="100%")))
            if q.code is not None:
                parts.append(W.HTML(f'<pre class="bnq-code"><code>{html.escape(q.code)}</code></pre>'))
            if isinstance(q, Choice):
                answer = W.RadioButtons(
                    options=[(f"({_letter(j)}) {_plain(o)}", j) for j, o in enumerate(q.options)],
                    value=None,
                    description="",
                    layout=W.Layout(width="auto"),
                )
                read = lambda answer=answer: answer.value  # noqa: E731
                inputs = [answer]
            elif isinstance(q, MultiChoice):
                ticks = [
                    W.Checkbox(value=False, description=f"({_letter(j)}) {_plain(o)}", indent=False)
                    for j, o in enumerate(q.options)
                ]
                read = lambda ticks=ticks: [j for j, t in enumerate(ticks) if t.value]  # noqa: E731
                inputs = ticks
            else:
                box = W.Text(
                    value="", placeholder="a number", description="Your answer", continuous_update=False
                )
                read = lambda box=box: box.value  # noqa: E731
                inputs = [box]
            button = W.Button(description="Check")
            verdict = W.HTMLMath("")

            def check(_b: object = None, q: Question = q, read: Any = read, verdict: Any = verdict) -> None:
                right, text = q.check(read())
                if text.endswith("first."):
                    verdict.value = f"<b>{html.escape(text)}</b>"
                    return
                colour = "#1b7837" if right else "#b2182b"
                link = self._chapter_link(q, ".ipynb")
                verdict.value = (
                    f'<b style="color:{colour}">{html.escape(text)}</b><br>'
                    f"<b>Answer:</b> {_inline_html(q.answer_text(), math_as='dollar')}. "
                    f"{_inline_html(q.explanation, math_as='dollar')} {link}"
                )

            button.on_click(check)
            box_ = W.VBox([*parts, *inputs, button, verdict], layout=W.Layout(margin="0 0 1em 0"))
            box_.inputs, box_.button, box_.verdict = inputs, button, verdict  # handles for tests
            boxes.append(box_)
        quiz = W.VBox(boxes)
        quiz.questions = boxes
        return quiz

    def show(self) -> None:
        """Display the live form, or the static one when :func:`~bnbook.widgets.static_mode` is on."""
        from IPython.display import HTML, display

        if static_mode():
            display(HTML(self.to_html()))
        else:
            display(self.live())
