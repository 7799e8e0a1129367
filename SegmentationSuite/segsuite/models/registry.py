"""The model registry: which files make up each model, where to get them, how to check them.

The registry is data (``registry.json`` beside this module). Each model has files; each file has
a standard name, a size and sha256 when known, and sources tried in order. A source is a plain URL,
a FreeSurfer git-annex object (its URL computed from the key), or a member of a zip / tar.gz.
A file whose sha256 is unknown says so (``"sha256": null, "verify": "first-use"``): its hash is
recorded on first install and enforced afterwards (see segsuite.models.manager).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import ModelError

REGISTRY_PATH = Path(__file__).with_name("registry.json")
ARCHIVE_KINDS = ("zip", "tar.gz")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def annex_extension(file_name: str, max_length: int = 4, max_count: int = 2) -> str:
    """The extension git-annex's SHA256E backend keeps in a key for this file name.

    git-annex keeps at most two trailing extensions, each at most 4 alphanumeric characters,
    stopping at the first one that is longer or has other characters:
    ``synthseg_2.0.h5`` -> ``.0.h5``; ``sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5`` -> ``.h5``.
    """
    parts = file_name.split(".")[1:]
    kept: list[str] = []
    for part in reversed(parts):
        if not part or len(part) > max_length or not part.isalnum() or len(kept) == max_count:
            break
        kept.insert(0, part)
    return "".join("." + part for part in kept)


def annex_key(file_name: str, size: int, sha256: str) -> str:
    return f"SHA256E-s{size}--{sha256}{annex_extension(file_name)}"


def annex_url(base: str, key: str) -> str:
    """URL of a git-annex object in a bare annex's objects/ tree: <base>/<dir>/<key>/<key>,
    where <dir> is the first 3 / next 3 hex characters of md5(key) (git-annex's hashdirlower)."""
    digest = hashlib.md5(key.encode()).hexdigest()
    return f"{base.rstrip('/')}/{digest[:3]}/{digest[3:6]}/{key}/{key}"


@dataclass(frozen=True)
class Source:
    url: str
    archive: Optional[str] = None   # None (plain file), "zip" or "tar.gz"
    member: Optional[str] = None    # glob naming one file, or for folders one directory, in the archive

    @property
    def download_name(self) -> str:
        """The file name the download is stored under (the URL's last path segment)."""
        name = posixpath.basename(urllib.parse.urlparse(self.url).path)
        return urllib.parse.unquote(name) or "download"


@dataclass(frozen=True)
class FileSpec:
    name: str                       # standard name in the installed folder
    sources: tuple[Source, ...]
    size: Optional[int] = None
    sha256: Optional[str] = None    # None: unknown, trusted on first use
    kind: str = "file"              # "file" or "folder" (a tree unpacked from an archive)
    require: tuple[str, ...] = ()   # globs a folder must contain
    note: str = ""

    @property
    def trust(self) -> str:
        return "registry" if self.sha256 else "first-use"


@dataclass(frozen=True)
class ModelSpec:
    id: str
    title: str
    version: str
    files: tuple[FileSpec, ...]
    licence: dict = field(default_factory=dict)
    citations: tuple[str, ...] = ()
    in_freesurfer: bool = True  # FreeSurfer ships its files in $FREESURFER_HOME/models (models import-freesurfer)

    @property
    def known_size(self) -> Optional[int]:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)


class Registry:
    """Models by id, built from the JSON registry (or a test's own dict)."""

    def __init__(self, models: list[ModelSpec]):
        self.models = {m.id: m for m in models}

    def __iter__(self):
        return iter(self.models.values())

    def __contains__(self, model_id: str) -> bool:
        return model_id in self.models

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(self.models) or "none"
            raise ModelError(f"unknown model {model_id!r}; known models: {known}") from None

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Registry":
        path = Path(path) if path else REGISTRY_PATH
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot read the model registry {path}: {error}") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str = "registry") -> "Registry":
        try:
            return cls([_model(m, data) for m in data["models"]])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"invalid model registry {where}: {error}") from None


def _model(entry: dict, data: dict) -> ModelSpec:
    licences, citations = data.get("licences", {}), data.get("citations", {})
    licence = entry.get("licence", {})
    if isinstance(licence, str):
        licence = licences[licence]
    return ModelSpec(
        id=entry["id"], title=entry.get("title", entry["id"]), version=str(entry.get("version", "")),
        files=tuple(_file(f, data.get("annex_base")) for f in entry["files"]),
        licence=dict(licence), citations=tuple(citations.get(c, c) for c in entry.get("citations", ())),
        in_freesurfer=bool(entry.get("in_freesurfer", True)))


def _file(entry: dict, annex_base: Optional[str]) -> FileSpec:
    name, size, sha256 = entry["name"], entry.get("size"), entry.get("sha256")
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"bad file name {name!r}")
    if sha256 is not None and not _SHA256.match(sha256):
        raise ValueError(f"{name}: sha256 must be 64 lowercase hex digits or null")
    if sha256 is None and entry.get("verify") != "first-use":
        raise ValueError(f"{name}: a file without sha256 must say \"verify\": \"first-use\"")
    kind = entry.get("kind", "file")
    if kind not in ("file", "folder"):
        raise ValueError(f"{name}: kind must be 'file' or 'folder'")
    sources = []
    for source in entry["sources"]:
        if source.get("annex"):
            if not (annex_base and size and sha256):
                raise ValueError(f"{name}: an annex source needs annex_base, size and sha256")
            sources.append(Source(annex_url(annex_base, annex_key(name, size, sha256))))
            continue
        archive = source.get("archive")
        if archive not in (None, *ARCHIVE_KINDS):
            raise ValueError(f"{name}: archive must be one of {ARCHIVE_KINDS}")
        if (archive is None) != (source.get("member") is None):
            raise ValueError(f"{name}: an archive source needs a member, a plain one must not have one")
        if kind == "folder" and archive is None:
            raise ValueError(f"{name}: a folder comes from an archive")
        sources.append(Source(source["url"], archive, source.get("member")))
    if not sources:
        raise ValueError(f"{name}: no sources")
    return FileSpec(name=name, sources=tuple(sources), size=size, sha256=sha256, kind=kind,
                    require=tuple(entry.get("require", ())), note=entry.get("note", ""))
