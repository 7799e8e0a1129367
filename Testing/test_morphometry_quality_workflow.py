"""The pieces of MRIQC's anatomical workflow around its metric functions (mriqc_workflow.py), checked on
images whose answer is known: the rotation mask on a rotated scan, AFNI 3dFWHMx's classic FWHM on
Gaussian-smoothed noise, the N4 bias field on a phantom with a known field, the harmonized WM median.
Their equality with MRIQC's own interfaces: test_mriqc_workflow_reference.py (compat venv)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segsuite.morphometry import mriqc_workflow, quality


def _rotated_head(shape=(64, 64, 48), angle=20.0, seed=0, reshape=False):
    """A positive noisy head in a positive noisy field of view, turned in-plane with zero fill: the zero
    wedges at the corners are what a rotation leaves (with ``reshape`` the frame grows to hold it all)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = 5.0 + rng.gamma(2.0, 2.0, shape)
    grid = np.indices(shape).astype(np.float64) - (np.array(shape)[:, None, None, None] - 1) / 2
    image[np.sqrt((grid ** 2).sum(axis=0)) < 18] += 100.0
    return ndimage.rotate(image, angle, axes=(0, 1), reshape=reshape, order=0, cval=0.0)


def test_rotation_mask_is_the_zero_fill_of_a_rotation_and_nothing_inside_the_head():
    from scipy import ndimage

    rotated = _rotated_head()
    # a few isolated zero voxels inside the field of view (dropouts) are noise, not a rotation
    speckled = rotated.copy()
    rng = np.random.default_rng(1)
    inside = np.argwhere(rotated > 50)
    picked = inside[rng.choice(len(inside), 40, replace=False)]
    speckled[tuple(picked.T)] = 0.0
    mask = mriqc_workflow.rotation_mask(speckled)
    assert mask.dtype == bool and mask.shape == rotated.shape
    assert not mask[tuple(picked.T)].any()
    assert not mask[rotated > 0].any()
    # an in-plane turn leaves four corner wedges; MRIQC keeps the two largest (the opening trims tips)
    wedges, count = ndimage.label(rotated <= 0)
    assert count == 4
    sizes = np.bincount(wedges.ravel())[1:]
    covered = np.bincount(wedges[mask], minlength=count + 1)[1:] / sizes
    assert sorted(covered.tolist())[:2] == [0.0, 0.0] and min(sorted(covered.tolist())[2:]) > 0.8
    assert set(np.flatnonzero(covered > 0)) == set(np.argsort(sizes)[-2:])
    # no rotation, no mask; a zero region under 500 voxels is no mask either
    assert not mriqc_workflow.rotation_mask(_rotated_head(angle=0.0)).any()
    small = _rotated_head(angle=0.0)
    small[:7, :7, :7] = 0.0  # 343 voxels
    assert not mriqc_workflow.rotation_mask(small).any()
    small[:9, :9, :9] = 0.0  # 729 voxels against the array's corner (the padding counts as empty)
    kept = mriqc_workflow.rotation_mask(small)
    # the opening's 18-neighbour structure has no corners: the cube's one inner corner voxel goes
    assert np.count_nonzero(kept) == 728 and not kept[8, 8, 8] and kept[:9, :9, :9].sum() == 728


def test_rotation_mask_changes_efc_and_fber_as_mriqc_uses_it():
    rotated = _rotated_head(angle=45.0, reshape=True).astype(np.float32)  # zero fill: half the frame
    head = rotated > 50
    rotation = mriqc_workflow.rotation_mask(rotated)
    kept = ~rotation
    # efc over the voxels outside the mask equals efc of those voxels alone
    assert quality.mriqc_efc(rotated, rotation) == pytest.approx(quality.mriqc_efc(rotated[kept]), abs=1e-4)
    # the zero wedges make over half the air zero: fber's air median falls to 0 without the mask
    assert quality.mriqc_fber(rotated, head) == -1.0
    expected = np.median(rotated[head] ** 2) / np.median(rotated[~head & kept] ** 2)
    assert quality.mriqc_fber(rotated, head, rotation) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("sigmas,sizes", [((1.5, 2.0, 1.0), (1.0, 1.0, 1.0)), ((1.2, 1.6, 2.2), (0.9, 1.2, 2.0))])
