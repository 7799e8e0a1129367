"""The one result object every engine returns.

The command line turns it into files, the Slicer adapters into segmentation and table nodes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .labels import LabelTable


class ImageArray(np.ndarray):
    """A voxel array that carries its 4x4 affine (voxel index -> RAS mm, nibabel convention): every
    numpy operation works on it as on the bare array; ``affine``, ``to_nifti()`` and ``save(path)``
    keep the geometry with it."""

    def __new__(cls, data, affine):
        array = np.asarray(data).view(cls)
        array.affine = np.asarray(affine, dtype=np.float64)
        return array

    def __array_finalize__(self, source) -> None:
        self.affine = getattr(source, "affine", None)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        if return_scalar or np.ndim(array) == 0:  # sums, any(), max(): plain numbers, not 0-d images
            return np.asarray(array)[()]
        return super().__array_wrap__(array, context, return_scalar)

    def __reduce__(self):  # pickling (Dask, multiprocessing) keeps the affine
        constructor, arguments, state = super().__reduce__()
        return constructor, arguments, (state, self.affine)

    def __setstate__(self, state) -> None:
        array_state, self.affine = state
        super().__setstate__(array_state)

    def __repr__(self) -> str:
        return f"ImageArray(shape={self.shape}, dtype={self.dtype}, voxel sizes {_voxel_text(self.affine)} mm)"

    def to_nifti(self):
        """A nibabel NIfTI image of the array with its affine (qform and sform set)."""
        from .image import make_image

        return make_image(self._storable(), self.affine, "image.nii.gz")

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Write the image (.nii.gz, .nii, .mgz, .mgh by the extension), all or nothing; returns the path."""
        with _python_transaction(overwrite) as transaction:
            transaction.save_image(path, self._storable(), self.affine)
        return os.fspath(path)

    def _storable(self) -> np.ndarray:
        """The bare array in a type image files hold (masks as uint8)."""
        data = np.asarray(self)
        return data.astype(np.uint8) if data.dtype == bool else data


@contextlib.contextmanager
def _python_transaction(overwrite: bool):
    """An all-or-nothing write whose refusal names the Python argument, not the CLI flag."""
    from .errors import OutputExistsError
    from .image import OutputTransaction

    try:
        with OutputTransaction(overwrite=overwrite) as transaction:
            yield transaction
    except OutputExistsError as error:
        raise OutputExistsError(str(error).replace("pass --overwrite", "pass overwrite=True")) from None


def _voxel_text(affine) -> str:
    if affine is None:
        return "unknown"
    sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return " x ".join(f"{size:g}" for size in sizes)


class ImageDict(dict):
    """Named images of a result; a bare array put in takes the result's affine (its label grid)."""

    def __init__(self, affine, images=()):
        super().__init__()
        self._affine = affine
        for name, array in dict(images).items():
            self[name] = array

    def __setitem__(self, name, array) -> None:
        if not isinstance(array, ImageArray) or array.affine is None:
            array = ImageArray(array, self._affine)
        super().__setitem__(name, array)

    def update(self, *args, **kwargs) -> None:
        for name, array in dict(*args, **kwargs).items():
            self[name] = array

    def setdefault(self, name, array=None):
        if name not in self:
            self[name] = array
        return self[name]


def _name_key(name: str) -> str:
    return "".join(character for character in str(name).lower() if character.isalnum())


class VolumeTable(dict):
    """Structure name -> volume (mm3), keyed by the label table's names (``Left-Hippocampus``, as
    ``label_table.name(17)``). ``aliases`` map other names of the same structures (SynthSeg's CSV
    names, ``left hippocampus``) to those keys, so lookups by either name work; iteration, the
    tables and the files use the label table's names."""

    def __init__(self, volumes=(), aliases: Optional[dict[str, str]] = None):
        super().__init__(volumes)
        self.aliases = dict(aliases or {})

    def _key(self, name):
        if dict.__contains__(self, name):
            return name
        if name in self.aliases and dict.__contains__(self, self.aliases[name]):
            return self.aliases[name]
        wanted = _name_key(name)
        matches = [key for key in self if _name_key(key) == wanted]
        return matches[0] if len(matches) == 1 else name

    def __getitem__(self, name):
        return dict.__getitem__(self, self._key(name))

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, self._key(name))

    def get(self, name, default=None):
        key = self._key(name)
        return dict.get(self, key, default)

    def reference_names(self) -> list[str]:
        """The keys under the names their aliases give (e.g. SynthSeg's CSV header), in order."""
        back = {key: alias for alias, key in self.aliases.items()}
        return [back.get(key, key) for key in self]


