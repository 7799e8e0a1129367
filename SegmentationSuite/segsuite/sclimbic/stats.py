"""ScLimbic's text outputs: population statistics, the .stats file and the per-case CSVs.

File names, headers and number formats follow mri_sclimbic_seg so existing analysis scripts
keep working. One deliberate difference: the reference writes SegId and NVoxels without a
separator, so they run together once NVoxels >= 100000 (``821325947``); this writer always
keeps a space there (and before the volume), and the reader accepts both forms.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

from ..errors import InputError
from .names import match_name

STATS_TITLE = "# Subcortical Limbic Volumetric Stats"
STATS_CREATOR = "# Created by mri_sclimbic_seg"
STATS_COLUMNS = "# ColHeaders Index SegId NVoxels Volume_mm3 StructName"
ETIV_MEASURE = "# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, {:.6f}, mm^3"


@dataclass(frozen=True)
class PopulationStat:
    mean: float
    std: float


def read_population_stats(path: str | os.PathLike) -> dict[str, PopulationStat]:
    """sclimbic.volstats.csv: header ``VolStat_mm3,mean,std[,min,max]``, one row per structure."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"VolStat_mm3", "mean", "std"} <= {f.strip() for f in reader.fieldnames}:
                raise InputError(f"{path} is not a ScLimbic population-stats table: the header must start "
                                 "with VolStat_mm3,mean,std")
            stats = {}
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                try:
                    stats[row["VolStat_mm3"]] = PopulationStat(float(row["mean"]), float(row["std"]))
                except ValueError:
                    raise InputError(f"{path}: row {row['VolStat_mm3']!r} has a non-numeric mean or std") from None
            return stats
    except OSError as error:
        raise InputError(f"cannot read the population stats {path}: {error.strerror}") from error


def z_scores(volumes: Mapping[str, float], population: Mapping[str, PopulationStat]) -> dict[str, float]:
    """(volume - mean) / std for every structure with a population row (names matched leniently)."""
    scores = {}
    for name, volume in volumes.items():
        stat = match_name(name, population)
        if stat is not None:
            scores[name] = (float(volume) - stat.mean) / stat.std
    return scores


@dataclass(frozen=True)
class StatsRow:
    seg_id: int
    n_voxels: int
    volume: float
    name: str


def format_stats(rows: Sequence[StatsRow], etiv: Optional[float] = None) -> str:
    lines = [STATS_TITLE, STATS_CREATOR]
    if etiv is not None:
        lines.append(ETIV_MEASURE.format(etiv))
    lines += [f"# NRows {len(rows)}", "# NTableCols 5", STATS_COLUMNS]
    for index, row in enumerate(rows, start=1):
        # identical to the reference layout while the numbers fit their columns
        lines.append(f"{index: <4} {row.seg_id: >6} {row.n_voxels: >5} {row.volume: >11.4f}    {row.name}")
    return "\n".join(lines) + "\n"


def read_stats(path: str | os.PathLike) -> tuple[list[StatsRow], dict[str, float]]:
    """Rows and measures ({'eTIV': value}) of a ScLimbic .stats file, ours or the reference's."""
    rows, measures = [], {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("#"):
                if line.startswith("# Measure"):
                    fields = [f.strip() for f in line[len("# Measure"):].split(",")]
                    if len(fields) >= 4:
                        measures[fields[1]] = float(fields[3])
                continue
            rows.append(_parse_stats_row(line, f"{path}, line {number}"))
    return rows, measures


def _parse_stats_row(line: str, where: str) -> StatsRow:
    fields = line.split()
    try:
        if len(fields) >= 5:
            return StatsRow(int(fields[1]), int(fields[2]), float(fields[3]), " ".join(fields[4:]))
        if len(fields) == 4:
            # reference layout with SegId and NVoxels run together: SegId fills columns 5-10
            seg_text = line[5:11].strip()
            merged = fields[1]
            if seg_text and merged.startswith(seg_text) and len(merged) > len(seg_text):
                return StatsRow(int(seg_text), int(merged[len(seg_text):]), float(fields[2]), fields[3])
    except ValueError:
        pass
    raise InputError(f"{where}: cannot read the stats row {line.strip()!r}")


def format_case_csv(columns: Sequence[str], rows: Mapping[str, Sequence[Optional[float]]]) -> str:
    """``case,<columns>`` then one line per case, values as %.4f (empty when missing)."""
    out = io.StringIO()
    out.write(",".join(["case", *columns]) + "\n")
    for case, values in rows.items():
        cells = ["" if value is None or (isinstance(value, float) and math.isnan(value)) else "%.4f" % value
                 for value in values]
        out.write(",".join([case, *cells]) + "\n")
    return out.getvalue()


def read_case_csv(path: str | os.PathLike) -> tuple[list[str], dict[str, list[Optional[float]]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    if not table or not table[0] or table[0][0] != "case":
        raise InputError(f"{path} is not a ScLimbic case table (first column must be 'case')")
    rows = {row[0]: [float(v) if v != "" else None for v in row[1:]] for row in table[1:] if row}
    return table[0][1:], rows


def csv_names(prefix: str) -> dict[str, str]:
    """The summary CSV paths for a prefix ('<out>/sclimbic_' in folder mode, '<out-base>.' for one file)."""
    return {
        "volumes": f"{prefix}volumes_all.csv",
        "zscores": f"{prefix}zqa_scores_all.csv",
        "confidences": f"{prefix}confidences_all.csv",
    }


def column_union(tables: Iterable[Mapping[str, float]]) -> list[str]:
    columns: list[str] = []
    for table in tables:
        for name in table:
            if name not in columns:
                columns.append(name)
    return columns
