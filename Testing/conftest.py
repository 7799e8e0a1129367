"""Shared pytest fixtures: where ../shared is, and skipping cleanly when it is absent."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGSUITE_SHARED", REPO_ROOT.parent / "shared"))
# the device the parity tests run the engines on (cpu in CI; cuda to check a GPU against the fixtures)
TEST_DEVICE = os.environ.get("SEGSUITE_TEST_DEVICE", "cpu")


def stand_in_module_files(monkeypatch, modules, test_base=None) -> None:
    """Stand-ins for Slicer's GUI-only modules (slicer.ScriptedLoadableModule, qt), so the module files
    in SegmentationSuite/ import with slicer-core; ``test_base`` is the ScriptedLoadableModuleTest they
    get (a bare class when None); ``modules`` are dropped from sys.modules so each imports afresh."""
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, *args, **kwargs):
            self.parent = types.SimpleNamespace()

    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic"):
        setattr(scripted, name, type(name, (Base,), {}))
    scripted.ScriptedLoadableModuleTest = test_base or type("ScriptedLoadableModuleTest", (Base,), {})
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    qt = types.ModuleType("qt")
    qt.__getattr__ = lambda name: type(name, (), {"__init__": lambda self, *a, **k: None})
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.syspath_prepend(str(REPO_ROOT / "SegmentationSuite"))
    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips the test with the reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared data/fixtures folder beside the repository); it is absent here")
    return path


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture(autouse=True)
def _isolated_model_home(tmp_path_factory, monkeypatch):
    """Tests never touch the user's real model cache or config."""
    home = tmp_path_factory.mktemp("segsuite_home")
    monkeypatch.setenv("SEGSUITE_HOME", str(home))
    monkeypatch.delenv("SEGSUITE_MIRROR", raising=False)
    monkeypatch.setenv("SEGSUITE_CONFIG", str(home / "config.json"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small networks run faster and deterministically on one thread; restored after the module.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
