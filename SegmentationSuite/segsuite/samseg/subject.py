"""FreeSurfer-subject mode: put the cleaned SAMSEG aseg where fMRIPrep reads it.

``fmriprep --fs-subjects-dir`` builds its brain mask from ``<subject>/mri/aseg.mgz``. This
module replaces that file by the cleaned segmentation, keeping the original beside it:

    mri/aseg.mgz                    the cleaned segmentation (non-brain labels set to 0)
    mri/aseg.samseg-original.mgz    the original, byte for byte; never overwritten once it exists
    mri/aseg.samseg-filter.json     what was done (labels removed, checksums, source)

Running again refreshes aseg.mgz from the saved original (or from a given segmentation);
``restore_original_aseg`` moves the original back. A change made to aseg.mgz by someone else
after we wrote it is never overwritten silently.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__
from ..checksum import sha256_of
from ..errors import InputError, SegSuiteError
from ..progress import ProgressCallback, ensure_callback, sub_progress
from ..result import SegmentationResult

ASEG_NAME = "aseg.mgz"
ORIGINAL_NAME = "aseg.samseg-original.mgz"
RECORD_NAME = "aseg.samseg-filter.json"


@dataclass
class SubjectPaths:
    mri: Path
    aseg: Path
    original: Path
    record: Path

    @classmethod
    def of(cls, subject_dir: str | os.PathLike) -> "SubjectPaths":
        subject = Path(subject_dir)
        if not subject.is_dir():
            raise InputError(f"FreeSurfer subject folder not found: {subject}")
        mri = subject / "mri"
        if not mri.is_dir():
            raise InputError(f"{subject} is not a FreeSurfer subject folder: it has no mri/ folder")
        return cls(mri=mri, aseg=mri / ASEG_NAME, original=mri / ORIGINAL_NAME, record=mri / RECORD_NAME)


@dataclass
class SubjectUpdate:
    """What a subject-mode run did."""

    aseg: Path
    original: Optional[Path]
    record: Path
    source: str
    result: SegmentationResult
    action: str  # "installed" (first run) or "refreshed" (a previous output was replaced)



def read_record(paths: SubjectPaths) -> dict:
    if not paths.record.exists():
        return {}
    try:
        return json.loads(paths.record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SegSuiteError(f"cannot read {paths.record} ({error}); move it aside and run again") from error


def _written_hashes(record: dict) -> set[str]:
    return set(record.get("written_sha256_history", [])) | ({record["written_sha256"]} if record.get("written_sha256") else set())


def install_cleaned_aseg(subject_dir: str | os.PathLike, engine, seg_source=None,
                         progress: Optional[ProgressCallback] = None) -> SubjectUpdate:
    """Write the cleaned segmentation as ``mri/aseg.mgz``, keeping the original beside it.

    ``engine`` is a SamsegBrainMask. ``seg_source`` is the SAMSEG segmentation, already on the
    subject's voxel grid (as samseg2recon writes it); when omitted, the subject's own aseg is
    used (the saved original on later runs), so running twice gives the same aseg.mgz.
    """
    report = ensure_callback(progress)
    paths = SubjectPaths.of(subject_dir)
    record = read_record(paths)
    ours = _written_hashes(record)
    aseg_hash = sha256_of(paths.aseg) if paths.aseg.exists() else None
    action = "installed"
    if paths.original.exists():
        original_hash = sha256_of(paths.original)
        if aseg_hash is not None and aseg_hash not in ours and aseg_hash != original_hash:
            raise SegSuiteError(
                f"{paths.aseg} was changed since segsuite wrote it, and the saved original {paths.original} "
                "is still there; to keep both, move one of them aside (or run with --restore --overwrite "
                "to put the saved original back), then run again")
        action = "refreshed" if aseg_hash in ours else "installed"
    else:
        if aseg_hash is not None and aseg_hash in ours:
            raise SegSuiteError(
                f"{paths.aseg} was written by segsuite but its saved original {paths.original} is missing; "
                f"restore the original aseg.mgz by hand (e.g. rerun recon-all/samseg2recon) and remove {paths.record}")
        if aseg_hash is None and seg_source is None:
            raise InputError(f"{paths.aseg} does not exist: give the SAMSEG segmentation with --i")
        if aseg_hash is not None:
            report(0.02, f"saving the original as {paths.original.name}")
            _atomic_copy(paths.aseg, paths.original)
            original_hash = aseg_hash
        else:
            original_hash = None

    source = seg_source if seg_source is not None else (paths.original if paths.original.exists() else paths.aseg)
    result = engine.segment(os.fspath(source) if isinstance(source, Path) else source,
                            progress=sub_progress(report, 0.05, 0.9))
    reference = paths.original if paths.original.exists() else None
    header, dtype = _reference_header(reference, result)

    report(0.92, f"writing {paths.aseg}")
    import nibabel as nib

    image = nib.MGHImage(np.asarray(result.labels).astype(dtype), result.affine, header=header)
    temp_aseg = _temp_beside(paths.aseg)
    try:
        nib.save(image, temp_aseg)
        _copy_permissions(reference, temp_aseg)
        written_hash = sha256_of(temp_aseg)
        history = sorted(ours | {written_hash})
        new_record = {
            "tool": f"segsuite {__version__} samseg-filter --subject-dir",
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "what": (f"{ASEG_NAME} is the segmentation {_describe_source(source)} with labels "
                     f"{result.provenance.get('excluded_labels')} set to 0, so that fMRIPrep's brain mask "
                     f"(refine_aseg) excludes them; the original is {ORIGINAL_NAME if original_hash else 'absent (there was no aseg.mgz)'}"),
            "restore": "segsuite samseg-filter --subject-dir SUBJECT --restore",
            "source": _describe_source(source),
            "original": ORIGINAL_NAME if original_hash else None,
            "original_sha256": original_hash,
            "written_sha256": written_hash,
            "written_sha256_history": history,
            "preset": result.provenance.get("preset"),
            "excluded_labels": result.provenance.get("excluded_labels"),
            "excluded_voxels": result.provenance.get("excluded_voxels"),
            "brain_mask_mm3": result.measures.get("BrainMask"),
        }
        # The record goes first: if we stop between the two renames, the next run still
        # recognises aseg.mgz as either the original or our output.
        _atomic_write_text(paths.record, json.dumps(new_record, indent=2) + "\n", reference)
        os.replace(temp_aseg, paths.aseg)
    finally:
        with contextlib.suppress(OSError):
            os.remove(temp_aseg)
    report(1.0, "done")
    return SubjectUpdate(aseg=paths.aseg, original=paths.original if original_hash else None, record=paths.record,
                         source=_describe_source(source), result=result, action=action)


def restore_original_aseg(subject_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Put the saved original back as ``mri/aseg.mgz`` and remove the record.

    Refuses (unless ``overwrite``) when aseg.mgz was changed by someone else since segsuite
    wrote it, because restoring would lose that change.
    """
    paths = SubjectPaths.of(subject_dir)
    record = read_record(paths)
    if not paths.original.exists():
        if record and record.get("original") is None and paths.aseg.exists() \
                and sha256_of(paths.aseg) in _written_hashes(record):
            # There was no aseg.mgz before segsuite wrote one: restoring means removing it.
            os.remove(paths.aseg)
            os.remove(paths.record)
            return paths.aseg
        raise SegSuiteError(f"nothing to restore: {paths.original} does not exist")
    if paths.aseg.exists() and not overwrite:
        current = sha256_of(paths.aseg)
        if current not in _written_hashes(record) and current != sha256_of(paths.original):
            raise SegSuiteError(
                f"{paths.aseg} was changed since segsuite wrote it; restoring would replace that change. "
                "Pass --overwrite to restore anyway, or move it aside first")
    os.replace(paths.original, paths.aseg)
    with contextlib.suppress(FileNotFoundError):
        os.remove(paths.record)
    return paths.aseg


