"""``python -m bnbook.bench``: what ``make bench`` runs."""

from bnbook.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
