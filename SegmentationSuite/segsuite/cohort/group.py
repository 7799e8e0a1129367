"""Group level: the per-subject tables gathered into wide group tables, and the failures.

``collect_cohort_tables`` returns plain DataFrames (participant_id, session_id first) so that
later group steps (TIV correction, QC flags, reports) take them from here;
``write_cohort_tables`` writes them as group_seg-<seg>_<table>.tsv at the dataset root.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..image import OutputTransaction

TABLE = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?(?P<rest>(?:_[a-z]+-[A-Za-z0-9]+)*?)"
                   r"_seg-(?P<seg>[A-Za-z0-9]+)_(?P<table>morph|qc)\.tsv$")


@dataclass
class CohortTables:
    """{"morph"|"qc": {seg: DataFrame}} and the failures of the last participant run."""

    tables: dict = field(default_factory=dict)
    failures: object = None
    preprocess: object = None  # segsuite preprocess's registration/bias QC rows (preprocess.group.qc_frame)


def _wide(path: Path, table: str, match):
    import pandas as pd

    long = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    column, value = ("name", "volume-mm3") if table == "morph" else ("name", "score")
    row = {"participant_id": f"sub-{match['sub']}", "session_id": f"ses-{match['ses']}" if match["ses"] else "n/a"}
    extra = match["rest"].strip("_")
    if extra:
        row["entities"] = extra
    row.update(zip(long[column].astype(str), long[value]))
    return row


def collect_cohort_tables(output_dir: str | os.PathLike) -> CohortTables:
    import pandas as pd

    output_dir = Path(output_dir)
    rows: dict = {}
    for subject in sorted(output_dir.glob("sub-*")):
        for path in sorted(subject.rglob("*_seg-*_*.tsv")):
            match = TABLE.match(path.name)
            if match:
                rows.setdefault(match["table"], {}).setdefault(match["seg"], []).append(_wide(path, match["table"], match))
    tables = {table: {seg: pd.DataFrame(found) for seg, found in by_seg.items()} for table, by_seg in rows.items()}
    from .derivatives import logs_dir

    failed = logs_dir(output_dir) / "failed.tsv"
    failures = pd.read_csv(failed, sep="\t", dtype=str, keep_default_na=False) if failed.is_file() else None
    from ..preprocess.group import find_records, qc_frame, qc_rows

    records = find_records(sorted(output_dir.glob("sub-*")))
    preprocess = qc_frame(qc_rows(records)[1])[0] if records else None
    return CohortTables(tables, failures, preprocess)


def write_cohort_tables(output_dir: str | os.PathLike, group: CohortTables, ratings=None) -> list[str]:
    """The wide tables at the dataset root; with ``ratings`` (review.ratings.read_ratings) the
    (subject, engine) rows rated fail have their analysis columns n/a, and every row says why."""
    from ..review.ratings import RATING_COLUMN, STATUS_COLUMN
    from ..table_values import frame_text

    output_dir = Path(output_dir)
    tables = group.tables
    if ratings is not None:
        from ..morphometry.group import MAD_LIMIT, QC_THRESHOLD, Z_LIMIT
        from .review import apply_ratings_to_cohort, engine_flags

        tables = apply_ratings_to_cohort(group, ratings, engine_flags(group, QC_THRESHOLD, Z_LIMIT, MAD_LIMIT))
    transaction = OutputTransaction(overwrite=True)
    try:
        for table, by_seg in tables.items():
            for seg, frame in by_seg.items():
                ids = ("participant_id", "session_id", "entities", RATING_COLUMN, STATUS_COLUMN)
                transaction.write_text(output_dir / f"group_seg-{seg}_{table}.tsv", frame_text(
                    frame, [c for c in frame.columns if c not in ids] if table == "morph" else ()))
        if group.failures is not None:
            transaction.write_text(output_dir / "group_failures.tsv",
                                   group.failures.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n"))
        written = transaction.commit()
    except BaseException:
        transaction.rollback()
        raise
    return sorted(os.path.basename(path) for path in written)
