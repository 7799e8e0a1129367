"""Reading and writing images with clear errors, and all-or-nothing output writing.

Arrays always travel with their affine (voxel index -> RAS world, nibabel convention).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .errors import InputError, OutputExistsError, SegSuiteError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")


@dataclass
class Volume:
    """An image array with its voxel-to-world affine."""

    data: np.ndarray
    affine: np.ndarray
    path: Optional[str] = None
    header: object = None

    @property
    def voxel_sizes(self) -> np.ndarray:
        return voxel_sizes(self.affine)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def image_suffix(path: str | os.PathLike) -> str:
    """The image extension of a path ('.nii.gz', '.nii', '.mgz', '.mgh'), or '' if none."""
    name = str(path).lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def strip_image_suffix(path: str | os.PathLike) -> str:
    """The path without its image extension ('a/b.nii.gz' -> 'a/b')."""
    suffix = image_suffix(path)
    return str(path)[: -len(suffix)] if suffix else os.path.splitext(str(path))[0]


def check_image_path(path: str) -> None:
    """An input image path that exists and is a file, else InputError saying which."""
    if not os.path.exists(path):
        raise InputError(f"input not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"expected an image file but {path} is a folder")


def unreadable_image(path: str, error: Exception) -> InputError:
    return InputError(f"cannot read {path} as an image ({type(error).__name__}: {error}); "
                      "give a NIfTI (.nii, .nii.gz) or FreeSurfer (.mgz, .mgh) file")


@dataclass
class ImageHeader:
    """What an image file's header says, read without its voxels (engines' pre-network checks)."""

    path: str
    shape: tuple
    zooms: tuple
    dtype: np.dtype
    affine: np.ndarray


def read_header(path: str | os.PathLike) -> ImageHeader:
    """The header of an image file; a missing or unreadable file raises InputError saying so."""
    import nibabel as nib

    path = os.fspath(path)
    check_image_path(path)
    try:
        image = nib.load(path)
        header = image.header
        return ImageHeader(path, tuple(int(n) for n in image.shape), tuple(float(z) for z in header.get_zooms()),
                           np.dtype(header.get_data_dtype()), np.asarray(image.affine, dtype=np.float64))
    except Exception as error:  # nibabel raises many types for unreadable files
        raise unreadable_image(path, error) from error


def load_volume(path: str | os.PathLike, dtype=np.float32) -> Volume:
    """Load an image file; a missing or unreadable file raises InputError saying so."""
    import nibabel as nib

    path = os.fspath(path)
    check_image_path(path)
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for unreadable files
        raise unreadable_image(path, error) from error
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return Volume(data=data, affine=np.asarray(image.affine, dtype=np.float64), path=path, header=image.header)


def as_volume(source, affine: Optional[np.ndarray] = None) -> Volume:
    """Accept a path, a Volume, a nibabel image or an (array, affine) pair."""
    if isinstance(source, Volume):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load_volume(source)
    if isinstance(source, tuple) and len(source) == 2 and affine is None:
        source, affine = source
    if isinstance(source, np.ndarray):
        if affine is None:
            raise InputError("an array input needs its 4x4 affine: pass (array, affine)")
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise InputError(f"the affine must be 4x4, got shape {affine.shape}")
        return Volume(data=source, affine=affine)
    if hasattr(source, "dataobj") and hasattr(source, "affine"):
        return Volume(data=np.asanyarray(source.dataobj), affine=np.asarray(source.affine, dtype=np.float64))
    raise InputError(f"cannot use an input of type {type(source).__name__}: give a file path or (array, affine)")


def squeeze_to_3d(data: np.ndarray, what: str = "the input") -> np.ndarray:
    """Drop singleton dimensions; refuse anything that is not a single 3D volume."""
    squeezed = np.squeeze(data)
    if squeezed.ndim == 3:
        return squeezed
    if squeezed.ndim < 3:
        raise InputError(f"{what} is {squeezed.ndim}D (shape {data.shape}); a 3D volume is needed")
    raise InputError(
        f"{what} is {squeezed.ndim}D (shape {data.shape}); a single 3D volume is needed: "
        "extract or average the volumes first (for example with fslmaths -Tmean or mri_concat --mean)"
    )


def check_finite(data: np.ndarray, what: str = "the input") -> None:
    if not np.all(np.isfinite(data)):
        count = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{what} contains {count} NaN or infinite voxels; replace them (e.g. by 0) first")


def make_image(data: np.ndarray, affine: np.ndarray, path: str, header=None):
    """A nibabel image of the type the file extension asks for (NIfTI or MGH)."""
    import nibabel as nib

    suffix = image_suffix(path)
    if suffix in (".mgz", ".mgh"):
        if data.dtype == np.int64 or data.dtype == np.uint16:
            data = data.astype(np.int32)
        return nib.MGHImage(data, affine)
    if suffix in (".nii", ".nii.gz"):
        image = nib.Nifti1Image(data, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        image.header.set_data_dtype(data.dtype)
        image.header.set_xyzt_units("mm")  # the affine is in millimetres (BIDS validators check the unit)
        return image
    raise InputError(f"unsupported output extension for {path}: use .nii.gz, .nii, .mgz or .mgh")


def check_outputs(paths: Sequence[str | os.PathLike], overwrite: bool,
                  inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Fail early, before any work, if an output exists (without consent) or would replace an input."""
    input_set = {os.path.realpath(os.fspath(p)) for p in inputs if p}
    seen = set()
    for path in paths:
        real = os.path.realpath(os.fspath(path))
        if real in input_set:
            raise OutputExistsError(f"refusing to overwrite the input {path}: choose another output name")
        if real in seen:
            raise InputError(f"two outputs have the same path {path}")
        seen.add(real)
        if os.path.isdir(real):
            raise InputError(f"the output {path} is a folder; give a file name")
        if os.path.exists(real) and not overwrite:
            raise OutputExistsError(f"output exists: {path}; pass --overwrite to replace it or choose another name")
    check_writable_locations(paths)


