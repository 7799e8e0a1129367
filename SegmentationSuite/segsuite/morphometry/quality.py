"""Image-quality metrics of a structural MRI, each under the definition it is named after.

Two families, kept apart because they disagree on purpose:

* ``spec_*``: the UK Biobank sMRI benchmark specification's code (ai4h-inspired-fm-benchmark-hub,
  docs/integration/modality_features/smri.md): SNR = mean inside the brain mask / (standard deviation of
  every voxel outside it + 1e-8); its comment says "air", so ``spec_snr_air`` uses the air voxels outside a
  head mask instead; CNR = |mean GM - mean WM| / (standard deviation of GM + 1e-8). numpy's population
  standard deviation (ddof 0), plain means, hard masks.
* ``mriqc_*``: MRIQC's ``mriqc.qc.anatomical`` definitions as its StructuralQC interface feeds them
  (compute_morphometry measures them on the image MRIQC's workflow measures, with its rotation mask,
  and adds inu_* and fwhm_*: see mriqc_workflow.py):
  tissue statistics weighted by the tissue probability maps (MRIQC's summary_stats: data rounded to
  integers, weights to 3 decimals, SAS weighted quantiles, MAD of the voxels above half the map's maximum,
  each rounded to 4 decimals), then snr per tissue (median / (stdv * sqrt(n / (n - 1)))), snr_dietrich
  (0.6551364 * median / MAD of air), cnr (|median WM - median GM| / sqrt(stdv air^2 + stdv GM^2 +
  stdv WM^2)), cjv ((MAD WM + MAD GM) / |median WM - median GM|), efc, fber and wm2max.

Only numpy and scipy are used here (no MRIQC), so the same code runs in Slicer.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

SPEC_EPSILON = 1e-8
JOINT_COUNT_LIMIT = 2 ** 25  # bins of the one (intensity, mask code) count: 256 MiB of int64
# the masks' joint count (32 codes) at all: an image spanning more intensities takes the voxel path
JOINT_COUNT_MAX = 2 ** 26  # 512 MiB of int64: a range of 2 million values
DIETRICH_FACTOR = 0.6551364  # 1 / sqrt(2 / (4 - pi)): Rayleigh-distributed air (Dietrich 2007, eq. A.12)
GAUSSIAN_MAD_SCALE = 0.6744897501960817  # Phi^-1(3/4): the MAD of a unit Gaussian

# Which definition each metric column is, for the outputs' sidecars.
DEFINITIONS = {
    "spec_snr": "UK Biobank sMRI spec compute_snr: mean(brain) / (std(all voxels outside the brain mask) + 1e-8)",
    "spec_snr_air": "UK Biobank sMRI spec compute_snr over air: mean(brain) / (std(air outside the head mask) + 1e-8)",
    "spec_cnr": "UK Biobank sMRI spec compute_cnr: |mean(GM) - mean(WM)| / (std(GM) + 1e-8), hard tissue masks",
    "mriqc_snr_csf": "MRIQC snr(): median_CSF / (stdv_CSF * sqrt(n / (n - 1))), tissue-probability weighted",
    "mriqc_snr_gm": "MRIQC snr() in GM",
    "mriqc_snr_wm": "MRIQC snr() in WM",
    "mriqc_snr_total": "MRIQC snr_total: mean of the CSF, WM and GM snr",
    "mriqc_snrd_csf": "MRIQC snr_dietrich(): 0.6551364 * median_CSF / MAD_air (stdv_air if MAD_air <= 1)",
    "mriqc_snrd_gm": "MRIQC snr_dietrich() in GM",
    "mriqc_snrd_wm": "MRIQC snr_dietrich() in WM",
    "mriqc_snrd_total": "MRIQC snrd_total: mean of the CSF, WM and GM snr_dietrich",
    "mriqc_cnr": "MRIQC cnr(): |median_WM - median_GM| / sqrt(stdv_air^2 + stdv_GM^2 + stdv_WM^2)",
    "mriqc_cjv": "MRIQC cjv(): (MAD_WM + MAD_GM) / |median_WM - median_GM|",
    "mriqc_efc": "MRIQC efc(): Shannon entropy of the voxel intensities over its maximum (lower is sharper), "
                 "voxels of the rotation mask left out",
    "mriqc_fber": "MRIQC fber(): median |head|^2 / median |air|^2, air = outside the head and the rotation mask "
                  "(-1 when there is no signal there)",
    "mriqc_wm2max": "MRIQC wm2max(): median_WM / 99.95th percentile of the image",
    "mriqc_inu_range": "MRIQC inu_range: |95th - 5th percentile| of the N4 bias field over the brain",
    "mriqc_inu_med": "MRIQC inu_med: median of the N4 bias field over the brain",
    "mriqc_fwhm_x": "MRIQC fwhm_x: AFNI 3dFWHMx classic FWHM (first differences, within the brain mask) along the "
                    "RAS x axis, in voxels",
    "mriqc_fwhm_y": "MRIQC fwhm_y: the same along y, in voxels",
    "mriqc_fwhm_z": "MRIQC fwhm_z: the same along z, in voxels",
    "mriqc_fwhm_avg": "MRIQC fwhm_avg: mean of fwhm_x, fwhm_y and fwhm_z",
}
# compute_morphometry's mriqc_* metrics are measured as MRIQC's anatomical workflow measures them
MRIQC_IMAGE = ("the N4-corrected image scaled to a WM median of 1000 (MRIQC's Harmonize), NaN as 0 and "
               "negative values as 0; the rotation mask from the input image (MRIQC's RotationMask)")
HIGHER_IS_BETTER = {"spec_snr", "spec_snr_air", "spec_cnr", "mriqc_snr_csf", "mriqc_snr_gm", "mriqc_snr_wm",
                    "mriqc_snr_total", "mriqc_snrd_csf", "mriqc_snrd_gm", "mriqc_snrd_wm", "mriqc_snrd_total",
                    "mriqc_cnr", "mriqc_fber"}


# --- the specification's definitions -------------------------------------------------------------

def spec_snr(image: np.ndarray, brain_mask: np.ndarray, noise_mask: Optional[np.ndarray] = None) -> float:
    """SNR as the spec's compute_snr: brain mean over the noise std (+ 1e-8).

    The noise voxels are every voxel outside the brain mask (the spec's code) or ``noise_mask`` (air)."""
    brain = brain_mask > 0
    noise = ~brain if noise_mask is None else noise_mask > 0
    signal = float(np.mean(image[brain], dtype=np.float64))
    return signal / (float(np.std(image[noise], dtype=np.float64)) + SPEC_EPSILON)


def spec_cnr(image: np.ndarray, gm_mask: np.ndarray, wm_mask: np.ndarray) -> float:
    """CNR as the spec's compute_cnr: |mean GM - mean WM| over the GM std (+ 1e-8)."""
    gm = image[gm_mask > 0]
    wm = image[wm_mask > 0]
    contrast = abs(float(np.mean(gm, dtype=np.float64)) - float(np.mean(wm, dtype=np.float64)))
    return contrast / (float(np.std(gm, dtype=np.float64)) + SPEC_EPSILON)


# --- MRIQC's definitions -------------------------------------------------------------------------

def weighted_quantiles(values: np.ndarray, weights: np.ndarray, probs) -> np.ndarray:
    """Weighted quantiles by the SAS definition (weights summed over ties; halfway on an exact hit)."""
    distinct, tie_weights = _ties(values, weights)
    cumulative = np.cumsum(tie_weights)
    targets = np.asarray(probs, dtype=np.float64) * cumulative[-1]
    index = np.searchsorted(cumulative, targets)
    result = distinct[index].astype(np.float64)
    exact = (np.abs(targets - cumulative[index]) < 1e-10) & (index < cumulative.size - 1)
    result[exact] = (distinct[index[exact]] + distinct[index[exact] + 1]) / 2
    return result


def _ties(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values (sorted) and each one's summed weight; integer-valued data by counting
    (a 256^3 head in a fraction of a second instead of a multi-second sort)."""
    values = np.asarray(values).reshape(-1)
    low = values.min() if values.size else 0
    span = (values.max() - low) if values.size else 0
    if values.size and span < 5e7 and np.all(np.mod(values[:: max(1, values.size // 4096)], 1) == 0) \
            and np.array_equal(values, np.round(values)):
        offsets = (values - low).astype(np.int64)
        counts = np.bincount(offsets, minlength=int(span) + 1)
        sums = np.bincount(offsets, weights=weights, minlength=int(span) + 1)
        present = np.flatnonzero(counts)
        return present.astype(np.float64) + low, sums[present]
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct, np.bincount(inverse.ravel(), weights=weights, minlength=distinct.size)


class IntensityIndex:
    """An integer-valued image's voxels as offsets into its value range, counted once and shared by the
    statistics: each tissue's weighted statistics then cost in proportion to its own voxels, and those of
    a large region (the air) come from the whole image's histogram less that of the rest.

    ``exact``: the image itself is integer-valued (not only its rounded copy), so that its medians,
    percentiles and sums (MAD, fber, wm2max, efc, the spec's means) come from histograms too."""

    def __init__(self, rounded: np.ndarray, exact: bool = False, layout: Optional[np.ndarray] = None):
        """``layout``: an array whose memory order the offsets take (the tissue maps', so that a map and
        the offsets flatten alike without copying either)."""
        self.shape = rounded.shape
        self.low = float(rounded.min())
        if layout is not None and layout.shape == rounded.shape and _positive_strides(layout):
            self.offsets = np.empty_like(layout, dtype=np.intp)
            np.copyto(self.offsets, rounded, casting="unsafe")
        else:
            self.offsets = rounded.astype(np.intp)
        self.offsets -= int(self.low)
        self.counts = np.bincount(self.offsets.ravel(order="K"))
        self.present = np.flatnonzero(self.counts)
        self.distinct = self.present.astype(np.float64) + self.low
        self.all_counts = self.counts[self.present].astype(np.float64)
        self.exact = exact

    @staticmethod
    def usable(rounded: np.ndarray) -> bool:
        return rounded.size > 0 and float(rounded.max() - rounded.min()) < 5e7

    def histogram(self, box: tuple = (), mask: Optional[np.ndarray] = None,
                  weights: Optional[np.ndarray] = None) -> np.ndarray:
        """Summed weights (voxel counts without ``weights``) per distinct value, over ``mask`` inside the
        bounding box ``box`` (slices); ``weights`` are those of the masked voxels."""
        offsets = self.offsets[box] if box else self.offsets
        if mask is not None:  # flattened alike first: a sequential pass when the layouts agree
            offsets, mask = _flatten_alike(offsets, mask)
            offsets = offsets[mask]
        elif weights is not None:  # weights: an array of the box's shape, flattened alike
            offsets, weights = _flatten_alike(offsets, weights)
        else:
            offsets = offsets.ravel(order="K")
        return np.bincount(offsets, weights=weights, minlength=self.counts.size)[self.present].astype(np.float64)

    def quantiles(self, sums: np.ndarray, probs) -> np.ndarray:
        """SAS weighted quantiles (as weighted_quantiles) of a histogram."""
        cumulative = np.cumsum(sums)
        targets = np.asarray(probs, dtype=np.float64) * cumulative[-1]
        index = np.searchsorted(cumulative, targets)
        result = self.distinct[index]
        exact = (np.abs(targets - cumulative[index]) < 1e-10) & (index < cumulative.size - 1)
        result[exact] = (self.distinct[index[exact]] + self.distinct[index[exact] + 1]) / 2
        return result

    def mean_std(self, sums: np.ndarray) -> tuple[float, float]:
        """Weighted mean and (population) standard deviation of a histogram."""
        total = float(sums.sum())
        if total == 0:  # an empty mask: NaN, as numpy's mean and std of no voxel
            return float("nan"), float("nan")
        mean = float(np.dot(sums, self.distinct) / total)
        return mean, math.sqrt(float(np.dot(sums, (self.distinct - mean) ** 2)) / total)


def _positive_strides(array: np.ndarray) -> bool:
    return all(stride >= 0 for stride in array.strides)


def _memory_order(array: np.ndarray) -> list[int]:
    return sorted((axis for axis in range(array.ndim) if array.shape[axis] > 1), key=lambda a: -array.strides[a])


def _flatten_alike(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays (same shape) as 1-D arrays whose elements correspond: in memory order without a copy
    when they share their memory layout, else in C order."""
    if first.shape == second.shape and _positive_strides(first) and _positive_strides(second) \
            and _memory_order(first) == _memory_order(second):
        return first.ravel(order="K"), second.ravel(order="K")
    return first.reshape(-1), second.reshape(-1)


def _value_at_rank(values: np.ndarray, counts: np.ndarray, ranks) -> np.ndarray:
    """The values at 0-based ``ranks`` of the sorted sample that ``counts`` times each of ``values`` is
    (``values`` ascending)."""
    return values[np.searchsorted(np.cumsum(counts), np.asarray(ranks, dtype=np.float64), side="right")]


def _median_of_histogram(values: np.ndarray, counts: np.ndarray) -> float:
    """np.median of the sample (the mean of the two middle values when the count is even)."""
    total = int(round(float(counts.sum())))
    middle = _value_at_rank(values, counts, [(total - 1) // 2, total // 2])
    return float((middle[0] + middle[1]) / 2)


def _mad_of_histogram(values: np.ndarray, counts: np.ndarray, centre: float) -> float:
    """median(|x - centre| / GAUSSIAN_MAD_SCALE) of the sample of a histogram."""
    deviations = np.abs(values - centre)
    order = np.argsort(deviations, kind="stable")
    return _median_of_histogram(deviations[order], counts[order]) / GAUSSIAN_MAD_SCALE


def bounding_box(mask: np.ndarray, pad: int = 0) -> tuple:
    """Slices of the smallest box holding the mask's voxels, grown by ``pad`` (clipped to the volume);
    an empty box for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        if hits.size == 0:
            return tuple(slice(0, 0) for _ in range(mask.ndim))
        box.append(slice(max(int(hits[0]) - pad, 0), min(int(hits[-1]) + 1 + pad, mask.shape[axis])))
    return tuple(box)


_EMPTY_STATISTICS = {"mean": float("nan"), "median": float("nan"), "p95": float("nan"), "p05": float("nan"),
                     "stdv": float("nan"), "mad": float("nan"), "n": 0.0}


def _rounded_statistics(mean, median, p95, p05, stdv, mad, n, decimals: int) -> dict[str, float]:
    return {"mean": round(mean, decimals), "median": round(float(median), decimals), "p95": round(float(p95), decimals),
            "p05": round(float(p05), decimals), "stdv": round(stdv, decimals), "mad": round(mad, decimals), "n": n}


def _core_mask(probability: np.ndarray) -> np.ndarray:
    """The voxels MRIQC takes the MAD over: above half the map's maximum."""
    return probability > 0.5 * probability.max()


def tissue_statistics(image: np.ndarray, probability: np.ndarray, decimals: int = 4,
                      index: Optional[IntensityIndex] = None,
                      core_counts: Optional[np.ndarray] = None) -> dict[str, float]:
    """MRIQC's summary statistics of one tissue: weighted mean, median, p05, p95, stdv; MAD; n.

    ``index``: the image rounded to integers and counted (IntensityIndex), shared between tissues;
    ``core_counts``: with an exact index, the histogram (over ``index.distinct``) of the _core_mask
    voxels, where the caller counted it already. Only the bounding box of the tissue's voxels is
    visited (zero weights add nothing)."""
    whole_map = np.asarray(probability)
    box = bounding_box(whole_map > 0)
    probability, image = whole_map[box], np.asarray(image)[box]
    # a box over half the volume would cost a copy of its intensity offsets to flatten them: the weighted
    # histogram then runs over the whole volume, whose voxels outside the box weigh exactly 0 (none < 0)
    whole = index is not None and 2 * probability.size > whole_map.size and float(whole_map.min()) >= 0
    single = np.asarray(whole_map if whole else probability, dtype=np.float32)  # MRIQC rounds float32 maps
    weights = np.round(single, 3, out=np.empty_like(single))  # (here in their own layout)
    if not weights.any():  # a tissue the segmentation does not contain: nothing to summarise
        return dict(_EMPTY_STATISTICS)
    if index is None:
        weights = weights.reshape(-1).astype(np.float64)
        data = np.round(np.asarray(image, dtype=np.float64).reshape(-1), 0)
        total = float(weights.sum())
        mean = float(np.dot(weights, data) / total)
        stdv = math.sqrt(float(np.dot(weights, (data - mean) ** 2)) / total)
        p05, median, p95 = weighted_quantiles(data, weights, [0.05, 0.5, 0.95])
    else:  # every voxel of the box (zero weights add nothing): no gather of the tissue's voxels
        sums = index.histogram(() if whole else box, weights=weights)
        mean, stdv = index.mean_std(sums)
        p05, median, p95 = index.quantiles(sums, [0.05, 0.5, 0.95])
    if index is not None and index.exact:
        if core_counts is None:
            core_counts = index.histogram(box, _core_mask(probability))
        mad = _mad_of_histogram(index.distinct, core_counts, median)
    else:
        core = image[_core_mask(probability)].astype(np.float64)
        mad = float(np.median(np.abs(core - median) / GAUSSIAN_MAD_SCALE)) if core.size else float("nan")
    return _rounded_statistics(mean, median, p95, p05, stdv, mad, float(np.sum(probability, dtype=np.float64)),
                               decimals)


def _mask_statistics(index: IntensityIndex, counts: np.ndarray, decimals: int = 4) -> dict[str, float]:
    """tissue_statistics of a hard (0/1) mask whose voxels' histogram is ``counts`` (exact index)."""
    if not counts.any():
        return dict(_EMPTY_STATISTICS)
    mean, stdv = index.mean_std(counts)
    p05, median, p95 = index.quantiles(counts, [0.05, 0.5, 0.95])
    mad = _mad_of_histogram(index.distinct, counts, median)
    return _rounded_statistics(mean, median, p95, p05, stdv, mad, float(counts.sum()), decimals)


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; NaN where MRIQC would divide by zero (e.g. GM and WM medians equal)."""
    return float(numerator / denominator) if denominator != 0 and math.isfinite(denominator) else float("nan")


def mriqc_snr(mu_fg: float, sigma_fg: float, n: float) -> float:
    return _ratio(mu_fg, sigma_fg * math.sqrt(n / (n - 1))) if n > 1 else float("nan")


def mriqc_snr_dietrich(mu_fg: float, mad_air: float = 0.0, sigma_air: float = 1.0) -> float:
    if mad_air > 1.0:
        return float(DIETRICH_FACTOR * mu_fg / mad_air)
    return float(DIETRICH_FACTOR * mu_fg / sigma_air) if sigma_air > 1e-3 else -1.0


def mriqc_cnr(mu_wm: float, mu_gm: float, sigma_air: float, sigma_wm: float, sigma_gm: float) -> float:
    return _ratio(abs(mu_wm - mu_gm), math.sqrt(sigma_air ** 2 + sigma_gm ** 2 + sigma_wm ** 2))


def mriqc_cjv(mu_wm: float, mu_gm: float, sigma_wm: float, sigma_gm: float) -> float:
    return _ratio(sigma_wm + sigma_gm, abs(mu_wm - mu_gm))


def mriqc_fber(image: np.ndarray, head_mask: np.ndarray, rotation_mask: Optional[np.ndarray] = None,
               decimals: int = 4) -> float:
    head = head_mask > 0
    air = ~head if rotation_mask is None else ~head & ~(np.asarray(rotation_mask) > 0)
    foreground = float(np.median(np.abs(image[head]) ** 2))
    background = float(np.median(np.abs(image[air]) ** 2))
    if background < 1.0e-3:
        return -1.0
    return round(foreground / background, decimals)


def mriqc_efc(image: np.ndarray, frame_mask: Optional[np.ndarray] = None, decimals: int = 4) -> float:
    """Entropy focus criterion over the voxels outside ``frame_mask`` (all voxels by default)."""
    values = np.asarray(image, dtype=np.float64)
    values = values.reshape(-1) if frame_mask is None else values[np.asarray(frame_mask) == 0]
    count = values.size
    maximum_entropy = count * (1.0 / math.sqrt(count)) * math.log(1.0 / math.sqrt(count))
    energy = math.sqrt(float(np.dot(values, values)))
    entropy = float(np.sum((values / energy) * np.log((values + 1e-16) / energy)))
    return round(entropy / maximum_entropy, decimals)


def mriqc_wm2max(image: np.ndarray, mu_wm: float) -> float:
    return float(mu_wm / np.percentile(np.asarray(image).reshape(-1), 99.95))


# --- head and air masks --------------------------------------------------------------------------

def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a sample (maximum between-class variance over a histogram)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts).astype(np.float64)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(counts * centres)
    mean_low = mass_low / np.maximum(weight_low, 1)
    mean_high = (mass_low[-1] - mass_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][np.argmax(between[:-1])])


def head_and_air_masks(image: np.ndarray, brain_mask: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A head mask (the largest bright component joined with the brain, holes filled) and the air mask
    (the voxels more than ``margin`` voxels outside it) derived from the image and the segmentation.

    The closing, the hole filling and the dilation run on the head's bounding box grown by more than
    they reach, which gives the same masks as on the whole volume (outside the box is air)."""
    from scipy import ndimage

    closing_iterations = 2
    brain = brain_mask > 0
    finite = np.asarray(image, dtype=np.float32)
    sample = finite[::2, ::2, ::2]
    threshold = otsu_threshold(sample[sample > sample.min()] if np.any(sample > sample.min()) else sample)
    bright = (finite > threshold) | brain
    # nothing bright lies outside the bright voxels' box: components, closing, hole filling and dilation
    # all run on that box grown by more than they reach
    box = bounding_box(bright, pad=closing_iterations + max(margin, 0) + 1)
    bright_box, brain_box = bright[box], brain[box]
    components, count = ndimage.label(bright_box)
    if count > 1:
        # one count of (component, brain) gives each component's size and whether the brain touches it
        flat_components, flat_brain = _flatten_alike(components, brain_box)
        pairs = flat_components.astype(np.intp) * 2
        pairs += flat_brain
        counts = np.bincount(pairs, minlength=2 * (count + 1)).reshape(-1, 2)
        del pairs
        sizes = counts.sum(axis=1)
        sizes[0] = 0
        keep = counts[:, 1] > 0  # every component the brain touches
        keep[np.argmax(sizes)] = True
        keep[0] = False
        bright_box = keep[components]
    del components
    closed = binary_erosion_cross(binary_dilation_cross(bright_box, closing_iterations), closing_iterations)
    head_box = _fill_holes(closed | bright_box)
    near_head_box = binary_dilation_cross(head_box, margin)
    head = np.zeros_like(bright)  # in the image's memory layout, as the other masks
    head[box] = head_box
    air = np.ones_like(bright)
    air[box] = ~near_head_box
    return head, air


def _along(axis: int, index, ndim: int) -> tuple:
    key = [slice(None)] * ndim
    key[axis] = index
    return tuple(key)


def forward_slices(strides) -> tuple:
    """The slices that view an array with these ``strides`` with every stride positive (applied
    twice: the original view)."""
    return tuple(slice(None, None, -1) if stride < 0 else slice(None) for stride in strides)


def _cross_pass(mask: np.ndarray, iterations: int, dilate: bool) -> np.ndarray:
    """``iterations`` dilations (ORs) or erosions (ANDs, faces eroding) of ``mask`` by the cross
    structure, as shifted operations in the mask's memory order."""
    forward = forward_slices(mask.strides)
    result = np.asarray(mask, dtype=bool)[forward]  # a symmetric structure commutes with the flips
    combine = np.bitwise_or if dilate else np.bitwise_and
    for _ in range(iterations):
        source, result = result, result.copy(order="K")  # each shift then reads and writes in memory order
        for axis in range(result.ndim):
            for target, neighbour in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
                view = result[_along(axis, target, result.ndim)]
                combine(view, source[_along(axis, neighbour, result.ndim)], out=view)
            if not dilate:
                result[_along(axis, 0, result.ndim)] = False
                result[_along(axis, -1, result.ndim)] = False
    return result[forward]


def binary_dilation_cross(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """scipy.ndimage.binary_dilation(mask, iterations=...) with its default cross (face-neighbour)
    structure, as shifted ORs: several times faster than scipy's voxel-by-voxel pass. ``iterations`` < 1
    leaves the mask as it is (scipy would repeat until nothing changes)."""
    return _cross_pass(mask, iterations, dilate=True)


def binary_erosion_cross(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """scipy.ndimage.binary_erosion(mask, iterations=...) with its default cross structure and border
    value 0 (voxels on the volume's faces erode), as shifted ANDs."""
    return _cross_pass(mask, iterations, dilate=False)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the mask's holes: the background components that do not touch the volume's border."""
    from scipy import ndimage

    outside, _ = ndimage.label(~mask)
    border = np.unique(np.concatenate([outside[0].ravel(), outside[-1].ravel(), outside[:, 0].ravel(),
                                       outside[:, -1].ravel(), outside[:, :, 0].ravel(), outside[:, :, -1].ravel()]))
    return ~np.isin(outside, border[border > 0])


# --- everything at once ---------------------------------------------------------------------------

def image_quality_metrics(image: np.ndarray, tissue_maps: dict[str, np.ndarray], dseg: np.ndarray,
                          brain_mask: np.ndarray, head_mask: np.ndarray, air_mask: np.ndarray,
                          mriqc_image: Optional[np.ndarray] = None,
                          rotation_mask: Optional[np.ndarray] = None,
                          with_spec: bool = True) -> tuple[dict, dict]:
    """The spec_* and mriqc_* metrics of DEFINITIONS (inu_* and fwhm_* aside); also MRIQC's per-tissue
    statistics (for the sidecar).

    ``mriqc_image``: the image the mriqc_* metrics are measured on where it is not ``image`` (MRIQC's
    workflow measures the bias-corrected, harmonized one; the spec_* metrics stay on ``image``);
    ``rotation_mask``: MRIQC's rotation mask, left out of efc and of fber's air; ``with_spec=False``
    leaves the spec_* metrics out where the image is not integer-valued (they are measured elsewhere).
    An integer-valued image (most T1s: uint8/int16 on disk) gets every statistic from histograms of
    its intensities (the head's and brain's voxels visited in their bounding boxes, the air's as the
    whole image less the rest); any other image the same definitions over its voxels."""
    if mriqc_image is not None:
        masks = [np.asarray(mask) > 0 for mask in (brain_mask, head_mask, air_mask)]
        image = np.asarray(image, dtype=np.float32)
        if bool(np.isfinite(image).all()) and bool(np.array_equal(np.round(image), image)):
            # the histogram path measures everything in well under a second; keep its spec_*
            measured, _ = image_quality_metrics(image, tissue_maps, dseg, *masks)
            spec = {key: value for key, value in measured.items() if key.startswith("spec_")}
        else:
            spec = _spec_metrics(image, dseg, masks[0], masks[2])
        metrics, statistics = image_quality_metrics(mriqc_image, tissue_maps, dseg, *masks,
                                                    rotation_mask=rotation_mask, with_spec=False)
        # the spec_* of ``image``, never of the harmonized image (its histogram path measures them too)
        return {**spec, **{key: value for key, value in metrics.items() if key not in spec}}, statistics
    rotation = None if rotation_mask is None or not np.any(rotation_mask) else np.asarray(rotation_mask) > 0
    image = np.asarray(image, dtype=np.float32)
    brain_mask, head_mask, air_mask = (np.asarray(mask) > 0 for mask in (brain_mask, head_mask, air_mask))
    # MRIQC works on the image with NaNs as 0 and negative values clipped to 0
    integer_valued = bool(np.isfinite(image).all()) and bool(np.array_equal(np.round(image), image))
    clipped = image if integer_valued and float(image.min()) >= 0 else np.clip(np.nan_to_num(image), 0, None)
    rounded = clipped if integer_valued else np.round(clipped.astype(np.float64), 0)
    index = IntensityIndex(rounded, exact=integer_valued, layout=tissue_maps["GM"]) \
        if IntensityIndex.usable(rounded) else None
    fast = index is not None and index.exact and index.counts.size * 32 <= JOINT_COUNT_MAX
    core_counts = {}
    if fast:
        # the histograms of every hard mask at once: one count of (intensity, code), the code's bits saying
        # brain, dseg class (2 bits), head, air and, where the count stays small, each tissue's core
        with_cores = index.counts.size * 256 <= JOINT_COUNT_LIMIT
        code = np.empty_like(index.offsets, dtype=np.uint8)  # in the offsets' memory order
        np.copyto(code, brain_mask, casting="unsafe")
        code += np.uint8(2) * np.clip(dseg, 0, 3).astype(np.uint8)
        code += np.uint8(8) * head_mask.astype(np.uint8)
        code += np.uint8(16) * air_mask.astype(np.uint8)
        for bit, tissue in enumerate(("CSF", "GM", "WM") if with_cores else ()):
            code += np.uint8(32 << bit) * _core_mask(tissue_maps[tissue]).astype(np.uint8)
        codes = np.arange(256 if with_cores else 32)
        joint = index.offsets * codes.size
        joint += code
        counts = np.bincount(joint.ravel(order="K"), minlength=index.counts.size * codes.size).reshape(-1, codes.size)
        counts = counts[index.present].astype(np.float64)
        del joint, code

        def counts_where(selected: np.ndarray) -> np.ndarray:  # integer counts: exact in any order
            return counts[:, selected].sum(axis=1)

        air_counts = counts_where(codes & 16 > 0)
        head_counts = counts_where(codes & 8 > 0)
        if with_cores:
            core_counts = {tissue: counts_where(codes & (32 << bit) > 0)
                           for bit, tissue in enumerate(("CSF", "GM", "WM"))}
    if fast and clipped is image:  # the spec's statistics of the image itself, from histograms
        brain_counts = counts_where(codes & 1 > 0)
        gm_counts = counts_where((codes >> 1) & 3 == 1)
        wm_counts = counts_where((codes >> 1) & 3 == 2)
        outside_counts = counts_where(codes & 1 == 0)
        signal = index.mean_std(brain_counts)[0]
        metrics = {
            "spec_snr": signal / (index.mean_std(outside_counts)[1] + SPEC_EPSILON),
            "spec_snr_air": signal / (index.mean_std(air_counts)[1] + SPEC_EPSILON),
            "spec_cnr": abs(index.mean_std(gm_counts)[0] - index.mean_std(wm_counts)[0])
            / (index.mean_std(gm_counts)[1] + SPEC_EPSILON),
        }
    else:
        metrics = _spec_metrics(image, dseg, brain_mask, air_mask) if with_spec else {}
    statistics = {tissue.lower(): tissue_statistics(clipped, tissue_maps[tissue], index=index,
                                                    core_counts=core_counts.get(tissue))
                  for tissue in ("CSF", "GM", "WM")}
    if fast:
        statistics["bg"] = _mask_statistics(index, air_counts)
    else:
        statistics["bg"] = tissue_statistics(clipped, air_mask.astype(np.uint8), index=index)
    snr = {tissue: mriqc_snr(statistics[tissue]["median"], statistics[tissue]["stdv"], statistics[tissue]["n"])
           for tissue in ("csf", "wm", "gm")}
    snrd = {tissue: mriqc_snr_dietrich(statistics[tissue]["median"], statistics["bg"]["mad"], statistics["bg"]["stdv"])
            for tissue in ("csf", "wm", "gm")}
    for tissue in ("csf", "gm", "wm"):
        metrics[f"mriqc_snr_{tissue}"] = snr[tissue]
    metrics["mriqc_snr_total"] = float(np.mean(list(snr.values())))
    for tissue in ("csf", "gm", "wm"):
        metrics[f"mriqc_snrd_{tissue}"] = snrd[tissue]
    metrics["mriqc_snrd_total"] = float(np.mean(list(snrd.values())))
    wm, gm, bg = statistics["wm"], statistics["gm"], statistics["bg"]
    metrics["mriqc_cnr"] = mriqc_cnr(wm["median"], gm["median"], bg["stdv"], wm["stdv"], gm["stdv"])
    metrics["mriqc_cjv"] = mriqc_cjv(wm["median"], gm["median"], wm["mad"], gm["mad"])
    if fast:
        framed = index.histogram(mask=rotation) if rotation is not None else 0
        framed_air = index.histogram(mask=rotation & ~head_mask) if rotation is not None else 0
        metrics["mriqc_efc"] = _efc_of_histogram(index.distinct, index.all_counts - framed)
        metrics["mriqc_fber"] = _fber_of_histograms(index.distinct, head_counts,
                                                    index.all_counts - head_counts - framed_air)
        top = _percentile_of_histogram(index.distinct, index.all_counts, 99.95)
        metrics["mriqc_wm2max"] = float(wm["median"] / top)
    else:
        metrics["mriqc_efc"] = mriqc_efc(clipped, rotation)
        metrics["mriqc_fber"] = mriqc_fber(clipped, head_mask, rotation)
        metrics["mriqc_wm2max"] = mriqc_wm2max(clipped, wm["median"])
    return metrics, statistics


def _spec_metrics(image: np.ndarray, dseg: np.ndarray, brain_mask: np.ndarray, air_mask: np.ndarray) -> dict:
    """The spec_* metrics over the image's voxels."""
    tissue_box = bounding_box(dseg > 0)
    return {
        "spec_snr": spec_snr(image, brain_mask),
        "spec_snr_air": spec_snr(image, brain_mask, air_mask),
        "spec_cnr": spec_cnr(image[tissue_box], dseg[tissue_box] == 1, dseg[tissue_box] == 2),
    }


def _efc_of_histogram(values: np.ndarray, counts: np.ndarray, decimals: int = 4) -> float:
    """mriqc_efc over the whole image, from its histogram."""
    count = float(counts.sum())
    maximum_entropy = count * (1.0 / math.sqrt(count)) * math.log(1.0 / math.sqrt(count))
    energy = math.sqrt(float(np.dot(counts, values * values)))
    entropy = float(np.dot(counts, (values / energy) * np.log((values + 1e-16) / energy)))
    return round(entropy / maximum_entropy, decimals)


def _fber_of_histograms(values: np.ndarray, head_counts: np.ndarray, outside_counts: np.ndarray,
                        decimals: int = 4) -> float:
    """mriqc_fber from the histograms of the head and of the rest (values >= 0: squaring keeps the order)."""
    def median_square(counts):
        total = int(round(float(counts.sum())))
        if total == 0:
            return float("nan")
        middle = _value_at_rank(values, counts, [(total - 1) // 2, total // 2])
        return float((middle[0] ** 2 + middle[1] ** 2) / 2)

    foreground, background = median_square(head_counts), median_square(outside_counts)
    if background < 1.0e-3:
        return -1.0
    return round(foreground / background, decimals)


def _percentile_of_histogram(values: np.ndarray, counts: np.ndarray, percent: float) -> float:
    """np.percentile (linear method) of the sample of a histogram."""
    total = int(round(float(counts.sum())))
    virtual = (percent / 100) * (total - 1)
    below = math.floor(virtual)
    low, high = _value_at_rank(values, counts, [below, min(below + 1, total - 1)])
    fraction = virtual - below
    difference = high - low
    return float(high - difference * (1 - fraction) if fraction >= 0.5 else low + difference * fraction)
