"""sc_epi model folder resolution: explicit folders, release zips (extracted safely), the managed model."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import zipfile
from pathlib import Path

import pytest

from segsuite.errors import ModelError
from segsuite.scepi.modelfolder import find_trainer_folder, resolve_model, safe_extract_zip
from segsuite.scepi.tiny import TRAINER_FOLDER, build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("scepi_model") / "model")


def zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


def test_tiny_model_is_small_and_complete(tiny_model):
    trainer = tiny_model / TRAINER_FOLDER
    checkpoint = trainer / "fold_all" / "checkpoint_final.pth"
    assert (trainer / "dataset.json").is_file() and (trainer / "plans.json").is_file()
    assert checkpoint.stat().st_size < 64 * 1024


def test_resolve_folder_parent_or_trainer_folder(tiny_model):
    for given in (tiny_model, tiny_model / TRAINER_FOLDER):
        found = resolve_model(given)
        assert found.path == tiny_model / TRAINER_FOLDER
        assert found.folds == ("all",) and found.checkpoint_name == "checkpoint_final.pth"


def test_numbered_folds_and_best_checkpoint_fallback(tmp_path, tiny_model):
    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    trainer = copy / TRAINER_FOLDER
    for fold in ("0", "1"):
        (trainer / f"fold_{fold}").mkdir()
        shutil.copy(trainer / "fold_all" / "checkpoint_final.pth", trainer / f"fold_{fold}" / "checkpoint_best.pth")
    shutil.rmtree(trainer / "fold_all")
    found = find_trainer_folder(copy, "test")
    assert found.folds == (0, 1) and found.checkpoint_name == "checkpoint_best.pth"


def test_release_zip_is_extracted_once_into_the_cache(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("SEGSUITE_HOME", str(tmp_path / "home"))
    archive = zip_folder(tiny_model, tmp_path / "release.zip", prefix="model-v0.2/")
    first = resolve_model(archive)
    assert first.path.name == TRAINER_FOLDER and (first.path / "fold_all" / "checkpoint_final.pth").is_file()
    assert str(first.path).startswith(str(tmp_path / "home"))
    again = resolve_model(archive)
    assert again.path == first.path
    leftovers = [p for p in first.path.parents[1].iterdir() if p.name.startswith(".extract-")]
    assert leftovers == []


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt", "C:/evil.txt"])
def test_zip_members_escaping_the_target_are_refused(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("ok.txt", "fine")
        handle.writestr(member, "escape")
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ModelError, match="refusing"):
        safe_extract_zip(archive, target)
    assert list(target.iterdir()) == [], "nothing is extracted from a refused archive"
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_members_are_refused(tmp_path):
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(ModelError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path)


def test_missing_and_incomplete_models_say_what_to_do(tmp_path, tiny_model):
    with pytest.raises(ModelError, match="model not found"):
        resolve_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no nnU-Net model"):
        resolve_model(tmp_path / "empty")
    not_zip = tmp_path / "model.zip"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="neither a folder nor a zip"):
        resolve_model(not_zip)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    os.remove(broken / TRAINER_FOLDER / "fold_all" / "checkpoint_final.pth")
    with pytest.raises(ModelError, match="checkpoint_final.pth"):
        resolve_model(broken)
    os.remove(broken / TRAINER_FOLDER / "plans.json")
    with pytest.raises(ModelError, match="plans.json"):
        resolve_model(broken)


def test_managed_model_needs_the_manager(monkeypatch):
    monkeypatch.setitem(sys.modules, "segsuite.models", None)  # import fails as if it were absent
    with pytest.raises(ModelError, match="--model"):
        resolve_model(None)


def test_managed_model_comes_from_ensure(monkeypatch, tiny_model):
    import types

    calls = []
    fake = types.ModuleType("segsuite.models")
    fake.ensure = lambda model_id, progress=None: calls.append(model_id) or tiny_model
    monkeypatch.setitem(sys.modules, "segsuite.models", fake)
    found = resolve_model(None)
    assert calls == ["sc-epi"] and found.path == tiny_model / TRAINER_FOLDER and found.source == "sc-epi"