def _nearest_existing_folder(path: str) -> tuple[str, str]:
    """(the nearest folder above ``path`` that exists, the first missing component or '')."""
    folder = os.path.dirname(os.path.abspath(path))
    missing = ""
    while not os.path.exists(folder):
        missing = folder
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder, missing


def write_error(error: OSError, path) -> SegSuiteError:
    """A one-line error for a failed write, naming the user's path (never a temporary)."""
    import errno

    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        what = "the disk is full; free some space or choose another folder"
    elif error.errno == errno.EROFS:
        what = "the folder is on a read-only file system; choose another folder"
    elif error.errno in (errno.EACCES, errno.EPERM):
        what = "permission denied; make the folder writable or choose another one"
    else:
        what = (error.strerror or str(error)) + "; choose another folder"
    return SegSuiteError(f"cannot write {path}: {what}")


def check_writable_locations(paths: Sequence[str | os.PathLike]) -> None:
    """Pre-flight: every output's folder (or the nearest existing folder above it) takes a file.

    A probe file is written and removed, which finds read-only mounts, missing permissions and
    full disks even for root (for whom permission bits say nothing)."""
    from .faults import temp_prefix

    probed = set()
    for path in paths:
        if not path:
            continue
        folder, _ = _nearest_existing_folder(os.fspath(path))
        if folder in probed:
            continue
        probed.add(folder)
        if not os.path.isdir(folder):
            raise InputError(f"cannot write {path}: {folder} is a file, not a folder")
        probe = os.path.join(folder, temp_prefix() + "probe")
        try:
            with open(probe, "wb") as handle:
                handle.write(b"\0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise write_error(error, path) from None
        finally:
            with contextlib.suppress(OSError):
                os.remove(probe)


class OutputTransaction:
    """Writes every output to a temporary file beside it and renames all at the end.

    If anything fails before ``commit``, the temporary files are removed and no output is
    left behind; existing files are only replaced when the whole job succeeded.
    """

    def __init__(self, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()):
        self.overwrite = overwrite
        self.inputs = [os.fspath(p) for p in inputs if p]
        self._pending: dict[str, str] = {}
        self._created_dirs: list[str] = []
        self._cleaned: set[str] = set()

    def temp_path(self, final_path: str | os.PathLike, overwrite: Optional[bool] = None) -> str:
        """A temporary path to write ``final_path`` to (same folder, same extension).

        ``overwrite`` overrides the transaction's consent for this one file (e.g. a run's manifest)."""
        final_path = os.path.abspath(os.fspath(final_path))
        check_outputs([final_path], self.overwrite if overwrite is None else overwrite, self.inputs)
        folder = self._prepare_folder(final_path)
        from .faults import temp_prefix

        suffix = image_suffix(final_path) or os.path.splitext(final_path)[1]
        try:
            handle, temp = tempfile.mkstemp(prefix=temp_prefix(), suffix=suffix, dir=folder)
        except OSError as error:
            raise write_error(error, final_path) from None
        os.close(handle)
        self._pending[final_path] = temp
        return temp

    def temp_dir(self, final_path: str | os.PathLike) -> str:
        """A temporary folder to fill for the folder output ``final_path``; ``commit`` renames it into
        place (an existing folder there is replaced only with ``overwrite``, and only at the commit)."""
        final_path = os.path.abspath(os.fspath(final_path))
        if os.path.lexists(final_path):
            if not os.path.isdir(final_path) or os.path.islink(final_path):
                raise InputError(f"the output {final_path} exists and is not a folder; remove it or choose another name")
            if not self.overwrite:
                raise OutputExistsError(f"output exists: {final_path}; pass --overwrite to replace it or choose another name")
        inside = [p for p in self.inputs if os.path.realpath(p).startswith(os.path.realpath(final_path) + os.sep)]
        if inside:
            raise OutputExistsError(f"refusing to replace {final_path}: it holds the input {inside[0]}")
        folder = self._prepare_folder(final_path)
        from .faults import temp_prefix

        try:
            temp = tempfile.mkdtemp(prefix=temp_prefix(), dir=folder)
        except OSError as error:
            raise write_error(error, final_path) from None
        self._pending[final_path] = temp
        return temp

    def discard(self, final_path: str | os.PathLike) -> None:
        """Drop one staged output (e.g. of a subject that failed) and keep the others."""
        temp = self._pending.pop(os.path.abspath(os.fspath(final_path)), None)
        if temp is not None:
            _remove(temp)

    def _prepare_folder(self, final_path: str) -> str:
        if final_path in self._pending:
            raise InputError(f"two outputs have the same path {final_path}")
        from .faults import clean_stale_temporaries

        folder = os.path.dirname(final_path)
        self._make_dirs(folder)
        if folder not in self._cleaned:
            clean_stale_temporaries(folder)  # left by a killed run: never outputs
            self._cleaned.add(folder)
        return folder

    def save_image(self, final_path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> None:
        import nibabel as nib

        temp = self.temp_path(final_path)
        image = make_image(data, affine, os.fspath(final_path))
        try:
            nib.save(image, temp)
        except OSError as error:
            raise write_error(error, final_path) from None

    def write_text(self, final_path: str | os.PathLike, text: str, overwrite: Optional[bool] = None) -> None:
        temp = self.temp_path(final_path, overwrite)
        try:
            with open(temp, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
        except OSError as error:
            raise write_error(error, final_path) from None

    def commit(self) -> list[str]:
        """Rename every temporary into place; if one rename fails, undo the others (all or nothing),
        even when the outputs lie in several folders."""
        from .faults import checkpoint, give_umask_mode, temp_prefix

        placed: list[tuple[str, Optional[str]]] = []   # (final path, where its old version was moved)
        try:
            checkpoint("writing")
            for final_path, temp in self._pending.items():
                give_umask_mode(temp)
                backup = None
                if os.path.lexists(final_path):
                    backup = os.path.join(os.path.dirname(final_path), temp_prefix() + "old-" + os.path.basename(final_path))
                    os.replace(final_path, backup)
                placed.append((final_path, backup))
                os.replace(temp, final_path)
        except BaseException as error:
            for final_path, backup in reversed(placed):
                with contextlib.suppress(OSError):
                    temp = self._pending[final_path]
                    if not os.path.lexists(temp):      # the new output went in: move it back out
                        os.replace(final_path, temp)   # (a folder cannot be replaced by a rename)
                    if backup is not None:
                        os.replace(backup, final_path)
            self.rollback()
            if isinstance(error, OSError):
                raise write_error(error, placed[-1][0] if placed else "the outputs") from None
            raise
        for _, backup in placed:
            if backup is not None:
                _remove(backup)
        written = list(self._pending)
        self._pending.clear()
        self._created_dirs.clear()
        return written

    def rollback(self) -> None:
        for temp in self._pending.values():
            _remove(temp)
        self._pending.clear()
        for folder in reversed(self._created_dirs):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only succeeds if we left it empty
        self._created_dirs.clear()

    def _make_dirs(self, folder: str) -> None:
        missing = []
        current = folder
        while current and not os.path.isdir(current):
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        try:
            for path in reversed(missing):
                os.mkdir(path)
                self._created_dirs.append(path)
        except OSError as error:
            raise SegSuiteError(f"cannot create the output folder {folder}: {error.strerror}") from error

    def __enter__(self) -> "OutputTransaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


def _remove(path: str) -> None:
    """Remove a file or a whole folder (a staged folder output); errors are ignored."""
    import shutil

    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


@contextlib.contextmanager
def output_transaction(overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()) -> Iterator[OutputTransaction]:
    transaction = OutputTransaction(overwrite=overwrite, inputs=inputs)
    with transaction:
        yield transaction


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files in a folder, sorted by name."""
    folder = Path(folder)
    return sorted(str(p) for p in folder.iterdir()
                  if p.is_file() and image_suffix(p.name) and not p.name.startswith("."))
