"""Package hygiene: light imports, the device choice, ``__all__`` and docstrings."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import bnbook


def _run(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so sys.modules starts empty)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "module",
    ["bnbook", "bnbook.scratch", "bnbook.gradcheck", "bnbook._checks", "bnbook.data", "bnbook.seeding"],
)
def test_numeric_core_imports_neither_torch_nor_matplotlib(module) -> None:
    result = _run(
        f"""
        import sys
        import {module}
        heavy = ("torch", "matplotlib", "ipywidgets", "IPython", "sklearn")
        print(",".join(m for m in heavy if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"import {module} loaded {result.stdout.strip()}"


def test_nn_imports_neither_matplotlib_nor_ipywidgets() -> None:
    result = _run(
        """
        import sys
        import bnbook.nn, bnbook.models
        print(",".join(m for m in ("matplotlib", "ipywidgets") if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_scratch_works_where_torch_cannot_be_imported() -> None:
    result = _run(
        """
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import numpy as np
        import bnbook, bnbook.scratch, bnbook.gradcheck, bnbook.seeding
        layer = bnbook.scratch.BatchNorm(3)
        y = layer(np.random.default_rng(0).normal(size=(5, 3)))
        dx = layer.backward(np.ones_like(y))
        layer.load_state_dict(layer.state_dict())
        bnbook.seeding.seed_everything(0)
        print("ok", y.shape, dx.shape)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok (5, 3) (5, 3)"


# --- get_device ------------------------------------------------------------------


def test_get_device_honours_env(monkeypatch) -> None:
    import torch

    monkeypatch.setenv("BNBOOK_DEVICE", "cpu")
    assert bnbook.get_device() == torch.device("cpu")
    monkeypatch.setenv("BNBOOK_DEVICE", "  cpu ")
    assert bnbook.get_device() == torch.device("cpu")
    monkeypatch.setenv("BNBOOK_DEVICE", "meta")  # any torch device name is taken as given
    assert bnbook.get_device() == torch.device("meta")


def test_get_device_default(monkeypatch) -> None:
    import torch

    monkeypatch.delenv("BNBOOK_DEVICE", raising=False)
    if torch.cuda.is_available():
        expected = torch.device("cuda")
    elif torch.backends.mps.is_available():
        expected = torch.device("mps")
    else:
        expected = torch.device("cpu")
    assert bnbook.get_device() == expected
    monkeypatch.setenv("BNBOOK_DEVICE", "")  # empty means unset
    assert bnbook.get_device() == expected


@pytest.mark.parametrize("name", ["gpu", "cpux", "cuda:-1", "not a device"])
def test_get_device_invalid_env(monkeypatch, name) -> None:
    monkeypatch.setenv("BNBOOK_DEVICE", name)
    with pytest.raises(ValueError, match="BNBOOK_DEVICE"):
        bnbook.get_device()


# --- __all__ and docstrings ------------------------------------------------------


def _modules() -> list[str]:
    names = ["bnbook"]
    for info in pkgutil.walk_packages(bnbook.__path__, "bnbook."):
        names.append(info.name)
    return names


MODULES = _modules()


def test_module_list_is_complete() -> None:
    for expected in ("bnbook.scratch", "bnbook.nn", "bnbook.gradcheck", "bnbook.widgets", "bnbook.models"):
        assert expected in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_existing_names_and_public_objects_have_docstrings(name) -> None:
    module = importlib.import_module(name)
    assert inspect.getdoc(module), f"{name} has no module docstring"
    exported = getattr(module, "__all__", None)
    if exported is None:
        public = [
            n
            for n, obj in vars(module).items()
            if not n.startswith("_") and inspect.isfunction(obj) and obj.__module__ == name
        ]
        assert not public, f"{name} defines public functions {public} but no __all__"
        return
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists missing names {missing}"
    undocumented = []
    for n in exported:
        obj = getattr(module, n)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            if not (obj.__doc__ or "").strip():
                undocumented.append(n)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    func = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                    # an override may inherit its docstring (e.g. Function.forward)
                    if inspect.isfunction(func) and not inspect.getdoc(getattr(obj, attr)):
                        undocumented.append(f"{n}.{attr}")
    assert not undocumented, f"{name}: no docstring on {undocumented}"


def test_version_matches_metadata() -> None:
    from importlib.metadata import version

    assert bnbook.__version__ == version("bnbook")
