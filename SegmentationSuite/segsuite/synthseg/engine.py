"""SynthSeg 2.0 (and 1.0, robust, parcellation, QC) in PyTorch with the original Keras weights.

    engine = SynthSegEngine(parc=True, qc=True)     # weights loaded once
    result = engine.segment("t1.nii.gz")            # or (array, affine)
    result.labels, result.affine, result.volumes, result.qc

The steps follow SynthSeg's predict_synthseg.py (see docs/synthseg.md for the known differences).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import __version__
from ..engine import ieee_float32, resolve_device, set_threads
from ..memory import outside_heap, reuse_freed_memory
from ..checksum import sha256_of
from ..errors import ModelError, SegSuiteError
from ..labels import Label, LabelTable, freesurfer_lut
from ..progress import ProgressCallback, ensure_callback
from ..result import ImageArray, SegmentationResult, VolumeTable
from . import labels as L
from .postprocess import (channel_argmax, channel_sums, gaussian_blur_, hard_labels, postprocess_parcellation,
                          postprocess_segmentation, soft_volumes)
from .preprocess import Prepared, prepare

MODEL_FILES = {
    "synthseg-2.0": "synthseg_2.0.h5",
    "synthseg-parc-2.0": "synthseg_parc_2.0.h5",
    "synthseg-qc-2.0": "synthseg_qc_2.0.h5",
    "synthseg-robust-2.0": "synthseg_robust_2.0.h5",
    "synthseg-1.0": "synthseg_1.0.h5",
}



def resolve_weights(model, model_id: str, segmentation: bool) -> Path:
    """The .h5 file of ``model_id``: from ``model`` (a .h5 file for the segmentation network, or a
    folder with the standard names, e.g. $FREESURFER_HOME/models), else from the model manager."""
    name = MODEL_FILES[model_id]
    if model is not None:
        path = Path(os.path.expanduser(os.fspath(model)))
        if path.is_dir():
            candidate = path / name
            if candidate.is_file():
                return candidate
            raise ModelError(f"the model folder {path} has no {name}; put the file there or omit --model "
                             "to let the model manager download it")
        if not path.exists():
            raise ModelError(f"model file not found: {path}")
        if segmentation:
            return path
        sibling = path.parent / name  # companion networks next to an explicit segmentation file
        if sibling.is_file():
            return sibling
    try:
        from ..models import ensure
    except ImportError as error:
        raise ModelError(f"no weights for {model_id} were given and the model manager is not available "
                         f"({error}); pass --model with a folder holding {name}") from error
    return Path(ensure(model_id)) / name


# The robust chain's l2l net (5x5x5 kernels) runs its plain convolutions as tiled Fourier
# convolutions (layer: tile). One layer each, 2 threads, AMD EPYC Zen 4, direct -> Fourier seconds:
# 16 -> 16 on a 36-row slab of 224 x 192 0.78 -> 0.38; at 96 x 112 x 96 16 -> 32 0.77 -> 0.53 and
# 32 -> 32 1.21 -> 0.73; at 48 x 56 x 48 32 -> 64 0.30 -> 0.14 and 64 -> 64 0.63 -> 0.25; at 24 x 28
# x 24 64 -> 128 0.15 -> 0.11 and 128 -> 128 0.33 -> 0.15. The first conv (5 input channels), the
# deepest level and the merges of the up-sampled input (phase kernels of 3^3) are faster direct.
L2L_FOURIER_TILES = {"l2l_conv_downarm_0_1": 16, "l2l_conv_downarm_1_0": 16, "l2l_conv_downarm_1_1": 16,
                     "l2l_conv_downarm_2_0": 12, "l2l_conv_downarm_2_1": 8,
                     "l2l_conv_downarm_3_0": 4, "l2l_conv_downarm_3_1": 4,
                     "l2l_conv_uparm_5_1": 4, "l2l_conv_uparm_6_1": 8, "l2l_conv_uparm_7_1": 16,
                     "l2l_conv_uparm_8_1": 16}


class SynthSegEngine:
    """Construct once (loads the networks), then call ``segment`` for each image."""

    def __init__(self, model=None, parc: bool = False, robust: bool = False, fast: bool = False,
                 v1: bool = False, ct: bool = False, qc: bool = False, posteriors: bool = False,
                 crop: Optional[Sequence[int] | int] = None, device: str = "auto", threads: Optional[int] = None,
                 autocrop: bool = False):
        if robust and v1:
            raise SegSuiteError("--robust cannot be combined with --v1: SynthSeg-robust only exists for 2.0")
        self.robust = bool(robust)
        self.fast = bool(fast) or self.robust  # robust implies fast postprocessing (and no flip, no blur)
        self.v1 = bool(v1)
        self.parc = bool(parc)
        self.ct = bool(ct)
        self.do_qc = bool(qc)
        self.keep_posteriors = bool(posteriors)
        self.crop = None if crop is None else ([int(crop)] * 3 if np.isscalar(crop) else [int(c) for c in crop])
        if self.crop is not None and (len(self.crop) not in (1, 3) or min(self.crop) <= 0):
            raise SegSuiteError(f"crop must be one or three positive sizes, got {crop}")
        if self.crop is not None and len(self.crop) == 1:
            self.crop = self.crop * 3
        if autocrop and self.crop is not None:
            raise SegSuiteError("autocrop cannot be combined with crop (mri_synthseg: --autocrop cannot be used with --crop)")
        self.autocrop = bool(autocrop)  # crop to the head's bounding box (mri_synthseg --autocrop)
        self.device = resolve_device(device)
        set_threads(threads)

        self.labels = L.segmentation_labels(self.v1)
        self.flip = None if self.fast else L.flip_indices(self.labels)
        self.topology = L.topology_classes(self.labels)
        self.parc_labels = np.array(L.PARC_LABELS, dtype=np.int32)
        self.weights: dict[str, dict] = {}
        self._build(model)

    # ---- networks -------------------------------------------------------------------------------
    def _load(self, model, model_id: str, net, prefixes, segmentation: bool):
        from ..nets.keras_h5 import load_keras_weights, read_keras_h5

        path = resolve_weights(model, model_id, segmentation)
        weights = read_keras_h5(path)
        layers = {}
        for module in net:
            module.to_empty(device="cpu")  # built on the meta device: storage now, values from the file
            for name, buffer in module.named_buffers():
                if name.endswith("num_batches_tracked"):  # the one buffer no Keras variable fills
                    buffer.zero_()
            layers.update(module.keras_layers())
        load_keras_weights(layers, weights, prefixes=prefixes, source=str(path))
        self.weights[model_id] = {"file": str(path), "sha256": sha256_of(path)}
        for module in net:
            module.to(self.device).eval()

    def _build(self, model) -> None:
        import torch

        torch.set_grad_enabled(False)
        n_labels = len(self.labels)
        # the networks are built without storage, so PyTorch does not fill them with random
        # numbers that the weights file replaces next (0.35 s of the robust + QC load)
        with torch.device("meta"):
            self._build_networks(n_labels)
        self._load_networks(model)

    def _build_networks(self, n_labels: int) -> None:
        from ..nets.qc import KerasQCNet
        from ..nets.unet import KerasUNet

        if self.robust:
            self.unet = KerasUNet("unet", 1, L.N_DENOISER_GROUPS)
            self.l2l = KerasUNet("l2l", L.N_DENOISER_GROUPS, L.N_DENOISER_GROUPS, kernel_size=5, n_features=16,
                                 n_skip_levels=2, fourier_tiles=L2L_FOURIER_TILES)
            self.unet2 = KerasUNet("unet2", 1 + L.N_DENOISER_GROUPS, n_labels)
        else:
            self.unet = KerasUNet("unet", 1, n_labels)
        self.unet_parc = KerasUNet("unet_parc", 3, len(self.parc_labels)) if self.parc else None
        self.qc_net = KerasQCNet("qc", L.N_QC_GROUPS, L.N_QC_GROUPS) if self.do_qc else None

    def _load_networks(self, model) -> None:
        if self.robust:
            self._load(model, "synthseg-robust-2.0", [self.unet, self.l2l, self.unet2], ["unet", "l2l", "unet2"], True)
        else:
            model_id = "synthseg-1.0" if self.v1 else "synthseg-2.0"
            self._load(model, model_id, [self.unet], ["unet"], True)
        if self.parc:
            self._load(model, "synthseg-parc-2.0", [self.unet_parc], ["unet_parc"], False)
        if self.do_qc:
            self._load(model, "synthseg-qc-2.0", [self.qc_net], ["qc"], False)

    # ---- inference ------------------------------------------------------------------------------
    def _tensor(self, array: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    @staticmethod
    def _slab_logits(net, x, flip_channels=None, slab: int = 32, channel_first: bool = True, rows: int = 16):
        """(start, stop, logits) for slabs of axis 0 (at most ``rows`` rows each): the last 1x1x1
        conv as one matrix product, channel-first (C, voxels) or else (voxels, C), straight from
        the network's slabs of ``slab`` channels-last feature rows (``feature_slabs``), so that no
        full-size features or logits tensor exists. With ``flip_channels``, ``x`` is the image
        flipped on axis 0: each slab is flipped back and its channels reordered (left <-> right);
        ``start:stop`` then index the un-flipped volume."""
        import torch

        likelihood = net.layers[f"{net.prefix}_likelihood"]
        weight, bias = likelihood.weight, likelihood.bias
        if flip_channels is not None:
            # a channel permutation of the output is a row permutation of the 1x1 conv
            index = torch.as_tensor(flip_channels, device=x.device)
            weight, bias = weight[index], bias[index]
        weight = weight.reshape(weight.shape[0], -1)
        size = x.shape[2]
        for first, last, features in net.feature_slabs(x, slab):
            if flip_channels is not None:
                first, last, features = size - last, size - first, features.flip(2)
            for start in range(first, last, rows):
                stop = min(start + rows, last)
                block = features[0, :, start - first:stop - first]
                block = block.reshape(block.shape[0], -1)
                if channel_first:
                    yield start, stop, torch.addmm(bias[:, None], weight, block)
                else:
                    yield start, stop, torch.addmm(bias, block.t(), weight.t())
            del features

    def _softmax_into(self, net, x, out=None, flip_channels=None, slab: int = 32):
        """Softmax posteriors of ``net`` as a contiguous (C, X, Y, Z) tensor, slab by slab; with
        ``flip_channels`` (``x`` flipped on axis 0) the un-flipped posteriors are ADDED to ``out``."""
        if out is None:
            channels = net.layers[f"{net.prefix}_likelihood"].out_channels
            out = outside_heap((channels,) + tuple(x.shape[2:]), x.device)
        for start, stop, logits in self._slab_logits(net, x, flip_channels, slab):
            logits.sub_(logits.amax(0)).exp_()
            logits.div_(logits.sum(0))
            target = out[:, start:stop]
            if flip_channels is None:
                target.copy_(logits.view(target.shape))
            else:
                target.add_(logits.view(target.shape))
            del logits
        return out

    def _argmax(self, net, x, slab: int = 32):
        """Index of the largest logit per voxel, (X, Y, Z) int64."""
        import torch

        out = torch.empty(tuple(x.shape[2:]), dtype=torch.int64, device=x.device)
        # voxels-by-channels logits: an argmax along contiguous rows is ~10x faster than along dim 0
        for start, stop, logits in self._slab_logits(net, x, slab=slab, channel_first=False):
            out[start:stop] = logits.argmax(1).view(out[start:stop].shape)
        return out

    @staticmethod
    def _one_hot(groups, count: int, image=None):
        """(1, count, X, Y, Z) float one-hot of an index volume, channels-last (the convs' layout);
        with ``image`` (1, 1, X, Y, Z) that image as channel 0 before the one-hot channels."""
        import torch

        first = 0 if image is None else 1
        onehot = torch.zeros((1,) + tuple(groups.shape) + (first + count,), dtype=torch.float32, device=groups.device)
        onehot = onehot.permute(0, 4, 1, 2, 3)
        if image is not None:
            onehot[:, :1] = image
        onehot[:, first:].scatter_(1, groups[None, None], 1.0)
        return onehot

    def _segment_posteriors(self, image, progress):
        """Padded (C, X, Y, Z) posteriors of the segmentation network(s)."""
        import torch

        x = self._tensor(image)[None, None]
        if self.robust:
            groups = self._argmax(self.unet, x)
            progress(0.25, "robust: denoising the labels")
            onehot = self._one_hot(groups, L.N_DENOISER_GROUPS)
            del groups
            groups = self._argmax(self.l2l, onehot)
            del onehot
            progress(0.5, "robust: segmenting")
            image_and_groups = self._one_hot(groups, L.N_DENOISER_GROUPS, image=x)  # the input, channels-last
            del groups
            return self._softmax_into(self.unet2, image_and_groups)
        posteriors = self._softmax_into(self.unet, x)
        if self.flip is not None:
            progress(0.3, "segmenting the flipped image")
            self._softmax_into(self.unet, torch.flip(x, dims=[2]), out=posteriors, flip_channels=self.flip)
            posteriors.mul_(0.5)
        # default and --fast both blur (only the robust chain does not); the blur is linear and
        # symmetric, so blurring the flip average equals averaging the two blurred outputs
        gaussian_blur_(posteriors)
        return posteriors

    def _parcellate(self, image, argmax):
        import torch

        cortex = torch.zeros_like(argmax, dtype=torch.float32)
        for index, label in enumerate(self.labels):
            if int(label) in L.CORTEX_LABELS:
                cortex[argmax == index] = 1
        x = torch.stack([self._tensor(image), 1 - cortex, cortex])[None]
        del cortex
        parcellation = self._softmax_into(self.unet_parc, x)
        del x
        if not self.do_qc:
            # with QC the reference's model returns the unsmoothed parcellation layer
            gaussian_blur_(parcellation)
        return parcellation

    def _qc_scores(self, argmax) -> np.ndarray:
        import torch

        crop = qc_crop(argmax.cpu().numpy(), L.QC_INPUT_SHAPE, L.QC_EXCLUDED_INDEX)
        groups = torch.from_numpy(L.qc_groups(self.labels)[crop]).to(self.device)
        # the fast path takes the label window itself (its level-0 convolutions are look-ups)
        scores = self.qc_net.scores(groups).cpu().numpy().astype(np.float64)
        del groups
        return np.around(np.clip(scores[1:], 0, 1), 4)

    def check_input(self, source) -> None:
        """The header-level refusals of ``segment`` (unreadable, not one 3D volume, bad affine)."""
        if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            from .preprocess import check_header

            check_header(source)

    def segment(self, source, progress: Optional[ProgressCallback] = None,
                resample_output: bool = False, subject: Optional[str] = None) -> SegmentationResult:
        """Segment one image (path, (array, affine) or Volume).

        resample_output: reslice the hard labels (nearest) to the input's voxel grid instead of the
        1 mm grid SynthSeg works on (mri_synthseg --keepgeom).
        """
        import torch

        report = ensure_callback(progress)
        started = time.perf_counter()
        report(0.0, "preprocessing")
        prepared = prepare(source, crop=self.crop, ct=self.ct, autocrop=self.autocrop)
        if subject is None:
            subject = subject_name(source)
        # one reused heap for every network and the QC: each takes pages the previous one already
        # faulted in (robust chain: 49 s per scan at a 5.5 GiB peak, instead of 56-71 s at 5.2 GiB)
        with torch.inference_mode(), ieee_float32(), reuse_freed_memory():
            report(0.05, "segmenting")
            net_progress = lambda f, m: report(0.05 + 0.6 * f, m)  # noqa: E731
            posteriors = self._segment_posteriors(prepared.image, net_progress)
            argmax = channel_argmax(posteriors) if (self.parc or self.do_qc) else None
            parcellation = None
            if self.parc:
                report(0.65, "parcellating the cortex")
                parcellation = self._parcellate(prepared.image, argmax)
            qc = None
            if self.do_qc:
                report(0.75, "quality control")
                qc = self._qc_scores(argmax)
            del argmax
            posteriors = posteriors.cpu().numpy()
            if parcellation is not None:
                parcellation = parcellation.cpu().numpy()
        report(0.85, "postprocessing")
        result = self._finish(prepared, posteriors, parcellation, qc, subject, resample_output)
        result.provenance["seconds"] = round(time.perf_counter() - started, 3)
        report(1.0, "done")
        return result

    def _finish(self, prepared: Prepared, posteriors, parcellation, qc, subject, resample_output):
        import torch

        # the post-processing's numpy/scipy work uses as many threads as the networks (--threads)
        workers = torch.get_num_threads()
        posteriors = postprocess_segmentation(posteriors, prepared.pad_idx, self.fast,
                                              None if self.fast else self.topology, workers)
        segmentation = hard_labels(posteriors, self.labels)
        parc_sums = None
        if parcellation is not None:
            parcellation = postprocess_parcellation(parcellation, prepared.pad_idx, segmentation, self.parc_labels)
            parc_sums = channel_sums(parcellation, float32=True, workers=workers)
            del parcellation
        # the reference sums float32 posteriors (float64 ones when it pasted a crop back)
        seg_sums = channel_sums(posteriors, float32=prepared.crop_idx is None, orient=prepared.alignment.undo,
                                workers=workers)
        if prepared.crop_idx is not None:
            segmentation, posteriors = paste_crop(segmentation, posteriors, prepared.crop_idx, prepared.aligned_shape)
        voxel_volume = np.prod(prepared.resolution)  # float32 when read from the header, like the reference
        volumes = soft_volumes(seg_sums, self.labels, voxel_volume, self.v1, parc_sums)
        names = L.volume_names(self.labels, parcellation=parc_sums is not None, v1=self.v1)
        segmentation = np.ascontiguousarray(prepared.alignment.undo(segmentation))
        affine = prepared.affine
        posteriors_out = None
        if self.keep_posteriors:
            # (C, X, Y, Z) -> (X, Y, Z, C) in the input orientation, as views (no copy)
            posteriors_out = prepared.alignment.undo(np.moveaxis(posteriors, 0, -1))
        del posteriors
        images = {}
        if prepared.resampled is not None:
            images["resampled"] = ImageArray(prepared.resampled.astype(np.float32), prepared.affine)  # the 1 mm grid
        if resample_output:
            segmentation = reslice_nearest(segmentation, affine, prepared.input_shape, prepared.input_affine)
            affine = prepared.input_affine
        table_values = [int(v) for v in self.labels]
        if parc_sums is not None:
            table_values = [v for v in table_values if v not in L.CORTEX_LABELS] + [int(v) for v in self.parc_labels[1:]]
        label_table = label_table_for(table_values)
        measures = {} if self.v1 else {L.TOTAL_INTRACRANIAL: float(volumes[0])}
        provenance = {
            "engine": "synthseg", "software": f"segsuite {__version__}",
            "model": "SynthSeg-robust 2.0" if self.robust else ("SynthSeg 1.0" if self.v1 else "SynthSeg 2.0"),
            "weights": self.weights,
            "options": {"parc": self.parc, "robust": self.robust, "fast": self.fast, "v1": self.v1, "ct": self.ct,
                        "qc": self.do_qc, "crop": self.crop, "autocrop": self.autocrop, "keepgeom": bool(resample_output)},
            "device": self.device,
            "network_input_shape": list(prepared.image.shape),
            # volumes are float32 numbers when the reference's are (the CSV prints them as such)
            "volume_dtype": str(volumes.dtype),
            "resampled": prepared.resampled is not None,
            # the 1 mm grid of the posteriors and of images["resampled"] (also with keepgeom)
            "grid_affine": prepared.affine.tolist(),
        }
        return SegmentationResult(
            labels=segmentation.astype(np.int32, copy=False), affine=affine, label_table=label_table,
            posteriors=posteriors_out, posterior_labels=[int(v) for v in self.labels] if posteriors_out is not None else None,
            posteriors_affine=prepared.affine if posteriors_out is not None else None,
            volumes=volume_table(names, volumes),
            qc=dict(zip(L.QC_NAMES, (float(q) for q in qc))) if qc is not None else {},
            measures=measures, images=images, provenance=provenance, subject=subject,
        )


def volume_table(names, volumes) -> VolumeTable:
    """SynthSeg's volumes under the label table's (FreeSurfer's) names, SynthSeg's CSV names kept as
    aliases (``volumes["left hippocampus"]`` finds ``Left-Hippocampus``; the CSVs use the aliases)."""
    lut = freesurfer_lut()
    values = {name: value for value, name in {**L.NAMES, **L.PARC_NAMES}.items()}
    keys, aliases = [], {}
    for name in names:
        label = lut.get(values[name]) if name in values else None
        keys.append(label.name if label is not None else name)
        if keys[-1] != name:
            aliases[name] = keys[-1]
    return VolumeTable(zip(keys, (float(v) for v in volumes)), aliases=aliases)


def subject_name(source) -> str:
    """The CSV row name: the file name without '.nii.gz' (exactly what SynthSeg writes)."""
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source)).replace(".nii.gz", "")
    return "image"


def label_table_for(values) -> LabelTable:
    lut = freesurfer_lut()
    labels = []
    for value in values:
        label = lut.get(value)
        labels.append(label if label is not None else Label(int(value), L.NAMES.get(value, f"Label-{value}"), (128, 128, 128)))
    return LabelTable(labels)


def paste_crop(segmentation, posteriors, crop_idx, shape):
    """Put the cropped results back into the full (aligned) grid; background posterior 1 outside."""
    full_seg = np.zeros(shape, dtype=np.int32)
    full_post = np.zeros((posteriors.shape[0],) + tuple(shape), dtype=np.float32)
    full_post[0] = 1
    window = (slice(crop_idx[0], crop_idx[3]), slice(crop_idx[1], crop_idx[4]), slice(crop_idx[2], crop_idx[5]))
    full_seg[window] = segmentation
    full_post[(slice(None),) + window] = posteriors
    return full_seg, full_post


def qc_crop(argmax: np.ndarray, size: int, excluded_index: int) -> np.ndarray:
    """The size^3 window of channel indices the QC network sees (SynthSeg's MakeShape layer).

    Bounding box of voxels whose argmax index is neither 0 nor ``excluded_index``, grown or shrunk
    symmetrically to ``size`` (extra voxel on the low side when odd), zero-padded outside the volume.
    """
    shape = np.array(argmax.shape)
    target = np.array([size] * 3)
    inside = np.argwhere((argmax != 0) & (argmax != excluded_index))
    if len(inside) == 0:
        low = np.zeros(3, dtype=np.int64)
        high = np.minimum(shape, target)
    else:
        low = np.maximum(inside.min(axis=0), 0)
        high = np.minimum(inside.max(axis=0) + 1, shape)
    extent = high - low
    low = low - np.ceil((target - extent) / 2).astype(np.int64)
    high = high + np.floor((target - extent) / 2).astype(np.int64)
    start = np.maximum(low, 0)
    stop = np.minimum(high, shape)
    window = argmax[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
    before = np.abs(np.minimum(low, 0))
    after = np.maximum(high - shape, 0)
    if np.any(before > 0) or np.any(after > 0):
        window = np.pad(window, list(zip(before, after)))
    return window


def reslice_nearest(labels: np.ndarray, affine: np.ndarray, shape, target_affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto another voxel grid (0 outside)."""
    if tuple(labels.shape) == tuple(shape) and np.allclose(affine, target_affine, atol=1e-6):
        return labels
    mapping = np.linalg.inv(affine) @ target_affine
    out = np.zeros(shape, dtype=labels.dtype)
    j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for i in range(shape[0]):  # one slab at a time keeps memory small
        coords = mapping[:3, :3] @ np.stack([np.full(j.size, i), j.ravel(), k.ravel()]) + mapping[:3, 3:4]
        index = np.rint(coords).astype(np.int64)
        valid = np.all((index >= 0) & (index < np.array(labels.shape)[:, None]), axis=0)
        slab = np.zeros(j.size, dtype=labels.dtype)
        slab[valid] = labels[index[0, valid], index[1, valid], index[2, valid]]
        out[i] = slab.reshape(j.shape)
    return out
