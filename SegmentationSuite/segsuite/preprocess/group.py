"""Group level of the preprocessing: the cohort mask, the mean modulated GM map and the per-subject
registration/bias QC table, from the ``*_desc-preproc_qc.json`` records ``write_preprocessed`` leaves
beside each subject's outputs. The maps are summed one subject at a time (memory of two template grids).

Registration QC flags per subject: tissue overlap with the template priors (``tpm_overlap_gm/wm``)
below the cohort's median by more than the MAD limit, a warp that folds (Jacobian minimum <= 0) and a
bias field whose spread (``inu_range``) is beyond the MAD limit. Subjects a reviewer rated ``fail`` for
the engine ``preprocess`` stay in the table (their QC columns n/a, with why) and are left out of the
cohort mask and mean map.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import InputError

RECORD_SUFFIX = "_desc-preproc_qc.json"
ENGINE = "preprocess"  # the rated unit's engine name in the review report and the ratings TSV
MASK_FRACTION = 0.5  # a template voxel is in the cohort mask when at least this fraction of subjects have brain there
MAD_LIMIT = 3.0
QC_COLUMNS = ("tpm_overlap_gm", "tpm_overlap_wm", "tpm_overlap_csf", "inu_range", "inu_med", "jacobian_min",
              "native_GM_mm3", "modulated_GM_mm3")
FLAGS_COLUMN = "qc_flags"
QC_TABLE = "group_desc-preproc_qc.tsv"
BIDS_PREFIX = re.compile(r"^(?P<sub>sub-[A-Za-z0-9]+)(?:_(?P<ses>ses-[A-Za-z0-9]+))?(?:_(?P<rest>.+))?$")


def subject_ids(prefix: str) -> dict[str, str]:
    """participant_id, session_id (n/a when none) and, for other entities, ``entities`` of an output
    prefix; a prefix that is not a BIDS key is the participant_id itself."""
    match = BIDS_PREFIX.match(prefix)
    if not match:
        return {"participant_id": prefix, "session_id": "n/a"}
    ids = {"participant_id": match["sub"], "session_id": match["ses"] or "n/a"}
    if match["rest"]:
        ids["entities"] = match["rest"]
    return ids


def find_records(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Every preprocessing record under ``folders`` (searched recursively), sorted."""
    records = set()
    for folder in folders:
        folder = Path(folder)
        if folder.is_file() and folder.name.endswith(RECORD_SUFFIX):
            records.add(folder)
        elif folder.is_dir():
            records.update(folder.rglob(f"*{RECORD_SUFFIX}"))
    return sorted(records)


def _subject_files(record: Path) -> tuple[str, str, dict]:
    from .subject import output_paths

    content = json.loads(record.read_text(encoding="utf-8"))
    space = content.get("provenance", {}).get("template")
    if not space:
        raise InputError(f"{record} names no template: it is not a segsuite preprocess record")
    prefix = record.name[:-len(RECORD_SUFFIX)]
    paths = output_paths(str(record.parent), prefix, space)
    return prefix, space, {"record": content, "mask": paths["template_mask"], "gm": paths["modulated_GM"]}


def registration_flags(rows: list[dict], mad_limit: float = MAD_LIMIT) -> list[list[str]]:
    """The automatic registration/bias QC reasons of each row (``QC_COLUMNS`` values)."""
    from ..morphometry.group import robust_outliers

    reasons: list[list[str]] = [[] for _ in rows]

    def column(name):
        return np.array([float(row.get(name, np.nan)) for row in rows], dtype=np.float64)

    for name, side in (("tpm_overlap_gm", -1), ("tpm_overlap_wm", -1), ("inu_range", 1)):
        values = column(name)
        deviation, _ = robust_outliers(values, mad_limit)
        for index, (value, d) in enumerate(zip(values, deviation)):
            if np.isfinite(value) and np.sign(d) == side and abs(d) > mad_limit:
                where = "below" if side < 0 else "above"
                reasons[index].append(f"{ENGINE}: {name} {value:.3g} {where} the cohort by {abs(d):.1f} MADs")
    for index, value in enumerate(column("jacobian_min")):
        if np.isfinite(value) and value <= 0:
            reasons[index].append(f"{ENGINE}: the warp folds (Jacobian minimum {value:.3g} <= 0)")
    return reasons


def qc_rows(records: list[Path]) -> tuple[str, list[dict], list[dict]]:
    """(space, QC rows, each row's files) of the subjects' records, checked to be in one space."""
    if not records:
        raise InputError("no *_desc-preproc_qc.json found: run segsuite preprocess on the subjects first")
    spaces, rows, files = set(), [], []
    for record in records:
        prefix, space, found = _subject_files(record)
        spaces.add(space)
        if len(spaces) > 1:
            raise InputError(f"the records are in several template spaces ({', '.join(sorted(spaces))}): "
                             "give the folders of one space")
        metrics = found["record"].get("metrics", {})
        rows.append({**subject_ids(prefix), "template": space,
                     **{column: metrics.get(column, float("nan")) for column in QC_COLUMNS}})
        files.append(found)
    return spaces.pop(), rows, files