def test_fwhm_classic_recovers_the_smoothing_kernel_of_gaussian_noise(sigmas, sizes):
    """For white noise smoothed by a Gaussian of sigma s voxels, the lag-1 correlation is exp(-1/(4 s^2)),
    so the classic estimate is 2.35482 s (in voxels) along each axis."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (96, 96, 96)), sigma=sigmas, mode="wrap")
    mask = np.zeros(noise.shape, dtype=bool)
    mask[8:-8, 8:-8, 8:-8] = True
    image = np.where(mask, 500.0 + 20 * noise, 1.0e6).astype(np.float32)  # outside the mask never counts
    millimetres = mriqc_workflow.fwhm_classic(image, mask, sizes)
    for estimate, sigma, size in zip(millimetres, sigmas, sizes):
        assert estimate == pytest.approx(2.35482 * sigma * size, rel=0.04)
    affine = np.diag(list(sizes) + [1.0])
    metrics = mriqc_workflow.fwhm_metrics(image, mask, affine)
    assert [metrics["fwhm_x"], metrics["fwhm_y"], metrics["fwhm_z"]] == pytest.approx(
        [float(f"{m:.6g}") / s for m, s in zip(millimetres, sizes)], rel=1e-12)
    assert metrics["fwhm_avg"] == pytest.approx(np.mean([metrics["fwhm_x"], metrics["fwhm_y"], metrics["fwhm_z"]]))
    # an LPI/permuted array: the same values named by the RAS axis they lie along
    permuted = np.zeros((4, 4))
    # array axis 0 along -z, 1 along +x, 2 along -y
    permuted[2, 0], permuted[0, 1], permuted[1, 2], permuted[3, 3] = -sizes[0], sizes[1], -sizes[2], 1.0
    turned = mriqc_workflow.fwhm_metrics(image, mask, permuted)
    assert (turned["fwhm_z"], turned["fwhm_x"], turned["fwhm_y"]) == pytest.approx(
        (metrics["fwhm_x"], metrics["fwhm_y"], metrics["fwhm_z"]), rel=1e-12)


def test_fwhm_is_minus_one_where_it_cannot_be_estimated():
    constant = np.full((20, 20, 20), 7.0, dtype=np.float32)
    assert mriqc_workflow.fwhm_classic(constant, np.ones_like(constant, dtype=bool), (1, 1, 1)) == [-1.0] * 3


def test_n4_bias_field_recovers_a_known_smooth_field_and_inu_metrics_summarise_it():
    pytest.importorskip("SimpleITK", reason="SimpleITK (N4) is not installed: pip install -r requirements.txt")
    rng = np.random.default_rng(5)
    shape = (64, 72, 60)
    grid = np.indices(shape).astype(np.float64)
    radius = np.sqrt(sum((g - (n - 1) / 2) ** 2 for g, n in zip(grid, shape)))
    labels = np.zeros(shape, dtype=np.int32)
    labels[radius < 26] = 3
    labels[radius < 18] = 2
    clean = np.select([labels == 2, labels == 3], [110.0, 60.0], 0.0) + rng.normal(0, 1.5, shape)
    clean[labels == 0] = np.abs(rng.normal(0, 2.0, np.count_nonzero(labels == 0)))
    field = np.exp(0.25 * (grid[0] / shape[0] - 0.5) - 0.2 * (grid[2] / shape[2] - 0.5) ** 2)
    image = (clean * field).astype(np.float32)
    brain = labels > 0
    bias = mriqc_workflow.n4_bias_field(image, brain, np.diag([1.0, 1.0, 1.0, 1.0]))
    assert bias.shape == image.shape and bias.dtype == np.float32 and np.all(bias > 0)
    # N4 finds the field up to a constant factor
    log_ratio = np.log(bias[brain]) - np.log(field[brain])
    assert np.std(log_ratio) < 0.02
    wm = labels == 2
    assert np.std(image[wm] / bias[wm]) < 0.5 * np.std(image[wm])
    inu = mriqc_workflow.inu_metrics(bias, brain)
    values = bias[brain].astype(np.float64)
    assert inu["inu_med"] == pytest.approx(np.median(values))
    assert inu["inu_range"] == pytest.approx(np.percentile(values, 95) - np.percentile(values, 5))
    # a NaN voxel (a scanner's or a resampler's) neither stops N4 nor spreads into the field
    spoiled = image.copy()
    spoiled[tuple(np.argwhere(brain)[100])] = np.nan
    assert np.all(np.isfinite(mriqc_workflow.n4_bias_field(spoiled, brain, np.eye(4))))
    # the field's own spread over the brain, scaled as N4 scaled it
    true_range = np.percentile(field[brain], 95) - np.percentile(field[brain], 5)
    assert inu["inu_range"] / inu["inu_med"] == pytest.approx(true_range / np.median(field[brain]), rel=0.1)


def test_harmonize_puts_the_eroded_wm_core_median_at_1000():
    from scipy import ndimage

    rng = np.random.default_rng(7)
    image = rng.uniform(50, 150, (30, 30, 30)).astype(np.float32)
    wm = np.zeros(image.shape, dtype=np.float32)
    wm[5:25, 5:25, 5:25] = 0.95
    wm[5, 5:25, 5:25] = 0.5  # under 0.9: not WM
    harmonized = mriqc_workflow.harmonize(image, wm)
    core = ndimage.binary_erosion(wm >= 0.9, structure=ndimage.generate_binary_structure(3, 2))
    assert harmonized.dtype == np.float32
    assert np.median(harmonized[core]) == pytest.approx(1000.0, rel=1e-6)
    assert np.allclose(harmonized / image, harmonized[0, 0, 0] / image[0, 0, 0], rtol=1e-6)
    assert math.isfinite(float(harmonized.sum()))
