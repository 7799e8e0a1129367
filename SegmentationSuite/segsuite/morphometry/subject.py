"""Per-subject morphometry: (image, SegmentationResult) -> tissue maps, masks, image-quality metrics, TIV.

The CLI (``segsuite morphometry``, ``segsuite synthseg --morphometry``), the cohort runner and the Slicer
adapters all call ``compute_morphometry`` and ``write_morphometry``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import InputError
from ..image import OutputTransaction, as_volume, squeeze_to_3d, voxel_sizes
from ..result import SegmentationResult
from . import mriqc_workflow, quality, tissues

TABLE_SUFFIX = "morphometry.tsv"
MOSAIC_SUFFIX = "desc-qc_mosaic.webp"  # the bytes may be PNG where Pillow lacks WebP; browsers sniff it


@dataclass
class Morphometry:
    """What the morphometry step measured for one subject, on the grid of ``affine``."""

    subject: str
    affine: np.ndarray
    tissue_maps: dict[str, np.ndarray]
    dseg: np.ndarray
    brain_mask: np.ndarray
    head_mask: np.ndarray
    air_mask: np.ndarray
    metrics: dict[str, float]
    tissue_statistics: dict[str, dict[str, float]]
    tiv: float
    tiv_source: str
    volumes: dict[str, float]
    qc: dict[str, float] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    mosaic: Optional[tuple[str, bytes]] = None  # (MIME type, bytes) of the report's 3-plane thumbnail

    def table_row(self, participant_id: Optional[str] = None, session_id: str = "") -> dict:
        """One row of the per-subject table the group step reads (see group.py for the columns)."""
        row = {"participant_id": participant_id or self.subject, "session_id": session_id or "n/a", "TIV": self.tiv}
        row.update(self.volumes)
        row.update({f"qc_{name}": value for name, value in self.qc.items()})
        row.update(self.metrics)
        return row


def _header_voxel_volume(affine) -> float:
    """The voxel volume (mm3) as an image file's header gives it back (float32 affine): the same
    number whether the segmentation arrives in memory or read from the files it was saved to."""
    return float(np.prod(voxel_sizes(np.asarray(affine, dtype=np.float32).astype(np.float64))))


def _structure_name(value: int, result: SegmentationResult) -> str:
    from ..labels import freesurfer_lut

    label = freesurfer_lut().get(value) or result.label_table.get(value)
    return label.name if label is not None else f"Label-{value}"


def channel_volumes(result: SegmentationResult) -> dict[int, float]:
    """label -> soft volume (mm3): each posterior channel's float64 sum (background left out); {}
    without posteriors."""
    if result.posteriors is None:
        return {}
    voxel = _header_voxel_volume(result.posteriors_affine)
    return {int(value): float(np.sum(result.posteriors[..., index], dtype=np.float64) * voxel)
            for index, value in enumerate(result.posterior_labels) if int(value) != 0}


def structure_volumes(result: SegmentationResult) -> dict[str, float]:
    """Volumes (mm3) of every structure the segmentation can hold, zero-volume ones kept, under
    FreeSurfer names: soft (the posterior sums) for the posteriors' channels, voxel counts for the
    labels without a channel. Labels without a channel that are cortical parcels (SynthSeg --parc) are
    scaled to add up to the soft cortex (3 + 42), as SynthSeg's own volumes are; the cortex keeps its
    column. Without posteriors every label of the label table is a voxel count.

    ``segsuite synthseg --morphometry`` and ``segsuite morphometry --seg --post`` both call this, so
    the same SynthSeg outputs give the same table."""
    from ..synthseg.labels import CORTEX_LABELS

    counts = np.bincount(np.clip(result.labels, 0, None).ravel(order="K"))
    label_voxel = _header_voxel_volume(result.affine)
    table_values = [value for value in result.label_table.values if value != 0]
    soft = channel_volumes(result)
    channels = [int(value) for value in result.posterior_labels] if soft else []
    volumes = {_structure_name(value, result): volume for value, volume in soft.items()}
    extra = [value for value in table_values if value not in channels]
    extra += [int(value) for value in np.flatnonzero(counts) if value != 0 and value not in channels
              and value not in extra]
    hard = {value: float(counts[value]) * label_voxel if value < counts.size else 0.0 for value in extra}
    parcels = [value for value in extra if 1000 <= value < 3000]
    cortex_channels = [value for value in CORTEX_LABELS if value in channels]
    parcel_total = sum(hard[value] for value in parcels)
    if parcels and cortex_channels and parcel_total > 0:
        cortex = sum(volumes[_structure_name(value, result)] for value in cortex_channels)
        for value in parcels:
            hard[value] *= cortex / parcel_total
    for value in extra:
        volumes[_structure_name(value, result)] = hard[value]
    return volumes


def _image_on_grid(image, shape, affine) -> np.ndarray:
    """The image's intensities on the segmentation's voxel grid (trilinear when the grids differ)."""
    from scipy import ndimage

    data = squeeze_to_3d(np.asarray(image.data), "the image")
    if tuple(data.shape) == tuple(shape) and np.allclose(image.affine, affine, atol=1e-4):
        return np.asarray(data, dtype=np.float32)
    mapping = np.linalg.inv(image.affine) @ affine
    return ndimage.affine_transform(np.asarray(data, dtype=np.float32), mapping[:3, :3], mapping[:3, 3],
                                    output_shape=tuple(shape), order=1, mode="constant", cval=0.0)


def _in_layout_of(reference: np.ndarray, data: np.ndarray, tile: int = 32) -> np.ndarray:
    """``data`` as float32 in the memory layout of ``reference`` (same shape)."""
    out = np.empty_like(reference, dtype=np.float32)
    target_axis, source_axis = (int(np.argmax(np.abs(array.strides))) for array in (out, data))
    if target_axis == source_axis:
        np.copyto(out, data, casting="unsafe")
        return out
    # a transposing copy in tiles across both arrays' slowest axes stays within cache (1.7x faster)
    for start in range(0, out.shape[target_axis], tile):
        for other in range(0, out.shape[source_axis], tile):
            key = tuple(slice(start, start + tile) if axis == target_axis else
                        slice(other, other + tile) if axis == source_axis else slice(None) for axis in range(out.ndim))
            np.copyto(out[key], data[key], casting="unsafe")
    return out


def compute_morphometry(image, result: SegmentationResult, subject: Optional[str] = None,
                        tissue_table: Optional[dict[int, str]] = None) -> Morphometry:
    """Tissue maps, dseg, brain/head/air masks, image-quality metrics, TIV and volumes for one subject.

    ``image``: the scan (path, Volume, nibabel image or (array, affine)); it is resampled onto the
    segmentation's grid when they differ. The tissue maps come from the posteriors when the result has
    them, else from the hard labels."""
    import time

    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(stage: str) -> None:  # per-stage seconds, kept in the provenance (benchmarks/morphometry.py)
        clock.append(time.perf_counter())
        seconds[stage] = round(clock[-1] - clock[-2], 3)

    volume = as_volume(image)
    if result.posteriors is not None:
        if not result.posterior_labels:
            raise InputError("the segmentation's posteriors come without their channel labels")
        maps, unknown = tissues.tissue_maps_from_posteriors(result.posteriors, result.posterior_labels, tissue_table)
        affine, source = np.asarray(result.posteriors_affine), "posteriors"
    else:
        maps, unknown = tissues.tissue_maps_from_labels(result.labels, tissue_table)
        affine, source = result.affine, "labels"
    shape = maps["GM"].shape
    data = _image_on_grid(volume, shape, affine)
    if data.strides != maps["GM"].strides:  # one copy into the maps' memory layout: every later
        data = _in_layout_of(maps["GM"], data)  # voxel-wise step then runs sequentially
    dseg = tissues.dseg_from_maps(maps)
    brain = tissues.brain_mask_from_dseg(dseg)
    if not brain.any():
        raise InputError("the segmentation has no brain voxel (every voxel is background); check --seg")
    lap("tissue maps and dseg")
    head, air = quality.head_and_air_masks(data, brain)
    lap("head and air masks")
    # MRIQC's workflow: N4 bias field, the corrected image harmonized, the rotation mask of the input
    bias = mriqc_workflow.n4_bias_field(data, brain, affine)
    lap("N4 bias field")
    harmonized = mriqc_workflow.harmonize(data / bias, maps["WM"])
    rotation = mriqc_workflow.rotation_mask(data)
    lap("harmonized image and rotation mask")
    metrics, statistics = quality.image_quality_metrics(data, maps, dseg, brain, head, air,
                                                        mriqc_image=harmonized, rotation_mask=rotation)
    del harmonized
    metrics.update({f"mriqc_{name}": value for name, value in mriqc_workflow.inu_metrics(bias, brain).items()})
    metrics.update({f"mriqc_{name}": value for name, value in mriqc_workflow.fwhm_metrics(data, brain, affine).items()})
    lap("image-quality metrics")
    voxel_volume = _header_voxel_volume(affine)
    soft = channel_volumes(result)
    if soft:  # each map's mass as the float64 sum of its channels' volumes (the maps are float32 sums)
        groups, _ = tissues.labels_by_tissue(list(soft), tissue_table)
        tissue_volumes = {f"tissue-{name}": float(sum(soft[value] for value in groups[name]))
                          for name in tissues.TISSUES}
    else:
        tissue_volumes = {f"tissue-{name}": float(np.sum(maps[name], dtype=np.float64) * voxel_volume)
                          for name in tissues.TISSUES}
    tiv, tiv_source = _tiv(result, sum(tissue_volumes.values()))
    volumes = structure_volumes(result)
    volumes.update(tissue_volumes)
    from .report import subject_mosaic

    same_grid = tuple(result.labels.shape) == tuple(shape) and np.allclose(result.affine, affine, atol=1e-4)
    lap("volumes and TIV")
    mosaic = subject_mosaic(data, result.labels if same_grid else dseg, affine)
    lap("QC mosaic")
    return Morphometry(
        subject=subject or result.subject or "subject", affine=np.asarray(affine, dtype=np.float64), tissue_maps=maps,
        dseg=dseg, brain_mask=brain, head_mask=head, air_mask=air, metrics=metrics, tissue_statistics=statistics,
        tiv=tiv, tiv_source=tiv_source, volumes=volumes, qc=dict(result.qc),
        provenance={"tissue_maps_from": source, "labels_without_tissue": unknown,
                    "segmentation": result.provenance.get("model", result.provenance.get("engine", "")),
                    "image_resampled": tuple(np.asarray(volume.data).shape[:3]) != tuple(shape)
                    or not np.allclose(volume.affine, affine, atol=1e-4), "seconds": seconds},
        mosaic=mosaic,
    )


def _tiv(result: SegmentationResult, tissue_total: float) -> tuple[float, str]:
    """ScLimbic's (or a given) eTIV where there is one, else the sum of the three tissue maps: the
    non-background posterior mass (SynthSeg's total intracranial volume, summed in float64 on the
    posteriors' grid) or the labelled voxels, the same from the engine's result and from its files."""
    if "eTIV" in result.measures:
        return float(result.measures["eTIV"]), f"eTIV ({result.provenance.get('eTIV_from', 'ScLimbic')})"
    # SynthSeg's total intracranial volume is this same posterior mass, so both paths give one number
    return float(tissue_total), "sum of the GM, WM and CSF maps"


def output_paths(folder: str, prefix: str) -> dict[str, str]:
    """The files write_morphometry writes, by kind, with BIDS-Derivatives entities."""
    join = lambda suffix: os.path.join(folder, f"{prefix}_{suffix}")  # noqa: E731
    paths = {f"probseg_{name}": join(f"label-{name}_probseg.nii.gz") for name in tissues.TISSUES}
    paths.update({"dseg": join("dseg.nii.gz"), "dseg_tsv": join("dseg.tsv"), "brain_mask": join("desc-brain_mask.nii.gz"),
                  "table": join(TABLE_SUFFIX), "sidecar": join("morphometry.json"), "aseg_stats": join("aseg.stats"),
                  "mosaic": join(MOSAIC_SUFFIX)})
    return paths


def write_morphometry(morphometry: Morphometry, folder: str, prefix: Optional[str] = None, overwrite: bool = False,
                      inputs=(), result: Optional[SegmentationResult] = None, participant_id: Optional[str] = None,
                      session_id: str = "", transaction: Optional[OutputTransaction] = None,
                      brain_mask: bool = True, sources: Optional[dict] = None) -> dict[str, str]:
    """Write every output of one subject atomically (all or nothing); returns the paths by kind.

    With ``transaction`` the files are only staged there and commit with the caller's other outputs;
    ``brain_mask=False`` leaves the mask out (another engine's, e.g. the SAMSEG filter's, takes its name);
    ``sources`` ({"image": path, "segmentation": path}) go into the sidecar, where the review report finds them."""
    from .stats_io import aseg_stats_text

    prefix = prefix or morphometry.subject
    paths = output_paths(folder, prefix)
    row = morphometry.table_row(participant_id, session_id)
    sidecar = {
        "definitions": quality.DEFINITIONS, "mriqc_measured_on": quality.MRIQC_IMAGE,
        "units": {"TIV": "mm3", "volumes": "mm3"},
        "TIV_source": morphometry.tiv_source, "mriqc_tissue_statistics": morphometry.tissue_statistics,
        "provenance": morphometry.provenance,
    }
    if sources:
        sidecar["inputs"] = {kind: os.path.abspath(path) for kind, path in sources.items() if path}
    staged = contextlib.nullcontext(transaction) if transaction is not None else \
        OutputTransaction(overwrite=overwrite, inputs=inputs)
    with staged as transaction:
        for name in tissues.TISSUES:
            transaction.save_image(paths[f"probseg_{name}"], morphometry.tissue_maps[name], morphometry.affine)
        transaction.save_image(paths["dseg"], morphometry.dseg.astype(np.uint8), morphometry.affine)
        transaction.write_text(paths["dseg_tsv"], "index\tname\n" + "".join(
            f"{value}\t{name}\n" for name, value in tissues.DSEG_VALUES.items()))
        if brain_mask:
            transaction.save_image(paths["brain_mask"], morphometry.brain_mask.astype(np.uint8), morphometry.affine)
        else:
            del paths["brain_mask"]
        transaction.write_text(paths["table"], table_text([row]))
        transaction.write_text(paths["sidecar"], json.dumps(_json_ready(sidecar), indent=1))
        transaction.write_text(paths["aseg_stats"], aseg_stats_text(morphometry, result))
        if morphometry.mosaic is not None:
            with open(transaction.temp_path(paths["mosaic"]), "wb") as handle:
                handle.write(morphometry.mosaic[1])
        else:
            del paths["mosaic"]
    return paths


def table_text(rows: list[dict]) -> str:
    """Rows as a TSV (columns in first-seen order; 'n/a' for missing, as BIDS tables write it); TIV and the
    volumes to 0.01 mm3, the QC scores and metrics to 6 significant digits (see table_values)."""
    from ..table_values import cell_text
    from .group import ID_COLUMNS, is_quality_column

    columns: list[str] = []
    for row in rows:
        columns += [name for name in row if name not in columns]
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(cell_text(row.get(name), volume=name not in ID_COLUMNS and not is_quality_column(name))
                               for name in columns))
    return "\n".join(lines) + "\n"


def _json_ready(value):
    from ..result_io import _json_safe

    return _json_safe(value)
