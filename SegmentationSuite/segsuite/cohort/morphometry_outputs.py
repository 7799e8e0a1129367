"""The morphometry step of a cohort run (``segsuite bids ... participant --morphometry``) and of its
group level, in BIDS-Derivatives naming.

Per image, into the subject's staging folder (so it commits with the segmentation, all or nothing):
``<key>[_res-1mm]_label-{GM,WM,CSF}_probseg.nii.gz``, ``<key>[_res-1mm]_dseg.nii.gz`` (fMRIPrep's values,
with its ``_dseg.tsv``), ``<key>[_res-1mm]_desc-brain_mask.nii.gz``, each with a JSON sidecar, and the
metrics table ``<key>[_res-1mm]_morphometry.tsv`` (+ .json with each column's definition), the
FreeSurfer-style ``_aseg.stats`` and the QC mosaic. ``res-1mm`` when the maps stay on SynthSeg's 1 mm
grid (the posteriors') and the input is on another. The group level gathers the tables into the
TIV-corrected group tables, the flags and ranking and ``group_qc_report.html`` at the dataset root.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..result import SegmentationResult
from .index import CohortItem

MORPHOMETRY_ENGINE = "synthseg"  # the morphometry of a cohort is SynthSeg's: its ratings are SynthSeg's
RESOLUTION = "1 mm isotropic (SynthSeg's working grid, aligned with the input)"


def _same_grid(shape, affine, other_shape, other_affine) -> bool:
    return tuple(shape) == tuple(other_shape) and np.allclose(affine, other_affine, atol=1e-4)


def write_morphometry_derivatives(folder: Path, item: CohortItem, seg: str, result: SegmentationResult,
                                  kept=()) -> list[str]:
    """Compute the morphometry of ``result`` on the item's image and stage its files in ``folder``
    (the staging copy of sub-X[/ses-Y]); returns the file names written. ``kept``: the paths
    (relative to sub-X[/ses-Y]) other engines committed there."""
    from ..image import OutputTransaction, load_volume
    from ..morphometry.subject import compute_morphometry, write_morphometry
    from .derivatives import _json_text

    volume = load_volume(item.path)
    morphometry = compute_morphometry(volume, result, subject=item.key)
    on_input_grid = _same_grid(morphometry.dseg.shape, morphometry.affine, np.asarray(volume.data).shape[:3],
                               volume.affine)
    prefix = item.key if on_input_grid else f"{item.key}_res-1mm"
    anat = Path(folder) / "anat"
    reference = {"Sources": [item.source_uri], "SpatialReference": item.source_uri}
    if not on_input_grid:
        reference["Resolution"] = RESOLUTION
    provenance = {"segmentation": f"seg-{seg}", "tissue_maps_from": morphometry.provenance["tissue_maps_from"],
                  "tissue_table": "segsuite/data/tissue_classes.tsv (sMRIPrep's aseg-to-tissue classes)"}
    # an engine that gives a brain mask of its own (the SAMSEG filter's) keeps desc-brain_mask
    own_mask = not (anat / f"{prefix}_desc-brain_mask.nii.gz").exists() and \
        f"anat/{prefix}_desc-brain_mask.nii.gz" not in set(kept)
    with OutputTransaction(overwrite=False) as transaction:
        paths = write_morphometry(morphometry, str(anat), prefix, result=result,
                                  participant_id=f"sub-{item.participant}",
                                  session_id=f"ses-{item.session}" if item.session else "", transaction=transaction,
                                  brain_mask=own_mask)
        sidecars = {f"probseg_{name}": dict(reference, Description=(
            f"{name} probability: the sum of the seg-{seg} posteriors of the labels the tissue table gives {name}"),
            SegSuite=provenance) for name in ("GM", "WM", "CSF")}
        sidecars["dseg"] = dict(reference, Description="3-class tissue segmentation with fMRIPrep's values (1 GM, "
                                "2 WM, 3 CSF): the most probable of background, GM, WM and CSF", SegSuite=provenance)
        sidecars["brain_mask"] = dict(reference, Type="Brain", Description=(
            "brain (intracranial) mask: the voxels whose most probable class is GM, WM or CSF"), SegSuite=provenance)
        if not own_mask:
            del sidecars["brain_mask"]
        for kind, content in sidecars.items():
            paths[f"{kind}_sidecar"] = paths[kind][: -len(".nii.gz")] + ".json"
            transaction.write_text(paths[f"{kind}_sidecar"], _json_text(content))
    return sorted(os.path.basename(path) for path in paths.values())


def subject_tables(output_dir: str | os.PathLike) -> list[Path]:
    """The per-image morphometry tables of a cohort output dataset."""
    from ..morphometry.subject import TABLE_SUFFIX

    return sorted(path for subject in sorted(Path(output_dir).glob("sub-*")) if subject.is_dir()
                  for path in subject.rglob(f"*_{TABLE_SUFFIX}"))


@dataclass
class MorphometryGroup:
    names: list = field(default_factory=list)   # the files written
    tables: object = None                        # MorphometryGroupTables, or None without morphometry


def write_morphometry_group(output_dir: str | os.PathLike, qc_threshold: Optional[float] = None,
                            ratings: Optional[dict] = None) -> MorphometryGroup:
    """The morphometry group step over a cohort output dataset: the group tables (wide, TIV-corrected
    both ways with the residual fit, quality, the flags and worst-first ranking) at the dataset root;
    the subjects rated fail for SynthSeg in ``ratings`` are left out of the volumes and fits. Returns
    the names written and the tables (none when no subject has a morphometry table); the review
    report (cohort/review.py) shows them."""
    from ..morphometry.group import QC_THRESHOLD, build_group_tables, read_subject_tables, write_morphometry_group_tables

    tables_paths = subject_tables(output_dir)
    if not tables_paths:
        return MorphometryGroup()
    frame = read_subject_tables(tables_paths)
    tables = build_group_tables(frame, QC_THRESHOLD if qc_threshold is None else qc_threshold, ratings=ratings,
                                engine=MORPHOMETRY_ENGINE)
    for warning in tables.warnings:
        print(f"segsuite bids group: warning: {warning}", file=sys.stderr)
    written = write_morphometry_group_tables(tables, str(output_dir), overwrite=True)
    return MorphometryGroup(sorted(os.path.basename(path) for path in written.values()), tables)
