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
        return re.sub(r"\.(stats|txt)$", "", name)


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if re.fullmatch(r"[-+]?\d+", text) else value


def _measure(body: str) -> Optional[Measure]:
    """One '# Measure' line's body (after 'Measure ') in any form FreeSurfer has written; None if unreadable.

    5 comma-separated fields is the rule (structure, name, description, value, unit). Known variants:
    FreeSurfer 6.0 and 7.x aparc files lose the comma after 'CortexVol' (4 fields: the name is the second
    field's first word); SAMSEG's samseg.stats and sbtiv.stats write 'name, value, unit' (3 fields);
    more than 5 fields means commas inside the description."""
    parts = [part.strip() for part in body.split(",")]
    try:
        if len(parts) >= 5:
            return Measure(parts[0], parts[1], ", ".join(parts[2:-2]), float(parts[-2]), parts[-1])
        if len(parts) == 4:
            name, _, description = parts[1].partition(" ")
            return Measure(parts[0], name, description.strip(), float(parts[2]), parts[3])
        if len(parts) == 3:
            return Measure(parts[0], parts[0], "", float(parts[1]), parts[2])
    except ValueError:
        return None
    return None


def _run_together_row(line: str, columns: list[str]) -> Optional[list[str]]:
    """mri_sclimbic_seg's row with SegId and NVoxels run together (NVoxels >= 100000): its fields split."""
    from ..sclimbic.stats import _parse_stats_row

    if columns[:4] != ["Index", "SegId", "NVoxels", "Volume_mm3"] or len(line.split()) != len(columns) - 1:
        return None
    try:
        row = _parse_stats_row(line, "")
    except InputError:
        return None
    return [line.split()[0], str(row.seg_id), str(row.n_voxels), repr(row.volume), row.name]


def _volume_list(lines: list[str]) -> bool:
    """A 'name volume' file without a header, as FreeSurfer's hippocampal-subfield, amygdala, thalamus
    and brainstem tools write them (lh.hippoSfVolumes-T1.v21.txt, ...)."""
    rows = [line.split() for line in lines if line.strip()]
    return bool(rows) and all(len(row) == 2 and isinstance(_number(row[1]), (int, float)) for row in rows)


