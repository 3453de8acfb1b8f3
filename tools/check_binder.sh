#!/usr/bin/env bash
# Check the Binder environment without Binder: build it, import bnbook, run a chapter.
#
#   tools/check_binder.sh [chapters/NN_name.ipynb]     (default: the first chapter)
#
# What it does, as close to repo2docker as this machine allows:
#
# 1. Checks that every package pinned in both binder/requirements.txt and the
#    top-level requirements.txt has the same version in both.
# 2. Copies the repository as Binder sees it (tracked files plus untracked,
#    non-ignored ones: no .venv, no _build) into a temporary directory.
# 3. Creates a fresh virtualenv there (with $PYTHON, default python3; Binder
#    uses the version in binder/runtime.txt) and runs, from the copy's root as
#    repo2docker does, `pip install -r binder/requirements.txt`, then
#    `binder/postBuild` (which builds bnbook's C++ kernels into the image).
#    The one deliberate difference: binder/requirements.txt names PyTorch's
#    CPU wheel index (`--extra-index-url https://download.pytorch.org/whl/cpu`),
#    which this machine cannot reach; here pip's own configuration already
#    resolves `torch==2.13.0` to a local CPU wheel. So the copy of the file in
#    the temporary directory has that line deleted. Set BINDER_KEEP_INDEX=1 to
#    keep it where download.pytorch.org is reachable.
# 4. Imports bnbook and torch from that environment, checks that JupyterLab
#    has the jupyterlab-myst extension, then executes one chapter notebook end
#    to end with `jupyter nbconvert --execute`, using the environment's
#    python3 kernel and the chapter's folder as working directory (as on
#    Binder). Explorers run in their live ipywidgets form, as on Binder.
#
# It prints how long each step took. Nothing in the repository is modified;
# the temporary directory is deleted at the end (KEEP_TMP=1 keeps it).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
CHAPTER=${1:-}
if [ -z "$CHAPTER" ]; then
  CHAPTER=$(ls chapters/*.ipynb | sort | head -n 1)
fi
[ -f "$CHAPTER" ] || { echo "no such notebook: $CHAPTER" >&2; exit 2; }

t_start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - t_start )) s)"; }

# --- 1. pins agree with requirements.txt --------------------------------------------
step "1/4 binder/requirements.txt pins match requirements.txt"
"$PYTHON" - <<'PY'
import re, sys
def pins(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;]+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1).lower())] = m.group(2)
    return out
top, binder = pins("requirements.txt"), pins("binder/requirements.txt")
bad = {k: (binder[k], top[k]) for k in binder.keys() & top.keys() if binder[k] != top[k]}
if bad:
    sys.exit(f"binder/requirements.txt disagrees with requirements.txt: {bad}")
print(f"{len(binder.keys() & top.keys())} shared pins agree; binder-only: {sorted(binder.keys() - top.keys())}")
PY
grep -qx 'python-3\.[0-9]*' binder/runtime.txt || { echo "binder/runtime.txt must read python-3.X" >&2; exit 1; }
want=$(sed 's/python-//' binder/runtime.txt)
have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$want" = "$have" ] || echo "note: Binder uses Python $want, this check uses $have ($PYTHON)"

# --- 2. a copy of the repository as Binder sees it ----------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bnbook-binder.XXXXXX")
cleanup() { if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT
step "2/4 copying the repository into $TMP/repo"
mkdir -p "$TMP/repo"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard \
    | "$PYTHON" -c '
import os, shutil, sys
dest = sys.argv[1]
for name in sys.stdin.buffer.read().decode().split("\0"):
    if name and os.path.isfile(name):
        os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
        shutil.copy2(name, os.path.join(dest, name))
' "$TMP/repo"
else
  tar --exclude=./.venv --exclude=./_build --exclude=./.git -cf - . | tar -xf - -C "$TMP/repo"
fi
if [ "${BINDER_KEEP_INDEX:-0}" != 1 ]; then
  sed -i '/download\.pytorch\.org/d' "$TMP/repo/binder/requirements.txt"
  echo "removed the download.pytorch.org index line (local CPU wheels resolve torch here)"
fi

# --- 3. a fresh environment from binder/requirements.txt ----------------------------
step "3/4 creating a virtualenv and installing binder/requirements.txt"
"$PYTHON" -m venv "$TMP/venv"
export PATH="$TMP/venv/bin:$PATH" VIRTUAL_ENV="$TMP/venv"
# Keep the user's Jupyter and IPython settings and kernels out of the check.
export JUPYTER_CONFIG_DIR="$TMP/jupyter-config" JUPYTER_DATA_DIR="$TMP/jupyter-data" IPYTHONDIR="$TMP/ipython"
export MPLCONFIGDIR="$TMP/mpl" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2}
export PYDEVD_DISABLE_FILE_VALIDATION=1
unset BNBOOK_STATIC
t0=$(date +%s)
(cd "$TMP/repo" && python -m pip install --disable-pip-version-check -q --upgrade pip \
  && python -m pip install --disable-pip-version-check -q -r binder/requirements.txt \
  && bash binder/postBuild)  # as repo2docker runs it after the install
t_install=$(( $(date +%s) - t0 ))
echo "installed in ${t_install} s"

# --- 4. import bnbook, check JupyterLab, run one chapter ----------------------------
step "4/4 importing bnbook and executing $CHAPTER"
(cd "$TMP" && python - "$TMP/repo" <<'PY'
import os, sys
import bnbook, torch, myst_nb  # noqa: F401  (myst_nb: the chapters glue numbers with it)
repo = os.path.realpath(sys.argv[1])
where = os.path.realpath(os.path.dirname(bnbook.__file__))
assert where.startswith(repo), f"bnbook imported from {where}, not from the repository copy {repo}"
print(f"bnbook from {where}; torch {torch.__version__}, CUDA build: {torch.version.cuda}")
PY
)
labext=$(jupyter labextension list 2>&1 || true)
echo "$labext" | grep -i "jupyterlab-myst" | grep -qi "enabled" \
  || { echo "$labext"; echo "jupyterlab-myst is not an enabled JupyterLab extension" >&2; exit 1; }
echo "JupyterLab extension jupyterlab-myst: enabled"
t0=$(date +%s)
jupyter nbconvert --to notebook --execute \
  --ExecutePreprocessor.timeout=600 --ExecutePreprocessor.kernel_name=python3 \
  --output-dir "$TMP/out" "$TMP/repo/$CHAPTER"
t_run=$(( $(date +%s) - t0 ))
python - "$TMP/out/$(basename "$CHAPTER")" <<'PY'
import sys, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
code = [c for c in nb.cells if c.cell_type == "code"]
errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
assert not errors, f"{len(errors)} cells raised errors"
assert all(c.get("execution_count") for c in code if c.source.strip()), "some code cells did not run"
print(f"{len(code)} code cells ran without errors")
PY
echo
echo "Binder check passed: install ${t_install} s, $CHAPTER ran in ${t_run} s, total $(( $(date +%s) - t_start )) s"
