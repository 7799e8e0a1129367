"""What to process: the T1w images of a BIDS dataset, or the rows of a manifest.

A BIDS dataset is listed with bids2table (one parquet index cached in the work folder, reused
while the dataset's subject folders are unchanged); a manifest is a CSV/TSV with
participant_id, optional session_id, and path (relative paths are relative to the manifest).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..errors import InputError, UsageError

# The entities of a T1w file that its derivatives keep, in BIDS order (sub and ses come first).
KEPT_ENTITIES = ("acq", "ce", "rec", "run")
LABEL = re.compile(r"^[A-Za-z0-9]+$")
DEFAULT_FILTER = {"datatype": "anat", "suffix": "T1w", "extension": [".nii.gz", ".nii"]}
# bids2table's column for an entity of a filter file written with PyBIDS / fMRIPrep names.
FILTER_COLUMNS = {"subject": "sub", "session": "ses", "acquisition": "acq", "ceagent": "ce",
                  "reconstruction": "rec", "run": "run", "datatype": "datatype", "suffix": "suffix",
                  "extension": "ext", "space": "space", "echo": "echo", "part": "part", "task": "task"}


@dataclass(frozen=True)
class CohortItem:
    """One image to process: participant and session labels (without sub-/ses-) and its path."""

    participant: str
    session: Optional[str]
    path: str
    entities: tuple = field(default=())      # ((name, value), ...) kept in the output names
    source_uri: str = ""                     # BIDS URI of the input (bids:raw:sub-01/anat/...)

    @property
    def key(self) -> str:
        """The Dask task key and the prefix of every output name: sub-01_ses-2[_acq-x_run-1]."""
        parts = [f"sub-{self.participant}"] + ([f"ses-{self.session}"] if self.session else [])
        parts += [f"{name}-{value}" for name, value in self.entities]
        return "_".join(parts)

    @property
    def folder(self) -> str:
        """The folder committed as a whole: sub-01 or sub-01/ses-2 (relative to the output)."""
        return f"sub-{self.participant}" + (f"/ses-{self.session}" if self.session else "")

    def as_dict(self) -> dict:
        return {"participant": self.participant, "session": self.session, "path": self.path,
                "entities": [list(pair) for pair in self.entities], "source_uri": self.source_uri}

    @classmethod
    def from_dict(cls, values: dict) -> "CohortItem":
        return cls(values["participant"], values.get("session"), values["path"],
                   tuple(tuple(pair) for pair in values.get("entities", ())), values.get("source_uri", ""))


def read_labels(values: Optional[Sequence[str]], prefix: str) -> Optional[set[str]]:
    """--participant-label / --session-label: labels with or without 'sub-'/'ses-', or files of them."""
    if not values:
        return None
    labels: set[str] = set()
    for value in values:
        words = Path(value).read_text(encoding="utf-8").split() if os.path.isfile(value) else [value]
        for word in words:
            label = word[len(prefix):] if word.startswith(prefix) else word
            if not LABEL.match(label):
                raise UsageError(f"{word!r} is not a valid {prefix.rstrip('-')} label (letters and digits only)")
            labels.add(label)
    return labels


def read_filter_file(path: Optional[str]) -> dict:
    """--bids-filter-file: {"t1w": {"acquisition": "mprage", ...}} (fMRIPrep's layout) or the inner dict."""
    if not path:
        return dict(DEFAULT_FILTER)
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the BIDS filter file {path}: {error}") from None
    content = content.get("t1w", content) if isinstance(content, dict) else content
    if not isinstance(content, dict):
        raise UsageError(f"the BIDS filter file {path} must hold a JSON object such as {{\"t1w\": {{\"acquisition\": \"mprage\"}}}}")
    unknown = sorted(set(content) - set(FILTER_COLUMNS))
    if unknown:
        raise UsageError(f"the BIDS filter file {path} names unknown entities: {', '.join(unknown)}")
    merged = dict(DEFAULT_FILTER)
    merged.update(content)
    return merged


def _index_path(bids_dir: Path, work_dir: Path) -> Path:
    digest = hashlib.sha256(str(bids_dir.resolve()).encode()).hexdigest()[:12]
    return work_dir / f"bids2table-{digest}.parquet"


def _dataset_stamp(bids_dir: Path) -> list:
    """Changes when subject folders are added, removed or changed (their mtimes)."""
    stamp = []
    with os.scandir(bids_dir) as entries:
        for entry in entries:
            if entry.name.startswith("sub-") and entry.is_dir():
                stamp.append([entry.name, entry.stat().st_mtime_ns])
    return sorted(stamp)


def index_bids(bids_dir: str | os.PathLike, work_dir: str | os.PathLike, max_workers: int = 0):
    """The bids2table index of a dataset as a pandas DataFrame, cached as parquet in ``work_dir``."""
    import pyarrow.parquet as pq
    from bids2table import batch_index_dataset, index_dataset

    bids_dir, work_dir = Path(bids_dir), Path(work_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"{bids_dir} is not a BIDS dataset (no dataset_description.json); "
                         "give a BIDS folder, or a CSV/TSV manifest with participant_id and path")
    cache = _index_path(bids_dir, work_dir)
    stamp = json.dumps(_dataset_stamp(bids_dir))
    stamp_file = cache.with_suffix(".stamp.json")
    if cache.is_file() and stamp_file.is_file() and stamp_file.read_text(encoding="utf-8") == stamp:
        return pq.read_table(cache).to_pandas()
    if max_workers and max_workers > 1:
        table = batch_index_dataset([bids_dir], max_workers=max_workers)
    else:
        table = index_dataset(bids_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    temp = cache.with_suffix(f".tmp{os.getpid()}")
    pq.write_table(table, temp)
    os.replace(temp, cache)
    stamp_file.write_text(stamp, encoding="utf-8")
    return table.to_pandas()


def _matches(column, wanted):
    import pandas as pd

    if wanted is None:
        return column.isna()
    if isinstance(wanted, list):
        mask = pd.Series(False, index=column.index)
        for value in wanted:
            mask |= _matches(column, value)
        return mask
    return column.astype("string") == str(wanted)


def select_t1w(index, bids_dir: str | os.PathLike, participants: Optional[set[str]] = None,
               sessions: Optional[set[str]] = None, filters: Optional[dict] = None) -> list[CohortItem]:
    """The T1w images to segment, one CohortItem each, sorted by key."""
    filters = dict(DEFAULT_FILTER if filters is None else filters)
    rows = index
    if len(rows):
        for name, wanted in filters.items():
            rows = rows[_matches(rows[FILTER_COLUMNS[name]], wanted)]
        if participants is not None:
            rows = rows[rows["sub"].isin(participants)]
        if sessions is not None:
            rows = rows[rows["ses"].isin(sessions)]
    items = []
    for row in rows.to_dict("records"):
        entities = tuple((name, str(row[name])) for name in KEPT_ENTITIES
                         if row.get(name) is not None and str(row[name]) not in ("", "nan", "None"))
        session = row.get("ses")
        session = None if session is None or str(session) in ("", "nan", "None") else str(session)
        items.append(CohortItem(str(row["sub"]), session, str(Path(row["root"]) / row["path"]), entities,
                                f"bids:raw:{row['path']}"))
    if participants is not None:
        missing = sorted(participants - {item.participant for item in items})
        if missing:
            raise InputError(f"no T1w image found for participant(s) {', '.join('sub-' + m for m in missing)} "
                             f"in {bids_dir}")
    return sorted(items, key=lambda item: item.key)


def read_manifest(path: str | os.PathLike, participants: Optional[set[str]] = None,
                  sessions: Optional[set[str]] = None) -> list[CohortItem]:
    """A CSV/TSV with participant_id, optional session_id, and path (e.g. UK Biobank's <eid>/T1/T1.nii.gz)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise InputError(f"cannot read the manifest {path}: {error.strerror}") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.splitlines()[0] else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = set(reader.fieldnames or ())
    if not {"participant_id", "path"} <= columns:
        raise InputError(f"the manifest {path} needs the columns participant_id and path "
                         f"(optional session_id); it has {', '.join(sorted(columns)) or 'none'}")
    items, seen = [], set()
    for number, row in enumerate(reader, start=2):
        participant = (row.get("participant_id") or "").strip()
        participant = participant[4:] if participant.startswith("sub-") else participant
        session = (row.get("session_id") or "").strip()
        session = (session[4:] if session.startswith("ses-") else session) or None
        for what, label in (("participant_id", participant), ("session_id", session)):
            if label is not None and not LABEL.match(label):
                raise InputError(f"{path}, line {number}: {what} {label!r} must be letters and digits only")
        image = Path((row.get("path") or "").strip())
        if not str(image):
            raise InputError(f"{path}, line {number}: the path is empty")
        if not image.is_absolute():
            image = path.parent / image
        item = CohortItem(participant, session, str(image), (), image.resolve().as_uri())
        if item.key in seen:
            raise InputError(f"{path}, line {number}: {item.key} appears twice")
        seen.add(item.key)
        if (participants is None or participant in participants) and (sessions is None or session in sessions):
            items.append(item)
    return sorted(items, key=lambda item: item.key)


def is_manifest(path: str | os.PathLike) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in (".csv", ".tsv")


def duplicate_folders(items: Iterable[CohortItem]) -> dict[str, list[CohortItem]]:
    """Folders (sub-X[/ses-Y]) that more than one image would write: each is one commit unit."""
    groups: dict[str, list[CohortItem]] = {}
    for item in items:
        groups.setdefault(item.folder, []).append(item)
    return {folder: group for folder, group in groups.items() if len(group) > 1}
