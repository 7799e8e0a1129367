"""The model cache: download, offline install, FreeSurfer import, verification and removal.

Layout under the cache folder (SEGSUITE_HOME, see segsuite.models.config)::

    models/<model id>/            the installed files under their standard names
    models/<model id>/.segsuite-model.json   what was installed, from where, with sizes and sha256
    downloads/<model id>--<name>.part        interrupted downloads, resumed next time
    locks/<model id>.lock                    one process installs a model at a time
    trusted-hashes.json                      sha256 recorded on first use for files the registry
                                             has no checksum for; enforced on every later install

A model is built in a staging folder, every file checked (sha256 from the registry, or the
first-use record), and only then renamed into place, so a model folder is either complete and
verified or absent.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ModelError
from ..progress import ProgressCallback, ensure_callback, sub_progress
from . import archive as archives
from .config import DownloadSettings, download_settings, mirror_url, model_home, read_config
from .download import DownloadError, check_free_space, disk_error, fetch, new_session, sha256_of
from .registry import FileSpec, ModelSpec, Registry, Source

MANIFEST = ".segsuite-model.json"
TRUST_FILE = "trusted-hashes.json"
_UNKNOWN_SIZE_WEIGHT = 50_000_000    # progress weight of a file of unknown size


@dataclass
class ModelStatus:
    spec: ModelSpec
    path: Path
    installed: bool
    size: Optional[int]      # bytes installed, or the registry's total when not installed
    trust: str               # how the files are checked, in words


class ModelManager:
    """Downloads, installs and checks models. Arguments left out come from the environment/config."""

    def __init__(self, home=None, registry: Optional[Registry] = None, mirror: Optional[str] = None,
                 settings: Optional[DownloadSettings] = None, session=None, sleep=None):
        config = read_config() if home is None or mirror is None or settings is None else {}
        self.home = Path(home) if home is not None else model_home(config)
        self.registry = registry or Registry.load(os.environ.get("SEGSUITE_REGISTRY") or None)
        self.mirror = mirror if mirror is not None else mirror_url(config)
        self.settings = settings or download_settings(config)
        self._session = session
        self._sleep = sleep

    # ----- where things are
    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def path(self, model_id: str) -> Path:
        self.registry.get(model_id)
        return self.models_dir / model_id

    # ----- state
    def is_installed(self, model_id: str) -> bool:
        """Cheap check (no hashing): a manifest matching the registry and files of the right sizes."""
        spec = self.registry.get(model_id)
        manifest = self._manifest(model_id)
        if not manifest or manifest.get("model") != spec.id or manifest.get("version") != spec.version:
            return False
        root = self.path(model_id)
        for file in spec.files:
            record = manifest["files"].get(file.name)
            if not record or (file.sha256 and record.get("sha256") != file.sha256):
                return False
            for relpath, (size, _) in _contents(record, file).items():
                target = root / relpath
                if not target.is_file() or target.stat().st_size != size:
                    return False
        return True

    def state(self, model_id: str) -> str:
        """'installed', 'not installed', 'corrupt (sha256 mismatch)' or 'trust-on-first-use record only'.

        Corrupt: a manifest is there but a file is missing, has another size, or (for files whose
        modification time changed since the install) another sha256."""
        spec = self.registry.get(model_id)
        manifest = self._manifest(model_id)
        if manifest is None:
            records = self._trust_records()
            if any(f"{spec.id}/{f.name}" in records for f in spec.files if not f.sha256):
                return "trust-on-first-use record only"
            return "not installed"
        if not self.is_installed(model_id):
            return "corrupt (sha256 mismatch)"
        root = self.path(model_id)
        for file in spec.files:
            record = manifest["files"].get(file.name, {})
            for relpath, (size, sha) in _contents(record, file).items():
                target = root / relpath
                if record.get("mtime_ns", {}).get(relpath) != target.stat().st_mtime_ns and sha256_of(target) != sha:
                    return "corrupt (sha256 mismatch)"
        return "installed"

    def repair_hint(self, model_id: str, state: str) -> str:
        """The offline command that repairs ``state`` (and the online one)."""
        spec = self.registry.get(model_id)
        what = "FOLDER" if len(spec.files) > 1 else "FILE"
        if state.startswith("corrupt"):
            freesurfer = " (or `segsuite models import-freesurfer`)" if spec.in_freesurfer else ""
            return (f"the installed {model_id} is corrupt (sha256 mismatch); repair it offline with "
                    f"`segsuite models install {model_id} --from {what}`{freesurfer}, "
                    f"online with `segsuite models download --force {model_id}`")
        if state.startswith("trust"):
            return (f"{model_id} is not installed but its first-use sha256 is recorded; install the same files with "
                    f"`segsuite models install {model_id} --from {what}`, or drop the record with "
                    f"`segsuite models remove {model_id} --forget` to accept different ones")
        return f"{model_id} is {state}"

    def status(self, model_id: str) -> ModelStatus:
        spec = self.registry.get(model_id)
        installed = self.is_installed(model_id)
        if installed:
            manifest = self._manifest(model_id)
            size = sum(r["size"] for r in manifest["files"].values())
        else:
            size = spec.known_size
        return ModelStatus(spec, self.path(model_id), installed, size, self._trust_words(spec))

    def statuses(self) -> list[ModelStatus]:
        return [self.status(spec.id) for spec in self.registry]

    def _trust_words(self, spec: ModelSpec) -> str:
        unknown = [f for f in spec.files if not f.sha256]
        if not unknown:
            return "sha256 from registry"
        records = self._trust_records()
        recorded = [records.get(f"{spec.id}/{f.name}") for f in unknown]
        when = "recorded " + min(r["first_seen"][:10] for r in recorded) if all(recorded) else "not yet recorded"
        prefix = "first use" if len(unknown) == len(spec.files) else "sha256 from registry + first use"
        return f"{prefix} ({when})"

    # ----- installing
    def ensure(self, model_id: str, progress: Optional[ProgressCallback] = None) -> Path:
        """The installed folder of ``model_id``, downloading it first if needed."""
        spec = self.registry.get(model_id)
        if self.is_installed(model_id):
            state = self.state(model_id)
            if state != "installed":
                raise ModelError(self.repair_hint(model_id, state))
            return self.path(model_id)
        if self._manifest(model_id) is not None:   # there, but not intact: never silently downloaded over
            raise ModelError(self.repair_hint(model_id, "corrupt (sha256 mismatch)"))
        with self._model_lock(model_id, progress):
            if not self.is_installed(model_id):          # another process may have finished it
                self._install(spec, self._download_file, progress, "download")
        return self.path(model_id)

    def download(self, model_id: str, progress: Optional[ProgressCallback] = None, force: bool = False) -> Path:
        if force:
            self.remove(model_id)
        return self.ensure(model_id, progress)

    def install_from(self, model_id: str, source: str | os.PathLike,
                     progress: Optional[ProgressCallback] = None) -> Path:
        """Install from a local file, archive or folder (offline), checking every file."""
        spec = self.registry.get(model_id)
        source = Path(source).expanduser()
        if not source.exists():
            raise ModelError(f"{source} does not exist")
        local = _LocalSource(spec, source)
        with self._model_lock(model_id, progress):
            self._install(spec, local.obtain, progress, "install")
        return self.path(model_id)

    def import_freesurfer(self, freesurfer_home=None, model_ids=None,
                          progress: Optional[ProgressCallback] = None) -> list[tuple[str, str]]:
        """Install every model whose files are in $FREESURFER_HOME/models; returns (id, outcome)."""
        freesurfer_home = freesurfer_home or os.environ.get("FREESURFER_HOME")
        if not freesurfer_home:
            raise ModelError("no FreeSurfer folder given and FREESURFER_HOME is not set; "
                             "run `segsuite models import-freesurfer /path/to/freesurfer`")
        folder = Path(freesurfer_home).expanduser() / "models"
        if not folder.is_dir():
            raise ModelError(f"{folder} does not exist; is {freesurfer_home} a FreeSurfer installation (7.3 or later)?")
        specs = [self.registry.get(m) for m in model_ids] if model_ids else list(self.registry)
        outcomes = []
        for spec in specs:
            missing = [f.name for f in spec.files if not (folder / f.name).exists()]
            if missing and not spec.in_freesurfer:
                outcomes.append((spec.id, f"skipped: FreeSurfer does not ship it (get it with `segsuite models "
                                          f"download {spec.id}` or `segsuite models install {spec.id} --from ...`)"))
            elif missing:
                outcomes.append((spec.id, f"skipped: not in {folder} ({', '.join(missing)})"))
            elif self.is_installed(spec.id) and self._same_files(spec, folder):
                outcomes.append((spec.id, "already installed (same files)"))
            else:
                try:
                    self.install_from(spec.id, folder, progress)
                    outcomes.append((spec.id, "imported"))
                except ModelError as error:
                    outcomes.append((spec.id, f"failed: {error}"))
        return outcomes

    def _same_files(self, spec: ModelSpec, folder: Path) -> bool:
        manifest = self._manifest(spec.id) or {}
        for file in spec.files:
            record = manifest.get("files", {}).get(file.name, {})
            candidate = folder / file.name
            if not candidate.is_file() or candidate.stat().st_size != record.get("size"):
                return False
        return True

    def _install(self, spec: ModelSpec, obtain, progress, action: str) -> None:
        """Build the model in a staging folder, check it, rename it into place."""
        report = ensure_callback(progress)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.models_dir.glob(f".*-{spec.id}-*"):      # from a killed process
            shutil.rmtree(leftover, ignore_errors=True)
        staging = self.models_dir / f".staging-{spec.id}-{uuid.uuid4().hex[:8]}"
        context = _Operation(self, spec)
        weights = [f.size or _UNKNOWN_SIZE_WEIGHT for f in spec.files]
        total, done = float(sum(weights)), 0.0
        try:
            staging.mkdir()
            records = {}
            for file, weight in zip(spec.files, weights):
                part_progress = sub_progress(report, done / total, (done + weight) / total)
                records[file.name] = obtain(context, file, staging, part_progress)
                done += weight
            for name, record in records.items():   # what verification-free state checks compare
                file = next(f for f in spec.files if f.name == name)
                record["mtime_ns"] = {relpath: (staging / relpath).stat().st_mtime_ns
                                      for relpath in _contents(record, file)}
            manifest = {"model": spec.id, "version": spec.version, "action": action,
                        "installed": _now(), "files": records}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            self._record_first_use(spec, records)
            self._swap_in(staging, self.path(spec.id))
        except OSError as error:
            raise disk_error(error, Path(error.filename or self.home)) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            context.cleanup()
        report(1.0, f"{spec.id} installed")

    def _swap_in(self, staging: Path, final: Path) -> None:
        old = None
        if final.exists():
            old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
        os.replace(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _download_file(self, context: "_Operation", file: FileSpec, staging: Path, progress) -> dict:
        """Try each source (mirror first) until one gives a file that passes its check."""
        tried = []
        for source in self._sources(file):
            try:
                record = context.from_source(source, file, staging, progress)
                record["origin"] = source.url
                return record
            except DownloadError as error:
                tried.append(f"{source.url}: {error.reason}")
        raise ModelError(_failure_message(context.spec, file, tried))

    def _sources(self, file: FileSpec) -> list[Source]:
        sources = list(file.sources)
        if self.mirror:
            base = self.mirror.rstrip("/")
            mirrored = [] if file.kind == "folder" else [Source(f"{base}/{file.name}")]
            mirrored += [Source(f"{base}/{s.download_name}", s.archive, s.member) for s in file.sources if s.archive]
            sources = list(dict.fromkeys(mirrored)) + sources
        return sources

    # ----- checking
    def check(self, spec: ModelSpec, file: FileSpec, candidate: Path) -> dict:
        """The manifest record of a candidate file or folder; DownloadError saying why it is refused."""
        if file.kind == "folder":
            if not candidate.is_dir():
                raise DownloadError(f"{file.name} is not a folder")
            missing = [g for g in file.require if not any(candidate.glob(g))]
            if missing:
                raise DownloadError(f"{file.name} lacks {', '.join(missing)}")
            contents = {f"{file.name}/{p.relative_to(candidate).as_posix()}": [p.stat().st_size, sha256_of(p)]
                        for p in sorted(candidate.rglob("*")) if p.is_file()}
            digest = _tree_digest(contents, file.name)
            record = {"kind": "folder", "sha256": digest, "size": sum(s for s, _ in contents.values()),
                      "contents": contents}
        else:
            size = candidate.stat().st_size
            if file.size is not None and size != file.size:
                raise DownloadError(f"size {size} bytes, expected {file.size}")
            record = {"kind": "file", "sha256": sha256_of(candidate), "size": size}
        expected = file.sha256 or (self._trust_records().get(f"{spec.id}/{file.name}") or {}).get("sha256")
        if expected and record["sha256"] != expected:
            origin = "the registry" if file.sha256 else "the first install (trust on first use)"
            hint = "" if file.sha256 else f"; `segsuite models remove {spec.id} --forget` drops that record"
            raise DownloadError(f"sha256 {record['sha256']} does not match {expected} from {origin}{hint}")
        record["trust"] = file.trust
        return record

    def verify(self, model_id: str, progress: Optional[ProgressCallback] = None) -> list[str]:
        """Re-hash an installed model; the problems found (empty when it is intact)."""
        spec = self.registry.get(model_id)
        manifest = self._manifest(model_id)
        if manifest is None:
            return [f"{model_id} is not installed"]
        report, problems = ensure_callback(progress), []
        for index, file in enumerate(spec.files):
            report(index / len(spec.files), f"checking {file.name}")
            record = manifest.get("files", {}).get(file.name)
            candidate = self.path(model_id) / file.name
            if record is None or not candidate.exists():
                problems.append(f"{file.name} is missing")
                continue
            try:
                found = self.check(spec, file, candidate)
            except DownloadError as error:
                problems.append(f"{file.name}: {error.reason}")
                continue
            if found["sha256"] != record.get("sha256"):
                problems.append(f"{file.name}: changed since it was installed (sha256 {found['sha256']})")
        report(1.0, "checked")
        return problems

    def remove(self, model_id: str, forget: bool = False) -> bool:
        """Delete an installed model (and its partial downloads); ``forget`` also drops first-use records."""
        spec = self.registry.get(model_id)
        with self._model_lock(model_id, None):
            existed = self.path(model_id).exists()
            if existed:
                trash = self.models_dir / f".old-{model_id}-{uuid.uuid4().hex[:8]}"
                os.replace(self.path(model_id), trash)
                shutil.rmtree(trash, ignore_errors=True)
            for part in (self.home / "downloads").glob(f"{model_id}--*"):
                part.unlink(missing_ok=True)
        if forget:
            with self._trust_lock():
                records = self._trust_records()
                for file in spec.files:
                    records.pop(f"{spec.id}/{file.name}", None)
                self._write_trust_records(records)
        return existed

    # ----- first-use records
    def _trust_records(self) -> dict:
        path = self.home / TRUST_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot read {path}: {error}; delete it to record checksums afresh") from None

    def _write_trust_records(self, records: dict) -> None:
        path = self.home / TRUST_FILE
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        temporary.write_text(json.dumps(records, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)

    def _record_first_use(self, spec: ModelSpec, records: dict) -> None:
        unknown = [f for f in spec.files if not f.sha256]
        if not unknown:
            return
        with self._trust_lock():
            trusted = self._trust_records()
            for file in unknown:
                key, record = f"{spec.id}/{file.name}", records[file.name]
                if key in trusted and trusted[key]["sha256"] != record["sha256"]:
                    raise ModelError(f"{key} changed while installing; try again")
                trusted.setdefault(key, {"sha256": record["sha256"], "size": record["size"],
                                         "first_seen": _now(), "origin": record.get("origin", "")})
            self._write_trust_records(trusted)

    # ----- locks
    @contextmanager
    def _model_lock(self, model_id: str, progress):
        import filelock   # not needed to list models (only what Slicer bundles is there then)

        lock = filelock.FileLock(str(self._lock_dir() / f"{model_id}.lock"))
        try:
            lock.acquire(timeout=0.2)
        except filelock.Timeout:
            ensure_callback(progress)(0.0, f"waiting for another process installing {model_id}")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _trust_lock(self):
        import filelock

        return filelock.FileLock(str(self._lock_dir() / "trusted-hashes.lock"))

    def _lock_dir(self) -> Path:
        folder = self.home / "locks"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise disk_error(error, folder) from None
        return folder

    def _manifest(self, model_id: str) -> Optional[dict]:
        try:
            return json.loads((self.models_dir / model_id / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def session(self):
        if self._session is None:
            self._session = new_session()
        return self._session


class _Operation:
    """State of one install: downloaded archives are fetched once and deleted at the end."""

    def __init__(self, manager: ModelManager, spec: ModelSpec):
        self.manager, self.spec = manager, spec
        self.archives: dict[str, Path] = {}
        self.downloads = manager.home / "downloads"

    def from_source(self, source: Source, file: FileSpec, staging: Path, progress) -> dict:
        if source.archive is None:
            stem = f"{self.spec.id}--{file.name}"
            resumed = (self.downloads / f"{stem}.part").exists()
            part = self._download(source, stem, file.size, progress, file.name)
            try:
                return self._accept(file, part, staging)
            except DownloadError:
                if not resumed:
                    raise
                # the old .part may have come from another server or a changed file: once more, from zero
                part = self._download(source, stem, file.size, progress, file.name)
                return self._accept(file, part, staging)
        archive = self.archives.get(source.url)
        if archive is None:
            archive = self._download(source, f"{self.spec.id}--{source.download_name}", None, progress,
                                     source.download_name)
            self.archives[source.url] = archive
        progress(1.0, f"unpacking {file.name}")
        return _unpack(self, archive, source.archive, source.member, file, staging, source.download_name)

    def _download(self, source: Source, stem: str, size, progress, label: str) -> Path:
        manager = self.manager
        try:
            self.downloads.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise disk_error(error, self.downloads) from None
        part = self.downloads / f"{stem}.part"

        def bytes_done(done: int, total: Optional[int]) -> None:
            if total:
                progress(done / total, f"downloading {label}: {done / 1e6:.1f} of {total / 1e6:.1f} MB")
            else:
                progress(0.0, f"downloading {label}: {done / 1e6:.1f} MB")

        sleep = {"sleep": manager._sleep} if manager._sleep else {}
        fetch(source.url, part, session=manager.session(), settings=manager.settings, expected_size=size,
              progress=bytes_done, **sleep)
        return part

    def _accept(self, file: FileSpec, part: Path, staging: Path) -> dict:
        try:
            record = self.manager.check(self.spec, file, part)
        except DownloadError:
            part.unlink(missing_ok=True)     # a bad .part must never be resumed later
            raise
        os.replace(part, staging / file.name)
        return record

    def cleanup(self) -> None:
        for path in self.archives.values():
            path.unlink(missing_ok=True)


def _unpack(operation, archive: Path, kind: str, member: str, file: FileSpec, staging: Path,
            label: str = "") -> dict:
    """Take ``member`` of ``archive`` into staging/<file name> and check it."""
    scratch = staging / f".unpack-{file.name}"
    _discard(scratch)
    free = lambda n: check_free_space(staging, n, operation.manager.settings)  # noqa: E731
    try:
        if file.kind == "folder":
            archives.extract_folder(archive, kind, member, scratch, free, label)
        else:
            archives.extract_file(archive, kind, member, scratch, label)
        record = operation.manager.check(operation.spec, file, scratch)
    except archives.ArchiveError as error:
        _discard(scratch)
        raise DownloadError(str(error)) from None
    except BaseException:
        _discard(scratch)
        raise
    os.replace(scratch, staging / file.name)
    return record


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class _LocalSource:
    """Files given on the command line for an offline install: a file, an archive or a folder."""

    def __init__(self, spec: ModelSpec, path: Path):
        self.spec, self.path = spec, path

    def obtain(self, operation: _Operation, file: FileSpec, staging: Path, progress) -> dict:
        tried = []
        for kind, candidate, member in self._candidates(file):
            progress(0.0, f"checking {candidate.name}")
            try:
                if kind is not None:
                    record = _unpack(operation, candidate, kind, member, file, staging)
                else:
                    record = self._copy(operation, file, candidate, staging)
                record["origin"] = str(candidate)
                return record
            except DownloadError as error:
                tried.append(f"{candidate}: {error.reason}")
        if not tried:
            raise ModelError(f"{self.path} does not hold {file.name} for {self.spec.id}; "
                             f"{_what_to_give(self.spec)}. Nothing was installed.")
        raise ModelError(f"{file.name} for {self.spec.id} was refused (nothing was installed):\n  "
                         + "\n  ".join(tried))

    def _candidates(self, file: FileSpec):
        """(archive kind or None, path, member pattern) to try, in order."""
        path = self.path
        patterns = {s.archive: s.member for s in file.sources if s.archive}
        if path.is_dir():
            if file.kind == "folder":
                found = [path] if path.name == file.name else []
                found += sorted(p for p in path.glob(f"**/{file.name}") if p.is_dir())[:1]
                for candidate in found[:1]:
                    yield None, candidate, None
            elif (path / file.name).is_file():
                yield None, path / file.name, None
            for source in file.sources:
                if source.archive and (path / source.download_name).is_file():
                    yield source.archive, path / source.download_name, source.member
            return
        kind = _archive_kind(path)
        if kind is not None:
            if kind in patterns:
                yield kind, path, patterns[kind]
            elif file.kind == "folder":
                yield kind, path, f"*{file.name}"
            else:
                yield kind, path, file.name
                yield kind, path, f"*/{file.name}"
        elif file.kind == "file" and (path.name == file.name or len(self.spec.files) == 1):
            yield None, path, None

    def _copy(self, operation, file: FileSpec, candidate: Path, staging: Path) -> dict:
        target = staging / file.name
        if candidate.is_dir():
            shutil.copytree(candidate, target)
        else:
            check_free_space(staging, candidate.stat().st_size, operation.manager.settings)
            shutil.copyfile(candidate, target)
        try:
            return operation.manager.check(operation.spec, file, target)
        except DownloadError:
            _discard(target)
            raise


def _archive_kind(path: Path) -> Optional[str]:
    name = path.name.lower()
    if name.endswith(".zip") or (not name.endswith((".h5", ".pth")) and zipfile.is_zipfile(path)):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    return None


def _contents(record: dict, file: FileSpec) -> dict:
    """relpath -> (size, sha256) of what a manifest record installed."""
    if record.get("kind") == "folder":
        return {k: tuple(v) for k, v in record.get("contents", {}).items()}
    return {file.name: (record.get("size"), record.get("sha256"))}


def _tree_digest(contents: dict, name: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    for relpath, (size, sha) in sorted(contents.items()):
        digest.update(f"{relpath[len(name) + 1:]}\0{size}\0{sha}\n".encode())
    return digest.hexdigest()


def _what_to_give(spec: ModelSpec) -> str:
    names = ", ".join(f.name for f in spec.files)
    archives_ = sorted({s.download_name for f in spec.files for s in f.sources if s.archive})
    give = f"give the file or a folder holding {names}"
    if archives_:
        give += f", or the archive {' / '.join(archives_)}"
    return give


def _failure_message(spec: ModelSpec, file: FileSpec, tried: list[str]) -> str:
    """Each URL once, with why it failed, then the ways round the download."""
    what = "FILE" if len(spec.files) == 1 else "FOLDER"
    lines = [f"could not download {file.name} for {spec.id}:"]
    lines += [f"  {line}" for line in tried]
    freesurfer = "copy it from FreeSurfer with `segsuite models import-freesurfer`, " if spec.in_freesurfer else ""
    lines.append(f"Fetch it where the network allows and run `segsuite models install {spec.id} --from {what}`, "
                 f"{freesurfer}set SEGSUITE_MIRROR to an institution mirror, or pass the weights with --model.")
    return "\n".join(lines)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

