"""BIDS derivatives: names, sidecars, tables, and the all-or-nothing commit of each engine's outputs.

Each (image, engine) is written into a staging folder inside the output dataset (``.staging/``);
its commit builds the next version of the image's folder (sub-X or sub-X/ses-Y) beside it, the
committed files of the other engines hard-linked, and swaps it into place: a killed run leaves
every engine's outputs complete or absent, and one engine's failure keeps the others'. The
folder's ``<key>_segsuite.json`` records per engine the provenance fingerprint (software version,
model sha256, options) and its files; a later run redoes only the engines whose fingerprint
differs or that are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__
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
BIDSIGNORE += ["group_qc_report_files", "*_ratings.tsv"]  # the review report's views (the folder itself: the validator reports it, not its files); exported ratings
# --preprocess (cohort/preprocess_outputs.py): the per-subject QC record
BIDSIGNORE += ["*_desc-preproc_qc.json"]
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


def engine_fingerprints(entries: dict) -> dict[str, str]:
    """{model name: fingerprint of that engine alone}: each engine's outputs are redone on their own."""
    return {name: fingerprint({name: {"options": entry["options"], "sha256": entry["sha256"]}})
            for name, entry in entries.items()}


def provenance_path(output_dir: Path, item: CohortItem) -> Path:
    return Path(output_dir) / item.folder / f"{item.key}{PROVENANCE_SUFFIX}"


