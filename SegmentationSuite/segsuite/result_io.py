"""A SegmentationResult as a folder ("bundle"), so results cross process boundaries intact.

The Slicer modules run engines in a child process (``segsuite run-engine``); the child writes one
bundle per subject and the GUI reads it back into the same SegmentationResult it would have got
in-process. Layout of a bundle folder:

    labels.nii.gz        the label map (int32) with its affine
    posteriors.nii.gz    optional (X, Y, Z, C) float32 posteriors on ``posteriors_affine``
    image-<name>.nii.gz  optional further images (``result.images``)
    result.json          label table, volumes, QC, measures, tables, units, provenance, subject
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .errors import SegSuiteError
from .labels import Label, LabelTable
from .result import ImageArray, SegmentationResult, VolumeTable

BUNDLE_FORMAT = "segsuite-result-bundle"
BUNDLE_VERSION = 1


def _json_safe(value):
    """Numbers and nested containers as JSON; NaN/inf become None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def _float_dict(values: dict) -> dict[str, float]:
    return {name: (float("nan") if value is None else float(value)) for name, value in values.items()}


def _save_image(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def save_result_bundle(result: SegmentationResult, folder: str | os.PathLike, include_posteriors: bool = True) -> Path:
    """Write ``result`` into ``folder`` (created if needed); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _save_image(np.asarray(result.labels, dtype=np.int32), result.affine, folder / "labels.nii.gz")
    if include_posteriors and result.posteriors is not None:
        _save_image(np.asarray(result.posteriors, dtype=np.float32), result.posteriors_affine, folder / "posteriors.nii.gz")
    image_names = []
    for index, (name, array) in enumerate(result.images.items()):
        file_name = f"image-{index}.nii.gz"
        affine = getattr(array, "affine", None)
        affine = result.affine if affine is None else affine
        data = np.asarray(array)
        _save_image(data.astype(np.uint8) if data.dtype == bool else data, affine, folder / file_name)
        image_names.append([name, file_name, affine])
    description = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "subject": result.subject,
        # NIfTI headers keep affines in float32; the exact float64 ones travel here.
        "affine": result.affine,
        "posteriors_affine": result.posteriors_affine if include_posteriors and result.posteriors is not None else None,
        "label_table": [[label.value, label.name, list(label.color)] for label in result.label_table],
        "posterior_labels": result.posterior_labels,
        "volumes": result.volumes,
        "volume_aliases": getattr(result.volumes, "aliases", {}),
        "qc": result.qc,
        "measures": result.measures,
        "tables": result.tables,
        "units": result.units,
        "provenance": result.provenance,
        "images": image_names,
    }
    (folder / "result.json").write_text(json.dumps(_json_safe(description), indent=1), encoding="utf-8")
    return folder


def load_result_bundle(folder: str | os.PathLike, load_posteriors: bool = True) -> SegmentationResult:
    """Read a bundle written by save_result_bundle."""
    import nibabel as nib

    folder = Path(folder)
    try:
        description = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SegSuiteError(f"{folder} is not a complete segsuite result (result.json unreadable: {error})") from error
    if description.get("format") != BUNDLE_FORMAT:
        raise SegSuiteError(f"{folder}/result.json is not a segsuite result bundle")
    labels_image = nib.load(str(folder / "labels.nii.gz"))
    labels = np.asanyarray(labels_image.dataobj).astype(np.int32)
    table = LabelTable(Label(int(value), str(name), tuple(int(c) for c in color))
                       for value, name, color in description["label_table"])
    posteriors = posteriors_affine = None
    if load_posteriors and (folder / "posteriors.nii.gz").exists():
        posterior_image = nib.load(str(folder / "posteriors.nii.gz"))
        posteriors = np.asanyarray(posterior_image.dataobj).astype(np.float32)
        posteriors_affine = np.asarray(description.get("posteriors_affine") or posterior_image.affine, dtype=np.float64)
    images = {}
    for name, file_name, *affine in description.get("images", []):
        image = nib.load(str(folder / file_name))
        # the exact float64 affine travels in result.json (bundles of older versions: the header's)
        images[name] = ImageArray(np.asanyarray(image.dataobj), np.asarray(affine[0] if affine else image.affine))
    return SegmentationResult(
        labels=labels,
        affine=np.asarray(description.get("affine") or labels_image.affine, dtype=np.float64),
        label_table=table,
        posteriors=posteriors,
        posterior_labels=description.get("posterior_labels") if posteriors is not None else None,
        posteriors_affine=posteriors_affine,
        volumes=VolumeTable(_float_dict(description.get("volumes", {})), description.get("volume_aliases")),
        qc=_float_dict(description.get("qc", {})),
        measures=_float_dict(description.get("measures", {})),
        tables={name: _float_dict(values) for name, values in description.get("tables", {}).items()},
        images=images,
        units=dict(description.get("units", {})),
        provenance=dict(description.get("provenance", {})),
        subject=str(description.get("subject", "")),
    )
