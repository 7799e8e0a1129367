"""SAMSEG label filter on synthetic label maps: semantics, label choice, bad inputs, CLI."""

from __future__ import annotations

import numpy as np
import nibabel as nib
import pytest

from segsuite.cli import main
from segsuite.errors import InputError, UsageError
from segsuite.progress import ProgressRecorder
from segsuite.samseg import (DEFAULT_EXCLUDED_LABELS, PRESETS, SamsegBrainMask, ball, refine_aseg_mask,
                             resolve_excluded_labels)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def synthetic_head(shape=(48, 48, 48)) -> np.ndarray:
    """Concentric shells like a SAMSEG seg: brain (WM 2/41, cortex 3/42), CSF 24, skull 165, soft tissue 258."""
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    radius = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(axis=0))
    left = grid[0] < centre[0]
    seg = np.zeros(shape, dtype=np.int32)
    seg[radius < 22] = 258
    seg[radius < 18] = 165
    seg[radius < 15] = 24
    seg[radius < 13] = np.where(left, 3, 42)[radius < 13]
    seg[radius < 9] = np.where(left, 2, 41)[radius < 9]
    seg[(radius < 3)] = 4                            # a ventricle inside
    seg[20:24, 20:24, 5:8] = 259                     # "eye" outside the brain
    return seg


def reference_refine_aseg(aseg: np.ndarray, radius: int = 4) -> np.ndarray:
    """niworkflows refine_aseg from its documented steps, with skimage as fMRIPrep runs it."""
    morphology = pytest.importorskip("skimage.morphology")
    from scipy.ndimage import binary_fill_holes

    mask = (aseg > 0).astype(np.uint8)
    footprint = morphology.ball(radius)
    closed = (morphology.closing(mask, footprint) if hasattr(morphology, "closing") else
              morphology.binary_closing(mask, footprint))
    return binary_fill_holes(closed.astype(np.uint8), footprint).astype(bool)


def test_ball_matches_skimage():
    morphology = pytest.importorskip("skimage.morphology")
    for radius in (1, 2, 4):
        assert np.array_equal(ball(radius), morphology.ball(radius).astype(bool))


@pytest.mark.parametrize("touch_border", [False, True])
def test_refine_aseg_mask_matches_refine_aseg(touch_border):
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 36, 30), dtype=bool)
    mask[8:30, 6:28, 5:25] = rng.random((22, 22, 20)) > 0.35   # ragged blob with gaps and holes
    if touch_border:
        mask[0:12, 0:10, 10:20] = True                          # reaches the array edge
    ours = refine_aseg_mask(mask)
    assert np.array_equal(ours, reference_refine_aseg(mask.astype(np.int32)))
    assert ours.sum() > mask.sum()
    if touch_border:
        assert ours[0, 2:8, 12:18].all()  # not eroded at the edge (skimage keeps the outside neutral)


def test_refine_aseg_mask_fills_a_closed_cavity_and_bridges_gaps():
    mask = np.zeros((30, 30, 30), dtype=bool)
    mask[5:25, 5:25, 5:25] = True
    mask[8:14, 8:20, 8:16] = False         # a large closed cavity: filled
    mask[18, 9:21, 18:25] = False          # a 1-voxel groove open at the top face: closed
    out = refine_aseg_mask(mask)
    assert out[8:14, 8:20, 8:16].all()
    assert out[18, 9:21, 18:24].all()      # only the notch in the outer face stays open
    assert not out[0:4].any() and not out[:, :, 26:].any()   # closing does not grow the outline


