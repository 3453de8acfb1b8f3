"""A quiz as a page: the score, the static HTML and its script, the live widget; see :mod:`bnbook.widgets`."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bnbook.widgets._explorer import static_mode
from bnbook.widgets._quiz._questions import (
    _NAME,
    INCOMPLETE,
    RIGHT,
    WRONG,
    Choice,
    MultiChoice,
    Numeric,
    Question,
    _inline_html,
    _letter,
    _sentence,
)

__all__ = ["SCORE_TEMPLATE", "Quiz", "score_text"]
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
