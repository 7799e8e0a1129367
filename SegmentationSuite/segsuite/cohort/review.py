"""The review report and the ratings over a cohort output dataset (``segsuite bids ... group``).

Per image folder and engine the views come from the committed outputs: SynthSeg's and ScLimbic's
dseg over the T1w the folder was made from (its ``_segsuite.json`` input), sc_epi's cord over the mean
EPI of each BOLD series, the SAMSEG filter's brain mask over the T1w with SAMSEG's labels before the
filter beside it (from the ``samseg`` dataset link). The automatic rules per (subject, engine):
SynthSeg QC scores below the threshold, ScLimbic |z| above the limit, sc_epi cord volume and the SAMSEG
filter's brain-mask volume beyond the MAD limit of the cohort, segsuite preprocess's registration flags
(preprocess.group); the morphometry flags join them. A preprocessed image also shows its T1w in template
space under the template's GM/WM outlines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

import numpy as np

from ..morphometry.group import MAD_LIMIT, QC_THRESHOLD, Z_LIMIT
from ..review.views import ViewSource

ENGINE_OF_SEG = {"synthseg": "synthseg", "sclimbic": "sclimbic", "scepi": "scepi", "samseg": "samseg"}
NOT_ANALYSIS = ("participant_id", "session_id", "entities")


def read_dseg_tsv(path: Path):
    """A BIDS seg-*_dseg.tsv (index, name, ..., color #rrggbb) as a LabelTable, or None."""
    from ..labels import Label, LabelTable

    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    labels = []
    for line in lines[1:]:
        cells = dict(zip(header, line.split("\t")))
        colour = cells.get("color", "#808080").lstrip("#")
        try:
            labels.append(Label(int(cells["index"]), cells["name"], tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))))
        except (KeyError, ValueError):
            continue
    return LabelTable(labels) if labels else None


