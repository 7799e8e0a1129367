"""Cohort engines whose input is not the T1w image, and the root look-up tables of every model.

- ``scepi``: sc_epi on the MEAN over time of each ``func/*_bold.nii[.gz]`` series of the
  subject/session; the mean is written as ``func/<bold>_desc-mean_bold.nii.gz`` (a one-volume
  series, as the BIDS validator wants a _bold file 4D) and the cord as
  ``func/<bold>_seg-scepi_dseg.nii.gz`` (3D) on its grid.
- ``samseg-filter``: the SAMSEG label filter on an existing SAMSEG derivatives dataset
  (``--derivatives samseg=PATH``), one ``seg.mgz`` per subject/session (see ``find_samseg_seg``);
  outputs ``anat/<key>_seg-samseg_dseg.nii.gz`` (the fMRIPrep-ready aseg) and
  ``anat/<key>_desc-brain_mask.nii.gz`` on the SAMSEG grid.

An image folder without the model's input is skipped for that model with a reason (recorded in
the folder's ``<key>_segsuite.json`` and in ``.segsuite/logs/skipped.tsv``), not failed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UsageError
from ..labels import LabelTable
from .index import CohortItem

SCEPI, SAMSEG_FILTER = "scepi", "samseg-filter"
OTHER_INPUT_MODELS = (SCEPI, SAMSEG_FILTER)
BOLD_NAME = re.compile(r"^(?P<stem>sub-[A-Za-z0-9]+(?:_[A-Za-z]+-[A-Za-z0-9]+)*)_bold\.nii(?:\.gz)?$")
SAMSEG_LINK = "samseg"
# Where a subject's SAMSEG segmentation may be, relative to PATH/sub-X[/ses-Y]: the folder given to
# run_samseg --output, or a BIDS-like anat/ folder.
SAMSEG_LOCATIONS = ("seg.mgz", "anat/seg.mgz", "seg.nii.gz", "anat/seg.nii.gz")
# The labels of SAMSEG's default atlas (PyPI samseg 0.4a0, as in ../shared/data/samseg/*/seg.mgz).
SAMSEG_ATLAS_LABELS = (0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 30, 31, 41, 42, 43,
                       44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60, 62, 63, 77, 80, 85, 165, 258, 259)
SKIPPED_HEADER = "participant_id\tsession_id\tmodel\treason\n"


class ModelSkipped(Exception):
    """This image folder has no input for the model: a reason, not a failure."""


def parse_derivatives(values) -> dict[str, str]:
    """--derivatives samseg=PATH (fMRIPrep's convention: NAME=PATH pairs) -> {name: absolute path}."""
    found: dict[str, str] = {}
    for value in values or []:
        name, sep, path = str(value).partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--derivatives takes NAME=PATH (e.g. samseg=/data/derivatives/samseg), got {value!r}")
        if name != SAMSEG_LINK:
            raise UsageError(f"--derivatives {name}=...: only '{SAMSEG_LINK}' (the input of samseg-filter) is used")
        if not os.path.isdir(path):
            raise UsageError(f"--derivatives {name}={path}: no such folder")
        found[name] = str(Path(path).resolve())
    return found


BOLD_FILTER = {"datatype": "func", "suffix": "bold", "extension": [".nii.gz", ".nii"]}


def func_only_items(index, bids_dir, items: list[CohortItem], participants=None, sessions=None) -> list[CohortItem]:
    """Folders with BOLD series but no T1w image (for scepi): items whose path is the folder itself."""
    from .index import select_t1w

    covered = {item.folder for item in items}
    folders: dict[str, CohortItem] = {}
    for bold in select_t1w(index, bids_dir, None, sessions, BOLD_FILTER):
        if (participants is None or bold.participant in participants) and bold.folder not in covered:
            folders.setdefault(bold.folder, CohortItem(bold.participant, bold.session, str(Path(bids_dir) / bold.folder),
                                                       (), f"bids:raw:{bold.folder}"))
    return sorted(folders.values(), key=lambda item: item.key)


def select_with_func(index, bids_dir, participants=None, sessions=None, filters=None) -> list[CohortItem]:
    """The T1w items and the func-only folders (with scepi); a named participant with neither is an error."""
    from .index import require_participants, select_t1w

    items = select_t1w(index, bids_dir, None, sessions, filters)
    if participants is not None:
        items = [item for item in items if item.participant in participants]
    items += func_only_items(index, bids_dir, items, participants, sessions)
    require_participants(items, participants, bids_dir, "T1w image or BOLD series")
    return sorted(items, key=lambda item: item.key)


def has_no_t1w(item: CohortItem) -> bool:
    """A folder item from func_only_items: the T1w engines are skipped for it."""
    return os.path.isdir(item.path)


def bids_root_of(item: CohortItem) -> Optional[Path]:
    """The raw dataset's root, from the item's path and its ``bids:raw:`` URI (None in manifest mode)."""
    prefix = "bids:raw:"
    if not item.source_uri.startswith(prefix):
        return None
    relative = item.source_uri[len(prefix):]
    path = Path(item.path).as_posix()
    return Path(path[: -len(relative)]) if path.endswith(relative) else None


def bold_series(item: CohortItem) -> list[tuple[Path, str]]:
    """The item folder's BOLD series as (path, stem without _bold), sorted; ModelSkipped when none."""
    root = bids_root_of(item)
    if root is None:
        raise ModelSkipped("manifest mode lists T1w images only (no func/ BOLD series)")
    func = root / item.folder / "func"
    found = []
    if func.is_dir():
        for entry in sorted(os.listdir(func)):
            match = BOLD_NAME.match(entry)
            if match:
                found.append((func / entry, match.group("stem")))
    if not found:
        raise ModelSkipped(f"no func/*_bold.nii[.gz] series in {item.folder}")
    return found


def find_samseg_seg(item: CohortItem, derivatives: Optional[str]) -> tuple[Path, str]:
    """(the SAMSEG seg of the item's folder, its BIDS URI); ModelSkipped when there is none."""
    if not derivatives:
        raise ModelSkipped("no SAMSEG derivatives given (--derivatives samseg=PATH)")
    folder = Path(derivatives) / item.folder
    for relative in SAMSEG_LOCATIONS:
        if (folder / relative).is_file():
            return folder / relative, f"bids:{SAMSEG_LINK}:{item.folder}/{relative}"
    raise ModelSkipped(f"no SAMSEG segmentation for {item.folder} in {derivatives} "
                       f"(looked for {', '.join(SAMSEG_LOCATIONS)})")


def find_other_inputs(name: str, engines, item: CohortItem) -> list:
    """The inputs of ``name`` (scepi or samseg-filter) in the item's folder; ModelSkipped when none."""
    if name == SCEPI:
        return bold_series(item)
    if name == SAMSEG_FILTER:
        return [find_samseg_seg(item, engines.plan[name].get("inputs", {}).get("derivatives"))]
    raise UsageError(f"unknown model {name!r}")


def run_other_input_model(name: str, engines, item: CohortItem, folder: Path, segment: Callable,
                          posteriors: bool = False) -> list[str]:
    """Run ``name`` (scepi or samseg-filter) for one image folder into the staging ``folder``.

    ``segment(name, source)`` runs the worker's engine (with its CUDA-out-of-memory fallback).
    Returns the files written (names relative to their datatype folder).
    """
    from .derivatives import write_segmentation

    if name == SCEPI:
        written = []
        for bold, stem in find_other_inputs(name, engines, item):
            import nibabel as nib

            frames = int(np.prod(nib.load(str(bold)).shape[3:], dtype=np.int64))
            mean = engines.engines[name].load_input(str(bold))
            result = segment(name, mean)
            written += write_scepi(folder, item, bold, stem, mean, frames, result, engines.entries[name])
        return written
    if name == SAMSEG_FILTER:
        seg, uri = find_other_inputs(name, engines, item)[0]
        result = segment(name, str(seg))
        result.subject = item.key
        source = dataclasses.replace(item, source_uri=uri)
        return write_segmentation(folder, source, "samseg", result, engines.entries[name], posteriors)
    raise UsageError(f"unknown model {name!r}")


def write_scepi(folder: Path, item: CohortItem, bold: Path, stem: str, mean, frames: int, result,
                model_entry: dict) -> list[str]:
    """<stem>_desc-mean_bold.nii.gz (+json), <stem>_seg-scepi_dseg.nii.gz (+json), <stem>_seg-scepi_morph.tsv."""
    from .derivatives import _json_text, _morph_text, _save_nifti

    func = folder / "func"
    func.mkdir(parents=True, exist_ok=True)
    source_uri = f"bids:raw:{item.folder}/func/{bold.name}"
    mean_name = f"{stem}_desc-mean_bold.nii.gz"
    mean_uri = f"bids::{item.folder}/func/{mean_name}"
    # A one-volume series: BIDS keeps the raw suffix for derived data, and a _bold file must be 4D.
    _save_nifti(func / mean_name, np.asarray(mean.data, dtype=np.float32)[..., None], mean.affine)
    mean_sidecar = {"Sources": [source_uri], "SkullStripped": False,
                    "Description": f"mean over time of the {frames} volumes of the BOLD series (the input of sc_epi)"}
    (func / mean_name.replace(".nii.gz", ".json")).write_text(_json_text(mean_sidecar), encoding="utf-8")
    seg_name = f"{stem}_seg-scepi_dseg.nii.gz"
    labels = np.asarray(result.labels)
    _save_nifti(func / seg_name, labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int16), result.affine)
    sidecar = {"Sources": [mean_uri, source_uri], "SpatialReference": mean_uri,
               "SegSuite": {"model": model_entry, "provenance": result.provenance}}
    (func / seg_name.replace(".nii.gz", ".json")).write_text(_json_text(sidecar), encoding="utf-8")
    morph_name = f"{stem}_seg-scepi_morph.tsv"
    (func / morph_name).write_text(_morph_text(result), encoding="utf-8")
    return [mean_name, mean_name.replace(".nii.gz", ".json"), seg_name, seg_name.replace(".nii.gz", ".json"),
            morph_name]


