"""The MNI152 templates the preprocessing registers to, named by their TemplateFlow space ids.

MNI152NLin2009cAsym comes from TemplateFlow through its own client (``templateflow``, when installed)
and is used by default only when its files are already in TEMPLATEFLOW_HOME; asking for it by name
lets the client fetch it. MNI152NLin2009aSym (the ICBM 2009a symmetric template with GM/WM maps) is
always there: it ships inside nilearn's wheel, read as files without importing nilearn.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import InputError

NLIN2009C = "MNI152NLin2009cAsym"
NLIN2009A = "MNI152NLin2009aSym"
TEMPLATES = (NLIN2009C, NLIN2009A)
TISSUES = ("GM", "WM", "CSF")


@dataclass
class Template:
    """One template at one resolution: brain-extracted T1w, brain mask, tissue priors (0-1), their grid."""

    name: str                    # the BIDS ``space-`` value outputs carry
    t1: np.ndarray               # float32, brain only
    mask: np.ndarray             # bool
    priors: dict[str, np.ndarray]  # tissue -> float32 probability (CSF absent in nilearn's copy)
    affine: np.ndarray
    resolution: float
    source: dict = field(default_factory=dict)  # where each file came from (provenance)


def _nilearn_files() -> dict[str, str]:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
    files = {kind: os.path.join(folder, f"mni_icbm152_{kind.lower()}_tal_nlin_sym_09a_converted.nii.gz")
             for kind in ("T1", "GM", "WM")}
    return files if all(os.path.isfile(path) for path in files.values()) else {}


def _templateflow_files(fetch: bool) -> dict[str, str]:
    """MNI152NLin2009cAsym's 1 mm files; with ``fetch`` False only when they are already local."""
    if importlib.util.find_spec("templateflow") is None:
        return {}
    from templateflow import api

    queries = {"T1": dict(suffix="T1w", desc=None), "mask": dict(suffix="mask", desc="brain"),
               **{tissue: dict(suffix="probseg", label=tissue) for tissue in TISSUES}}
    files = {}
    for kind, query in queries.items():
        if fetch:
            found = api.get(NLIN2009C, resolution=1, extension=".nii.gz", **query)
        else:  # the client's index lists files it has not downloaded: keep only those on disk
            found = [p for p in api.ls(NLIN2009C, resolution=1, extension=".nii.gz", **query)
                     if os.path.isfile(p) and os.path.getsize(p) > 1024]
        found = [str(p) for p in (found if isinstance(found, list) else [found])]
        if len(found) != 1:
            return {}
        files[kind] = found[0]
    return files


def available_templates() -> list[str]:
    return [name for name, files in ((NLIN2009C, _templateflow_files(False)), (NLIN2009A, _nilearn_files())) if files]


def template_files(name: Optional[str] = None) -> tuple[str, dict[str, str]]:
    """(space name, {T1, GM, WM[, CSF, mask]: path}) for ``name``, or the default when None."""
    if name is None:
        local = _templateflow_files(fetch=False)
        if local:
            return NLIN2009C, local
        name = NLIN2009A
    if name == NLIN2009C:
        if importlib.util.find_spec("templateflow") is None:
            raise InputError(f"--template {NLIN2009C} needs the templateflow package (pip install templateflow); "
                             f"or use --template {NLIN2009A}, which needs no download")
        try:
            files = _templateflow_files(fetch=True)
        except Exception as error:  # the client's network and index errors vary by version
            raise InputError(f"TemplateFlow could not provide {NLIN2009C} ({type(error).__name__}: {error}); set "
                             f"TEMPLATEFLOW_HOME to a folder holding it or use --template {NLIN2009A}") from None
        if not files:
            raise InputError(f"TemplateFlow has no 1 mm T1w, brain mask and GM/WM/CSF maps of {NLIN2009C} in "
                             f"{os.environ.get('TEMPLATEFLOW_HOME', 'its home')}; use --template {NLIN2009A}")
        return NLIN2009C, files
    if name == NLIN2009A:
        files = _nilearn_files()
        if not files:
            raise InputError(f"--template {NLIN2009A} is read from nilearn's package data: pip install nilearn==0.14.1")
        return NLIN2009A, files
    raise InputError(f"unknown --template {name!r}: choose {' or '.join(TEMPLATES)}")


def _load(path: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    image = nib.load(path)
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def _as_probability(data: np.ndarray) -> np.ndarray:
    """nilearn stores its maps as 0-255 bytes; TemplateFlow's are 0-1."""
    return data / np.float32(255.0) if data.max() > 1.5 else data


def resample_to_resolution(data: np.ndarray, affine: np.ndarray, resolution: float, order: int = 1):
    """``data`` on a grid of ``resolution`` mm covering the same field of view (same first voxel centre)."""
    from scipy import ndimage

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.allclose(spacing, resolution):
        return data, affine
    factor = resolution / spacing
    shape = tuple(int(np.floor((n - 1) / f)) + 1 for n, f in zip(data.shape, factor))
    target = affine.copy()
    target[:3, :3] = affine[:3, :3] * factor
    return ndimage.affine_transform(data, factor, output_shape=shape, order=order, mode="nearest"), target


def load_template(name: Optional[str] = None, resolution: float = 1.0) -> Template:
    """The template ``name`` (default: MNI152NLin2009cAsym when local, else MNI152NLin2009aSym) on a
    ``resolution`` mm grid."""
    if resolution <= 0:
        raise InputError(f"--resolution must be positive, got {resolution}")
    space, files = template_files(name)
    t1, affine = _load(files["T1"])
    if "mask" in files:
        mask = _load(files["mask"])[0] > 0.5
    else:  # nilearn's T1 is already brain-extracted
        mask = t1 > 0
    priors = {tissue: _as_probability(_load(files[tissue])[0]) for tissue in TISSUES if tissue in files}
    t1 = t1 * mask
    if resolution != 1.0:
        t1, target = resample_to_resolution(t1, affine, resolution)
        mask = resample_to_resolution(mask.astype(np.float32), affine, resolution)[0] > 0.5
        priors = {tissue: resample_to_resolution(prior, affine, resolution)[0] for tissue, prior in priors.items()}
        affine = target
    return Template(name=space, t1=t1.astype(np.float32), mask=mask, priors=priors, affine=affine,
                    resolution=float(resolution), source=files)
