"""BIDS derivatives: names, sidecars, tables, and the all-or-nothing commit of one subject.

Every image's outputs are written into a staging folder inside the output dataset
(``.staging/``) and renamed into place as one folder (sub-X or sub-X/ses-Y): a killed run leaves
either the complete folder or nothing. A ``<key>_segsuite.json`` in the folder records the
provenance fingerprint (software version, model sha256, options); a later run skips a folder
whose fingerprint matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__
from ..image import OutputTransaction
from ..labels import LabelTable
from ..result import SegmentationResult
from .index import CohortItem

BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/SegmentationSuite/SegmentationSuite"
STAGING = ".staging"
PROVENANCE_SUFFIX = "_segsuite.json"
# What BIDS does not define (yet): per-subject volume/QC tables, group tables, logs, the work folder.
BIDSIGNORE = ["logs/", "work/", "work", ".staging/", "*_segsuite.json", "*_morph.tsv", "*_qc.tsv", "group_*.tsv"]
# --morphometry (cohort/morphometry_outputs.py): metric tables, QC mosaics, aseg.stats, the QC report
BIDSIGNORE += ["*_morphometry.tsv", "*_morphometry.json", "*_mosaic.webp", "*_aseg.stats", "group_qc_report.html"]
# --preprocess (cohort/preprocess_outputs.py): the per-subject QC record
BIDSIGNORE += ["*_desc-preproc_qc.json"]
PARC_TO_CORTEX = ((1000, 1999, 3), (2000, 2999, 42))  # DK parcels back to SynthSeg's cortex labels


def fingerprint(models: dict) -> str:
    """sha256 of what decides the outputs: software version, each model's weights and options."""
    text = json.dumps({"software": __version__, "models": models}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def provenance_path(output_dir: Path, item: CohortItem) -> Path:
    return Path(output_dir) / item.folder / f"{item.key}{PROVENANCE_SUFFIX}"


def is_complete(output_dir: Path, item: CohortItem, expected: str) -> bool:
    """True when this image's folder was committed by a run with the same fingerprint."""
    try:
        recorded = json.loads(provenance_path(output_dir, item).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded.get("fingerprint") == expected


def _json_text(content) -> str:
    from ..result_io import _json_safe

    return json.dumps(_json_safe(content), indent=2) + "\n"


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    from ..image import make_image

    image = make_image(data, affine, str(path))
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def cortex_labels(parcellated: np.ndarray) -> np.ndarray:
    """SynthSeg's segmentation from its parcellated one (parcels are cortex voxels relabelled)."""
    labels = parcellated.copy()
    for low, high, cortex in PARC_TO_CORTEX:
        labels[(parcellated >= low) & (parcellated <= high)] = cortex
    return labels


def _morph_text(result: SegmentationResult) -> str:
    names = {label.name: label.value for label in result.label_table}
    lines = ["index\tname\tvolume-mm3"]
    for name, volume in result.volumes.items():
        index = names.get(name, "n/a")
        lines.append(f"{index}\t{name}\t{'n/a' if volume is None or not np.isfinite(volume) else repr(float(volume))}")
    return "\n".join(lines) + "\n"


def _qc_text(result: SegmentationResult) -> str:
    lines = ["name\tscore"]
    for name, value in {**result.qc, **result.measures}.items():
        lines.append(f"{name}\t{'n/a' if value is None or not np.isfinite(value) else repr(float(value))}")
    return "\n".join(lines) + "\n"


def write_segmentation(folder: Path, item: CohortItem, seg: str, result: SegmentationResult,
                       model_entry: dict, posteriors: bool = False) -> list[str]:
    """The files of one engine's result for one image, into ``folder`` (the staging copy of sub-X[/ses-Y])."""
    anat = folder / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    stem = anat / f"{item.key}_seg-{seg}"
    written = []
    sidecar = {"Sources": [item.source_uri], "SpatialReference": item.source_uri,
               "SegSuite": {"model": model_entry, "provenance": result.provenance}}
    labels = np.asarray(result.labels, dtype=np.int32)
    maps = {seg: labels}
    if seg == "synthseg" and result.provenance.get("options", {}).get("parc"):
        maps = {"synthseg": cortex_labels(labels), "synthsegparc": labels}
    for name, array in maps.items():
        path = anat / f"{item.key}_seg-{name}_dseg.nii.gz"
        _save_nifti(path, array, result.affine)
        (path.parent / path.name.replace(".nii.gz", ".json")).write_text(_json_text(sidecar), encoding="utf-8")
        written += [path.name, path.name.replace(".nii.gz", ".json")]
    if result.volumes:
        Path(f"{stem}_morph.tsv").write_text(_morph_text(result), encoding="utf-8")
        written.append(f"{stem.name}_morph.tsv")
    if result.qc or result.measures:
        Path(f"{stem}_qc.tsv").write_text(_qc_text(result), encoding="utf-8")
        written.append(f"{stem.name}_qc.tsv")
    if posteriors and result.posteriors is not None:
        table = result.label_table
        channels = result.posterior_labels or table.values
        path = Path(f"{stem}_res-1mm_probseg.nii.gz") if not np.allclose(result.posteriors_affine, result.affine) \
            else Path(f"{stem}_probseg.nii.gz")
        _save_nifti(path, np.asarray(result.posteriors, dtype=np.float32), result.posteriors_affine)
        probseg_sidecar = dict(sidecar, LabelMap={str(i): table.get(v).name if table.get(v) else f"Label-{v}"
                                                  for i, v in enumerate(channels)})
        if "res-1mm" in path.name:
            probseg_sidecar["Resolution"] = "1 mm isotropic (SynthSeg's working grid, aligned with the input)"
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(_json_text(probseg_sidecar), encoding="utf-8")
        written += [path.name, path.name.replace(".nii.gz", ".json")]
    if "brain_mask" in result.images:
        path = anat / f"{item.key}_desc-brain_mask.nii.gz"
        _save_nifti(path, np.asarray(result.images["brain_mask"], dtype=np.uint8), result.affine)
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
            _json_text({"Sources": [item.source_uri], "Type": "Brain"}), encoding="utf-8")
        written += [path.name, path.name.replace(".nii.gz", ".json")]
    return written


class SubjectCommit:
    """Stage one image's folder inside the output dataset, then rename it into place as a whole."""

    def __init__(self, output_dir: str | os.PathLike, item: CohortItem):
        self.output_dir = Path(output_dir)
        self.item = item
        staging_root = self.output_dir / STAGING
        staging_root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{item.key}-", dir=staging_root))

    def commit(self, provenance: dict) -> Path:
        (self.folder / f"{self.item.key}{PROVENANCE_SUFFIX}").write_text(_json_text(provenance), encoding="utf-8")
        target = self.output_dir / self.item.folder
        target.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if target.exists():  # --overwrite, or a stale folder from other options: replaced only now
            old = Path(tempfile.mkdtemp(prefix=f"{self.item.key}-old-", dir=self.output_dir / STAGING))
            os.rename(target, old / "previous")
        try:
            os.rename(self.folder, target)
        except BaseException:
            if old is not None:
                os.rename(old / "previous", target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def clear_staging(output_dir: str | os.PathLike) -> None:
    """Remove what a killed run left in the staging folder (never a committed output)."""
    shutil.rmtree(Path(output_dir) / STAGING, ignore_errors=True)


def label_table_text(table: LabelTable) -> str:
    """A BIDS dseg.tsv: index, name, abbreviation, color."""
    lines = ["index\tname\tabbreviation\tcolor"]
    for label in table:
        abbreviation = label.name.replace("Left-", "L-").replace("Right-", "R-").replace("ctx-lh-", "lh-").replace("ctx-rh-", "rh-")
        red, green, blue = label.color
        lines.append(f"{label.value}\t{label.name}\t{abbreviation}\t#{red:02x}{green:02x}{blue:02x}")
    return "\n".join(lines) + "\n"


def dataset_description(source: str, source_uri: str, models: dict, links: Optional[dict] = None) -> dict:
    generated = [{"Name": "SegmentationSuite", "Version": __version__, "CodeURL": CODE_URL}]
    for name, entry in models.items():
        generated.append({"Name": entry.get("model") or name, "Version": str(entry.get("version", __version__)),
                          "Description": f"segsuite engine {name}; weights sha256 "
                                         + ", ".join(str(s) for s in entry.get("sha256", [])) or "none"})
    links = {name: Path(path).resolve().as_uri() for name, path in (links or {}).items()}  # e.g. samseg inputs
    return {"Name": f"SegmentationSuite segmentations of {Path(source).name}", "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative", "GeneratedBy": generated,
            "SourceDatasets": [{"URL": source_uri}] + [{"URL": uri} for uri in links.values()],
            "DatasetLinks": {"raw": source_uri, **links}}


def write_dataset_files(output_dir: str | os.PathLike, source: str, models: dict,
                        label_tables: dict[str, LabelTable], overwrite: bool = True,
                        links: Optional[dict] = None) -> None:
    """Root files (rewritten each run, atomically): dataset_description.json, seg-*_dseg.tsv, .bidsignore."""
    output_dir = Path(output_dir)
    source_uri = Path(source).resolve().as_uri()
    with OutputTransaction(overwrite=overwrite) as transaction:
        transaction.write_text(output_dir / "dataset_description.json",
                               _json_text(dataset_description(source, source_uri, models, links)))
        for seg, table in label_tables.items():
            transaction.write_text(output_dir / f"seg-{seg}_dseg.tsv", label_table_text(table))
        transaction.write_text(output_dir / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")


def write_tsv_atomic(path: str | os.PathLike, header: list[str], rows: list[list]) -> None:
    text = "\t".join(header) + "\n" + "".join("\t".join("n/a" if v is None or v == "" else str(v) for v in row) + "\n"
                                              for row in rows)
    with OutputTransaction(overwrite=True) as transaction:
        transaction.write_text(path, text)


