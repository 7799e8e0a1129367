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
SUBJECT_DIR = re.compile(r"^sub-[A-Za-z0-9]+$")
JSON_DATA_SUFFIXES = {"coordsystem"}   # JSON files that are data, not sidecars (as bids2table)
INDEX_FORMAT = 2                       # bump when index_subjects changes what it writes
PARALLEL_MIN_SUBJECTS = 20000          # a spawned crawler costs ~1 s (imports), the crawl of ~10,000 subjects
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


def _subject_dirs(bids_dir: Path) -> list[os.DirEntry]:
    with os.scandir(bids_dir) as entries:
        return sorted((entry for entry in entries if SUBJECT_DIR.match(entry.name) and entry.is_dir()),
                      key=lambda entry: entry.name)


def _dataset_stamp(bids_dir: Path, subjects: list[os.DirEntry]) -> str:
    """A digest that changes when a subject, session or datatype folder is added, removed or changed.

    Adding or removing a file changes its folder's mtime, so the mtimes of sub-X, sub-X/ses-Y and
    their datatype folders (anat, func, ...) catch new images without reading every file.
    """
    from importlib.metadata import version

    # The crawler's and bids2table's versions too: either may change the rows or the schema.
    digest = hashlib.sha256(f"{INDEX_FORMAT}\0{version('bids2table')}\0{bids_dir.resolve()}\n".encode())
    stack = [(entry.path, entry.stat().st_mtime_ns) for entry in reversed(subjects)]
    while stack:
        path, mtime = stack.pop()
        digest.update(f"{path}\0{mtime}\n".encode())
        name = os.path.basename(path)
        if name.startswith(("sub-", "ses-")):
            with os.scandir(path) as entries:
                children = sorted((child for child in entries if "." not in child.name and child.is_dir()),
                                  key=lambda child: child.name, reverse=True)
            stack.extend((child.path, child.stat().st_mtime_ns) for child in children)
    return digest.hexdigest()


def _is_indexed_file(name: str, entities: dict) -> bool:
    """bids2table's rule: a suffix and an extension; JSON sidecars are metadata, not files."""
    if not (entities.get("suffix") and entities.get("ext")):
        return False
    if entities["ext"] == ".json":
        return entities.get("datatype") is not None and entities["suffix"] in JSON_DATA_SUFFIXES
    return True


def index_subjects(bids_dir: str, names: Sequence[str]):
    """The bids2table index (its Arrow schema and entity parsing) of some subject folders, as one table.

    bids2table's own index_dataset builds one Arrow table per subject through glob and pathlib,
    about 22 s for 40,000 subjects on this machine; walking with os.scandir and building one table
    per batch gives the same rows several times faster, and batches spread over processes.
    """
    import pyarrow as pa
    from bids2table import get_arrow_schema, parse_bids_entities, validate_bids_entities

    root = Path(bids_dir)
    root_text, dataset = str(root.absolute()), root.name
    records = []
    for name in names:
        stack = [name]
        while stack:
            relative = stack.pop()
            with os.scandir(os.path.join(root, relative)) as entries:
                children = sorted(entries, key=lambda entry: entry.name)
            for entry in children:
                if entry.name.startswith("."):
                    continue
                path = f"{relative}/{entry.name}"
                if entry.name.startswith("sub-") and "." in entry.name:
                    # A file, or a folder that BIDS treats as one file (.ome.zarr, .ds): not entered.
                    entities = parse_bids_entities(path)
                    if _is_indexed_file(entry.name, entities):
                        valid, extra = validate_bids_entities(entities)
                        records.append({"dataset": dataset, **valid, "extra_entities": extra,
                                        "root": root_text, "path": path})
                elif entry.is_dir():
                    stack.append(path)
    return pa.Table.from_pylist(records, schema=get_arrow_schema())


def crawl_processes(subjects: int, max_workers: int) -> int:
    """How many processes crawl ``subjects`` folders: at most max_workers and the CPUs, each a fair share."""
    return min(max(1, max_workers), os.cpu_count() or 1, max(1, subjects // PARALLEL_MIN_SUBJECTS))


def _crawl(bids_dir: Path, names: list[str], max_workers: int):
    """index_subjects over all subjects, in batches spread over ``max_workers`` spawned processes."""
    import pyarrow as pa

    workers = crawl_processes(len(names), max_workers)
    if workers == 1:
        return index_subjects(str(bids_dir), names)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = -(-len(names) // (4 * workers))
    batches = [names[start:start + size] for start in range(0, len(names), size)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        tables = list(pool.map(index_subjects, [str(bids_dir)] * len(batches), batches))
    return pa.concat_tables(tables).combine_chunks()


def index_bids(bids_dir: str | os.PathLike, work_dir: str | os.PathLike, max_workers: int = 1):
    """The bids2table index of a dataset as a pandas DataFrame, cached as parquet in ``work_dir``.

    The cache is reused while the stamp of its subject/session/datatype folders is unchanged;
    ``max_workers`` processes crawl the subjects when there are many (``--nprocs``).
    """
    import pyarrow.parquet as pq

    bids_dir, work_dir = Path(bids_dir), Path(work_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"{bids_dir} is not a BIDS dataset (no dataset_description.json); "
                         "give a BIDS folder, or a CSV/TSV manifest with participant_id and path")
    cache = _index_path(bids_dir, work_dir)
    subjects = _subject_dirs(bids_dir)
    stamp = _dataset_stamp(bids_dir, subjects)
    stamp_file = cache.with_suffix(".stamp")
    if cache.is_file() and stamp_file.is_file() and stamp_file.read_text(encoding="utf-8") == stamp:
        return pq.read_table(cache).to_pandas()
    table = _crawl(bids_dir, [entry.name for entry in subjects], max_workers)
    temp = cache.with_suffix(f".tmp{os.getpid()}")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, temp)
        os.replace(temp, cache)
        stamp_file.write_text(stamp, encoding="utf-8")
    except OSError as error:  # a full disk or a read-only work folder: one line naming the file
        from ..image import write_error

        if temp.exists():
            os.remove(temp)
        raise write_error(error, cache) from None
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


def _name_entities(path: str) -> dict[str, str]:
    parts = os.path.basename(path).split("_")[:-1]
    return dict(part.split("-", 1) for part in parts if "-" in part)


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
    columns = ["sub", "ses", *KEPT_ENTITIES, "root", "path"]
    for row in rows[[column for column in columns if column in rows.columns]].to_dict("records"):
        # Values as the file name spells them (run-01 stays run-01; pandas would give run 1.0).
        written = _name_entities(row["path"])
        entities = tuple((name, written[name]) for name in KEPT_ENTITIES
                         if name in written and row.get(name) is not None and str(row[name]) not in ("", "nan", "None"))
        session = row.get("ses")
        session = None if session is None or str(session) in ("", "nan", "None") else str(session)
        items.append(CohortItem(str(row["sub"]), session, str(Path(row["root"]) / row["path"]), entities,
                                f"bids:raw:{row['path']}"))
    require_participants(items, participants, bids_dir, "T1w image")
    return sorted(items, key=lambda item: item.key)


def require_participants(items, participants: Optional[set[str]], bids_dir, what: str) -> None:
    """A participant named by --participant-label but without any item is an error, not silence."""
    if participants is None:
        return
    missing = sorted(participants - {item.participant for item in items})
    if missing:
        raise InputError(f"no {what} found for participant(s) {', '.join('sub-' + m for m in missing)} in {bids_dir}")


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
