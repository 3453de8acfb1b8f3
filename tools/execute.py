"""Execute chapter notebooks in place, deterministically, storing their outputs.

Usage: python tools/execute.py chapters/01_*.ipynb ...

Cells run top to bottom in a fresh kernel from this environment. Execution
timing metadata is dropped so re-runs give clean diffs; no widget state is
stored, because explorers render as static HTML under BNBOOK_STATIC=1.

Each notebook's cell time (the sum over its cells, without the kernel's
start-up) is printed. With ``BNBOOK_RECORD_TIMES=1`` (as ``make execute``
sets it) the times also go to ``docs/chapter-times.json`` and to the table in
the README, so the table always comes from a real run.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def merge_streams(outputs: list) -> list:
    """Join consecutive stdout (or stderr) chunks into one output, as a reader sees them."""
    merged: list = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (
            out.output_type == "stream"
            and prev is not None
            and prev.output_type == "stream"
            and prev.name == out.name
        ):
            prev.text += out.text
        else:
            merged.append(out)
    return merged


def _cell_seconds(cell) -> float:
    """Seconds from a cell's start to its reply, from nbclient's timing metadata."""
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    elapsed = datetime.fromisoformat(end.rstrip("Z")) - datetime.fromisoformat(start.rstrip("Z"))
    return elapsed.total_seconds()


def execute(path: Path) -> float:
    """Run ``path`` in place; return its cell time (the sum over cells, kernel start-up excluded)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=True,
        store_widget_state=False,
    )
    client.execute()
    seconds = sum(_cell_seconds(cell) for cell in nb.cells if cell.cell_type == "code")
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
    nbformat.write(nb, path)
    return seconds


TIMES = Path(__file__).resolve().parent.parent / "docs" / "chapter-times.json"
README = TIMES.parent.parent / "README.md"
_BEGIN, _END = "<!-- chapter-times: begin -->", "<!-- chapter-times: end -->"


def record_times(times: dict[str, float]) -> None:
    """Merge ``times`` into docs/chapter-times.json and rewrite the table in the README from it."""
    table = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    table.update({name: round(sec, 1) for name, sec in times.items()})
    table = dict(sorted(table.items()))
    TIMES.write_text(json.dumps(table, indent=1) + "\n")
    total = sum(table.values())
    rows = ["| chapter | cell time (s) |", "|---|---|"]
    rows += [f"| `{name}` | {sec:.1f} |" for name, sec in table.items()]
    rows.append(f"| **all** | **{total:.0f}** |")
    text = README.read_text()
    if _BEGIN in text and _END in text:
        head, rest = text.split(_BEGIN, 1)
        tail = rest.split(_END, 1)[1]
        README.write_text(f"{head}{_BEGIN}\n{chr(10).join(rows)}\n{_END}{tail}")


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: execute.py NOTEBOOK [NOTEBOOK ...]", file=sys.stderr)
        return 2
    os.environ.setdefault("BNBOOK_STATIC", "1")
    times = {}
    for p in paths:
        seconds = execute(Path(p))
        times[Path(p).stem] = seconds
        print(f"{p}: cell time {seconds:.1f} s")
    if os.environ.get("BNBOOK_RECORD_TIMES") == "1":  # `make execute`: on a quiet machine, for the table
        record_times(times)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