def qc_frame(rows: list[dict], ratings: Optional[dict] = None, mad_limit: float = MAD_LIMIT):
    """(the QC table with its flags column, which rows a reviewer rated fail)."""
    import pandas as pd

    from ..review.ratings import mark_frame

    frame = pd.DataFrame(rows)
    ids = [c for c in ("participant_id", "session_id", "entities") if c in frame.columns]
    frame = frame[ids + [c for c in frame.columns if c not in ids]]
    reasons = ["; ".join(found) for found in registration_flags(rows, mad_limit)]
    frame[FLAGS_COLUMN] = reasons
    if ratings is None:
        return frame, np.zeros(len(frame), dtype=bool)
    return mark_frame(frame, ratings, ENGINE, QC_COLUMNS, reasons)


def cohort_maps(files: list[dict], mask_fraction: float = MASK_FRACTION):
    """(affine, cohort mask, mean modulated GM) of the subjects' template-space files."""
    import nibabel as nib

    if not 0 < mask_fraction <= 1:
        raise InputError(f"the mask fraction must be in (0, 1], got {mask_fraction}")
    if not files:
        raise InputError("every subject's preprocessing is rated fail: no cohort mask or mean map can be made")
    mask_count = gm_sum = affine = None
    for found in files:
        mask_image, gm_image = nib.load(found["mask"]), nib.load(found["gm"])
        if affine is None:
            affine, shape = mask_image.affine, mask_image.shape
            mask_count = np.zeros(shape, dtype=np.int32)
            gm_sum = np.zeros(shape, dtype=np.float64)
        if mask_image.shape != shape or gm_image.shape != shape or not np.allclose(gm_image.affine, affine, atol=1e-4):
            raise InputError(f"{found['gm']} is on another template grid than the first subject's: give "
                             "outputs of one --resolution")
        mask_count += np.asarray(mask_image.dataobj) > 0
        gm_sum += np.asarray(gm_image.dataobj, dtype=np.float64)
    mask = mask_count >= mask_fraction * len(files)
    return affine, mask, (gm_sum / len(files)).astype(np.float32)


def write_preprocess_group(folders: Iterable[str | os.PathLike], output_dir: str | os.PathLike,
                           mask_fraction: float = MASK_FRACTION, overwrite: bool = False,
                           ratings: Optional[dict] = None, mad_limit: float = MAD_LIMIT) -> list[str]:
    """Write ``group_space-<S>_desc-cohort_mask.nii.gz``, ``group_space-<S>_label-GM_desc-modulatedmean_probseg.nii.gz``
    and ``group_desc-preproc_qc.tsv`` into ``output_dir``; returns their paths. ``ratings``
    (review.ratings.read_ratings): subjects rated fail for ``preprocess`` stay out of the two maps."""
    from ..image import output_transaction
    from ..table_values import frame_text

    space, rows, files = qc_rows(find_records(folders))
    frame, failed = qc_frame(rows, ratings, mad_limit)
    affine, mask, mean_gm = cohort_maps([found for found, out in zip(files, failed) if not out], mask_fraction)
    output_dir = Path(output_dir)
    paths = {"mask": output_dir / f"group_space-{space}_desc-cohort_mask.nii.gz",
             "mean_gm": output_dir / f"group_space-{space}_label-GM_desc-modulatedmean_probseg.nii.gz",
             "qc": output_dir / QC_TABLE}
    with output_transaction(overwrite=overwrite) as transaction:
        transaction.save_image(str(paths["mask"]), mask.astype(np.uint8), affine)
        transaction.save_image(str(paths["mean_gm"]), mean_gm, affine)
        transaction.write_text(str(paths["qc"]), frame_text(frame, ()))
    return [str(path) for path in paths.values()]


def group_outputs_of(output_dir: str | os.PathLike, mask_fraction: Optional[float] = None,
                     ratings: Optional[dict] = None) -> list[str]:
    """The group step of a cohort output dataset: nothing when no subject was preprocessed."""
    records = find_records(sorted(Path(output_dir).glob("sub-*")))  # not the runner's own work folders
    if not records:
        return []
    # the records themselves, not their folders: the subject tree is walked once
    written = write_preprocess_group(records, output_dir, mask_fraction or MASK_FRACTION, overwrite=True,
                                     ratings=ratings)
    return sorted(os.path.basename(path) for path in written)
