"""Assemble the review report: the subjects (ids, automatic flags, summary numbers), their views per
engine and the group plots, for ``segsuite group --report`` and ``segsuite bids ... group``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from .page import files_folder, write_review_report
from .views import ViewSource, write_all_views

SUMMARY_COLUMNS = ("TIV", "spec_snr", "spec_cnr", "mriqc_cjv", "mriqc_efc")


def _key(participant, session) -> tuple[str, str]:
    session = "" if session is None or str(session) in ("", "n/a", "nan") else str(session)
    return str(participant), session


def build_review(report_path: str | os.PathLike, sources: Sequence[ViewSource], tables=None,
                 extra_flags: Optional[dict] = None, summaries: Optional[dict] = None, title: str = "",
                 workers: int = 1, missing: Optional[dict] = None) -> dict:
    """Write the views of ``sources`` and the page; returns {"bytes", "views_bytes", "subjects",
    "entries", "failures"}.

    ``tables``: MorphometryGroupTables (its flags, ranking and plots join); ``extra_flags``:
    {(participant, session): [(engine, reason)]}; ``summaries``: {(participant, session): {column: value}}."""
    import numpy as np

    folder = files_folder(report_path)
    entries, failures = write_all_views(list(sources), folder, workers)
    subjects: dict = {}

    def subject(key):
        return subjects.setdefault(key, {"participant_id": key[0], "session_id": key[1], "reasons": [], "severity": 0.0,
                                         "values": {}, "views": [], "missing": []})

    if tables is not None:
        quality = tables.ranking
        for _, row in quality.iterrows():
            item = subject(_key(row["participant_id"], row["session_id"]))
            if row["reasons"]:
                item["reasons"] += [reason for reason in str(row["reasons"]).split("; ") if reason]
            item["severity"] += float(row.get("severity", 0) or 0)
            item["values"].update({c: row[c] for c in quality.columns if c.startswith(("spec_", "mriqc_", "qc_"))})
        for _, row in tables.wide.iterrows():
            subject(_key(row["participant_id"], row["session_id"]))["values"]["TIV"] = row["TIV"]
    for key, found in (extra_flags or {}).items():
        item = subject(_key(*key))
        item["reasons"] += [reason for _, reason in found]
        item["severity"] += len(found)
    for key, values in (summaries or {}).items():
        subject(_key(*key))["values"].update(values)
    for source, entry in zip(sources, entries):
        item = subject(_key(source.participant_id, source.session_id))
        if entry is None:
            item["missing"].append(f"{source.engine}: the views could not be made")
        else:
            item["views"].append(entry)
    for key, notes in (missing or {}).items():
        subject(_key(*key))["missing"] += notes
    for source, reason in failures:
        subject(_key(source.participant_id, source.session_id))["missing"].append(f"{source.engine}: {reason}")
    ordered = sorted(subjects.values(), key=lambda s: (-len(s["reasons"]), -s["severity"], s["participant_id"], s["session_id"]))
    for rank, item in enumerate(ordered, start=1):
        item["rank"], item["n_flags"], item["reasons"] = rank, len(item["reasons"]), "; ".join(item["reasons"])
    present = [c for c in SUMMARY_COLUMNS if any(c in s["values"] for s in ordered)]
    present += sorted({c for s in ordered for c in s["values"] if c not in present and not c.startswith("mriqc_")
                       and not c.startswith("spec_")})
    figures = _figures(tables) if tables is not None else ""
    size = write_review_report(report_path, ordered, title or "SegmentationSuite QC review", present, figures,
                               intro="Flags: " + "; ".join(RULES))
    views_bytes = sum(entry.get("bytes", 0) for entry in entries if entry)
    return {"bytes": size, "views_bytes": views_bytes, "subjects": len(ordered), "entries": sum(e is not None for e in entries),
            "failures": failures, "folder": folder, "per_subject": (size + views_bytes) / max(len(ordered), 1)}


RULES = ("SynthSeg QC score below the threshold (0.65)", "image-quality metrics beyond 3 MADs of the cohort median",
         "ScLimbic |z| > 3", "sc_epi cord volume and the SAMSEG filter's brain-mask volume beyond 3 MADs",
         "preprocess: tissue overlap with the template priors (tpm_overlap_gm/wm) 3 MADs below the cohort, "
         "bias-field spread (inu_range) 3 MADs above it, or a folding warp (Jacobian minimum <= 0)")


def _figures(tables) -> str:
    from ..morphometry.report import metric_plots, volume_plots

    figures = ""
    metrics = metric_plots(tables)
    volumes = volume_plots(tables) if len(tables.wide) else None
    if metrics:
        figures += f'<h2>Quality metrics across subjects (red: flagged)</h2><img loading="lazy" alt="metrics" src="{metrics}">'
    if volumes:
        figures += ('<h2>Region volumes (mm3) against TIV (L), cohort fit (the residual TIV correction; rows rated fail '
                    f'are left out)</h2><img loading="lazy" alt="volumes" src="{volumes}">')
    return figures


def morphometry_sources(table_paths: Sequence[str], frame, engine: str = "morphometry") -> tuple[list, dict]:
    """View sources of `segsuite morphometry` tables: the image and segmentation its sidecar names."""
    import json

    sources, missing = [], {}
    ids = (_key(*row) for row in frame[["participant_id", "session_id"]].itertuples(index=False, name=None))
    for path, (participant, session) in zip(table_paths, ids):  # a missing session ('n/a' in the tables) is ''
        sidecar = Path(str(path)[: -len("morphometry.tsv")] + "morphometry.json")
        try:
            inputs = json.loads(sidecar.read_text(encoding="utf-8")).get("inputs", {})
        except (OSError, ValueError):
            inputs = {}
        image, labels = inputs.get("image"), inputs.get("segmentation")
        if image and labels and os.path.isfile(image) and os.path.isfile(labels):
            sources.append(ViewSource(participant, session, engine, image, labels, title="segmentation over the image"))
        else:
            missing.setdefault((participant, session), []).append(
                f"{engine}: {sidecar.name} names no image and segmentation that exist")
    return sources, missing
