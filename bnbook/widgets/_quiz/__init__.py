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


from bnbook.widgets._quiz._page import SCORE_TEMPLATE, Quiz, score_text
from bnbook.widgets._quiz._questions import (
    BOUNDARY_SLACK,
    MAX_MULTI_OPTIONS,
    NUMBER_PATTERN,
    Choice,
    MultiChoice,
    Numeric,
    Question,
)

__all__ = [
    "BOUNDARY_SLACK",
    "MAX_MULTI_OPTIONS",
    "NUMBER_PATTERN",
    "SCORE_TEMPLATE",
    "Choice",
    "MultiChoice",
    "Numeric",
    "Question",
    "Quiz",
    "score_text",
]
