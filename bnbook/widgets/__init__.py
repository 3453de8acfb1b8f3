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
"""

from bnbook.widgets._explorer import STATIC_ENV, Explorer, static_mode
from bnbook.widgets._quiz import Choice, MultiChoice, Numeric, Question, Quiz

__all__ = [
    "STATIC_ENV",
    "Choice",
    "Explorer",
    "MultiChoice",
    "Numeric",
    "Question",
    "Quiz",
    "static_mode",
]
