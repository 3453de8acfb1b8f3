# bnbook: two commands do everything.  `make book` builds the HTML book,
# `make test` runs every check.  Both create .venv/ on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
NOTEBOOKS := $(sort $(wildcard chapters/*.ipynb))
# Notebooks run with the same threads everywhere, so stored outputs reproduce.
export OMP_NUM_THREADS := 2
export MKL_NUM_THREADS := 2
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help venv dev book test ci unit notebooks notebooks-strict notebooks-strict-1thread notebooks-gpu browser \
	execute lab serve bench lint \
	binder-check screenshot clean pdf

help:
	@echo "make book     build the HTML book into _build/html (creates .venv on first use)"
	@echo "make test     unit tests, notebooks under nbval, book build, browser tests"
	@echo "make execute  re-run every chapter notebook in place, storing its outputs"
	@echo "make lab      open the chapters in JupyterLab"
	@echo "make serve    serve _build/html on http://127.0.0.1:8000"
	@echo "make pdf      the whole book as one PDF, _build/pdf/bnbook.pdf (headless Chromium, offline)"
	@echo "make bench    forward+backward speed against torch.nn.BatchNorm2d"
	@echo "make notebooks-strict  strict nbval: stored outputs must match a re-run"
	@echo "make notebooks-strict-1thread  the same with one thread (sums in another order, as on another CPU)"
	@echo "make binder-check      build the Binder environment in a fresh virtualenv and run a chapter"
	@echo "make screenshot        regenerate docs/screenshot-light.png and -dark.png from the built book"
	@echo "make clean    remove the build and caches (keeps .venv)"

# --- environment -----------------------------------------------------------
$(VENV)/.book-installed: requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements.txt -c constraints.txt
	$(PIP) install --no-deps --no-build-isolation -e . || $(PIP) install --no-deps -e .
	@# bnbook's C++ kernels, built once into torch's extension cache (or a line on why not);
	@# bnbook.nn's layers then run their short path from C++, and never build anything themselves
	$(PY) -c "import bnbook.fast as f; print(f.status())"
	touch $@

$(VENV)/.dev-installed: $(VENV)/.book-installed requirements-dev.txt
	$(PIP) install -r requirements-dev.txt -c constraints.txt
	touch $@

venv: $(VENV)/.book-installed
dev: $(VENV)/.dev-installed

# --- the book ----------------------------------------------------------------
book: venv
	$(BIN)/jupyter-book build . --builder html -W -n --keep-going

# --- tests -------------------------------------------------------------------
test: dev
	$(MAKE) --no-print-directory lint unit notebooks notebooks-gpu book browser

# What CI runs: everything `make test` runs, with the notebooks under strict nbval
# (a superset of the lax check) with two threads and with one.
ci: dev
	$(MAKE) --no-print-directory lint unit notebooks-strict notebooks-strict-1thread notebooks-gpu book browser

lint: dev
	$(BIN)/ruff check bnbook tests tools _ext docs

# Two processes share two cores below, each with two OpenMP threads (and any other load on the
# machine does the same to the lax run). Torch's batch norm opens a
# parallel region even for two values, and with the other core busy such a call took 8 ms
# (24 us with OMP_WAIT_POLICY=PASSIVE, 15 us with one thread). Passive waiting changes no thread
# count, so no sum is split differently and every stored output stays the same.
SHARED_CORES := OMP_WAIT_POLICY=PASSIVE

unit: dev
	$(SHARED_CORES) $(BIN)/pytest -q -m "not browser" -n 2 tests

# Lax: runs every cell, compares only cells marked NBVAL_CHECK_OUTPUT, so it
# passes on any reader's hardware.
notebooks: dev
	$(SHARED_CORES) BNBOOK_STATIC=1 $(BIN)/pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env $(NOTEBOOKS)

# Strict: every stored output must equal what a re-run on the CPU produces. Two notebooks run
# side by side: a kernel's thread count (two here) decides how parallel sums are split, not when
# its threads get a core, so the outputs checked are the same as one notebook at a time.
notebooks-strict: dev
	$(SHARED_CORES) BNBOOK_STATIC=1 BNBOOK_DEVICE=cpu \
		$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile --nbval --nbval-current-env $(NOTEBOOKS)

# The same with one thread: parallel sums then run in another order, as they do on another
# CPU, so this is the check for cross-machine reproducibility that runs on one machine.
# Each kernel uses one thread, so two notebooks run side by side (one per worker).
notebooks-strict-1thread: dev
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 BNBOOK_STATIC=1 BNBOOK_DEVICE=cpu \
		$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile --nbval --nbval-current-env $(NOTEBOOKS)

notebooks-gpu: dev
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		echo "CUDA found: running the notebooks again with BNBOOK_DEVICE=cuda"; \
		BNBOOK_STATIC=1 BNBOOK_DEVICE=cuda $(BIN)/pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env $(NOTEBOOKS); \
	else \
		echo "No CUDA device: skipped the GPU run of the notebooks (it runs where torch.cuda.is_available())."; \
	fi

browser: dev
	$(BIN)/pytest -q -m browser -n 2 tests

# --- authoring ---------------------------------------------------------------
execute: venv
	BNBOOK_STATIC=1 BNBOOK_DEVICE=cpu BNBOOK_RECORD_TIMES=1 $(PY) tools/execute.py $(NOTEBOOKS)

lab: venv
	$(BIN)/jupyter lab $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) chapters

serve: book
	$(PY) -m http.server --bind 127.0.0.1 --directory _build/html 8000

bench: venv
	$(PY) -m bnbook.bench

binder-check:
	tools/check_binder.sh

screenshot: book dev
	$(PY) docs/make_screenshot.py

# The whole book as one PDF: the single-page HTML build, printed by headless Chromium.
pdf: dev
	$(PY) tools/make_pdf.py

clean:
	rm -rf _build .pytest_cache .hypothesis .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
