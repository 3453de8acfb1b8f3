"""Experiments, figures and explorers behind each chapter (matplotlib and torch allowed here).

One module per chapter; the numeric core (``bnbook.scratch``, ``bnbook.nn``) never imports these.
"""
