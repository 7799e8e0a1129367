"""SynthSeg output processing on channel-first posteriors (C, X, Y, Z): blur, flip averaging,
largest connected components per topology class, renormalisation, parcellation, volumes.

Follows predict_synthseg.postprocess; arrays are channel-first here (each channel contiguous).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

BLUR_SIGMA = 0.5


def map_in_threads(function: Callable, items: Iterable, workers: int = 1) -> list:
    """[function(item) for item in items], on up to ``workers`` threads. The work here is numpy
    and scipy.ndimage calls that release the GIL; each item's result is computed as it would be
    alone, so the results do not depend on the number of workers."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(function, items))


def blur_weights(sigma: float = BLUR_SIGMA) -> np.ndarray:
    """The 1D factor of lab2im's 3x3x3 Gaussian kernel (window = ceil(2.5*sigma)//2*2+1)."""
    half = int(np.ceil(2.5 * sigma) / 2)
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    weights = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return weights / weights.sum()


def gaussian_blur_(tensor, sigma: float = BLUR_SIGMA):
    """Blur a torch tensor (..., X, Y, Z) with the separable Gaussian, zero padding ('SAME'), in place.

    The 3D kernel of lab2im.GaussianBlur is a normalised product of 1D Gaussians, so three 1D passes
    give the same result with one temporary instead of a 27-tap convolution.
    """
    import torch

    weights = blur_weights(sigma)
    if len(weights) != 3:
        raise ValueError("only the 3-tap kernel of sigma 0.5 is implemented")
    side, centre = float(weights[0]), float(weights[1])
    spatial = tensor.shape[-3:]
    # one channel at a time through one reused temporary: no second full-size tensor, and each
    # channel (~33 MB for SynthSeg) stays close to the cache
    volumes = tensor.view(-1, *spatial) if tensor.is_contiguous() else [tensor]
    scratch = None
    for volume in volumes:
        for axis in (-3, -2, -1):
            if scratch is None or scratch.shape != volume.shape:
                scratch = torch.empty_like(volume)
            scratch.copy_(volume)
            volume.mul_(centre)
            n = volume.shape[axis]
            volume.narrow(axis, 1, n - 1).add_(scratch.narrow(axis, 0, n - 1), alpha=side)
            volume.narrow(axis, 0, n - 1).add_(scratch.narrow(axis, 1, n - 1), alpha=side)
    return tensor


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (the mask itself if it is empty)."""
    from scipy.ndimage import label

    # label only the mask's bounding box: most structures fill a small part of the volume
    extent = [np.flatnonzero(mask.any(axis=tuple(other for other in range(mask.ndim) if other != axis)))
              for axis in range(mask.ndim)]
    if any(len(indices) == 0 for indices in extent):
        return mask.copy()
    window = tuple(slice(int(indices[0]), int(indices[-1]) + 1) for indices in extent)
    components, _ = label(mask[window])
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = np.zeros_like(mask)
    largest[window] = components == int(np.argmax(sizes))
    return largest


def spatial_crop(array: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    """array[..., x0:x1, y0:y1, z0:z1] with idx = [x0, y0, z0, x1, y1, z1] (a view)."""
    return array[..., idx[0]:idx[3], idx[1]:idx[4], idx[2]:idx[5]]


def postprocess_segmentation(posteriors: np.ndarray, pad_idx: Sequence[int], fast: bool,
                             topology: Optional[np.ndarray], workers: int = 1) -> np.ndarray:
    """Largest-component cleaning and renormalisation; returns the un-padded (C, x, y, z) posteriors.
    The topology classes are cleaned on up to ``workers`` threads (same result for any number)."""
    if fast or topology is None:
        posteriors = spatial_crop(posteriors, pad_idx)
    foreground = posteriors[1:]
    brain = largest_component(foreground.sum(axis=0) > 0.25)
    foreground *= brain  # zero every structure outside the largest blob
    if not fast and topology is not None:
        # every structure is now zero outside the brain's bounding box: clean inside it only
        inside = np.argwhere(brain)
        window = (slice(None),) + tuple(slice(int(a), int(b) + 1) for a, b in zip(inside.min(0), inside.max(0))) \
            if len(inside) else (slice(None),) * 4
        del inside, brain
        full, posteriors = posteriors, posteriors[window]
        class_channels = [np.where(topology == topology_class)[0] for topology_class in np.unique(topology)[1:]]

        def largest_of_class(channels):
            mask = np.zeros(posteriors.shape[1:], dtype=bool)
            for channel in channels:
                mask |= posteriors[channel] > 0.25
            return largest_component(mask)

        # every class's mask is taken after the global step and before any channel is zeroed, like the reference
        keep = map_in_threads(largest_of_class, class_channels, workers)

        def zero_outside(job):
            channels, component = job
            for channel in channels:
                posteriors[channel] *= component

        map_in_threads(zero_outside, zip(class_channels, keep), workers)  # the classes' channels are disjoint
        del keep
        posteriors = spatial_crop(full, pad_idx)
    else:
        foreground = posteriors[1:]
        foreground *= foreground > 0.2
    return normalise_(posteriors)


def normalise_(posteriors: np.ndarray) -> np.ndarray:
    """Divide by the channel sum in place. Voxels whose channels were all zeroed become background
    (the reference leaves NaN there, which also turns its volumes into NaN)."""
    total = posteriors.sum(axis=0)
    empty = total == 0
    if np.any(empty):
        posteriors[0][empty] = 1
        total[empty] = 1
    posteriors /= total[None]
    return posteriors


def channel_argmax(posteriors, block: int = 1 << 18):
    """Index of the largest channel of a (C, X, Y, ...) tensor or array, the first on ties (as
    torch's and numpy's argmax), for values without NaN; int64, shape (X, Y, ...).

    On the CPU both argmax kernels compare one voxel's channels at a time: 1.7 s for SynthSeg's 33
    channels of 192x224x192 on a 2-core Xeon. Here a slab of about ``block`` voxels at a time gets
    its maximum (a vectorised reduction) and then, from the last channel down, the index of every
    channel that reaches it (0.35 s)."""
    import torch

    tensor = torch.from_numpy(posteriors) if isinstance(posteriors, np.ndarray) else posteriors
    if tensor.device.type != "cpu" or tensor.dim() < 2 or tensor.shape[0] > 255 or tensor.numel() == 0:
        return tensor.argmax(0)
    channels = tensor.shape[0]
    out = torch.empty(tensor.shape[1:], dtype=torch.int64)
    per_row = max(1, tensor[0, 0].numel())
    rows = max(1, block // per_row)
    size = tensor.shape[1]
    best = torch.empty((min(rows, size),) + tuple(tensor.shape[2:]), dtype=tensor.dtype)
    index = torch.empty(best.shape, dtype=torch.uint8)
    equal = torch.empty(best.shape, dtype=torch.bool)
    for start in range(0, size, rows):
        stop = min(start + rows, size)
        slab = tensor[:, start:stop]
        top, first, hit = best[: stop - start], index[: stop - start], equal[: stop - start]
        torch.amax(slab, 0, out=top)
        first.zero_()
        for channel in range(channels - 1, -1, -1):  # down to 0: the first maximum is written last
            torch.eq(slab[channel], top, out=hit)
            first.masked_fill_(hit, channel)
        out[start:stop] = first
    return out


def hard_labels(posteriors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Label of the most probable channel (the first one on ties, as numpy's argmax)."""
    return np.asarray(labels, dtype=np.int32)[channel_argmax(posteriors).numpy()]