def root_label_table(name: str, engine) -> Optional[LabelTable]:
    """The look-up table of seg-<name>_dseg.tsv for a T1w-free or engine-defined model."""
    if name == SAMSEG_FILTER:
        from ..labels import freesurfer_lut

        excluded = set(engine.excluded_labels)
        return freesurfer_lut().subset([v for v in SAMSEG_ATLAS_LABELS if v not in excluded])
    return getattr(engine, "label_table", None)


def table_to_rows(table: Optional[LabelTable]) -> Optional[list]:
    """A label table as JSON-able rows [value, name, [r, g, b]] (it crosses from worker to driver)."""
    if table is None:
        return None
    return [[int(label.value), label.name, [int(c) for c in label.color[:3]]] for label in table]


def rows_to_table(rows: list) -> LabelTable:
    from ..labels import Label

    return LabelTable([Label(int(value), str(name), tuple(int(c) for c in color)) for value, name, color in rows])


def note_skips(output_dir: str, item: CohortItem, skips: list[tuple[str, str]]) -> None:
    """Append this folder's skipped models to .segsuite/logs/skipped.tsv (whole lines, O_APPEND), each row
    once however often the folder is run."""
    if not skips:
        return
    from .derivatives import logs_dir

    path = logs_dir(output_dir) / "skipped.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(SKIPPED_HEADER)
    except FileExistsError:
        pass
    session = f"ses-{item.session}" if item.session else "n/a"
    rows = [f"sub-{item.participant}\t{session}\t{model}\t{' '.join(reason.split())}\n" for model, reason in skips]
    # a rerun (--overwrite, or after a failure) notes the same skips again: one row each
    with open(path, encoding="utf-8") as handle:
        present = set(handle)
    lines = "".join(row for row in rows if row not in present)
    if lines:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(lines)
