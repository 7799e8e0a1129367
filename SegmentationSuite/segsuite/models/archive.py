"""Taking one file or one folder out of a zip or tar.gz, never writing outside the target.

Nothing is extracted with the archive libraries' own extract functions: member bytes are copied
to paths computed here. An archive with an absolute member path or a ``..`` component is refused
as a whole; a link or device inside the part being extracted is refused too.
"""

from __future__ import annotations

import fnmatch
import gzip
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from ..errors import ModelError


class ArchiveError(ModelError):
    """The archive cannot give what was asked: unreadable, member missing, or unsafe."""


class UnsafeArchiveError(ArchiveError):
    """The archive holds a path that would escape the target folder, or a link."""


@dataclass
class _Member:
    name: str            # normalised, relative, "/"-separated
    kind: str            # "file", "dir" or "other" (link, device, ...)
    size: int
    open: Callable


def _members(path: Path, kind: str, label: str) -> Iterator[_Member]:
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    mode = info.external_attr >> 16
                    if info.is_dir():
                        member_kind = "dir"
                    elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):    # a symlink or device
                        member_kind = "other"
                    else:
                        member_kind = "file"
                    yield _Member(_checked_name(info.filename, label), member_kind, info.file_size,
                                  lambda info=info: archive.open(info))
        elif kind == "tar.gz":
            with tarfile.open(path, "r:gz") as archive:
                for info in archive:
                    member_kind = "file" if info.isreg() else "dir" if info.isdir() else "other"
                    yield _Member(_checked_name(info.name, label), member_kind, info.size,
                                  lambda info=info: archive.extractfile(info))
        else:
            raise ArchiveError(f"unknown archive kind {kind!r}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ArchiveError(f"{label} is not a readable {kind} archive: {error}") from None


def _checked_name(raw: str, label: str) -> str:
    name = raw.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise UnsafeArchiveError(f"{label} contains the unsafe path {raw!r} (absolute or with '..'); "
                                 "refusing to extract anything from it")
    return "/".join(p for p in parts if p not in ("", "."))


def _ignored(name: str) -> bool:
    """macOS resource-fork debris that zips made on a Mac carry."""
    return name.startswith("__MACOSX/") or PurePosixPath(name).name.startswith("._")


def list_members(path: Path, kind: str, label: str = "") -> list[_Member]:
    """All members (names checked for safety; the whole archive is refused if one is unsafe)."""
    return [m for m in _members(path, kind, label or path.name) if not _ignored(m.name)]


def extract_file(path: Path, kind: str, pattern: str, target: Path, label: str = "") -> None:
    """Copy the one regular file matching ``pattern`` to ``target``."""
    label = label or path.name
    list_members(path, kind, label)              # refuse unsafe archives before anything else
    for member in _members(path, kind, label):
        if _ignored(member.name) or not fnmatch.fnmatchcase(member.name, pattern):
            continue
        if member.kind != "file":
            raise UnsafeArchiveError(f"{label}: {member.name} is not a regular file (a link?); refusing it")
        _copy(member, target)
        return
    raise ArchiveError(f"{label} has no member matching {pattern!r}")


def extract_folder(path: Path, kind: str, pattern: str, target: Path,
                   free_space_check: Callable[[int], None] = lambda n: None, label: str = "") -> None:
    """Copy the one folder whose path matches ``pattern`` (with everything in it) to ``target``."""
    label = label or path.name
    members = list_members(path, kind, label)
    folders = set()
    for member in members:
        parents = PurePosixPath(member.name).parents
        folders.update(str(p) for p in parents if str(p) != ".")
        if member.kind == "dir":
            folders.add(member.name)
    matches = sorted(f for f in folders if fnmatch.fnmatchcase(f, pattern))
    if len(matches) != 1:
        what = "no folder" if not matches else f"{len(matches)} folders ({', '.join(matches)})"
        raise ArchiveError(f"{label} has {what} matching {pattern!r}")
    prefix = matches[0] + "/"
    inside = [m for m in members if m.name.startswith(prefix)]
    links = [m.name for m in inside if m.kind == "other"]
    if links:
        raise UnsafeArchiveError(f"{label} has links or special files inside {matches[0]} "
                                 f"({', '.join(links[:3])}); refusing it")
    free_space_check(sum(m.size for m in inside if m.kind == "file"))
    target.mkdir(parents=True, exist_ok=True)
    wanted = {m.name for m in inside if m.kind == "file"}
    for member in _members(path, kind, label):   # a second pass: tar members are read in order
        if member.name in wanted:
            destination = target.joinpath(*member.name[len(prefix):].split("/"))
            _copy(member, destination)


def _copy(member: _Member, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    source = member.open()
    if source is None:
        raise ArchiveError(f"cannot read {member.name} from the archive")
    with source, open(destination, "wb") as stream:
        shutil.copyfileobj(source, stream, 1 << 20)