def test_default_removes_non_brain_labels_and_keeps_brain():
    seg = synthetic_head()
    recorder = ProgressRecorder()
    result = SamsegBrainMask().segment((seg, AFFINE), progress=recorder)
    assert tuple(result.provenance["excluded_labels"]) == DEFAULT_EXCLUDED_LABELS == (24, 165, 258, 259)
    assert not np.isin(result.labels, [24, 165, 258, 259]).any()
    brain = np.isin(seg, [2, 3, 4, 41, 42])
    assert np.array_equal(result.labels[brain], seg[brain])           # brain labels untouched
    mask = result.images["brain_mask"]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert mask[brain].all()
    assert not mask[np.isin(seg, [165, 258, 259])].any()
    voxel = 8.0
    assert result.measures["BrainMask"] == pytest.approx(mask.sum() * voxel)
    assert result.measures["RemovedLabels"] == pytest.approx(np.isin(seg, [24, 165, 258, 259]).sum() * voxel)
    assert result.volumes["Left-Cerebral-White-Matter"] == pytest.approx((seg == 2).sum() * voxel)
    assert "CSF" not in result.volumes and "Skull" not in result.volumes
    assert result.label_table.name(42) == "Right-Cerebral-Cortex"
    assert recorder.calls[-1][0] == 1.0
    assert all(b >= a for (a, _), (b, _) in zip(recorder.calls, recorder.calls[1:]))


def test_samseg2recon_preset_keeps_csf_and_gives_a_larger_mask():
    seg = synthetic_head()
    default = SamsegBrainMask().segment((seg, AFFINE))
    keep_csf = SamsegBrainMask(preset="samseg2recon").segment((seg, AFFINE))
    assert PRESETS["samseg2recon"] == (165, 258, 259)
    assert (keep_csf.labels == 24).sum() == (seg == 24).sum()
    assert keep_csf.measures["BrainMask"] > default.measures["BrainMask"]
    unfiltered = SamsegBrainMask(preset="none").segment((seg, AFFINE))
    assert unfiltered.measures["BrainMask"] > 2 * default.measures["BrainMask"]
    assert np.array_equal(unfiltered.images["brain_mask"].astype(bool), reference_refine_aseg(seg))


def test_custom_labels_and_their_description():
    labels, origin = resolve_excluded_labels([165, "258", 259])
    assert labels == (165, 258, 259) and origin == "samseg2recon"
    labels, origin = resolve_excluded_labels([165, 99])
    assert labels == (165, 99) and origin == "custom"
    with pytest.raises(UsageError):
        resolve_excluded_labels([0])
    with pytest.raises(UsageError):
        resolve_excluded_labels(["skull"])
    with pytest.raises(UsageError):
        resolve_excluded_labels(preset="nonsense")
    with pytest.raises(UsageError):
        resolve_excluded_labels([165], preset="fmriprep")


def test_float_labels_with_integer_values_are_accepted():
    seg = synthetic_head().astype(np.float32)
    result = SamsegBrainMask().segment((seg, AFFINE))
    assert result.labels.dtype == np.int32 and result.labels.max() == 42


@pytest.mark.parametrize("make_bad, words", [
    (lambda seg: seg.astype(np.float32) + 0.25, "non-integer"),
    (lambda seg: (np.indices(seg.shape).sum(axis=0) % 250).astype(np.uint8), "intensity image"),
    (lambda seg: seg > 0, "binary mask"),
    (lambda seg: np.where(seg == 2, -1, seg), "negative"),
    (lambda seg: np.where(seg > 0, 7, 0), "none of the cerebral labels"),
    (lambda seg: np.stack([seg, seg], axis=-1), "4D"),
    (lambda seg: np.where(seg == 2, np.nan, seg.astype(float)), "NaN"),
])
def test_bad_input_gives_a_clear_error(make_bad, words):
    with pytest.raises(InputError, match=words):
        SamsegBrainMask().segment((make_bad(synthetic_head()), AFFINE))


def test_removing_every_label_is_an_error():
    with pytest.raises(InputError, match="no brain label is left"):
        SamsegBrainMask(exclude_labels=[2, 3, 4, 41, 42, 24, 165, 258, 259]).segment((synthetic_head(), AFFINE))


def test_a_real_t1_given_as_the_segmentation_is_refused(shared):
    t1 = shared("data", "t1", "t1_crop_2mm.nii.gz")
    with pytest.raises(InputError, match="intensity image.*not the T1"):
        SamsegBrainMask().segment(str(t1))


def test_help_text_lists_the_presets_as_defined():
    from segsuite.commands import samseg_filter
    from segsuite.samseg import describe_labels

    for name, labels in PRESETS.items():
        if labels:
            assert f"{name:<13s} removes {describe_labels(labels)}" in samseg_filter.DESCRIPTION


