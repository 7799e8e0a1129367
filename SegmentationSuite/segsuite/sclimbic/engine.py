"""ScLimbic: subcortical limbic segmentation (Greve et al. 2021) with PyTorch.

The computation follows FreeSurfer's mri_sclimbic_seg (surfa-based version): intensity
normalisation, conform to 160^3 1 mm RAS, one U-Net pass, posterior clean-up around each
label in the label bounding box, resampling back to the input voxel size and grid, soft
volumes, confidences and z-scores against population statistics.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..engine import ieee_float32, resolve_device, set_threads
from ..checksum import sha256_of
from ..errors import InputError, ModelError
from ..image import Volume, as_volume, check_finite, strip_image_suffix, voxel_sizes
from ..labels import LabelTable
from ..progress import ProgressCallback, ensure_callback
from ..result import SegmentationResult
from . import geometry
from .stats import PopulationStat, read_population_stats, z_scores

MODEL_ID = "sclimbic"
MODEL_FILE = "sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5"
CTAB_FILE = "sclimbic.ctab"
STATS_FILE = "sclimbic.volstats.csv"
ANTERIOR_COMMISSURE = 853
FIELD_OF_VIEW = 160
SEVEN_TESLA_PERCENTILE = 99.9
VOXEL_SIZE_TOLERANCE = 1e-2  # mm: the reference's 1 mm check


def resolve_model_files(model=None, ctab=None, population_stats=None, progress=None) -> tuple[Path, Path, Path]:
    """(weights .h5, colour table, population stats). ``model`` may be the .h5 file or a folder
    holding the standard file names; ctab and stats default to the files beside the weights.
    Without ``model`` the model manager provides the installed 'sclimbic' folder."""
    if model is None:
        try:
            from ..models import ensure  # lazily: only when no explicit model is given
        except ImportError:
            ensure = None
        if ensure is not None:
            model = ensure(MODEL_ID, progress=progress)
        else:
            freesurfer = os.environ.get("FREESURFER_HOME")
            if not freesurfer or not (Path(freesurfer) / "models" / MODEL_FILE).is_file():
                raise ModelError("no ScLimbic model: give the .h5 file with --model (FreeSurfer installs have it "
                                 f"in $FREESURFER_HOME/models/{MODEL_FILE})")
            model = Path(freesurfer) / "models"
    model = Path(model)
    if model.is_dir():
        model = model / MODEL_FILE
    if not model.is_file():
        raise ModelError(f"ScLimbic model file not found: {model}; give the .h5 file with --model "
                         "or install it with `segsuite models install sclimbic`")
    ctab = Path(ctab) if ctab is not None else model.parent / CTAB_FILE
    population_stats = Path(population_stats) if population_stats is not None else model.parent / STATS_FILE
    for path, option in ((ctab, "--ctab"), (population_stats, "--population-stats")):
        if not path.is_file():
            raise ModelError(f"{path} not found: put it beside the model file or give it with {option}")
    return model, ctab, population_stats



def clean_posteriors(posteriors: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Keep each structure's posterior only within one voxel (6-connected) of where it wins.

    posteriors: (X, Y, Z, C) float32, channel 0 the background; seg: (X, Y, Z) winning channel.
    The background becomes 1 - sum(structures), then all is clipped to [0, 1] and renormalised.
    Modifies ``posteriors`` in place and returns the result.
    """
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(3, 1)
    for channel in range(1, posteriors.shape[-1]):
        keep = ndimage.binary_dilation(seg == channel, cross)
        posteriors[..., channel][~keep] = 0
    posteriors[..., 0] = 1.0 - np.sum(posteriors[..., 1:], axis=-1)
    posteriors = posteriors.clip(0, 1)
    posteriors /= np.sum(posteriors, axis=-1, keepdims=True)
    return posteriors


