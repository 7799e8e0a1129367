"""FreeSurfer stats files (aseg.stats, wmparc.stats, ?h.aparc*.stats, brainvol.stats): read and write.

The reader keeps everything: the header's ``# Measure`` lines, its other ``# key value`` lines, the
column names (``# ColHeaders``) and every row. ``tidy_table`` turns files into the UK Biobank spec's tidy
table: one row per file and region (region, volume_mm3, thickness_mm, surface_area_mm2), with the
header measures as rows of kind 'measure', the hemisphere, the atlas, the subject and every original
column under its FreeSurfer name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

from ..errors import InputError


@dataclass
class Measure:
    structure: str
    name: str
    description: str
    value: float
    unit: str


@dataclass
class StatsFile:
    path: str
    header: dict[str, str] = field(default_factory=dict)
    measures: list[Measure] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return self.header.get("subjectname", "")

    @property
    def hemisphere(self) -> str:
        hemi = self.header.get("hemi", "")
        if hemi:
            return hemi
        match = re.match(r"^(lh|rh)\.", os.path.basename(self.path))
        return match.group(1) if match else ""

    @property
    def atlas(self) -> str:
        """The parcellation: 'aparc', 'aparc.a2009s', 'aparc.DKTatlas', 'aseg', 'wmparc', 'brainvol', ..."""
        name = os.path.basename(self.path)
        name = re.sub(r"^(lh|rh)\.", "", name)
        return name[:-len(".stats")] if name.endswith(".stats") else name


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if re.fullmatch(r"[-+]?\d+", text) else value


def read_stats(path: str | os.PathLike) -> StatsFile:
    """Parse one FreeSurfer stats file; a malformed one raises InputError naming the line."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise InputError(f"cannot read the stats file {path}: {error.strerror}") from error
    stats = StatsFile(path=path)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            body = line[1:].strip()
            if body.startswith("Measure "):
                parts = [part.strip() for part in body[len("Measure "):].split(",")]
                if len(parts) < 5:
                    raise InputError(f"{path}, line {number}: a Measure line needs 5 comma-separated fields")
                structure, name, unit = parts[0], parts[1], parts[-1]
                description = ", ".join(parts[2:-2])
                stats.measures.append(Measure(structure, name, description, float(parts[-2]), unit))
            elif body.startswith("ColHeaders"):
                stats.columns = body.split()[1:]
            elif body and not body.startswith("TableCol"):
                key, _, value = body.partition(" ")
                stats.header.setdefault(key, value.strip())
            continue
        fields = line.split()
        if not stats.columns:
            raise InputError(f"{path}, line {number}: a table row before the '# ColHeaders' line; "
                             "is this a FreeSurfer stats file?")
        if len(fields) != len(stats.columns):
            raise InputError(f"{path}, line {number}: {len(fields)} fields but {len(stats.columns)} column headers")
        stats.rows.append({column: _number(value) for column, value in zip(stats.columns, fields)})
    if not stats.measures and not stats.rows:
        raise InputError(f"{path} has no '# Measure' line and no table row: not a FreeSurfer stats file")
    return stats


# FreeSurfer column -> the tidy table's column
_VOLUME_COLUMNS = ("Volume_mm3", "GrayVol")
_TIDY = {"ThickAvg": "thickness_mm", "SurfArea": "surface_area_mm2"}
TIDY_COLUMNS = ("subject", "file", "atlas", "hemi", "kind", "region", "volume_mm3", "thickness_mm",
                "surface_area_mm2", "value", "unit", "description")


def tidy_rows(stats: StatsFile, subject: Optional[str] = None) -> list[dict]:
    """The tidy table's rows of one file: its header measures, then one row per table row."""
    subject = subject or stats.subject
    base = {"subject": subject, "file": stats.path, "atlas": stats.atlas, "hemi": stats.hemisphere}
    rows = []
    for measure in stats.measures:
        row = dict(base, kind="measure", region=measure.name, value=measure.value, unit=measure.unit,
                   description=measure.description, measure_structure=measure.structure)
        if measure.unit == "mm^3":
            row["volume_mm3"] = measure.value
        rows.append(row)
    for table_row in stats.rows:
        row = dict(base, kind="structure", region=str(table_row.get("StructName", "")))
        for column in _VOLUME_COLUMNS:
            if column in table_row:
                row["volume_mm3"] = float(table_row[column])
        for column, tidy in _TIDY.items():
            if column in table_row:
                row[tidy] = float(table_row[column])
        row.update({column: value for column, value in table_row.items() if column != "StructName"})
        rows.append(row)
    return rows