def test_engine_shape():
    with pytest.raises(UsageError):
        SamsegBrainMask(model="something")
    assert SamsegBrainMask(device="cpu", threads=2).excluded_labels == DEFAULT_EXCLUDED_LABELS


# ---- command line ----

def write_seg(path, seg=None):
    nib.save(nib.MGHImage((synthetic_head() if seg is None else seg).astype(np.int32), AFFINE), str(path))
    return path


def test_cli_writes_mask_cleaned_aseg_and_volumes(tmp_path, capsys):
    seg_path = write_seg(tmp_path / "seg.mgz")
    out = tmp_path / "out"
    status = main(["--progress", "none", "samseg-filter", "--i", str(seg_path), "--o", str(out / "mask.nii.gz"),
                   "--cleaned-aseg", str(out / "aseg_clean.mgz"), "--volumes", str(out / "vol.csv")])
    assert status == 0
    messages = capsys.readouterr().err
    assert "24 CSF, 165 Skull, 258 Head-ExtraCerebral, 259 Eye-Fluid" in messages  # the choice is shown
    mask = nib.load(str(out / "mask.nii.gz"))
    cleaned = np.asarray(nib.load(str(out / "aseg_clean.mgz")).dataobj)
    assert np.allclose(mask.affine, AFFINE) and np.asarray(mask.dataobj).max() == 1
    assert not np.isin(cleaned, [24, 165, 258, 259]).any() and (cleaned == 41).any()
    # The cleaned aseg is what unpatched fMRIPrep needs: refine_aseg of it is our mask.
    assert np.array_equal(reference_refine_aseg(cleaned), np.asarray(mask.dataobj).astype(bool))
    header, row = (out / "vol.csv").read_text().splitlines()
    assert header.startswith("subject,BrainMask") and "Left-Cerebral-White-Matter" in header
    assert row.startswith(f"{tmp_path.name},")  # SAMSEG calls every output seg.mgz: the folder names the case
    assert sorted(p.name for p in out.iterdir()) == ["aseg_clean.mgz", "mask.nii.gz", "vol.csv"]  # no temp files


def test_cli_labels_option_and_overwrite_rule(tmp_path, capsys):
    seg_path = write_seg(tmp_path / "seg.mgz")
    mask = tmp_path / "mask.mgz"
    assert main(["--progress", "none", "samseg-filter", "--i", str(seg_path), "--o", str(mask), "--labels", "165,258", "259"]) == 0
    assert "(samseg2recon)" in capsys.readouterr().err
    before = mask.read_bytes()
    assert main(["--progress", "none", "samseg-filter", "--i", str(seg_path), "--o", str(mask)]) == 1
    assert "--overwrite" in capsys.readouterr().err and mask.read_bytes() == before
    assert main(["--progress", "none", "samseg-filter", "--i", str(seg_path), "--o", str(mask), "--overwrite"]) == 0
    assert main(["--progress", "none", "samseg-filter", "--i", str(seg_path), "--o", str(seg_path), "--overwrite"]) == 1
    assert "refusing to overwrite the input" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["samseg-filter", "--i", "x.mgz"],                                   # nothing to write
    ["samseg-filter", "--o", "m.mgz"],                                   # no input
    ["samseg-filter", "--i", "x.mgz", "--o", "m.mgz", "--labels", "skull"],
    ["samseg-filter", "--i", "x.mgz", "--o", "m.mgz", "--labels", "1", "--preset", "none"],
    ["samseg-filter", "--restore"],
])
def test_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        status = main(argv)
        raise SystemExit(status)
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_bad_input_is_one_line_exit_1(tmp_path, capsys):
    bad = tmp_path / "probabilities.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((10, 10, 10)).astype(np.float32), AFFINE), str(bad))
    assert main(["--progress", "none", "samseg-filter", "--i", str(bad), "--o", str(tmp_path / "m.mgz")]) == 1
    err = capsys.readouterr().err
    assert "non-integer" in err and "Traceback" not in err
    assert not (tmp_path / "m.mgz").exists()