def _reference_header(reference: Optional[Path], result: SegmentationResult):
    """The original aseg's header and data type, after checking the grids agree."""
    if reference is None:
        return None, np.int32
    import nibabel as nib

    original = nib.load(os.fspath(reference))
    if tuple(original.shape[:3]) != tuple(result.labels.shape) or not np.allclose(original.affine, result.affine, atol=1e-3):
        raise InputError(
            f"the segmentation's voxel grid (shape {tuple(result.labels.shape)}) differs from the subject's "
            f"aseg (shape {tuple(original.shape[:3])}) or its position; bring it onto the subject's grid first "
            "(samseg2recon does this, or mri_vol2vol --regheader --interp nearest)")
    dtype = original.get_data_dtype()
    if not np.issubdtype(dtype, np.integer):
        dtype = np.int32
    return original.header.copy(), np.dtype(dtype).newbyteorder("=")


def _describe_source(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.abspath(os.fspath(source))
    return "(given in memory)"


def _temp_beside(path: Path) -> str:
    handle, temp = tempfile.mkstemp(prefix=".segsuite-", suffix=".mgz", dir=os.fspath(path.parent))
    os.close(handle)
    return temp


def _copy_permissions(reference: Optional[Path], target: str) -> None:
    """mkstemp makes owner-only files; give ours the original's mode (or the usual 0644 & umask)."""
    if reference is not None:
        shutil.copymode(reference, target)
        return
    from ..faults import give_umask_mode

    give_umask_mode(target)


def _atomic_copy(source: Path, target: Path) -> None:
    handle, temp = tempfile.mkstemp(prefix=".segsuite-", suffix=".tmp", dir=os.fspath(target.parent))
    os.close(handle)
    try:
        shutil.copy2(source, temp)
        os.replace(temp, target)
    finally:
        with contextlib.suppress(OSError):
            os.remove(temp)


def _atomic_write_text(target: Path, text: str, reference: Optional[Path] = None) -> None:
    handle, temp = tempfile.mkstemp(prefix=".segsuite-", suffix=".tmp", dir=os.fspath(target.parent))
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
        _copy_permissions(reference, temp)
        os.replace(temp, target)
    finally:
        with contextlib.suppress(OSError):
            os.remove(temp)
