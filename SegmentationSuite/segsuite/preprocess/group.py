"""Group level of the preprocessing: the cohort mask, the mean modulated GM map and the per-subject
registration/bias QC table, from the ``*_desc-preproc_qc.json`` records ``write_preprocessed`` leaves
beside each subject's outputs. The maps are summed one subject at a time (memory of two template grids).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import InputError

RECORD_SUFFIX = "_desc-preproc_qc.json"
MASK_FRACTION = 0.5  # a template voxel is in the cohort mask when at least this fraction of subjects have brain there
QC_COLUMNS = ("tpm_overlap_gm", "tpm_overlap_wm", "tpm_overlap_csf", "inu_range", "inu_med", "jacobian_min",
              "native_GM_mm3", "modulated_GM_mm3")


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


def cohort_maps(records: list[Path], mask_fraction: float = MASK_FRACTION):
    """(space, affine, cohort mask, mean modulated GM, QC rows) of the subjects' records."""
    import nibabel as nib

    if not records:
        raise InputError("no *_desc-preproc_qc.json found: run segsuite preprocess on the subjects first")
    if not 0 < mask_fraction <= 1:
        raise InputError(f"the mask fraction must be in (0, 1], got {mask_fraction}")
    spaces, rows = set(), []
    mask_count = gm_sum = affine = None
    for record in records:
        prefix, space, files = _subject_files(record)
        spaces.add(space)
        if len(spaces) > 1:
            raise InputError(f"the records are in several template spaces ({', '.join(sorted(spaces))}): "
                             "give the folders of one space")
        mask_image, gm_image = nib.load(files["mask"]), nib.load(files["gm"])
        if affine is None:
            affine, shape = mask_image.affine, mask_image.shape
            mask_count = np.zeros(shape, dtype=np.int32)
            gm_sum = np.zeros(shape, dtype=np.float64)
        if mask_image.shape != shape or gm_image.shape != shape or not np.allclose(gm_image.affine, affine, atol=1e-4):
            raise InputError(f"{files['gm']} is on another template grid than the first subject's: give "
                             "outputs of one --resolution")
        mask_count += np.asarray(mask_image.dataobj) > 0
        gm_sum += np.asarray(gm_image.dataobj, dtype=np.float64)
        metrics = files["record"].get("metrics", {})
        rows.append({"subject": prefix, "template": space,
                     **{column: metrics.get(column, float("nan")) for column in QC_COLUMNS}})
    mask = mask_count >= mask_fraction * len(records)
    return spaces.pop(), affine, mask, (gm_sum / len(records)).astype(np.float32), rows


def write_preprocess_group(folders: Iterable[str | os.PathLike], output_dir: str | os.PathLike,
                           mask_fraction: float = MASK_FRACTION, overwrite: bool = False) -> list[str]:
    """Write ``group_space-<S>_desc-cohort_mask.nii.gz``, ``group_space-<S>_label-GM_desc-modulatedmean_probseg.nii.gz``
    and ``group_desc-preproc_qc.tsv`` into ``output_dir``; returns their paths."""
    import pandas as pd

    from ..image import output_transaction

    space, affine, mask, mean_gm, rows = cohort_maps(find_records(folders), mask_fraction)
    output_dir = Path(output_dir)
    paths = {"mask": output_dir / f"group_space-{space}_desc-cohort_mask.nii.gz",
             "mean_gm": output_dir / f"group_space-{space}_label-GM_desc-modulatedmean_probseg.nii.gz",
             "qc": output_dir / "group_desc-preproc_qc.tsv"}
    with output_transaction(overwrite=overwrite) as transaction:
        transaction.save_image(str(paths["mask"]), mask.astype(np.uint8), affine)
        transaction.save_image(str(paths["mean_gm"]), mean_gm, affine)
        transaction.write_text(str(paths["qc"]), pd.DataFrame(rows).to_csv(sep="\t", index=False, na_rep="n/a"))
    return [str(path) for path in paths.values()]


def group_outputs_of(output_dir: str | os.PathLike, mask_fraction: Optional[float] = None) -> list[str]:
    """The group step of a cohort output dataset: nothing when no subject was preprocessed."""
    records = find_records([output_dir])
    if not records:
        return []
    written = write_preprocess_group([output_dir], output_dir, mask_fraction or MASK_FRACTION, overwrite=True)
    return sorted(os.path.basename(path) for path in written)