def tidy_table(paths: Iterable[str | os.PathLike], subjects: Optional[Iterable[str]] = None):
    """A pandas DataFrame of every file's tidy rows (see TIDY_COLUMNS; FreeSurfer's columns follow)."""
    import pandas as pd

    paths = [os.fspath(p) for p in paths]
    subjects = list(subjects) if subjects is not None else [None] * len(paths)
    rows = []
    for path, subject in zip(paths, subjects):
        rows += tidy_rows(read_stats(path), subject)
    frame = pd.DataFrame(rows)
    ordered = [c for c in TIDY_COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in TIDY_COLUMNS]
    for column in TIDY_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.NA
            ordered.append(column) if column not in ordered else None
    return frame[[c for c in TIDY_COLUMNS] + [c for c in ordered if c not in TIDY_COLUMNS]]


# --- aseg.stats writer -----------------------------------------------------------------------------

_ASEG_COLUMNS = (("Index", "Index", "NA"), ("SegId", "Segmentation Id", "NA"), ("NVoxels", "Number of Voxels", "unitless"),
                 ("Volume_mm3", "Volume", "mm^3"), ("StructName", "Structure Name", "NA"))


def aseg_stats_text(morphometry, result=None) -> str:
    """An aseg.stats-format text of the subject's structure volumes (FreeSurfer's asegstats2table reads it).

    One row per structure that has a FreeSurfer label (NVoxels from the hard labels, Volume_mm3 the
    segmentation's own, soft where SynthSeg measured soft volumes); eTIV and the tissue totals as Measures."""
    import numpy as np

    from .. import __version__
    from ..labels import freesurfer_lut
    from ..image import voxel_sizes

    lut = freesurfer_lut()
    name_to_value = {label.name: label.value for label in lut}
    counts = {}
    voxel_volume = 1.0
    if result is not None:
        bincount = np.bincount(np.clip(result.labels, 0, None).ravel())
        counts = {int(v): int(bincount[v]) for v in np.flatnonzero(bincount)}
        voxel_volume = float(np.prod(voxel_sizes(result.affine)))
    lines = ["# Title Segmentation Statistics ", "# ", "# generating_program segsuite morphometry",
             f"# cvs_version segsuite {__version__}", f"# subjectname {morphometry.subject}", "# anatomy_type volume", "# "]
    for tissue, description in (("GM", "Total gray matter volume (GM map)"), ("WM", "Total white matter volume (WM map)"),
                                ("CSF", "Total CSF volume (CSF map)")):
        value = morphometry.volumes.get(f"tissue-{tissue}")
        if value is not None:
            lines.append(f"# Measure Total{tissue}, Total{tissue}Vol, {description}, {value:.6f}, mm^3")
    lines.append(f"# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume "
                 f"({morphometry.tiv_source}), {morphometry.tiv:.6f}, mm^3")
    lines.append(f"# VoxelVolume_mm3 {voxel_volume:g} ")
    for number, (header, field_name, unit) in enumerate(_ASEG_COLUMNS, start=1):
        lines += [f"# TableCol {number:2d} ColHeader {header}", f"# TableCol {number:2d} FieldName {field_name}",
                  f"# TableCol {number:2d} Units     {unit}"]
    structures = [(name_to_value[name], name, volume) for name, volume in morphometry.volumes.items()
                  if name in name_to_value]
    lines += [f"# NRows {len(structures)} ", f"# NTableCols {len(_ASEG_COLUMNS)} ",
              "# ColHeaders  " + " ".join(column[0] for column in _ASEG_COLUMNS) + " "]
    width = max([len(name) for _, name, _ in structures] + [10])
    for index, (value, name, volume) in enumerate(structures, start=1):
        lines.append(f"{index:3d} {value:4d} {counts.get(value, 0):9d} {volume:12.4f}  {name:<{width}s}")
    return "\n".join(lines) + "\n"
