"""Group level: per-subject tables -> one wide table, TIV-corrected tables, QC flags, a worst-first ranking.

    from segsuite.morphometry.group import build_group_tables, read_subject_tables
    tables = build_group_tables(read_subject_tables(paths))
    tables.wide, tables.proportional, tables.residual, tables.residual_fit, tables.flags, tables.ranking

Columns of a per-subject table (``<prefix>_morphometry.tsv``, one row each): participant_id, session_id,
TIV, the structure volumes (mm3, FreeSurfer names), ``qc_<group>`` SynthSeg QC scores, ``z_<structure>``
ScLimbic z-scores and the image-quality metrics (``spec_*``, ``mriqc_*``, see quality.DEFINITIONS).
Tidy tables from ``segsuite stats2table`` are accepted too (volumes by region; TIV from eTIV, else sTIV, else tmTIV).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from ..errors import InputError
from .quality import HIGHER_IS_BETTER

ID_COLUMNS = ("participant_id", "session_id")
MISSING = "n/a"  # BIDS's marker of a missing value, in every table we write
TIV_COLUMN = "TIV"
TIV_MEASURES = ("eTIV", "sTIV", "tmTIV")  # stats files' TIV Measures, preferred first
QC_PREFIX = "qc_"
ZSCORE_PREFIX = "z_"
CONFIDENCE_PREFIX = "conf_"   # ScLimbic's mean posterior of each structure
METRIC_PREFIXES = ("spec_", "mriqc_")
PROPORTIONAL_TIV = 1_500_000.0  # mm3: the spec's proportional scaling to 1.5 L
QC_THRESHOLD = 0.65
MAD_LIMIT = 3.0
Z_LIMIT = 3.0
MAD_SCALE = 1.4826  # MAD -> standard deviation of a Gaussian
MIN_RESIDUAL_SUBJECTS = 3  # the line has 2 parameters: 2 subjects leave no residual to estimate


@dataclass
class MorphometryGroupTables:
    wide: "object"            # participant_id, session_id, TIV, structures (mm3)
    proportional: "object"    # structure / TIV * 1.5 L
    residual: "object"        # structure - (intercept + slope * TIV), fitted over the cohort
    residual_fit: "object"    # region, slope, intercept, n
    quality: "object"         # participant_id, session_id, QC scores, z-scores, metrics
    flags: "object"           # participant_id, session_id, n_flags, reasons
    ranking: "object"         # quality + flags, worst first
    volume_columns: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # statistics that could not be estimated, and why


def is_quality_column(column: str) -> bool:
    """A QC score, z-score, confidence or image-quality metric column (not a volume)."""
    return column.startswith((QC_PREFIX, ZSCORE_PREFIX, CONFIDENCE_PREFIX)) or column.startswith(METRIC_PREFIXES)


def read_subject_tables(paths: Iterable[str | os.PathLike]):
    """Read per-subject TSVs (ours, or stats2table's tidy ones) into one frame with a row per subject."""
    import pandas as pd

    frames, sclimbic = [], []
    for path in paths:
        path = os.fspath(path)
        if path.endswith(".csv") and _is_sclimbic_case_table(path):
            sclimbic.append(_from_sclimbic(path))
            continue
        try:
            frame = pd.read_csv(path, sep="," if path.endswith(".csv") else "\t", na_values=["n/a"],
                                keep_default_na=True, dtype={"participant_id": str, "session_id": str})
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read the table {path}: {error}") from error
        if "region" in frame.columns and "kind" in frame.columns:
            frame = _from_tidy(frame)
        if "participant_id" not in frame.columns:
            raise InputError(f"{path} has no participant_id column: give segsuite morphometry's *_morphometry.tsv "
                             "or a stats2table table")
        frames.append(frame)
    if not frames:
        raise InputError("no table given" if not sclimbic else "ScLimbic's tables add z-scores and confidences to "
                         "subjects: give their morphometry tables too")
    table = pd.concat(frames, ignore_index=True, sort=False)
    for extra in sclimbic:
        table = _join_by_participant(table, extra)
    return _with_session_marker(table)


def _with_session_marker(table):
    """session_id as BIDS writes a missing one: 'n/a' (never empty), so every table says the same."""
    if "session_id" not in table.columns:
        table["session_id"] = MISSING
    table["session_id"] = table["session_id"].fillna(MISSING).astype(str).replace("", MISSING)
    return table


SCLIMBIC_TABLES = {"zqa_scores_all.csv": ZSCORE_PREFIX, "confidences_all.csv": CONFIDENCE_PREFIX}


def _is_sclimbic_case_table(path: str) -> bool:
    return any(os.path.basename(path).endswith(name) for name in SCLIMBIC_TABLES)


def _from_sclimbic(path: str):
    """ScLimbic's case table (case, one column per structure) as participant_id + z_*/conf_* columns."""
    from ..sclimbic.stats import read_case_csv
    import pandas as pd

    prefix = next(p for name, p in SCLIMBIC_TABLES.items() if os.path.basename(path).endswith(name))
    columns, rows = read_case_csv(path)
    return pd.DataFrame([{"participant_id": case, **{prefix + c: (np.nan if v is None else v) for c, v in zip(columns, values)}}
                         for case, values in rows.items()])


def _join_by_participant(table, extra):
    """Add ``extra``'s columns to the rows of the same participant (the case name, or its sub-<label>
    entity: ScLimbic names cases after the input file)."""
    import pandas as pd

    known = set(table["participant_id"].astype(str))

    def participant(case: str) -> str:
        if case in known:
            return case
        entity = case.split("_")[0]
        return entity if entity in known else case

    extra = extra.assign(participant_id=[participant(str(c)) for c in extra["participant_id"]])
    unknown = sorted(set(extra["participant_id"]) - known)
    if unknown:
        raise InputError(f"ScLimbic case {unknown[0]} matches no participant_id of the morphometry tables: name the "
                         "ScLimbic inputs after the participants (sub-<label>...)")
    new = [c for c in extra.columns if c != "participant_id"]
    return table.drop(columns=[c for c in new if c in table.columns]).merge(extra, on="participant_id", how="left")


def _from_tidy(frame):
    """A stats2table tidy table -> one row per subject: structure volumes, TIV from eTIV."""
    import pandas as pd

    rows = []
    for subject, part in frame.groupby("subject", sort=False):
        row = {"participant_id": str(subject), "session_id": MISSING}
        tivs = {}
        for _, item in part.iterrows():
            if item["kind"] == "measure" and item["region"] in TIV_MEASURES:
                tivs.setdefault(item["region"], float(item["value"]))
            elif item["kind"] == "structure" and pd.notna(item.get("volume_mm3")):
                prefix = f"{item['hemi']}_" if isinstance(item.get("hemi"), str) and item["hemi"] else ""
                atlas = "" if item["atlas"] == "aseg" else f"{item['atlas']}_"
                row[f"{prefix}{atlas}{item['region']}"] = float(item["volume_mm3"])
        for name in TIV_MEASURES:  # the same preference as the morphometry's own TIV
            if name in tivs:
                row[TIV_COLUMN] = tivs[name]
                break
        rows.append(row)
    return pd.DataFrame(rows)


def proportional_correction(volumes: np.ndarray, tiv: np.ndarray, target: float = PROPORTIONAL_TIV) -> np.ndarray:
    """volume / TIV * target (the spec's proportional scaling to 1.5 L), per subject."""
    return np.asarray(volumes, dtype=np.float64) / np.asarray(tiv, dtype=np.float64)[:, None] * target


def residual_correction(volumes: np.ndarray, tiv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residuals of each region's least-squares line on TIV over the cohort; slopes and intercepts.

    Subjects with a missing value (NaN) are left out of that region's fit and get NaN. A line through 2
    subjects fits them exactly (residuals 0 by construction), so a region needs 3 subjects with
    different TIVs; otherwise it is not estimated (NaN, 'n/a' in the tables)."""
    volumes = np.asarray(volumes, dtype=np.float64)
    tiv = np.asarray(tiv, dtype=np.float64)
    residuals = np.full_like(volumes, np.nan)
    slopes = np.full(volumes.shape[1], np.nan)
    intercepts = np.full(volumes.shape[1], np.nan)
    for column in range(volumes.shape[1]):
        valid = np.isfinite(volumes[:, column]) & np.isfinite(tiv)
        if valid.sum() < MIN_RESIDUAL_SUBJECTS or np.ptp(tiv[valid]) == 0:
            continue
        x = tiv[valid] - tiv[valid].mean()
        y = volumes[valid, column]
        slope = float(np.dot(x, y - y.mean()) / np.dot(x, x))
        intercept = float(y.mean() - slope * tiv[valid].mean())
        slopes[column], intercepts[column] = slope, intercept
        residuals[valid, column] = y - (intercept + slope * tiv[valid])
    return residuals, slopes, intercepts


def robust_outliers(values: np.ndarray, limit: float = MAD_LIMIT) -> tuple[np.ndarray, np.ndarray]:
    """(values - median) / (1.4826 * MAD) and whether |that| exceeds ``limit`` (NaN never flagged)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full_like(values, np.nan), np.zeros(values.shape, dtype=bool)
    median = np.median(finite)
    mad = np.median(np.abs(finite - median)) * MAD_SCALE
    if mad == 0:
        # no spread: any value off the median is an outlier
        deviation = np.where(values == median, 0.0, np.copysign(np.inf, values - median))
        deviation[~np.isfinite(values)] = np.nan
    else:
        deviation = (values - median) / mad
    return deviation, np.abs(np.nan_to_num(deviation, nan=0.0)) > limit


def build_group_tables(table, qc_threshold: float = QC_THRESHOLD, mad_limit: float = MAD_LIMIT,
                       z_limit: float = Z_LIMIT, ratings: Optional[dict] = None,
                       engine: str = "morphometry") -> MorphometryGroupTables:
    """All group tables from a frame with one row per subject (see read_subject_tables).

    ``ratings`` (review.ratings.read_ratings): the rows rated fail for ``engine`` keep their ids but
    their TIV and volumes are n/a in the wide and corrected tables and left out of the TIV fits; every
    table then says each row's rating and why (review_rating, review_status)."""
    import pandas as pd

    table = _with_session_marker(table.copy())
    table["participant_id"] = table["participant_id"].astype(str)
    duplicated = table.duplicated(subset=list(ID_COLUMNS))
    if duplicated.any():
        first = table.loc[duplicated, "participant_id"].iloc[0]
        raise InputError(f"participant {first} appears twice with the same session: give each subject's table once")
    ids = table[list(ID_COLUMNS)].reset_index(drop=True)
    volume_columns = [c for c in table.columns if c not in ID_COLUMNS and c != TIV_COLUMN and not is_quality_column(c)
                      and pd.api.types.is_numeric_dtype(table[c])]
    quality_columns = [c for c in table.columns if is_quality_column(c)]
    if TIV_COLUMN not in table.columns:
        raise InputError("the tables have no TIV column: run segsuite morphometry (or give eTIV in the stats)")
    tiv = table[TIV_COLUMN].to_numpy(dtype=np.float64)
    volumes = table[volume_columns].to_numpy(dtype=np.float64)
    failed = np.zeros(len(table), dtype=bool)
    if ratings is not None:
        from ..review.ratings import review_columns

        failed = np.array(review_columns(ids, ratings, engine)[2], dtype=bool)
        tiv, volumes = tiv.copy(), volumes.copy()
        tiv[failed] = np.nan     # a failed segmentation's TIV and volumes are not data
        volumes[failed] = np.nan
    analysis = pd.DataFrame(np.column_stack([tiv, volumes]) if len(table) else np.empty((0, 1 + len(volume_columns))),
                            columns=[TIV_COLUMN] + volume_columns)
    wide = pd.concat([ids, analysis], axis=1)
    proportional = pd.concat([ids, pd.DataFrame(proportional_correction(volumes, tiv), columns=volume_columns)], axis=1)
    residuals, slopes, intercepts = residual_correction(volumes, tiv)
    residual = pd.concat([ids, pd.DataFrame(residuals, columns=volume_columns)], axis=1)
    residual_fit = pd.DataFrame({"region": volume_columns, "slope": slopes, "intercept": intercepts,
                                 "n": np.isfinite(volumes).sum(axis=0)})
    warnings = []
    unfitted = [c for c, slope in zip(volume_columns, slopes) if not np.isfinite(slope)]
    if unfitted:
        warnings.append(f"the residual TIV correction needs at least {MIN_RESIDUAL_SUBJECTS} subjects with a value and "
                        f"different TIVs per region; not estimated (n/a) for {len(unfitted)} of {len(volume_columns)} "
                        f"regions ({', '.join(unfitted[:3])}{', ...' if len(unfitted) > 3 else ''})")
    quality = pd.concat([ids, table[quality_columns].reset_index(drop=True)], axis=1)

    reasons = [[] for _ in range(len(table))]
    severity = np.zeros(len(table))
    for column in quality_columns:
        values = table[column].to_numpy(dtype=np.float64)
        if column.startswith(QC_PREFIX):
            bad = np.nan_to_num(values, nan=1.0) < qc_threshold
            severity += np.where(bad, qc_threshold - np.nan_to_num(values, nan=1.0), 0) * 10
            label = f"SynthSeg QC {column[len(QC_PREFIX):]} < {qc_threshold:g}"
        elif column.startswith(ZSCORE_PREFIX):
            bad = np.abs(np.nan_to_num(values)) > z_limit
            severity += np.where(bad, np.abs(np.nan_to_num(values)) - z_limit, 0)
            label = f"ScLimbic |z| {column[len(ZSCORE_PREFIX):]} > {z_limit:g}"
        else:
            deviation, bad = robust_outliers(values, mad_limit)
            severity += np.where(bad, np.minimum(np.abs(np.nan_to_num(deviation)), 1e6) - mad_limit, 0)
            label = f"{column} beyond {mad_limit:g} MADs"
        for index in np.flatnonzero(bad):
            reasons[index].append(f"{label} ({values[index]:.4g})")
    flags = pd.concat([ids, pd.DataFrame({"n_flags": [len(r) for r in reasons], "severity": severity,
                                          "reasons": ["; ".join(r) for r in reasons]})], axis=1)
    if ratings is not None:
        from ..review.ratings import RATING_COLUMN, STATUS_COLUMN, review_columns

        rated, status, _ = review_columns(ids, ratings, engine, flags["reasons"].tolist())
        for frame in (wide, proportional, residual, quality, flags):
            frame.insert(2, STATUS_COLUMN, status)
            frame.insert(2, RATING_COLUMN, rated)
    ranking = pd.concat([flags, quality[quality_columns]], axis=1)
    ranking = ranking.sort_values(["n_flags", "severity", "participant_id"], ascending=[False, False, True],
                                  kind="stable").reset_index(drop=True)
    ranking.insert(0, "rank", np.arange(1, len(ranking) + 1))
    return MorphometryGroupTables(wide=wide, proportional=proportional, residual=residual, residual_fit=residual_fit,
                                  quality=quality, flags=flags, ranking=ranking, volume_columns=volume_columns,
                                  warnings=warnings)


GROUP_FILES = {"wide": "group_volumes.tsv", "proportional": "group_volumes_tiv-proportional.tsv",
               "residual": "group_volumes_tiv-residual.tsv", "residual_fit": "group_tiv-residual_fit.tsv",
               "quality": "group_quality.tsv", "flags": "group_qc_flags.tsv", "ranking": "group_qc_ranking.tsv"}


def write_morphometry_group_tables(tables: MorphometryGroupTables, folder: str, overwrite: bool = False,
                                   inputs: Sequence[str] = ()) -> dict:
    """Write the group tables (TSV, 'n/a' for missing) into ``folder`` atomically; returns the paths."""
    from ..image import OutputTransaction

    from ..table_values import frame_text

    paths = {kind: os.path.join(folder, name) for kind, name in GROUP_FILES.items()}
    volumes = [TIV_COLUMN] + list(tables.volume_columns)
    volume_columns = {"wide": volumes, "proportional": volumes, "residual": volumes, "residual_fit": ["intercept"]}
    with OutputTransaction(overwrite=overwrite, inputs=inputs) as transaction:
        for kind, path in paths.items():
            transaction.write_text(path, frame_text(getattr(tables, kind), volume_columns.get(kind, ())))
    return paths


__all__ = ["build_group_tables", "read_subject_tables", "write_morphometry_group_tables",
           "proportional_correction", "residual_correction", "robust_outliers", "MorphometryGroupTables", "HIGHER_IS_BETTER"]
