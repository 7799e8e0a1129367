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
from ..faults import give_umask_mode
from ..image import OutputTransaction
from ..labels import LabelTable
from ..result import SegmentationResult
from .index import CohortItem

BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/SegmentationSuite/SlicerSegmentationSuite"   # as CMakeLists.txt and the index
STAGING = ".staging"
PROVENANCE_SUFFIX = "_segsuite.json"
# The runner's own files (index cache, engine-call logs, failure logs and tracebacks) live in a dot
# folder: PyBIDS never indexes dot paths, bids2table reads only sub-* folders, the validator skips them.
RUNNER_DIR = ".segsuite"
# What BIDS does not define (yet): per-subject volume/QC tables, group tables (the dot folders are
# listed too, for validators that do not skip them by themselves).
BIDSIGNORE = [f"{RUNNER_DIR}/", f"{STAGING}/", "*_segsuite.json", "*_morph.tsv", "*_qc.tsv", "group_*.tsv"]
# --morphometry (cohort/morphometry_outputs.py): metric tables, QC mosaics, aseg.stats, the QC report
BIDSIGNORE += ["*_morphometry.tsv", "*_morphometry.json", "*_mosaic.webp", "*_aseg.stats", "group_qc_report.html"]
PARC_TO_CORTEX = ((1000, 1999, 3), (2000, 2999, 42))  # DK parcels back to SynthSeg's cortex labels


def logs_dir(output_dir: str | os.PathLike) -> Path:
    """failed.tsv, skipped.tsv and the per-image tracebacks."""
    return Path(output_dir) / RUNNER_DIR / "logs"


def default_work_dir(output_dir: str | os.PathLike) -> Path:
    """The index cache and the model-load/engine-call logs when -w is not given."""
    return Path(output_dir) / RUNNER_DIR / "work"


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
        give_umask_mode(self.folder)  # renamed into place as sub-X: readable as the umask says

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


# The root sidecar of each seg-<name>_dseg.tsv; its Description is inherited by every subject's
# seg-<name>_dseg image (BIDS inheritance), which keeps its own SpatialReference.
SEG_DESCRIPTIONS = {
    "synthseg": "SynthSeg whole-brain segmentation (FreeSurfer aseg labels), on the T1w image's grid",
    "synthsegparc": "SynthSeg segmentation with the cortex parcellated (Desikan-Killiany labels 1001-2035)",
    "sclimbic": "ScLimbic segmentation of the limbic structures (FreeSurfer's mri_sclimbic_seg labels)",
    "scepi": "sc_epi spinal cord segmentation of the mean EPI of a BOLD series",
    "samseg": "SAMSEG segmentation with the non-brain labels removed",
}


def readme_text(source: str, models: dict, label_tables: dict) -> str:
    lines = [f"# SegmentationSuite segmentations of {Path(source).name}", "",
             f"BIDS derivatives written by `segsuite bids` (SegmentationSuite {__version__}, {CODE_URL}).",
             f"Source dataset: {Path(source).resolve()}.", "", "## Contents", ""]
    for seg in label_tables:
        lines.append(f"- `sub-*/[ses-*/]anat/*_seg-{seg}_dseg.nii.gz`: "
                     f"{SEG_DESCRIPTIONS.get(seg, f'{seg} segmentation')}; labels in `seg-{seg}_dseg.tsv`.")
    lines += ["- `*_morph.tsv` and `*_qc.tsv` beside them: volumes (mm3) and quality scores per structure;",
              "  `group_*.tsv` gather them over the dataset (`segsuite bids ... group`).",
              "- `<key>_segsuite.json` in each subject or session folder: the software version, the models'",
              "  weight sha256 and the options that made it (a later run skips folders that match).",
              f"- `{RUNNER_DIR}/logs/failed.tsv`: images that failed, with the reason; `{RUNNER_DIR}/` holds the",
              "  run's own files and is no part of the derivatives.", "", "## Models", ""]
    for name, entry in models.items():
        sha = ", ".join(str(s) for s in entry.get("sha256", [])) or "none"
        lines.append(f"- {name}: {entry.get('model') or name}, weights sha256 {sha}")
    return "\n".join(lines) + "\n"


def write_dataset_files(output_dir: str | os.PathLike, source: str, models: dict,
                        label_tables: dict[str, LabelTable], overwrite: bool = True,
                        links: Optional[dict] = None) -> None:
    """Root files (rewritten each run, atomically): dataset_description.json, README.md, seg-*_dseg.tsv
    with their .json (Description), .bidsignore."""
    output_dir = Path(output_dir)
    source_uri = Path(source).resolve().as_uri()
    with OutputTransaction(overwrite=overwrite) as transaction:
        transaction.write_text(output_dir / "dataset_description.json",
                               _json_text(dataset_description(source, source_uri, models, links)))
        transaction.write_text(output_dir / "README.md", readme_text(source, models, label_tables))
        for seg, table in label_tables.items():
            transaction.write_text(output_dir / f"seg-{seg}_dseg.tsv", label_table_text(table))
            transaction.write_text(output_dir / f"seg-{seg}_dseg.json", _json_text(
                {"Description": SEG_DESCRIPTIONS.get(seg, f"{seg} segmentation") + " (SegmentationSuite)"}))
        transaction.write_text(output_dir / ".bidsignore", "\n".join(dict.fromkeys(BIDSIGNORE)) + "\n")


def write_tsv_atomic(path: str | os.PathLike, header: list[str], rows: list[list]) -> None:
    text = "\t".join(header) + "\n" + "".join("\t".join("n/a" if v is None or v == "" else str(v) for v in row) + "\n"
                                              for row in rows)
    with OutputTransaction(overwrite=True) as transaction:
        transaction.write_text(path, text)