def read_provenance(output_dir: Path, item: CohortItem) -> dict:
    try:
        recorded = json.loads(provenance_path(output_dir, item).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def engine_is_complete(record: dict, folder: Path, name: str, expected: str) -> bool:
    """True when ``name``'s outputs in ``folder`` were committed with the fingerprint ``expected``."""
    entry = (record.get("engines") or {}).get(name)
    if not isinstance(entry, dict) or entry.get("fingerprint") != expected:
        return False
    return all((folder / relative).is_file() for relative in entry.get("files", []))


def missing_engines(output_dir: Path, item: CohortItem, expected: dict[str, str]) -> list[str]:
    """The engines of ``expected`` ({name: fingerprint}) whose outputs for this image are missing or stale."""
    record = read_provenance(output_dir, item)
    folder = Path(output_dir) / item.folder
    return [name for name, value in expected.items() if not engine_is_complete(record, folder, name, value)]


def is_complete(output_dir: Path, item: CohortItem, expected: dict[str, str]) -> bool:
    """True when every engine's outputs for this image match their fingerprints."""
    return not missing_engines(output_dir, item, expected)


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
    from ..table_values import volume_text

    names = {label.name: label.value for label in result.label_table}
    lines = ["index\tname\tvolume-mm3"]
    for name, volume in result.volumes.items():
        index = names.get(name, "n/a")
        lines.append(f"{index}\t{name}\t{volume_text(volume)}")
    return "\n".join(lines) + "\n"


CONFIDENCE_PREFIX = "confidence-"  # ScLimbic's mean posterior per structure, beside its z-scores


def _qc_text(result: SegmentationResult) -> str:
    from ..table_values import score_text

    lines = ["name\tscore"]
    confidences = {f"{CONFIDENCE_PREFIX}{name}": value for name, value in result.tables.get("confidences", {}).items()}
    for name, value in {**result.qc, **result.measures, **confidences}.items():
        lines.append(f"{name}\t{score_text(None if value is None else float(value))}")
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
    if result.qc or result.measures or result.tables.get("confidences"):
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


def _files_under(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # committed files are never rewritten in place: sharing them is safe
    except OSError:
        shutil.copy2(source, target)


class SubjectCommit:
    """One image's folder, committed one engine at a time.

    ``stage()`` gives an empty folder for one engine's files; ``commit_engine`` makes the next
    version of sub-X[/ses-Y] (the other engines' files hard-linked, this engine's old files left
    out, its new ones moved in, the provenance record updated) and swaps it into place. A file
    name another engine wrote before passes to the engine that wrote it last.
    """

    def __init__(self, output_dir: str | os.PathLike, item: CohortItem):
        self.output_dir = Path(output_dir)
        self.item = item
        self.target = self.output_dir / item.folder
        self.staging = self.output_dir / STAGING
        self.record = read_provenance(self.output_dir, item)

    def _new_folder(self, kind: str) -> Path:
        # os.mkdir, not mkdtemp: the folder that becomes sub-X gets the umask's mode, not 0700
        self.staging.mkdir(parents=True, exist_ok=True)
        folder = self.staging / f"{self.item.key}-{kind}-{uuid.uuid4().hex[:12]}"
        folder.mkdir()
        return folder

    def stage(self) -> Path:
        return self._new_folder("stage")

    def engine_files(self, exclude: str = "") -> set[str]:
        """The committed files of every engine but ``exclude``."""
        return {f for name, entry in (self.record.get("engines") or {}).items() if name != exclude
                for f in entry.get("files", [])}

    def is_complete(self, name: str, expected: str) -> bool:
        return engine_is_complete(self.record, self.target, name, expected)

    def commit_engine(self, name: str, staged: Optional[Path], entry: dict, model: Optional[dict] = None) -> Path:
        """Commit ``staged`` (None: no files, e.g. a model skipped for want of input) as ``name``'s outputs."""
        record = json.loads(json.dumps(self.record)) if self.record else {}
        record.pop("fingerprint", None)  # a whole-folder record of an older version: per engine now
        engines = record.setdefault("engines", {})
        new_files = _files_under(staged) if staged is not None else []
        dropped = set(engines.get(name, {}).get("files", [])) | set(new_files)
        provenance_name = f"{self.item.key}{PROVENANCE_SUFFIX}"
        folder = self._new_folder("next")
        if self.target.is_dir():
            for relative in _files_under(self.target):
                if relative not in dropped and relative != provenance_name:
                    _link_or_copy(self.target / relative, folder / relative)
        for relative in new_files:
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged / relative, folder / relative)
        for other, other_entry in engines.items():
            if other != name:
                other_entry["files"] = [f for f in other_entry.get("files", []) if f not in set(new_files)]
        engines[name] = dict(entry, files=new_files)
        if model is not None:
            record.setdefault("models", {})[name] = model
        record["input"] = self.item.path
        record["seconds"] = round(sum(float(e.get("seconds", 0.0)) for e in engines.values()), 3)
        record["notes"] = [note for e in engines.values() for note in e.get("notes", [])]
        (folder / provenance_name).write_text(_json_text(record), encoding="utf-8")
        self._swap(folder)
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        self.record = record
        return self.target

    def _swap(self, folder: Path) -> None:
        """``folder`` becomes the image's folder; the previous one waits under .staging/swap-* (with its
        provenance record, so clear_staging can put it back if the process dies between the renames)."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if not self.target.exists():
            os.rename(folder, self.target)
            return
        old = self.staging / f"swap-{uuid.uuid4().hex[:12]}" / self.item.folder
        old.parent.mkdir(parents=True)
        os.rename(self.target, old)
        try:
            os.rename(folder, self.target)
        except BaseException:
            os.rename(old, self.target)
            raise
        shutil.rmtree(self.staging / old.relative_to(self.staging).parts[0], ignore_errors=True)

    @staticmethod
    def discard(folder: Optional[Path]) -> None:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def clear_staging(output_dir: str | os.PathLike) -> None:
    """Remove what a killed run left in the staging folder (never a committed output): a folder
    moved aside by a commit that died before its replacement was renamed in goes back first."""
    staging = Path(output_dir) / STAGING
    for record in list(staging.glob(f"swap-*/**/*{PROVENANCE_SUFFIX}")):  # listed first: the loop moves folders
        relative = record.parent.relative_to(staging).parts[1:]
        target = Path(output_dir).joinpath(*relative)
        if relative and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(record.parent, target)
    shutil.rmtree(staging, ignore_errors=True)


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
              f"- `{RUNNER_DIR}/logs/failed.tsv`: one row per (image, model) that failed, with the reason;",
              f"  `{RUNNER_DIR}/` holds the run's own files and is no part of the derivatives.", "", "## Models", ""]
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


