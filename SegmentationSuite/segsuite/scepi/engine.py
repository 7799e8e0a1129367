"""The sc_epi engine: spinal-cord segmentation of EPI (BOLD) volumes with the SCT/EPISeg nnU-Net v2 model.

It reproduces what the Spinal Cord Toolbox does around the stock ``nnunetv2`` predictor:
reorient to the model's orientation (dataset.json ``image_orientation``, else SCT "LPI"),
pass the array in nnU-Net's (z, y, x) order with the spacing reversed, undo both afterwards,
then apply SCT's optional postprocessing. nnU-Net itself does resampling and normalisation.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
from typing import Optional, Sequence

import numpy as np

from ..engine import resolve_device, set_threads
from ..checksum import sha256_of
from ..errors import InputError, ModelError, SegSuiteError, UsageError
from ..image import Volume, as_volume, check_finite, squeeze_to_3d
from ..labels import Label, LabelTable, fallback_color
from ..progress import ProgressCallback, ensure_callback
from ..result import SegmentationResult
from .modelfolder import ModelFolder, resolve_model
from .postprocess import MinimumSize, PostprocessOptions, binarize, parse_remove_small, postprocess

# SCT names orientations by where each axis comes FROM ("LPI": x runs from Left to Right, ...),
# which is the opposite of nibabel's axis codes (where each axis points TO).
SCT_DEFAULT_ORIENTATION = "LPI"
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}

# FreeSurfer's colour table has no cord label at 1; the name and colour follow its entry 126.
SPINAL_CORD = Label(1, "Spinal-Cord", (133, 203, 229))
BACKGROUND = Label(0, "Background", (0, 0, 0))
_KNOWN_NAMES = {"sc": "Spinal-Cord", "spinal_cord": "Spinal-Cord", "cord": "Spinal-Cord"}

NNUNET_INSTALL_HINT = (
    "the sc_epi engine needs nnU-Net v2, which is not installed: "
    "pip install -r requirements-scepi.txt && pip install --no-deps -r requirements-scepi-nodeps.txt "
    "(nnunetv2 and dynamic-network-architectures with --no-deps, so that a CUDA build of torch is not pulled in)"
)


def sct_to_nibabel_axcodes(orientation: str) -> tuple[str, str, str]:
    """SCT orientation string ('LPI', 'RPI', 'AIL', ...) -> nibabel axis codes ('R', 'A', 'S', ...)."""
    code = str(orientation).strip().upper()
    axes = [{"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}.get(letter) for letter in code]
    if len(code) != 3 or None in axes or sorted(axes) != [0, 1, 2]:
        raise ModelError(f"the model's dataset.json has image_orientation {orientation!r}, which is not an orientation "
                         "like 'LPI'; fix dataset.json or reinstall the model")
    return tuple(_OPPOSITE[letter] for letter in code)  # type: ignore[return-value]


def reorient(data: np.ndarray, affine: np.ndarray, axcodes: Sequence[str]):
    """Permute/flip the array (no resampling) so its axes point to ``axcodes``; returns data, affine, transform."""
    from nibabel import orientations

    current = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(current, orientations.axcodes2ornt(tuple(axcodes)))
    new_data = orientations.apply_orientation(data, transform)
    new_affine = affine @ orientations.inv_ornt_aff(transform, data.shape[:3])
    return new_data, new_affine, transform


def undo_reorient(data: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Inverse of ``reorient`` for an array on the reoriented grid (extra trailing axes are kept)."""
    from nibabel import orientations

    inverse = np.zeros_like(transform)
    for source_axis, (target_axis, flip) in enumerate(transform):
        inverse[int(target_axis)] = (source_axis, flip)
    return orientations.apply_orientation(data, inverse)