@dataclass(repr=False)
class SegmentationResult:
    """A segmentation with its geometry, label names and measurements.

    labels:       integer label map (FreeSurfer values), 3D, voxel grid described by ``affine``.
    affine:       4x4 voxel index -> RAS world (mm), nibabel convention.
    label_table:  the names and colours of the labels the model can produce (background included).
    posteriors:   optional (X, Y, Z, C) float32 probabilities, channel c for ``posterior_labels[c]``,
                  on the grid of ``posteriors_affine`` (which may differ from ``affine``).
    volumes:      structure name -> volume in mm3 (a VolumeTable: keyed by the label table's names,
                  other names of the same structures accepted), in the order a volumes CSV writes them.
    qc:           QC score name -> value (SynthSeg QC, ScLimbic z-scores, ...).
    measures:     other named scalars (eTIV, total intracranial volume, ...), in their units.
    tables:       further named per-structure tables, e.g. {"confidences": {name: value}}.
    images:       further named 3D images (ImageArray: a numpy array with its ``affine``); a bare
                  array put in is taken to lie on the grid of ``affine`` (e.g. {"brain_mask": ...}).
    units:        unit per measure/volume table name, for writers and Slicer tables.
    provenance:   model id, version, weight sha256, options, software version.
    subject:      the case name used as the row name in CSVs.
    """

    labels: np.ndarray
    affine: np.ndarray
    label_table: LabelTable
    posteriors: Optional[np.ndarray] = None
    posterior_labels: Optional[list[int]] = None
    posteriors_affine: Optional[np.ndarray] = None
    volumes: dict[str, float] = field(default_factory=dict)
    qc: dict[str, float] = field(default_factory=dict)
    measures: dict[str, float] = field(default_factory=dict)
    tables: dict[str, dict[str, float]] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=lambda: {"volumes": "mm3"})
    provenance: dict = field(default_factory=dict)
    subject: str = ""

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.labels.ndim != 3:
            raise ValueError(f"labels must be 3D, got shape {self.labels.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.posteriors is not None and self.posteriors_affine is None:
            self.posteriors_affine = self.affine
        if not isinstance(self.images, ImageDict):
            self.images = ImageDict(self.affine, self.images)
        if not isinstance(self.volumes, VolumeTable):
            self.volumes = VolumeTable(self.volumes)

    def __setattr__(self, name, value) -> None:
        # assigned later (result.volumes = {...}) they keep the same behaviour
        if name == "images" and not isinstance(value, ImageDict) and "affine" in self.__dict__:
            value = ImageDict(self.affine, value)
        elif name == "volumes" and not isinstance(value, VolumeTable):
            value = VolumeTable(value)
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        model = self.provenance.get("model") or self.provenance.get("engine") or "?"
        present = len(self.present_labels)
        parts = [f"subject={self.subject!r}" if self.subject else None, f"model={model!r}",
                 f"labels={self.labels.shape} {self.labels.dtype} ({present} structures present, "
                 f"{_voxel_text(self.affine)} mm voxels)",
                 f"posteriors={self.posteriors.shape[-1]} channels" if self.posteriors is not None else None,
                 f"volumes={len(self.volumes)}" if self.volumes else None,
                 f"qc={len(self.qc)}" if self.qc else None,
                 f"measures={list(self.measures)}" if self.measures else None,
                 f"images={list(self.images)}" if self.images else None]
        return "SegmentationResult(" + ", ".join(part for part in parts if part) + ")"

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Write the result, all or nothing; returns the path. An image path (.nii.gz, .nii, .mgz, .mgh)
        gets the label map with its affine; any other path becomes a result folder (labels,
        posteriors, images and result.json with the label table, volumes, QC, measures and
        provenance: ``segsuite.result_io.load_result_bundle`` reads it back). An existing output is
        replaced only with ``overwrite=True``."""
        from .image import image_suffix

        path = os.fspath(path)
        with _python_transaction(overwrite) as transaction:
            if image_suffix(path):
                transaction.save_image(path, np.asarray(self.labels, dtype=np.int32), self.affine)
            else:
                from .result_io import save_result_bundle

                save_result_bundle(self, transaction.temp_dir(path))
        return path

    @property
    def present_labels(self) -> list[int]:
        """Label values present in the label map, background (0) excluded."""
        return [int(v) for v in np.unique(self.labels) if v != 0]

    def label_nifti(self):
        """The label map as a nibabel NIfTI image (int32)."""
        import nibabel as nib

        image = nib.Nifti1Image(np.asarray(self.labels, dtype=np.int32), self.affine)
        image.set_qform(self.affine, code=1)
        image.set_sform(self.affine, code=1)
        return image