def read_stats(path: str | os.PathLike, warnings: Optional[list] = None) -> StatsFile:
    """Parse one FreeSurfer stats file of any version (5.3 to 8) and tool.

    A line it cannot read is skipped with a message naming the file and line, kept in ``warnings`` when
    a list is given (else the first such line raises InputError); a file with nothing readable raises."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise InputError(f"cannot read the stats file {path}: {error.strerror}") from error

    def odd(number: int, why: str) -> None:
        message = f"{path}, line {number}: {why}; line skipped"
        if warnings is None:
            raise InputError(message)
        warnings.append(message)

    stats = StatsFile(path=path)
    if _volume_list(lines):
        stats.columns = ["StructName", "Volume_mm3"]
        stats.rows = [{"StructName": name, "Volume_mm3": float(value)} for name, value in (l.split() for l in lines if l.strip())]
        return stats
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            body = line[1:].strip()
            if body.startswith("Measure "):
                measure = _measure(body[len("Measure "):])
                if measure is None:
                    odd(number, "a Measure line that is not 'structure, name, description, value, unit'")
                else:
                    stats.measures.append(measure)
            elif body.startswith("ColHeaders"):
                stats.columns = body.split()[1:]
            elif body and not body.startswith("TableCol"):
                key, _, value = body.partition(" ")
                stats.header.setdefault(key, value.strip())
            continue
        fields = line.split()
        if not stats.columns:
            odd(number, "a table row before any '# ColHeaders' line")
            continue
        if len(fields) != len(stats.columns):
            fields = _run_together_row(line, stats.columns) or fields
        if len(fields) != len(stats.columns):
            odd(number, f"{len(fields)} fields but {len(stats.columns)} column headers")
            continue
        stats.rows.append({column: _number(value) for column, value in zip(stats.columns, fields)})
    if not stats.measures and not stats.rows:
        raise InputError(f"{path} has no readable '# Measure' line and no table row: not a FreeSurfer stats file")
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


def subject_names(files: list[StatsFile], from_path: bool = False, subdir: str = "stats") -> list[str]:
    """Each file's subject, as FreeSurfer's tools name it.

    ``from_path``: asegstats2table's layout SUBJECTS_DIR/<subject>/<subdir>/<file>: the folder above
    ``subdir``; a file elsewhere is an error (its path names no subject). Otherwise the file's
    '# subjectname' header; a file without one (brainvol.stats, SAMSEG's) takes the subjectname of the
    files beside it, then the folder above a 'stats' folder, then its own path."""
    names = []
    if from_path:
        for stats in files:
            folder = os.path.dirname(os.path.abspath(stats.path))
            if os.path.basename(folder) != subdir:
                raise InputError(f"{stats.path} is not in a <subject>/{subdir}/ folder, so its path names no subject: "
                                 f"give --subdir {os.path.basename(folder)} if that folder is the subject's stats "
                                 "folder, or leave out --subject-from-path to use the files' subjectname")
            names.append(os.path.basename(os.path.dirname(folder)))
        return names
    by_folder: dict[str, str] = {}
    for stats in files:
        if stats.subject:
            by_folder.setdefault(os.path.dirname(os.path.abspath(stats.path)), stats.subject)
    for stats in files:
        folder = os.path.dirname(os.path.abspath(stats.path))
        if stats.subject:
            names.append(stats.subject)
        elif folder in by_folder:
            names.append(by_folder[folder])
        elif os.path.basename(folder) == "stats":
            names.append(os.path.basename(os.path.dirname(folder)))
        else:
            names.append(stats.path)
    return names


def tidy_table(paths: Iterable[str | os.PathLike], subjects: Optional[Iterable[str]] = None,
               warnings: Optional[list] = None, from_path: bool = False, subdir: str = "stats"):
    """A pandas DataFrame of every file's tidy rows (see TIDY_COLUMNS; FreeSurfer's columns follow).

    With a ``warnings`` list, unreadable lines and files are skipped and described there; the rest is kept."""
    import pandas as pd

    files = []
    for path in paths:
        try:
            files.append(read_stats(path, warnings))
        except InputError as error:
            if warnings is None:
                raise
            warnings.append(f"{error}; file skipped")
    if not files:
        raise InputError("none of the files is a readable FreeSurfer stats file")
    subjects = list(subjects) if subjects is not None else subject_names(files, from_path, subdir)
    rows = []
    for stats, subject in zip(files, subjects):
        rows += tidy_rows(stats, subject)
    frame = pd.DataFrame(rows)
    for column in TIDY_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.NA
    return frame[list(TIDY_COLUMNS) + [c for c in frame.columns if c not in TIDY_COLUMNS]]


# --- aseg.stats writer -----------------------------------------------------------------------------

_ASEG_COLUMNS = (("Index", "Index", "NA"), ("SegId", "Segmentation Id", "NA"), ("NVoxels", "Number of Voxels", "unitless"),
                 ("Volume_mm3", "Volume", "mm^3"), ("StructName", "Structure Name", "NA"))


# The TIV lines: FreeSurfer's own for what it defines (eTIV: mri_segstats --etiv; sTIV: FreeSurfer 8's
# aseg.stats from SynthSeg's 'total intracranial'), a name of our own for the tissue-map sum.
ETIV_MEASURE = ("EstimatedTotalIntraCranialVol", "eTIV", "Estimated Total Intracranial Volume")
STIV_MEASURE = ("SegmentedTotalIntraCranialVol", "sTIV", "Segmented Total Intracranial Volume")
TISSUE_TIV_MEASURE = ("TissueMapTotalIntraCranialVol", "tmTIV", "Sum of the GM WM and CSF tissue maps")
_CORTEX_MEASURES = {3: ("lhCortex", "lhCortexVol", "Left hemisphere cortical gray matter volume"),
                    42: ("rhCortex", "rhCortexVol", "Right hemisphere cortical gray matter volume")}


def measure_line(structure: str, name: str, description: str, value: float, unit: str = "mm^3") -> str:
    """A '# Measure' line as mri_segstats writes it; FreeSurfer's readers split it on commas
    (fsbindings/legacy.py takes field 3 as the value), so no field may hold one."""
    for text in (structure, name, description, unit):
        if "," in text:
            raise ValueError(f"a Measure field holds a comma: {text!r}")
    return f"# Measure {structure}, {name}, {description}, {value:.6f}, {unit}"


def tiv_measure_lines(morphometry, result=None) -> list[str]:
    """Every TIV known for the subject, each under the name of what it is."""
    from ..synthseg.labels import TOTAL_INTRACRANIAL

    measures = dict(result.measures) if result is not None else {}
    lines = []
    if "eTIV" in measures:
        lines.append(measure_line(*ETIV_MEASURE, float(measures["eTIV"])))
    if TOTAL_INTRACRANIAL in measures:
        lines.append(measure_line(*STIV_MEASURE, float(measures[TOTAL_INTRACRANIAL])))
    tissue_total = sum(morphometry.volumes.get(f"tissue-{t}", 0.0) for t in ("GM", "WM", "CSF"))
    if tissue_total:
        lines.append(measure_line(*TISSUE_TIV_MEASURE, tissue_total))
    if not lines:
        lines.append(measure_line(*TISSUE_TIV_MEASURE, morphometry.tiv))
    return lines


def aseg_stats_text(morphometry, result=None) -> str:
    """An aseg.stats-format text of the subject's structure volumes that FreeSurfer's asegstats2table reads.

    One row per structure of the label map (NVoxels counted in it, Volume_mm3 the segmentation's own,
    soft where SynthSeg measured soft volumes), as mri_segstats writes them for aseg or aparc+aseg; a
    cortex that --parc split into parcels is no label of the map, so its total goes to the lhCortexVol,
    rhCortexVol and CortexVol Measures, as FreeSurfer writes it. The TIVs and tissue totals are Measures."""
    import numpy as np

    from .. import __version__
    from ..labels import freesurfer_lut
    from ..image import voxel_sizes

    lut = freesurfer_lut()
    name_to_value = {label.name: label.value for label in lut}
    counts = None
    voxel_volume = 1.0
    if result is not None:
        bincount = np.bincount(np.clip(result.labels, 0, None).ravel())
        counts = {int(v): int(bincount[v]) for v in np.flatnonzero(bincount)}
        voxel_volume = float(np.prod(voxel_sizes(result.affine)))
    structures = [(name_to_value[name], name, volume) for name, volume in morphometry.volumes.items()
                  if name in name_to_value]
    parcellated = counts is not None and any(1000 <= value < 3000 for value in counts)
    cortex = {value: volume for value, _, volume in structures
              if parcellated and value in _CORTEX_MEASURES and counts.get(value, 0) == 0}
    structures = [item for item in structures if item[0] not in cortex]
    lines = ["# Title Segmentation Statistics ", "# ", "# generating_program segsuite morphometry",
             f"# cvs_version segsuite {__version__}", f"# subjectname {morphometry.subject}", "# anatomy_type volume", "# "]
    for value, volume in sorted(cortex.items()):
        lines.append(measure_line(*_CORTEX_MEASURES[value], volume))
    if len(cortex) == 2:
        lines.append(measure_line("Cortex", "CortexVol", "Total cortical gray matter volume", sum(cortex.values())))
    for tissue, description in (("GM", "Sum of the GM tissue map"), ("WM", "Sum of the WM tissue map"),
                                ("CSF", "Sum of the CSF tissue map")):
        value = morphometry.volumes.get(f"tissue-{tissue}")
        if value is not None:
            lines.append(measure_line(f"Total{tissue}", f"Total{tissue}Vol", description, value))
    lines += tiv_measure_lines(morphometry, result)
    lines.append(f"# VoxelVolume_mm3 {voxel_volume:g} ")
    for number, (header, field_name, unit) in enumerate(_ASEG_COLUMNS, start=1):
        lines += [f"# TableCol {number:2d} ColHeader {header}", f"# TableCol {number:2d} FieldName {field_name}",
                  f"# TableCol {number:2d} Units     {unit}"]
    lines += [f"# NRows {len(structures)} ", f"# NTableCols {len(_ASEG_COLUMNS)} ",
              "# ColHeaders  " + " ".join(column[0] for column in _ASEG_COLUMNS) + " "]
    width = max([len(name) for _, name, _ in structures] + [10])
    for index, (value, name, volume) in enumerate(structures, start=1):
        lines.append(f"{index:3d} {value:4d} {(counts or {}).get(value, 0):9d} {volume:12.4f}  {name:<{width}s}")
    return "\n".join(lines) + "\n"