def require_nnunet() -> None:
    """Stop with the install hint when nnunetv2 is absent, before any model download or input work."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise SegSuiteError(NNUNET_INSTALL_HINT)


def import_nnunet_predictor():
    """nnUNetPredictor, imported on first use, with a clear error when nnunetv2 is absent."""
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as error:
        raise SegSuiteError(f"{NNUNET_INSTALL_HINT} ({error})") from error
    return nnUNetPredictor


def make_predictor(device: str = "cpu", use_mirroring: bool = False, tile_step_size: float = 0.5, progress_sink=None):
    """An nnUNetPredictor configured as SCT does, quiet (no tqdm, no prints), optionally reporting patches."""
    import torch

    base = import_nnunet_predictor()

    class ReportingPredictor(base):  # counts sliding-window patches to report progress
        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            self._segsuite_total = max(len(slicers), 1) * max(len(self.list_of_parameters or [1]), 1)
            return slicers

        def _internal_maybe_mirror_and_predict(self, x):
            result = super()._internal_maybe_mirror_and_predict(x)
            sink = getattr(self, "_segsuite_sink", None)
            if sink is not None:
                self._segsuite_done = getattr(self, "_segsuite_done", 0) + 1
                sink(self._segsuite_done / getattr(self, "_segsuite_total", 1))
            return result

    torch_device = torch.device(device)
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints a note for every non-CUDA device
        predictor = ReportingPredictor(
            tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
            # SCT keeps results arrays on the CPU; on CUDA nnU-Net's default (on device, CPU fallback on OOM) is faster.
            perform_everything_on_device=torch_device.type == "cuda",
            device=torch_device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor._segsuite_sink = progress_sink
    return predictor


def label_table_from_dataset(labels: dict) -> tuple[LabelTable, dict[str, list[int]]]:
    """Our label table and {dataset label name: output values} from dataset.json ``labels``."""
    entries = [BACKGROUND]
    values_by_name: dict[str, list[int]] = {}
    for name, value in labels.items():
        values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
        if name == "background" or values == [0]:
            continue
        values_by_name[name] = values
        output_value = max(values)
        if any(label.value == output_value for label in entries):
            continue
        pretty = _KNOWN_NAMES.get(name.lower())
        if pretty and output_value == 1:
            entries.append(SPINAL_CORD)
        else:
            entries.append(Label(output_value, pretty or name, fallback_color(output_value)))
    return LabelTable(entries), values_by_name


class ScEpiEngine:
    """Spinal cord segmentation on EPI with the sc_epi nnU-Net model (SCT ``sct_deepseg sc_epi``).

    model:        None (the managed ``sc-epi`` model), an nnU-Net model folder, or the release zip.
    device:       "auto", "cpu", "cuda", "cuda:N" or "mps".
    threads:      PyTorch CPU threads (None keeps the default).
    mean:         average a 4D series over time instead of refusing it.
    threshold:    SCT -thr: binarize the soft (probability) output at this value; None or 0 keeps nnU-Net's argmax.
    keep_largest, fill_holes, remove_small: SCT -largest, -fill-holes, -remove-small ("10mm3", ["5vox", "3vox"]).
    test_time_augmentation: nnU-Net mirroring (SCT -test-time-aug); off by default as in SCT.
    probabilities: also return the class probabilities (result.posteriors).
    """

    def __init__(self, model: Optional[str | os.PathLike] = None, device: str = "auto", threads: Optional[int] = None,
                 *, mean: bool = False, threshold: Optional[float] = None, keep_largest: bool = False,
                 fill_holes: bool = False, remove_small: Optional[Sequence[str] | str | MinimumSize] = None,
                 test_time_augmentation: bool = False, tile_step_size: float = 0.5, probabilities: bool = False,
                 progress: Optional[ProgressCallback] = None):
        if threshold is not None and not (0.0 <= float(threshold) < 1.0):
            raise UsageError(f"-thr must be in [0, 1) (a probability), got {threshold}")
        if isinstance(remove_small, MinimumSize) or remove_small is None:
            minimum = remove_small
        else:
            minimum = parse_remove_small(remove_small)
        self.options = PostprocessOptions(threshold=float(threshold) if threshold else None,
                                          keep_largest=bool(keep_largest), fill_holes=bool(fill_holes),
                                          remove_small=minimum)
        self.mean = bool(mean)
        self.return_probabilities = bool(probabilities)
        self.device = resolve_device(device)
        self.threads = threads
        set_threads(threads)

        report = ensure_callback(progress)
        report(0.0, "Finding the sc_epi model")
        self.model: ModelFolder = model if isinstance(model, ModelFolder) else resolve_model(model, progress=progress)
        self._progress_sink = None
        self.predictor = make_predictor(self.device, use_mirroring=test_time_augmentation,
                                        tile_step_size=tile_step_size, progress_sink=self._report_patch)
        report(0.5, "Loading the sc_epi model")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.predictor.initialize_from_trained_model_folder(
                    os.fspath(self.model.path), use_folds=self.model.folds, checkpoint_name=self.model.checkpoint_name)
        except SegSuiteError:
            raise
        except Exception as error:  # a corrupt checkpoint or plans file: many exception types
            raise ModelError(f"cannot load the nnU-Net model in {self.model.path} ({type(error).__name__}: {error}); "
                             "reinstall the model or check the --model folder") from error

        dataset = self.predictor.dataset_json
        self.dataset_labels: dict = dict(dataset.get("labels", {}))
        self.label_table, self.values_by_name = label_table_from_dataset(self.dataset_labels)
        self.orientation = str(dataset.get("image_orientation") or SCT_DEFAULT_ORIENTATION).upper()
        self.model_axcodes = sct_to_nibabel_axcodes(self.orientation)
        self.has_regions = bool(getattr(self.predictor.label_manager, "has_regions", False))
        if self.options.threshold and self.has_regions:
            raise UsageError("-thr is not supported for this region-based model; leave -thr out")
        self._provenance = {
            "engine": "sc_epi",
            "model_id": "sc-epi" if self.model.source == "sc-epi" else None,
            "model_source": self.model.source,
            "model_path": os.fspath(self.model.path),
            "folds": list(self.model.folds),
            "checkpoint": self.model.checkpoint_name,
            "checkpoint_sha256": [sha256_of(p) for p in self.model.checkpoint_paths()],
            "nnunetv2_version": _package_version("nnunetv2"),
            "device": self.device,
            "model_orientation_sct": self.orientation,
            "dataset_labels": self.dataset_labels,
            "options": {"mean": self.mean, "threshold": self.options.threshold,
                        "keep_largest": self.options.keep_largest, "fill_holes": self.options.fill_holes,
                        "remove_small": None if minimum is None else {"sizes": list(minimum.sizes), "unit": minimum.unit},
                        "test_time_augmentation": bool(test_time_augmentation), "tile_step_size": tile_step_size},
        }
        report(1.0, "Model loaded")

    # -- progress from nnU-Net's sliding window -------------------------------------------------
    def _report_patch(self, fraction: float) -> None:
        if self._progress_sink is not None:
            self._progress_sink(fraction)

    # -- input ---------------------------------------------------------------------------------
    def load_input(self, source) -> Volume:
        """The input as one 3D float32 volume (4D averaged when ``mean``), with clear errors."""
        volume = as_volume(source)
        data = np.asarray(volume.data)
        what = volume.path or "the input"
        if data.ndim >= 4 and int(np.prod(data.shape[3:])) > 1:
            if not self.mean:
                raise InputError(
                    f"{what} is a 4D series ({data.shape[3]} volumes, shape {data.shape}); sc_epi segments one 3D "
                    "volume: average it over time first (sct_maths -i IN -mean t -o OUT, or fslmaths IN -Tmean OUT) "
                    "or pass --mean to do it here")
            data = data.reshape(data.shape[:3] + (-1,)).mean(axis=3, dtype=np.float64)
        data = squeeze_to_3d(data, what)
        data = np.asarray(data, dtype=np.float32)
        check_finite(data, what)
        sizes = np.sqrt((volume.affine[:3, :3] ** 2).sum(axis=0))
        if not np.all(np.isfinite(volume.affine)) or np.any(sizes <= 0) or abs(np.linalg.det(volume.affine[:3, :3])) < 1e-12:
            raise InputError(f"{what} has an invalid voxel-to-world matrix (voxel sizes {sizes.tolist()}); fix its header")
        return Volume(data=data, affine=volume.affine, path=volume.path, header=volume.header)

    # -- the work ------------------------------------------------------------------------------
    def predict_array(self, data: np.ndarray, affine: np.ndarray, probabilities: bool = False):
        """nnU-Net on a 3D array in any orientation; returns labels (and probabilities X,Y,Z,C) on the same grid."""
        model_data, model_affine, transform = reorient(data, affine, self.model_axcodes)
        spacing = np.sqrt((model_affine[:3, :3] ** 2).sum(axis=0))
        nnunet_input = np.ascontiguousarray(model_data.transpose(2, 1, 0)[None], dtype=np.float32)
        properties = {"spacing": [float(s) for s in spacing[::-1]]}
        with contextlib.redirect_stdout(io.StringIO()):
            output = self.predictor.predict_single_npy_array(nnunet_input, properties, None, None, probabilities)
        if probabilities:
            segmentation, probs = output
            probs = undo_reorient(np.asarray(probs).transpose(3, 2, 1, 0), transform)
        else:
            segmentation, probs = output, None
        labels = undo_reorient(np.asarray(segmentation).transpose(2, 1, 0), transform)
        return np.ascontiguousarray(labels), (None if probs is None else np.ascontiguousarray(probs, dtype=np.float32))

    def segment(self, source, progress: Optional[ProgressCallback] = None) -> SegmentationResult:
        report = ensure_callback(progress)
        report(0.0, "Reading the input")
        volume = self.load_input(source)
        need_probabilities = bool(self.options.threshold) or self.return_probabilities
        self.predictor._segsuite_done = 0
        self._progress_sink = lambda fraction: report(0.05 + 0.85 * min(fraction, 1.0), "Segmenting the spinal cord")
        try:
            report(0.05, "Segmenting the spinal cord")
            labels, probs = self.predict_array(volume.data, volume.affine, probabilities=need_probabilities)
        finally:
            self._progress_sink = None
        if labels.shape != volume.data.shape:  # nnU-Net must hand back the input grid
            raise SegSuiteError(f"internal error: nnU-Net returned shape {labels.shape} for input {volume.data.shape}")

        report(0.92, "Postprocessing")
        if self.options.threshold:
            # SCT -thr on the soft output: foreground where P(not background) > thr, class by argmax.
            foreground = binarize(1.0 - probs[..., 0], self.options.threshold)
            labels = np.where(foreground > 0, np.argmax(probs[..., 1:], axis=-1) + 1, 0)
        dtype = np.uint8 if max(self.label_table.values) < 256 else np.int16
        labels = labels.astype(dtype, copy=False)
        voxel_sizes = np.sqrt((volume.affine[:3, :3] ** 2).sum(axis=0))
        class_values = [v for v in self.label_table.values if v != 0]
        if self.options.any:
            labels = postprocess(labels, voxel_sizes, self.options, class_values).astype(dtype, copy=False)

        voxel_volume = float(abs(np.linalg.det(volume.affine[:3, :3])))
        counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(self.label_table.values) + 1)
        volumes = {label.name: float(counts[label.value]) * voxel_volume for label in self.label_table if label.value != 0}
        subject = _subject_name(volume.path)
        result = SegmentationResult(
            labels=labels, affine=volume.affine.copy(), label_table=self.label_table,
            posteriors=probs if self.return_probabilities else None,
            posterior_labels=list(range(probs.shape[-1])) if (self.return_probabilities and probs is not None) else None,
            volumes=volumes, provenance={**self._provenance, "input": volume.path,
                                         "input_shape": list(volume.data.shape)},
            subject=subject)
        report(1.0, "Done")
        return result

    def output_arrays(self, result: SegmentationResult) -> list[tuple[str, np.ndarray]]:
        """SCT's output files as (suffix, array): ('_seg', labels) when the only label is 'sc',
        else one binary mask per label ('_<label>_seg')."""
        names = list(self.values_by_name)
        if sorted(names) == ["sc"]:
            return [("_seg", result.labels)]
        outputs = []
        for name, values in self.values_by_name.items():
            outputs.append((f"_{name}_seg", np.isin(result.labels, values).astype(np.uint8)))
        return outputs


def _subject_name(path: Optional[str]) -> str:
    if not path:
        return ""
    from ..image import strip_image_suffix

    return os.path.basename(strip_image_suffix(path))


def _package_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None
