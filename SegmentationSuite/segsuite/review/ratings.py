"""The reviewer's ratings (the TSV the review report exports) and what the group step does with them.

A (participant, session, engine) rated ``fail`` is left out of that engine's analysis columns (n/a)
and of the TIV fits; its row stays, with ``review_rating`` and ``review_status`` saying why. Every
other row says what it is: rated pass / artifact (kept, the note given) / skip, or not rated, and
then whether the automatic rules flagged it (``flagged by the automatic rules, not rated: ...``).
The last rating of a pair in the file counts (a later row is a later decision).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError
from .page import RATINGS, RATING_COLUMNS

RATING_COLUMN = "review_rating"
STATUS_COLUMN = "review_status"


@dataclass(frozen=True)
class Rating:
    rating: str
    note: str = ""
    rater: str = ""
    time: str = ""

    def describe(self) -> str:
        who = f" by {self.rater}" if self.rater else ""
        when = f" on {self.time}" if self.time else ""
        note = f": {self.note}" if self.note else ""
        return f"rated {self.rating}{who}{when}{note}"


def _session(value) -> str:
    text = "" if value is None else str(value).strip()
    return "" if text in ("", "n/a", "nan") else text


def read_ratings(path: str | os.PathLike, flag: str = "--qc-ratings") -> dict[tuple[str, str, str], Rating]:
    """{(participant_id, session_id or '', engine): Rating} from the report's TSV; a clear error when
    the file is not one."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
    except OSError as error:
        raise InputError(f"{flag} {path}: cannot read it ({error.strerror or error})") from error
    if not rows:
        raise InputError(f"{flag} {path} is empty: export the ratings from the QC report")
    header = [cell.strip() for cell in rows[0]]
    missing = [column for column in ("participant_id", "engine", "rating") if column not in header]
    if missing:
        raise InputError(f"{flag} {path} is not a ratings TSV (no {', '.join(missing)} column; the report exports "
                         f"{', '.join(RATING_COLUMNS)})")
    index = {name: header.index(name) for name in RATING_COLUMNS if name in header}
    ratings = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        get = lambda name: row[index[name]].strip() if name in index and index[name] < len(row) else ""  # noqa: E731
        rating = get("rating").lower()
        if rating not in RATINGS:
            raise InputError(f"{flag} {path} line {number}: rating {get('rating')!r} is not one of {', '.join(RATINGS)}")
        participant = get("participant_id")
        if not participant:
            raise InputError(f"{flag} {path} line {number}: no participant_id")
        ratings[(participant, _session(get("session_id")), get("engine"))] = Rating(
            rating, get("note"), get("rater"), get("time"))
    return ratings


def rating_for(ratings: dict, participant: str, session: str, engine: str) -> Optional[Rating]:
    return ratings.get((str(participant), _session(session), engine))


def status_text(rating: Optional[Rating], flag_reasons: str = "") -> str:
    """What ``review_status`` says for one row."""
    if rating is not None and rating.rating == "fail":
        return f"excluded: {rating.describe()}"
    if rating is not None and rating.rating != "skip":
        return f"kept: {rating.describe()}" + (f" (automatic flags: {flag_reasons})" if flag_reasons else "")
    prefix = "skipped by the reviewer" if rating is not None else "not rated"
    if flag_reasons:
        return f"flagged by the automatic rules, {prefix}: {flag_reasons}"
    return prefix


def review_columns(ids, ratings: dict, engine: str, reasons=None) -> tuple[list, list, list]:
    """(review_rating, review_status, failed) per row of ``ids`` (participant_id, session_id)."""
    ratings_out, status, failed = [], [], []
    for position, (participant, session) in enumerate(ids[["participant_id", "session_id"]].itertuples(index=False)):
        rating = rating_for(ratings, participant, session, engine)
        why = "" if reasons is None else str(reasons[position] or "")
        ratings_out.append(rating.rating if rating else "unrated")
        status.append(status_text(rating, why))
        failed.append(bool(rating and rating.rating == "fail"))
    return ratings_out, status, failed


def mark_frame(frame, ratings: dict, engine: str, analysis_columns, reasons=None):
    """A copy of a wide table with the failed rows' analysis columns set to n/a (NaN) and the review
    columns added after the ids."""
    import numpy as np

    frame = frame.copy()
    ids = frame[["participant_id"]].assign(session_id=frame["session_id"] if "session_id" in frame else "")
    rated, status, failed = review_columns(ids, ratings, engine, reasons)
    failed = np.array(failed, dtype=bool)
    for column in analysis_columns:
        if column in frame.columns:
            frame[column] = frame[column].astype("float64")
            frame.loc[failed, column] = np.nan
    position = 2 if "session_id" in frame.columns else 1
    frame.insert(position, STATUS_COLUMN, status)
    frame.insert(position, RATING_COLUMN, rated)
    return frame, failed