def _dataset_links(output_dir: Path) -> dict[str, Path]:
    try:
        description = json.loads((output_dir / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    links = {}
    for name, uri in (description.get("DatasetLinks") or {}).items():
        parsed = urlparse(str(uri))
        if parsed.scheme == "file":
            links[name] = Path(unquote(parsed.path))
    return links


def _resolve_bids_uri(uri: str, output_dir: Path, links: dict) -> Optional[Path]:
    """bids:<dataset>:<relative path> -> a path (the empty dataset name is this one)."""
    if not uri.startswith("bids:"):
        return None
    name, _, relative = uri[len("bids:"):].partition(":")
    root = output_dir if name == "" else links.get(name)
    return None if root is None else root / relative


def _ids(folder: Path, output_dir: Path) -> tuple[str, str]:
    parts = folder.relative_to(output_dir).parts
    return parts[0], (parts[1] if len(parts) > 1 and parts[1].startswith("ses-") else "")


def image_folders(output_dir: Path) -> list[Path]:
    """sub-X and sub-X/ses-Y folders that hold a committed run (a ``*_segsuite.json``)."""
    from ..cohort.derivatives import PROVENANCE_SUFFIX

    folders = []
    for subject in sorted(output_dir.glob("sub-*")):
        if not subject.is_dir():
            continue
        for candidate in [subject] + sorted(subject.glob("ses-*")):
            if any(candidate.glob(f"*{PROVENANCE_SUFFIX}")):
                folders.append(candidate)
    return folders


def view_sources(output_dir: str | os.PathLike, scratch: Optional[Path] = None) -> tuple[list[ViewSource], dict]:
    """Every (image folder, engine) with views to show, and {(participant, session): [missing notes]}.

    ``scratch``: a folder for the template outlines of segsuite preprocess's views (none: no such views)."""
    from ..cohort.derivatives import PROVENANCE_SUFFIX

    output_dir = Path(output_dir)
    outlines: dict = {}
    links = _dataset_links(output_dir)
    tables = {seg: read_dseg_tsv(output_dir / f"seg-{seg}_dseg.tsv") for seg in ENGINE_OF_SEG}
    sources, missing = [], {}
    for folder in image_folders(output_dir):
        participant, session = _ids(folder, output_dir)
        provenance = json.loads(next(folder.glob(f"*{PROVENANCE_SUFFIX}")).read_text(encoding="utf-8"))
        t1w = provenance.get("input")
        t1w = t1w if t1w and os.path.isfile(t1w) else None
        anat, func = folder / "anat", folder / "func"
        for seg in ("synthseg", "sclimbic"):
            for dseg in sorted(anat.glob(f"*_seg-{seg}_dseg.nii.gz")):
                if t1w is None:
                    missing.setdefault((participant, session), []).append(f"{seg}: the T1w {provenance.get('input')} is gone")
                    continue
                sources.append(ViewSource(participant, session, seg, t1w, str(dseg), title=f"{seg} over the T1w",
                                          style=seg, label_table=tables[seg]))
        for dseg in sorted(anat.glob("*_seg-samseg_dseg.nii.gz")):
            mask = anat / dseg.name.replace("_seg-samseg_dseg.nii.gz", "_desc-brain_mask.nii.gz")
            if t1w is None or not mask.is_file():
                missing.setdefault((participant, session), []).append("samseg: the T1w or the brain mask is gone")
                continue
            from ..labels import Label, LabelTable

            from ..review.views import BEFORE_ONLY

            sidecar = json.loads(dseg.with_name(dseg.name.replace(".nii.gz", ".json")).read_text(encoding="utf-8"))
            original = _resolve_bids_uri((sidecar.get("Sources") or [""])[0], output_dir, links)
            original = original if original is not None and original.is_file() else None
            mask_table = LabelTable([Label(1, "brain mask (after the filter)", (255, 64, 64)),
                                     Label(BEFORE_ONLY, "SAMSEG labels outside the mask (before the filter)", (64, 160, 255))])
            sources.append(ViewSource(participant, session, "samseg", t1w, str(mask), style="samseg",
                                      title="SAMSEG filter: brain mask over the head, before and after",
                                      label_table=mask_table, before=str(original) if original else None))
            if original is not None:
                sources.append(ViewSource(participant, session, "samseg", t1w, str(original), style="samseg",
                                          title="SAMSEG labels before the filter (reference)", rated=False))
        if scratch is not None:
            for record in sorted(anat.glob("*_desc-preproc_qc.json")):
                source, note = registration_source(record, participant, session, scratch, outlines)
                if source is not None:
                    sources.append(source)
                else:
                    missing.setdefault((participant, session), []).append(note)
        for dseg in sorted(func.glob("*_seg-scepi_dseg.nii.gz")):
            mean = func / dseg.name.replace("_seg-scepi_dseg.nii.gz", "_desc-mean_bold.nii.gz")
            if not mean.is_file():
                continue
            sources.append(ViewSource(participant, session, scepi_engine(dseg.name), str(mean), str(dseg),
                                      title=f"sc_epi cord over the mean EPI ({scepi_entities(dseg.name) or 'bold'})",
                                      style="scepi", label_table=tables["scepi"]))
    return sources, missing


OUTLINE_TABLE = ((1, "template GM (prior > 0.5)", (255, 200, 0)), (2, "template WM (prior > 0.5)", (0, 200, 255)))


def template_outline(space: str, resolution: float, scratch: Path) -> Path:
    """The template's GM and WM priors above 0.5 as labels 1 and 2 (their outlines are the template's
    pial and white-matter boundaries), written once into ``scratch``."""
    import nibabel as nib

    from ..preprocess.templates import load_template

    path = scratch / f"outline_space-{space}_res-{resolution:g}.nii.gz"
    if not path.is_file():
        template = load_template(space, resolution=resolution)
        labels = np.zeros(template.mask.shape, dtype=np.uint8)
        labels[(template.priors["GM"] > 0.5) & template.mask] = 1
        labels[(template.priors["WM"] > 0.5) & template.mask] = 2
        nib.save(nib.Nifti1Image(labels, template.affine), str(path))
    return path


def registration_source(record: Path, participant: str, session: str, scratch: Path,
                        outlines: dict) -> tuple[Optional[ViewSource], str]:
    """segsuite preprocess's view of one image: the subject's T1w in template space under the
    template's GM/WM outlines (a misregistration shows as outlines off the subject's boundaries)."""
    from ..labels import Label, LabelTable
    from ..preprocess.group import ENGINE, RECORD_SUFFIX
    from ..preprocess.subject import output_paths

    try:
        provenance = json.loads(record.read_text(encoding="utf-8")).get("provenance", {})
    except (OSError, ValueError) as error:
        return None, f"{ENGINE}: {record.name} cannot be read ({error})"
    space = provenance.get("template")
    resolution = float(provenance.get("template_resolution") or 1.0)
    image = output_paths(str(record.parent), record.name[:-len(RECORD_SUFFIX)], str(space))["template_preproc"]
    if not space or not os.path.isfile(image):
        return None, f"{ENGINE}: {os.path.basename(image)} is gone"
    key = (space, resolution)
    if key not in outlines:
        try:
            outlines[key] = template_outline(space, resolution, scratch)
        except Exception as error:  # a template only a TemplateFlow cache had: the other views still come
            outlines[key] = f"{ENGINE}: the template {space} cannot be loaded here to draw its outline ({error})"
    if isinstance(outlines[key], str):
        return None, outlines[key]
    table = LabelTable([Label(value, name, colour) for value, name, colour in OUTLINE_TABLE])
    return ViewSource(participant, session, ENGINE, image, str(outlines[key]), label_table=table,
                      title=f"registration: the T1w in {space} under the template's GM/WM outlines"), ""


def scepi_entities(name: str) -> str:
    """The entities between the ids and _seg-scepi (task-rest_run-1) of an sc_epi output name."""
    parts = name.split("_seg-scepi")[0].split("_")
    return "_".join(part for part in parts if not part.startswith(("sub-", "ses-")))


def scepi_engine(name: str) -> str:
    """The rated unit of one BOLD series: scepi, or scepi[<entities>] (several series in a folder)."""
    entities = scepi_entities(name)
    return f"scepi[{entities}]" if entities else "scepi"


def _rows_key(frame) -> list[tuple[str, str, str]]:
    sessions = frame["session_id"].fillna("n/a").astype(str).replace("n/a", "") if "session_id" in frame else [""] * len(frame)
    entities = frame["entities"].fillna("").astype(str) if "entities" in frame else [""] * len(frame)
    return list(zip(frame["participant_id"].astype(str), sessions, entities))


def engine_flags(cohort, qc_threshold: float, z_limit: float, mad_limit: float) -> dict:
    """{(participant, session): [(engine, reason), ...]} from the cohort's wide tables."""
    from ..morphometry.group import robust_outliers
    from ..synthseg.labels import QC_NAMES

    flags: dict = {}

    def add(key, engine, reason):
        flags.setdefault((key[0], key[1]), []).append((engine, reason))

    qc, morph = cohort.tables.get("qc", {}), cohort.tables.get("morph", {})
    if "synthseg" in qc:
        frame = qc["synthseg"]
        for column in [c for c in frame.columns if c in QC_NAMES]:
            values = frame[column].to_numpy(dtype=np.float64)
            for key, value in zip(_rows_key(frame), values):
                if np.isfinite(value) and value < qc_threshold:
                    add(key, "synthseg", f"synthseg: SynthSeg QC {column} {value:.3g} < {qc_threshold:g}")
    if "sclimbic" in qc:
        frame = qc["sclimbic"]
        for column in sclimbic_z_columns(frame):
            values = frame[column].to_numpy(dtype=np.float64)
            for key, value in zip(_rows_key(frame), values):
                if np.isfinite(value) and abs(value) > z_limit:
                    add(key, "sclimbic", f"sclimbic: |z| {column} {value:.3g} > {z_limit:g}")
    for seg, column, engine_name in (("scepi", "Spinal-Cord", None), ("samseg", "BrainMask", "samseg")):
        frame = (morph if seg == "scepi" else qc).get(seg)
        if frame is None or column not in frame.columns:
            continue
        deviation, bad = robust_outliers(frame[column].to_numpy(dtype=np.float64), mad_limit)
        for key, flagged, d, value in zip(_rows_key(frame), bad, deviation, frame[column].to_numpy(dtype=np.float64)):
            if flagged:
                engine = engine_name or (f"scepi[{key[2]}]" if key[2] else "scepi")
                add(key, engine, f"{engine}: {column} volume {value:.4g} mm3 beyond {mad_limit:g} MADs ({d:+.1f})")
    preprocess = getattr(cohort, "preprocess", None)
    if preprocess is not None:
        from ..preprocess.group import ENGINE as PREPROCESS, FLAGS_COLUMN

        for key, reasons in zip(_rows_key(preprocess), preprocess[FLAGS_COLUMN].fillna("").astype(str)):
            for reason in filter(None, reasons.split("; ")):
                add(key, PREPROCESS, reason)
    return flags


def sclimbic_z_columns(frame) -> list[str]:
    """The z-score columns of ScLimbic's wide qc table (every structure; not eTIV or confidences)."""
    from .derivatives import CONFIDENCE_PREFIX

    return [c for c in frame.columns if c not in NOT_ANALYSIS and c != "eTIV" and not c.startswith(CONFIDENCE_PREFIX)]


def apply_ratings_to_cohort(cohort, ratings: dict, flags: dict) -> dict:
    """The cohort's wide tables with the failed (subject, engine) rows' analysis columns n/a and the
    review columns; {table: {seg: frame}} like CohortTables.tables."""
    from ..review.ratings import mark_frame

    marked: dict = {}
    for table, by_seg in cohort.tables.items():
        for seg, frame in by_seg.items():
            keys = _rows_key(frame)
            if seg == "scepi":  # one rated unit per BOLD series
                engines = [f"scepi[{k[2]}]" if k[2] else "scepi" for k in keys]
            else:
                engines = [ENGINE_OF_SEG.get(seg, seg)] * len(frame)
            pieces = []
            import pandas as pd

            for engine in dict.fromkeys(engines):
                rows = [i for i, e in enumerate(engines) if e == engine]
                part = frame.iloc[rows]
                reasons = ["; ".join(r for e, r in flags.get((k[0], k[1]), []) if e == engine)
                           for k in (keys[i] for i in rows)]
                analysis = [c for c in part.columns if c not in NOT_ANALYSIS]
                pieces.append(mark_frame(part, ratings, engine, analysis, reasons)[0])
            marked.setdefault(table, {})[seg] = pd.concat(pieces).sort_index() if pieces else frame
    return marked


REPORT_NAME = "group_qc_report.html"


def write_cohort_review(output_dir: str | os.PathLike, cohort, morphometry_tables=None, workers: int = 1,
                        qc_threshold: float = QC_THRESHOLD, z_limit: float = Z_LIMIT,
                        mad_limit: float = MAD_LIMIT) -> Optional[dict]:
    """group_qc_report.html and its views over a cohort output dataset (None when nothing was segmented)."""
    from ..review.build import build_review

    import tempfile

    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory(prefix="segsuite-outlines-") as scratch:
        sources, missing = view_sources(output_dir, Path(scratch))
        if not sources and morphometry_tables is None:
            return None
        flags = engine_flags(cohort, qc_threshold, z_limit, mad_limit)
        built = build_review(output_dir / REPORT_NAME, sources, morphometry_tables, extra_flags=flags,
                             summaries=summaries(cohort), title=f"SegmentationSuite QC review: {output_dir.name}",
                             workers=workers, missing=missing)
    built["name"] = REPORT_NAME
    return built


def summaries(cohort) -> dict:
    """Per (participant, session) the numbers a reviewer reads beside the views: ScLimbic's largest |z|
    and lowest confidence, sc_epi's cord volume, the SAMSEG filter's brain-mask volume."""
    from .derivatives import CONFIDENCE_PREFIX

    out: dict = {}
    qc, morph = cohort.tables.get("qc", {}), cohort.tables.get("morph", {})
    if "sclimbic" in qc:
        frame = qc["sclimbic"]
        z = frame[sclimbic_z_columns(frame)].to_numpy(dtype=np.float64)
        confidences = [c for c in frame.columns if c.startswith(CONFIDENCE_PREFIX)]
        for row, key in enumerate(_rows_key(frame)):
            values = out.setdefault(key[:2], {})
            finite = z[row][np.isfinite(z[row])]
            if finite.size:
                values["sclimbic_max_abs_z"] = float(np.abs(finite).max())
            if confidences:
                values["sclimbic_min_confidence"] = float(np.nanmin(frame.iloc[row][confidences].to_numpy(dtype=np.float64)))
    if "scepi" in morph and "Spinal-Cord" in morph["scepi"].columns:
        frame = morph["scepi"]
        for key, value in zip(_rows_key(frame), frame["Spinal-Cord"].to_numpy(dtype=np.float64)):
            name = f"scepi_cord_mm3[{key[2]}]" if key[2] else "scepi_cord_mm3"
            out.setdefault(key[:2], {})[name] = value
    if "samseg" in qc and "BrainMask" in qc["samseg"].columns:
        frame = qc["samseg"]
        for key, value in zip(_rows_key(frame), frame["BrainMask"].to_numpy(dtype=np.float64)):
            out.setdefault(key[:2], {})["samseg_brain_mask_mm3"] = value
    preprocess = getattr(cohort, "preprocess", None)
    if preprocess is not None:
        for column in PREPROCESS_SUMMARY:
            if column in preprocess.columns:
                for key, value in zip(_rows_key(preprocess), preprocess[column].to_numpy(dtype=np.float64)):
                    out.setdefault(key[:2], {})[f"preproc_{column}"] = value
    return out


PREPROCESS_SUMMARY = ("tpm_overlap_gm", "tpm_overlap_wm", "inu_range", "jacobian_min")
