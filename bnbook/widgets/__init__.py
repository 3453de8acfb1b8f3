"""Interactive pieces of the book: explorers and quizzes.

Each has two forms, picked by :func:`static_mode`:

* a **live** ipywidgets form when a kernel runs the notebook (Jupyter, Binder);
* a **static** self-contained HTML form, with inline JavaScript and nothing
  loaded from the network, when ``BNBOOK_STATIC=1`` is set (as ``make execute``
  and the notebook tests do), so that the stored output, and hence the HTML
  book, stays interactive without a kernel.

Modules
-------
_explorer
    :class:`Explorer`: a picture with sliders over a few parameters (chapters 2 to 4).
_quiz
    :class:`Quiz` and its questions :class:`Choice`, :class:`MultiChoice`,
    :class:`Numeric` (chapter 11).
quiz_bank
    :func:`book_quiz`: the book's own quiz over chapters 1 to 16 (chapter 11).
"""

from bnbook.widgets._explorer import STATIC_ENV, Explorer, static_mode
from bnbook.widgets._quiz import Choice, MultiChoice, Numeric, Question, Quiz
from bnbook.widgets.quiz_bank import book_quiz

__all__ = [
    "STATIC_ENV",
    "Choice",
    "Explorer",
    "MultiChoice",
    "Numeric",
    "Question",
    "Quiz",
    "book_quiz",
    "static_mode",
]
