"""The browser tests' summary under ``pytest -n``: every worker's figures reach the written metrics."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from browsing import _Summary


def _worker(loads: dict[str, list[float]], site_bytes: int | None) -> SimpleNamespace:
    """A finished worker node, as the controlling process sees it."""
    part = _Summary()
    part.loads, part.site_bytes = loads, site_bytes
    part.site_parts = [("_static", 7)] if site_bytes else []
    config = SimpleNamespace(workeroutput={})
    part.pytest_sessionfinish(SimpleNamespace(config=config))
    return SimpleNamespace(workeroutput=config.workeroutput)


def test_the_controller_merges_what_each_worker_measured(tmp_path: Path) -> None:
    controller = _Summary()
    controller.pytest_testnodedown(_worker({"a.html": [900.0, 950.0]}, None), None)
    controller.pytest_testnodedown(_worker({"b.html": [800.0]}, 12345), None)
    controller.pytest_testnodedown(SimpleNamespace(workeroutput={}), None)  # a worker with no browser test
    out = tmp_path / "metrics.json"
    controller.write(out)
    record = json.loads(out.read_text())
    assert record["chapter_load_ms"] == {
        "a.html": {"best": 900, "tries": [900, 950]},
        "b.html": {"best": 800, "tries": [800]},
    }
    assert record["site_bytes"] == 12345 and record["site_largest_parts_bytes"] == {"_static": 7}


def test_a_process_without_workers_keeps_its_own_figures() -> None:
    alone = _Summary()
    alone.loads = {"a.html": [1.0]}
    alone.pytest_sessionfinish(SimpleNamespace(config=SimpleNamespace()))  # no workeroutput
    assert alone.loads == {"a.html": [1.0]}
