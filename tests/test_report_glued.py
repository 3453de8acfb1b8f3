"""Reading glued values back from stored notebook outputs (`bnbook.report.glued`), and Markdown tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnbook.report import glued, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def _record(name: str, data: dict) -> dict:
    """An output as ``myst_nb.glue(name, value, display=False)`` stores it."""
    prefix = "application/papermill.record/"
    return {
        "output_type": "display_data",
        "data": {prefix + k: v for k, v in data.items()},
        "metadata": {"scrapbook": {"mime_prefix": prefix, "name": name}},
    }


def _notebook(tmp_path: Path, outputs: list[dict]) -> Path:
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": "# t"},
        {"cell_type": "code", "metadata": {}, "source": "", "outputs": outputs[:2], "execution_count": 1},
        {"cell_type": "code", "metadata": {}, "source": "", "outputs": outputs[2:], "execution_count": 2},
    ]
    path = tmp_path / "t.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_glued_reads_each_kind_of_record(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        [
            _record("acc", {"text/plain": "0.976"}),
            _record("steps", {"text/plain": "1350"}),
            _record("label", {"text/plain": "'never'"}),
            _record("pair", {"text/plain": ["[1.5, ", "2.0]"]}),  # text split into lines
            _record("blob", {"text/plain": "<object at 0x1>"}),  # not a literal: the text itself
            _record("js", {"application/json": {"a": 1}, "text/plain": "{'a': 1}"}),
            _record("acc", {"text/plain": "0.981"}),  # glued again: the later value wins
            {"output_type": "stream", "name": "stdout", "text": "hello\n"},
        ],
    )
    values = glued(path)
    assert values == {
        "acc": 0.981,
        "steps": 1350,
        "label": "never",
        "pair": [1.5, 2.0],
        "blob": "<object at 0x1>",
        "js": {"a": 1},
    }
    assert glued(path, ["steps", "acc"]) == {"steps": 1350, "acc": 0.981}


def test_glued_names_every_missing_key(tmp_path: Path) -> None:
    path = _notebook(tmp_path, [_record("acc", {"text/plain": "0.976"})])
    with pytest.raises(KeyError, match=r"t\.ipynb has no glued value for 'gone', 'lost'"):
        glued(path, ["acc", "gone", "lost"])


def test_glued_refuses_what_is_not_a_notebook(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ipynb"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="is not a notebook"):
        glued(bad)
    with pytest.raises(FileNotFoundError):
        glued(tmp_path / "missing.ipynb")


def test_glued_agrees_with_the_stored_chapters() -> None:
    """Every chapter's records come back, one value per glued name."""
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        names = {
            o["metadata"]["scrapbook"]["name"]
            for c in nb["cells"]
            for o in c.get("outputs", ())
            if "scrapbook" in o.get("metadata", {})
        }
        assert set(glued(path)) == names, path.name


def test_markdown_table() -> None:
    table = markdown_table(["a", "b"], [[1, "x|y"], ["two\nlines", 0.5]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |", "| two lines | 0.5 |"]
    with pytest.raises(ValueError, match="row 0 has 1 cells, the header 2"):
        markdown_table(["a", "b"], [[1]])


def test_the_appendix_finds_every_key_it_needs() -> None:
    """The reproductions appendix reads these keys from the chapters; a chapter that drops one breaks it."""
    import ast

    nb = json.loads((ROOT / "chapters" / "17_reproductions.ipynb").read_text())
    source = next("".join(c["source"]) for c in nb["cells"] if "NEEDED = {" in "".join(c["source"]))
    tree = ast.parse(source)
    needed = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "NEEDED"
    )
    for chapter, keys in needed.items():
        glued(ROOT / "chapters" / f"{chapter}.ipynb", keys)  # KeyError names what is missing


def test_verdict_word_reads_known_words_and_refuses_the_rest() -> None:
    from bnbook.report import verdict_word

    words = {"BN faster": "better", "BN slower": "worse", "about the same": "about the same"}
    assert verdict_word("BN faster", words) == "better"
    assert verdict_word("BN slower", words) == "worse"
    assert verdict_word("about the same", words, flip=True) == "about the same"
    assert verdict_word("BN faster", words, flip=True) == "worse"  # a quantity where lower is better
    # a renamed word stops the reader instead of counting as "not better"
    with pytest.raises(ValueError, match=r"08, d_reach_v: unknown verdict word 'BN quicker'"):
        verdict_word("BN quicker", words, where="08, d_reach_v")
    with pytest.raises(ValueError, match="unknown verdict word 0.5"):
        verdict_word(0.5, words)
    with pytest.raises(ValueError, match="must map to"):
        verdict_word("higher", {"higher": "up"})


def _appendix_source() -> str:
    nb = json.loads((ROOT / "chapters" / "17_reproductions.ipynb").read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def _assigned(source: str, name: str):
    import ast

    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name:
            return node.value
    raise AssertionError(f"the appendix assigns no {name}")


def test_the_appendix_knows_every_verdict_word_it_reads() -> None:
    """Each verdict the appendix reads through ``said`` is a word its table for that chapter knows."""
    import ast
    import re

    from bnbook.report import VERDICTS

    source = _appendix_source()
    same = ast.literal_eval(_assigned(source, "SAME"))
    words_node = _assigned(source, "WORDS")
    words = {}
    for key, value in zip(words_node.keys, words_node.values, strict=True):
        table = {}
        for k, v in zip(value.keys, value.values, strict=True):
            table.update(same if k is None else {ast.literal_eval(k): ast.literal_eval(v)})
        words[ast.literal_eval(key)] = table
    assert all(set(t.values()) <= set(VERDICTS) for t in words.values())
    names = {}  # C1 = "01_internal_covariate_shift", ... (assigned as one tuple)
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple):
            targets = [getattr(t, "id", "") for t in node.targets[0].elts]
            if all(re.fullmatch(r"C\d+", t) for t in targets):
                names.update(zip(targets, ast.literal_eval(node.value), strict=True))
    read = re.findall(r'said\((C\d+), ["\']([^"\']+)["\']', source)
    assert len(read) >= 20, read
    for short, key in read:
        chapter = names[short]
        stored = glued(ROOT / "chapters" / f"{chapter}.ipynb")
        if key in stored:  # a missing key is the other test's failure
            assert stored[key] in words[chapter], (chapter, key, stored[key])