def postprocess_parcellation(parcellation: np.ndarray, pad_idx: Sequence[int], segmentation: np.ndarray,
                             parc_labels: np.ndarray, cortex_labels=(3, 42)) -> np.ndarray:
    """Set the parcellation background to 1 outside the cortex and 0 inside, renormalise, and write
    the parcel labels into the cortex of ``segmentation`` (in place). Returns the (C, x, y, z) posteriors."""
    parcellation = spatial_crop(parcellation, pad_idx)
    cortex = np.isin(segmentation, cortex_labels)
    parcellation[0] = ~cortex
    normalise_(parcellation)
    parcels = np.asarray(parc_labels, dtype=np.int32)[channel_argmax(parcellation).numpy()]
    segmentation[cortex] = parcels[cortex]
    return parcellation


def channel_sums(posteriors: np.ndarray, float32: bool = False, orient=None, chunk: int = 4,
                 workers: int = 1) -> np.ndarray:
    """Per-channel sums of (C, X, Y, Z) posteriors (the soft volumes in voxels).

    float32=True reproduces the reference's numbers: it sums float32 (X, Y, Z, C) arrays over the
    spatial axes with numpy, which accumulates in float32 in an order set by the array's strides
    (up to ~0.7% off the exact sum for large structures). The same layout is rebuilt here a few
    channels at a time (``orient`` maps it like the reference's view, e.g. undoing the RAS
    alignment) and summed the same way; numpy gives bit-identical sums for chunks of >= 2 channels.
    float32=False sums exactly (float64), as the reference does after pasting a crop back.
    Chunks are summed on up to ``workers`` threads, at most 4: each holds a copy of its chunk
    (268 MB for a 256^3 volume), and memory bandwidth limits the gain beyond that.
    """
    count = posteriors.shape[0]
    if not float32:
        flat = posteriors.reshape(count, -1)
        return np.array(map_in_threads(lambda channel: np.sum(channel, dtype=np.float64), flat, workers))

    def chunk_sums(start):
        stop = min(start + chunk, count)
        first = min(start, stop - 2) if count >= 2 else start  # never a single-channel chunk
        block = np.ascontiguousarray(np.moveaxis(posteriors[first:stop], 0, -1))
        view = orient(block) if orient is not None else block
        return first, stop, np.sum(view, axis=(0, 1, 2))

    sums = np.zeros(count, dtype=np.float32)
    for first, stop, values in map_in_threads(chunk_sums, range(0, count, chunk), min(workers, 4)):
        sums[first:stop] = values
    return sums


def soft_volumes(segmentation_sums: np.ndarray, labels: np.ndarray, voxel_volume, v1: bool,
                 parcellation_sums: Optional[np.ndarray] = None, cortex_labels=(3, 42)) -> np.ndarray:
    """Volumes in mm3 in the CSV's order: [total intracranial (v2)], structures, [parcels].

    The arithmetic keeps the dtypes of the reference (float32 sums stay float32) so that the values
    round the same way. Parcels are scaled so that they add up to the cortex volume (labels 3 + 42);
    the reference scales by white matter (2 + 41) through an indexing slip; this does what it meant.
    """
    structures = np.asarray(segmentation_sums)[1:]
    volumes = structures if v1 else np.concatenate([[np.sum(structures)], structures]).astype(structures.dtype)
    if parcellation_sums is not None:
        parcels = np.asarray(parcellation_sums)[1:]
        cortex_channels = [i for i, v in enumerate(labels) if int(v) in cortex_labels]
        cortex = np.sum(np.asarray(segmentation_sums)[cortex_channels])
        parcels = parcels / np.sum(parcels) * cortex
        volumes = np.concatenate([volumes, parcels])
    return np.around(volumes * voxel_volume, 3)