class ScLimbicEngine:
    """Build once, segment many:

        engine = ScLimbicEngine(model="sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5")
        result = engine.segment("t1.nii.gz", etiv="subj/mri/transforms/talairach.xfm")

    percentile: None/False for min-max normalisation, True for the 99.9th percentile of the
    nonzero voxels, or a number for that percentile (seven_tesla=True means 99.9).
    exclude: label values left out of volumes, z-scores and confidences (853 is added unless
    keep_ac). posteriors: keep the cleaned posteriors in the result.
    """

    def __init__(self, model=None, ctab=None, population_stats=None, device: str = "auto",
                 threads: Optional[int] = None, conform: bool = False,
                 percentile: Union[None, bool, float] = False, seven_tesla: bool = False,
                 keep_ac: bool = False, exclude: Sequence[int] = (), vox_count_volumes: bool = False,
                 posteriors: bool = False, template=None, fov: int = FIELD_OF_VIEW,
                 progress: Optional[ProgressCallback] = None):
        self.model_path, self.ctab_path, self.stats_path = resolve_model_files(model, ctab, population_stats, progress)
        self.label_table = LabelTable.from_ctab(self.ctab_path)
        if len(self.label_table) < 2 or self.label_table.values[0] != 0:
            raise ModelError(f"{self.ctab_path} must list label 0 first and at least one structure")
        self.population = read_population_stats(self.stats_path)
        self.device = resolve_device(device)
        self.threads = threads
        set_threads(threads)
        self.conform = bool(conform)
        if seven_tesla:
            percentile = SEVEN_TESLA_PERCENTILE
        elif percentile is True:
            percentile = SEVEN_TESLA_PERCENTILE
        elif percentile is False:
            percentile = None
        if percentile is not None and not 0 < float(percentile) <= 100:
            raise InputError(f"--percentile must be in (0, 100], got {percentile}")
        self.percentile = None if percentile is None else float(percentile)
        excluded = [int(v) for v in exclude]
        if not keep_ac and ANTERIOR_COMMISSURE not in excluded:
            excluded.append(ANTERIOR_COMMISSURE)
        self.exclude = tuple(excluded)
        self.vox_count_volumes = bool(vox_count_volumes)
        self.keep_posteriors = bool(posteriors)
        self.template = template
        if int(fov) < 8 or int(fov) % 4:
            raise InputError(f"the field of view must be a multiple of 4 (the network pools twice), got {fov}")
        self.fov = int(fov)
        self.network = self._load_network()

    # ------------------------------------------------------------------ model

    def _load_network(self):
        import torch

        from ..nets.keras_h5 import load_keras_weights, read_keras_h5
        from ..nets.unet import KerasUNet

        network = KerasUNet("unet", 1, len(self.label_table), n_levels=3, n_features=24)
        load_keras_weights(network.keras_layers(), read_keras_h5(self.model_path), prefixes=["unet"],
                           source=str(self.model_path))
        network = network.to(self.device).eval()
        if self.device == "cpu":
            # oneDNN's 3D convolutions are markedly faster with channels-last tensors on CPU
            network = network.to(memory_format=torch.channels_last_3d)
        return network

    @property
    def stats_labels(self) -> list[int]:
        """Label values reported in volumes/CSVs: all but 0 and the excluded ones, ctab order."""
        return [v for v in self.label_table.values if v != 0 and v not in self.exclude]

    # ------------------------------------------------------------------ steps

    def load(self, source) -> tuple[Volume, np.ndarray]:
        """The input volume (3D) and its voxel size (from the header when there is one)."""
        volume = as_volume(source)
        data = np.asanyarray(volume.data)
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise InputError(f"the input has shape {tuple(volume.data.shape)}; ScLimbic needs one 3D T1-weighted "
                             "volume: extract a single volume first (e.g. mri_convert --frame 0)")
        if data.dtype.kind not in "biuf":
            raise InputError(f"the input has data type {data.dtype}, which is not an image intensity type")
        check_finite(data)
        voxel_size = volume.voxel_sizes
        header = volume.header
        if header is not None and hasattr(header, "get_zooms"):
            zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
            if zooms.shape == (3,) and np.all(zooms > 0):
                voxel_size = zooms
        return Volume(data=data, affine=volume.affine, path=volume.path, header=header), np.asarray(voxel_size, dtype=np.float64)

    def check_input(self, source) -> None:
        """The header-level refusals of ``segment``: unreadable, not one 3D volume, not 1 mm without conform."""
        if not (isinstance(source, (str, bytes)) or hasattr(source, "__fspath__")):
            return
        from ..image import read_header

        header = read_header(source)
        shape = list(header.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape.pop()
        if len(shape) != 3:
            raise InputError(f"{header.path} has shape {header.shape}; ScLimbic needs one 3D T1-weighted "
                             "volume: extract a single volume first (e.g. mri_convert --frame 0)")
        if header.dtype.kind not in "biuf":
            raise InputError(f"{header.path} has data type {header.dtype}, which is not an image intensity type")
        zooms = np.asarray(header.zooms[:3], dtype=np.float64)
        self.check_resolution(zooms if np.all(zooms > 0) else voxel_sizes(header.affine))

    def check_resolution(self, voxel_size: np.ndarray) -> None:
        if not np.allclose(voxel_size, 1.0, rtol=0, atol=VOXEL_SIZE_TOLERANCE):
            sizes = " x ".join(f"{v:.2f}" for v in voxel_size)
            if not self.conform:
                raise InputError(f"the input has {sizes} mm voxels but ScLimbic needs 1 mm isotropic input; "
                                 "rerun with --conform to reslice it to 1 mm (results may suffer; in Python: conform=True)")

    def normalise(self, data: np.ndarray) -> np.ndarray:
        """Scale to [0, 1] by the minimum and the maximum (or the nonzero percentile)."""
        low = data.min()
        if self.percentile is None:
            high = data.max()
        else:
            nonzero = data[data != 0]
            if nonzero.size == 0:
                raise InputError("the input image is blank (all voxels are 0)")
            high = np.percentile(nonzero, self.percentile)
        if low == high:
            raise InputError("the input image is blank (all voxels have the same value)")
        scale = np.float32(float(high) - float(low))
        out = data.astype(np.float32)
        out -= np.float32(low)
        out /= scale
        np.clip(out, 0, 1, out=out)
        return out

    def conform_image(self, data: np.ndarray, affine: np.ndarray, voxel_size: np.ndarray):
        """Reorient to RAS, reslice to 1 mm if needed, pad/crop to fov^3 (160) about the centre."""
        data, affine, voxel_size = geometry.reorient_to_ras(data, affine, voxel_size)
        if not geometry.same_voxel_size(voxel_size, 1.0):
            shape, target = geometry.resized_geometry(data.shape, affine, voxel_size, 1.0)
            data = geometry.resample(data, affine, shape, target, method="linear")
            affine, voxel_size = target, np.ones(3)
        data, affine = geometry.centred_pad_crop(data, affine, (self.fov,) * 3)
        return np.ascontiguousarray(data, dtype=np.float32), affine, voxel_size

    def predict(self, conformed: np.ndarray):
        """Softmax posteriors (C, X, Y, Z) as a torch tensor on the CPU."""
        import torch

        with torch.inference_mode(), ieee_float32():
            tensor = torch.from_numpy(conformed)[None, None].to(self.device)
            if self.device == "cpu":
                tensor = tensor.contiguous(memory_format=torch.channels_last_3d)
            output = self.network(tensor)[0]
            return output.to("cpu").contiguous()

    # ------------------------------------------------------------------ the whole job

    def segment(self, source, progress: Optional[ProgressCallback] = None, etiv=None) -> SegmentationResult:
        """Segment one T1-weighted image.

        etiv: None (no eTIV), a number (mm3, already known), a talairach transform file
        (.xfm or .lta) or "register" (affine registration to the MNI template).
        """
        import torch

        report = ensure_callback(progress)
        started = time.perf_counter()
        report(0.0, "Loading the image")
        volume, voxel_size = self.load(source)
        self.check_resolution(voxel_size)
        etiv_value = self._etiv_for(etiv, volume, report)

        report(0.1, "Preprocessing")
        normalised = self.normalise(volume.data)
        conformed, conformed_affine, conformed_voxel_size = self.conform_image(normalised, volume.affine, voxel_size)
        del normalised

        report(0.15, "Running the network")
        prediction = self.predict(conformed)
        del conformed
        report(0.85, "Post-processing")

        n_labels = prediction.shape[0]
        seg = torch.argmax(prediction, dim=0).numpy()
        box = geometry.bounding_box(seg > 0, margin=2)
        seg = np.ascontiguousarray(seg[box])
        # channels-last like the reference, so sums run in the same order
        posteriors = prediction[(slice(None),) + box].permute(1, 2, 3, 0).contiguous().numpy()
        del prediction
        posteriors_affine = geometry.crop_affine(conformed_affine, [s.start for s in box])

        posteriors = clean_posteriors(posteriors, seg)

        posterior_voxel_size = conformed_voxel_size
        if not geometry.same_voxel_size(conformed_voxel_size, voxel_size):
            # back to the input resolution (only with --conform); same centre, same axes
            target_voxel_size = geometry.reorient_to_ras(np.zeros((1, 1, 1)), volume.affine, voxel_size)[2]
            shape, target = geometry.resized_geometry(posteriors.shape[:3], posteriors_affine,
                                                      conformed_voxel_size, target_voxel_size)
            posteriors = geometry.resample(posteriors, posteriors_affine, shape, target, method="linear")
            posteriors_affine, posterior_voxel_size = target, target_voxel_size

        winner = posteriors.argmax(axis=-1)
        values = np.asarray(self.label_table.values, dtype=np.int32)
        counts = np.bincount(winner.ravel(), minlength=n_labels)
        confidences = np.zeros(n_labels, dtype=np.float64)
        for channel in range(n_labels):
            if counts[channel]:
                confidences[channel] = float(posteriors[..., channel][winner == channel].mean())
        voxel_volume = np.float32(np.prod(posterior_voxel_size))
        if self.vox_count_volumes:
            channel_volumes = voxel_volume * counts.astype(np.float32)
        else:
            channel_volumes = voxel_volume * posteriors.reshape(-1, n_labels).sum(0)

        labels_small = values[winner]
        del winner
        labels = geometry.resample(labels_small, posteriors_affine, volume.data.shape, volume.affine,
                                   method="nearest", fill=0).astype(np.int32)
        report(0.97, "Measuring")

        reported = [self.label_table.values.index(v) for v in self.stats_labels]
        names = [self.label_table.name(self.label_table.values[c]) for c in reported]
        volumes = {name: float(channel_volumes[c]) for name, c in zip(names, reported)}
        result = SegmentationResult(
            labels=labels,
            affine=volume.affine,
            label_table=self.label_table,
            volumes=volumes,
            qc=z_scores(volumes, self.population),
            tables={
                "confidences": {name: float(confidences[c]) for name, c in zip(names, reported)},
                "voxel_counts": {name: int(counts[c]) for name, c in zip(names, reported)},
            },
            units={"volumes": "mm3", "qc": "z-score", "confidences": "probability", "voxel_counts": "voxels",
                   "eTIV": "mm3"},
            subject=os.path.basename(strip_image_suffix(volume.path)) if volume.path else "",
        )
        if etiv_value is not None:
            result.measures["eTIV"] = float(etiv_value)
        if self.keep_posteriors:
            result.posteriors = posteriors
            result.posterior_labels = list(self.label_table.values)
            result.posteriors_affine = posteriors_affine
        result.provenance = {
            "engine": "sclimbic",
            "model": str(self.model_path),
            "model_sha256": sha256_of(self.model_path),
            "ctab": str(self.ctab_path),
            "population_stats": str(self.stats_path),
            "device": self.device,
            "options": {"conform": self.conform, "percentile": self.percentile, "exclude": list(self.exclude),
                        "vox_count_volumes": self.vox_count_volumes},
            "seconds": round(time.perf_counter() - started, 2),
        }
        report(1.0, "Done")
        return result

    def _etiv_for(self, etiv, volume: Volume, report) -> Optional[float]:
        if etiv is None or etiv is False:
            return None
        if isinstance(etiv, (int, float)) and not isinstance(etiv, bool):
            return float(etiv)
        from . import etiv as etiv_module

        if etiv is True or (isinstance(etiv, str) and etiv == "register"):
            report(0.02, "Estimating eTIV by registration to MNI space")
            return etiv_module.etiv_from_registration(volume.data, volume.affine, template=self.template)
        return etiv_module.etiv_from_transform_file(etiv)
