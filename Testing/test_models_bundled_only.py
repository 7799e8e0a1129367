"""Listing models needs only what Slicer bundles (defect 3 of issue 13): `segsuite models list`
runs in a fresh interpreter where every other requirement is blocked from importing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

# Not bundled with Slicer 5.10/5.12 (see Testing/slicer_constraints/): listing must not import them.
NOT_BUNDLED = ["filelock", "platformdirs", "tqdm", "nibabel", "pandas", "torch", "h5py", "nnunetv2"]

BLOCKING_BOOTSTRAP = r"""
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is blocked: Slicer does not bundle it")
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["segsuite"] + sys.argv[2:]
runpy.run_module("segsuite", run_name="__main__", alter_sys=True)
"""


def run_blocked(tmp_path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSUITE_") or k == "SEGSUITE_REGISTRY"}
    env.update(PYTHONPATH=str(REPO_ROOT / "SegmentationSuite"), SEGSUITE_HOME=str(tmp_path / "home"),
               SEGSUITE_CONFIG=str(tmp_path / "config.json"))
    return subprocess.run([sys.executable, "-c", BLOCKING_BOOTSTRAP, ",".join(NOT_BUNDLED), *args],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def registry_ids() -> list[str]:
    data = json.loads((REPO_ROOT / "SegmentationSuite/segsuite/models/registry.json").read_text(encoding="utf-8"))
    return [m["id"] for m in data["models"]] if isinstance(data["models"], list) else list(data["models"])


def test_the_block_really_blocks(tmp_path):
    done = run_blocked(tmp_path, "--progress", "none", "models", "download", registry_ids()[0])
    assert done.returncode != 0            # downloading locks the cache: filelock is needed there


@pytest.mark.parametrize("as_json", [True, False])
def test_models_list_with_only_what_slicer_bundles(tmp_path, as_json):
    done = run_blocked(tmp_path, "models", "list", *(["--json"] if as_json else []))
    assert done.returncode == 0, done.stderr
    if as_json:
        listed = json.loads(done.stdout)
        assert [m["id"] for m in listed] == registry_ids()
        assert all(m["status"] == "not installed" for m in listed)
        assert all(m["path"].startswith(str(tmp_path / "home")) for m in listed)
    else:
        for model_id in registry_ids():
            assert model_id in done.stdout
        assert f"Cache folder: {tmp_path / 'home'}" in done.stdout


def test_user_folders_are_the_ones_platformdirs_names(monkeypatch, tmp_path):
    platformdirs = pytest.importorskip("platformdirs")
    from segsuite.models.config import APP_NAME, user_folder

    for xdg in (None, str(tmp_path / "xdg")):
        for variable in ("XDG_DATA_HOME", "XDG_CONFIG_HOME"):
            if xdg is None:
                monkeypatch.delenv(variable, raising=False)
            else:
                monkeypatch.setenv(variable, f"{xdg}/{variable}")
        assert str(user_folder("data")) == platformdirs.user_data_dir(APP_NAME, appauthor=False)
        assert str(user_folder("config")) == platformdirs.user_config_dir(APP_NAME, appauthor=False)


def test_model_actions_before_any_engine_need_only_filelock_beyond_the_bundle(tmp_path, monkeypatch):
    """download (with progress), verify, remove and install from a file, in a fresh interpreter
    where everything but filelock that Slicer does not bundle is blocked (what the Models module
    has before any engine ran, after install.ensure_requirements("models"))."""
    from model_server import ModelServer, file_entry, tiny_registry, write_registry

    body = os.urandom(40_000)
    server = ModelServer()
    try:
        server.add("/w.h5", body)
        registry = write_registry(tmp_path / "registry.json",
                                  tiny_registry([file_entry("w.h5", body, [server.url("/w.h5")])]))
        monkeypatch.setenv("SEGSUITE_REGISTRY", str(registry))
        monkeypatch.setattr(sys.modules[__name__], "NOT_BUNDLED", [n for n in NOT_BUNDLED if n != "filelock"])

        done = run_blocked(tmp_path, "--progress", "json", "models", "download", "tiny")
        assert done.returncode == 0, done.stderr
        progress = [json.loads(line.split(" ", 1)[1]) for line in done.stderr.splitlines()
                    if line.startswith("SEGSUITE_PROGRESS ")]
        assert progress and progress[-1]["fraction"] == 1.0
        installed = tmp_path / "home" / "models" / "tiny" / "w.h5"
        assert installed.read_bytes() == body

        assert run_blocked(tmp_path, "models", "verify", "tiny").stdout.strip() == "tiny: ok"
        assert "removed" in run_blocked(tmp_path, "models", "remove", "tiny").stdout
        assert not installed.exists()
        source = tmp_path / "w.h5"
        source.write_bytes(body)
        done = run_blocked(tmp_path, "--progress", "none", "models", "install", "tiny", "--from", str(source))
        assert done.returncode == 0, done.stderr
        assert installed.read_bytes() == body
    finally:
        server.close()
