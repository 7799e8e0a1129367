"""The SAMSEG filter on real SAMSEG output (shared/data/samseg): the fMRIPrep mask problem, fixed."""

from __future__ import annotations

import numpy as np
import nibabel as nib
import pytest

from segsuite.samseg import SamsegBrainMask, parse_samseg_stats, samseg_volumes

# SAMSEG's labels that are brain (its full label set minus 0, 24, 165, 258, 259; 99 with --lesion).
SAMSEG_BRAIN_LABELS = [2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 26, 28, 30, 31, 41, 42, 43, 44,
                       46, 47, 49, 50, 51, 52, 53, 54, 58, 60, 62, 63, 72, 77, 80, 85, 99]
NON_BRAIN = [165, 258, 259]


def refine_aseg(aseg: np.ndarray, ball_size: int = 4) -> np.ndarray:
    """niworkflows' refine_aseg from its documented steps: label > 0 -> 1; skimage
    binary_closing with ball(4) (dilation with the outside as background, then erosion with the
    outside as foreground); binary_fill_holes with the same ball. Written with scipy for speed
    (test_samseg_filter checks the equivalence with skimage itself)."""
    from scipy import ndimage

    offsets = np.arange(-ball_size, ball_size + 1)
    footprint = (offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2) <= ball_size ** 2
    mask = aseg > 0
    closed = ndimage.binary_erosion(ndimage.binary_dilation(mask, footprint), footprint, border_value=1)
    return ndimage.binary_fill_holes(closed, footprint)


@pytest.fixture(scope="module", params=["t1_crop_2mm", "t1_crop_1mm"])
def samseg_run(request):
    from conftest import shared_path

    return shared_path("data", "samseg", request.param)


_results: dict = {}


def filtered(run, preset=None):
    """Each (run, preset) is filtered once per test session."""
    key = (str(run), preset)
    if key not in _results:
        _results[key] = SamsegBrainMask(preset=preset).segment(str(run / "seg.mgz"))
    return _results[key]


@pytest.mark.parametrize("run_name", ["t1_crop_2mm", pytest.param("t1_crop_1mm", marks=pytest.mark.slow)])
def test_mask_excludes_head_and_matches_the_brain_labels(run_name):
    """The issue's acceptance test (1 mm in the slow step: refine_aseg of the whole raw head takes ~20 s)."""
    from conftest import shared_path

    samseg_run = shared_path("data", "samseg", run_name)
    seg_image = nib.load(str(samseg_run / "seg.mgz"))
    seg = np.asarray(seg_image.dataobj).astype(np.int32)
    assert np.isin(seg, NON_BRAIN).any(), "the fixture should contain SAMSEG's non-brain labels"
    voxel_mm3 = float(np.prod(seg_image.header.get_zooms()[:3]))

    result = filtered(samseg_run)
    mask = result.images["brain_mask"].astype(bool)
    assert mask.shape == seg.shape and np.allclose(result.affine, seg_image.affine)

    # 1. no voxel of skull, head soft tissue or eye fluid
    assert not mask[np.isin(seg, NON_BRAIN)].any()
    # 2. within 5% of SAMSEG's brain labels after the same closing and filling (independent code)
    brain_reference = refine_aseg(np.where(np.isin(seg, SAMSEG_BRAIN_LABELS), seg, 0))
    mask_mm3 = mask.sum() * voxel_mm3
    brain_mm3 = brain_reference.sum() * voxel_mm3
    assert abs(mask_mm3 - brain_mm3) <= 0.05 * brain_mm3
    assert result.measures["BrainMask"] == pytest.approx(mask_mm3)
    # 3. unpatched fMRIPrep on the raw SAMSEG seg gives a much larger mask (the bug)
    raw_mm3 = refine_aseg(seg).sum() * voxel_mm3
    print(f"\n{samseg_run.name}: filtered brain mask {mask_mm3 / 1000:.1f} cm3, SAMSEG brain labels closed/filled "
          f"{brain_mm3 / 1000:.1f} cm3, refine_aseg on the raw SAMSEG seg {raw_mm3 / 1000:.1f} cm3 "
          f"({raw_mm3 / mask_mm3:.2f}x)")
    assert raw_mm3 > 1.5 * mask_mm3
    # and the mask is a brain: smaller than SAMSEG's intracranial volume, larger than its brain labels
    icv = parse_samseg_stats(samseg_run / "samseg.stats")["Intra-Cranial"]
    assert result.measures["BrainLabels"] < mask_mm3 < icv


def test_keeping_csf_as_samseg2recon_does(samseg_run):
    default = filtered(samseg_run)
    keep_csf = filtered(samseg_run, "samseg2recon")
    seg = np.asarray(nib.load(str(samseg_run / "seg.mgz")).dataobj)
    assert not keep_csf.images["brain_mask"][np.isin(seg, NON_BRAIN)].any()
    assert keep_csf.measures["BrainMask"] > default.measures["BrainMask"]
    print(f"\n{samseg_run.name}: mask without CSF {default.measures['BrainMask'] / 1000:.1f} cm3, "
          f"keeping CSF (samseg2recon) {keep_csf.measures['BrainMask'] / 1000:.1f} cm3")


def test_label_volumes_agree_with_samseg_stats(samseg_run):
    """Hard-label voxel counts vs SAMSEG's own (soft) volumes: close for large structures."""
    result = filtered(samseg_run)
    volumes, measures = samseg_volumes(parse_samseg_stats(samseg_run / "samseg.stats"))
    assert measures["Intra-Cranial"] > 1e6
    assert "Head-ExtraCerebral" in volumes and "Unknown" not in volumes
    for name in ("Left-Cerebral-White-Matter", "Right-Cerebral-Cortex", "Brain-Stem", "Left-Cerebellum-Cortex"):
        assert result.volumes[name] == pytest.approx(volumes[name], rel=0.05)
