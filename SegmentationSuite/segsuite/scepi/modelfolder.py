"""Finding the nnU-Net model folder: an explicit folder, a release zip (extracted safely), or the manager's copy."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..checksum import sha256_of
from ..errors import ModelError
from ..faults import give_umask_mode

MODEL_ID = "sc-epi"
PREFERRED_TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")


@dataclass
class ModelFolder:
    """An nnU-Net training output folder ready for nnUNetPredictor.initialize_from_trained_model_folder."""

    path: Path                 # the nnUNetTrainer__... folder (dataset.json, plans.json, fold_*/)
    folds: tuple               # ("all",) or integer folds
    checkpoint_name: str
    source: str                # what the user gave (folder, zip) or the model id

    def checkpoint_paths(self) -> list[Path]:
        return [self.path / f"fold_{fold}" / self.checkpoint_name for fold in self.folds]


def cache_root() -> Path:
    """Where extracted release zips are kept: under the segsuite home folder (see models.config)."""
    from ..models.config import model_home

    return model_home() / "cache"


def resolve_model(model: Optional[str | os.PathLike], progress=None) -> ModelFolder:
    """The model folder for ``model`` (folder or zip), or the managed sc-epi model when None."""
    if model is None:
        try:
            from ..models import ensure
        except ImportError as error:
            raise ModelError(
                "the model manager (segsuite.models) is not available to fetch the sc_epi model; "
                "pass the nnU-Net model folder or the release zip with --model (model=...)") from error
        folder = Path(ensure(MODEL_ID, progress=progress))
        return find_trainer_folder(folder, source=MODEL_ID)
    path = Path(os.fspath(model)).expanduser()
    if not path.exists():
        raise ModelError(f"model not found: {path}; give an nnU-Net model folder or the release zip "
                         "(model-fmri-segmentation-v0.2_nnUNetTrainer.zip), or leave --model out to use the managed model")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise ModelError(f"{path} is neither a folder nor a zip file; give an nnU-Net model folder or the release zip")
        path = extract_release_zip(path)
    return find_trainer_folder(path, source=os.fspath(model))


def find_trainer_folder(folder: Path, source: str) -> ModelFolder:
    """Locate dataset.json/plans.json/fold_* in ``folder`` or in an nnUNetTrainer* folder up to two levels down."""
    candidates = []
    if (folder / "plans.json").is_file():
        candidates = [folder]
    else:
        for depth_glob in ("nnUNetTrainer*", "*/nnUNetTrainer*"):
            candidates = sorted(p for p in folder.glob(depth_glob) if p.is_dir())
            if candidates:
                break
    if not candidates:
        raise ModelError(f"no nnU-Net model in {folder}: expected a folder {PREFERRED_TRAINER_FOLDER}/ with "
                         "dataset.json, plans.json and fold_*/checkpoint_final.pth; check the --model path or "
                         "reinstall the model")
    if len(candidates) > 1:
        preferred = [p for p in candidates if p.name == PREFERRED_TRAINER_FOLDER]
        if len(preferred) != 1:
            names = ", ".join(p.name for p in candidates)
            raise ModelError(f"{folder} holds several nnU-Net trainer folders ({names}); point --model at one of them")
        candidates = preferred
    trainer = candidates[0]
    for name in ("dataset.json", "plans.json"):
        if not (trainer / name).is_file():
            raise ModelError(f"the model folder {trainer} has no {name}; the model is incomplete: reinstall it")

    fold_dirs = sorted(p for p in trainer.glob("fold_*") if p.is_dir())
    for checkpoint_name in CHECKPOINT_NAMES:
        with_checkpoint = [p.name[len("fold_"):] for p in fold_dirs if (p / checkpoint_name).is_file()]
        if with_checkpoint:
            break
    else:
        raise ModelError(f"the model folder {trainer} has no fold_*/checkpoint_final.pth (or checkpoint_best.pth); "
                         "the model is incomplete: reinstall it")
    numbered = sorted(int(name) for name in with_checkpoint if name.isdigit())
    folds = tuple(numbered) if numbered else ("all",)
    return ModelFolder(path=trainer, folds=folds, checkpoint_name=checkpoint_name, source=source)



def _unsafe_member_reason(info: zipfile.ZipInfo) -> Optional[str]:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if any(part == ".." for part in name.split("/")):
        return "a '..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    return None


def safe_extract_zip(zip_path: str | os.PathLike, target: str | os.PathLike) -> None:
    """Extract every member under ``target``; refuse the whole archive if any member would escape it."""
    target_real = os.path.realpath(os.fspath(target))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            for info in members:
                reason = _unsafe_member_reason(info)
                destination = os.path.realpath(os.path.join(target_real, info.filename.replace("\\", "/")))
                if reason is None and os.path.commonpath([target_real, destination]) != target_real:
                    reason = "a path outside the extraction folder"
                if reason:
                    raise ModelError(f"refusing the model zip {zip_path}: member {info.filename!r} is {reason}; "
                                     "use the official release zip")
            for info in members:
                destination = os.path.join(target_real, info.filename.replace("\\", "/"))
                if info.is_dir():
                    os.makedirs(destination, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                with archive.open(info) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    except zipfile.BadZipFile as error:
        raise ModelError(f"the model zip {zip_path} is damaged ({error}); download it again") from error


def extract_release_zip(zip_path: Path) -> Path:
    """Extract a release zip once into the cache (keyed by its sha256) and return that folder."""
    digest = sha256_of(zip_path)[:16]
    parent = cache_root() / "scepi-zip"
    final = parent / digest
    if final.is_dir():
        return final
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=parent))
        give_umask_mode(staging)  # renamed into place: a shared model cache stays readable
    except OSError as error:
        raise ModelError(f"cannot create the model cache folder {parent}: {error.strerror}; "
                         "set SEGSUITE_HOME to a writable folder or extract the zip yourself and pass the folder") from error
    try:
        safe_extract_zip(zip_path, staging)
        try:
            os.replace(staging, final)
        except OSError:
            if not final.is_dir():  # not a concurrent extraction that won the race
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
