"""segsuite preprocess on real scans with their real segmentations (SAMSEG seg.mgz of t1_crop at 2 mm):
N4 recovers a known bias field, greedy recovers a known deformation, modulation conserves tissue volume,
the transforms invert each other and load in SimpleITK and Slicer's MRML; the QC follows MRIQC."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_path

from segsuite.morphometry import tissues
from segsuite.preprocess import itk, quality, vbm
from segsuite.preprocess.bias import n4_bias_correction
from segsuite.preprocess.registration import register
from segsuite.preprocess.subject import output_paths
from segsuite.preprocess.templates import NLIN2009A, load_template

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE_SPACE = NLIN2009A


def _t1_and_seg_2mm():
    import nibabel as nib

    t1 = nib.load(shared_path("data", "t1", "t1_crop_2mm.nii.gz"))
    seg = nib.load(shared_path("data", "samseg", "t1_crop_2mm", "seg.mgz"))
    assert np.allclose(t1.affine, seg.affine, atol=1e-3)
    return np.asarray(t1.dataobj, dtype=np.float32), np.asarray(seg.dataobj).astype(np.int32), t1.affine


def _run_cli(*args, check=True):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "SegmentationSuite") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "segsuite", "preprocess", *args, "--progress", "none"],
                          capture_output=True, text=True, env=env, check=check)


# ---- definitions (fast) ----------------------------------------------------------------------------

def test_fuzzy_jaccard_and_inu_follow_mriqc():
    a = np.array([0.0, 0.5, 1.0, 0.2])
    b = np.array([0.5, 0.5, 0.0, 0.4])
    # MRIQC: sum(min) / sum(max) = (0 + .5 + 0 + .2) / (.5 + .5 + 1 + .4)
    assert quality.fuzzy_jaccard(a, b) == pytest.approx(0.7 / 2.4)
    field = np.linspace(0.5, 1.5, 101).reshape(101, 1, 1)
    mask = np.ones_like(field, dtype=bool)
    mask[:50] = False  # only 1.0 .. 1.5 counts
    metrics = quality.inu_metrics(field, mask)
    assert metrics["inu_med"] == pytest.approx(1.25)
    assert metrics["inu_range"] == pytest.approx(0.9 * 0.5)


def test_jacobian_of_a_linear_field_on_an_oblique_left_handed_grid():
    """u(x) = B x on a LIA grid: det(A) det(I + B) everywhere (the chain rule through the direction)."""
    affine = np.array([[-2.0, 0, 0, 60], [0, 0, 2.0, -50], [0, -2.0, 0, 55], [0, 0, 0, 1]])
    shape = (12, 10, 11)
    B = np.array([[0.1, 0.02, 0.0], [0.0, -0.05, 0.03], [0.01, 0.0, 0.2]])
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    lps = (index @ (itk.LPS @ affine)[:3, :3].T) + (itk.LPS @ affine)[:3, 3]
    import SimpleITK as sitk

    grid = itk.to_sitk(np.zeros(shape), affine)
    field = sitk.GetImageFromArray((lps @ B.T).transpose(2, 1, 0, 3).astype(np.float64), isVector=True)
    field.CopyInformation(grid)
    A = np.diag([0.9, 1.1, 0.95])
    jacobian = itk.jacobian_determinant(field, A)
    assert jacobian.shape == shape
    assert np.allclose(jacobian, np.linalg.det(A) * np.linalg.det(np.eye(3) + B), rtol=1e-4)


def test_smoothing_has_the_requested_fwhm():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    impulse = np.zeros((41, 41, 41), dtype=np.float32)
    impulse[20, 20, 20] = 1.0
    profile = vbm.smooth(impulse, affine, 8.0)[:, 20, 20]
    half = profile.max() / 2
    above = np.flatnonzero(profile >= half)
    # linear interpolation of the two half-maximum crossings, in mm
    left = above[0] - (profile[above[0]] - half) / (profile[above[0]] - profile[above[0] - 1])
    right = above[-1] + (profile[above[-1]] - half) / (profile[above[-1]] - profile[above[-1] + 1])
    assert (right - left) * 2.0 == pytest.approx(8.0, abs=0.3)
    assert vbm.smooth(impulse, affine, 8.0).sum() == pytest.approx(1.0, abs=1e-4)  # mass kept


def test_default_template_is_nilearns_and_named_by_its_space():
    template = load_template(resolution=2.0)
    if template.name != NLIN2009A:
        pytest.skip("TemplateFlow's MNI152NLin2009cAsym is local here, so it is the default")
    assert set(template.priors) == {"GM", "WM"}
    for prior in template.priors.values():
        assert 0.0 <= prior.min() and prior.max() <= 1.0 and prior.max() > 0.9
    assert np.allclose(np.linalg.norm(template.affine[:3, :3], axis=0), 2.0)
    assert template.mask.sum() * 8 == pytest.approx(1.9e6, rel=0.25)  # a brain's volume in mm3


# ---- real data ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_n4_recovers_a_known_bias_field():
    data, seg, affine = _t1_and_seg_2mm()
    head = seg > 0  # SAMSEG labels the whole head (skull, soft tissue)
    brain = (seg > 0) & np.isin(seg, list(tissues.tissue_table()))
    maps, _ = tissues.tissue_maps_from_labels(seg)
    wm = maps["WM"] > 0.5
    centre = np.array(data.shape) / 2
    x, y, z = np.meshgrid(*[(np.arange(n) - c) / n for n, c in zip(data.shape, centre)], indexing="ij")
    truth = np.exp(0.35 * x - 0.25 * y + 0.3 * z ** 2 - 0.2 * x * y).astype(np.float32)  # about +-20 %
    biased = data * truth
    on_biased = n4_bias_correction(biased, affine, head)
    on_original = n4_bias_correction(data, affine, head)
    recovered = on_biased.field / on_original.field  # the scan's own field divided out
    correlation = np.corrcoef(recovered[brain], truth[brain])[0, 1]
    assert correlation >= 0.9
    cov = lambda image: image[wm].std() / image[wm].mean()  # noqa: E731
    assert cov(on_biased.corrected) < 0.9 * cov(biased)


@pytest.mark.slow
def test_greedy_recovers_a_known_deformation():
    """The scan deformed by a known smooth field is the fixed image: registering the original to it must
    find T(x) = x + d(x); median error inside the brain below 1 mm."""
    from scipy import ndimage

    data, seg, affine = _t1_and_seg_2mm()
    brain = np.isin(seg, list(tissues.tissue_table()))
    image = data * ndimage.binary_dilation(brain, iterations=2)
    voxel = np.abs(np.diag(affine)[:3])
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in data.shape], indexing="ij"))
    # displacement in mm along each world axis: smooth sinusoids up to 4 mm
    world = np.tensordot(affine[:3, :3], index, axes=1) + affine[:3, 3].reshape(3, 1, 1, 1)
    d = np.stack([4.0 * np.sin(world[1] / 25.0), 3.0 * np.cos(world[2] / 30.0), 3.5 * np.sin(world[0] / 28.0)])
    source = np.tensordot(np.linalg.inv(affine[:3, :3]), world + d - affine[:3, 3].reshape(3, 1, 1, 1), axes=1)
    deformed = ndimage.map_coordinates(image, source, order=1)
    registration = register(itk.to_sitk(image, affine), itk.to_sitk(deformed, affine), spacing=None, threads=2)
    forward = registration.forward()
    fixed_brain = ndimage.map_coordinates(brain.astype(np.float32), source, order=0) > 0
    points = np.argwhere(fixed_brain)[::7]
    errors = []
    for i, j, k in points:
        x = world[:, i, j, k]
        found = itk.LPS[:3, :3] @ forward.TransformPoint(tuple(itk.LPS[:3, :3] @ x))
        errors.append(np.linalg.norm(found - (x + d[:, i, j, k])))
    assert np.median(errors) < 1.0, (np.median(errors), np.percentile(errors, 90))
    assert np.median(np.linalg.norm(d[:, fixed_brain], axis=0)) > 2.0 * voxel.min() / 2  # the truth is not ~0


@pytest.mark.slow
def test_a_rerun_with_one_thread_registers_identically():
    """greedy's NCC noise comes from a fixed seed: the same pair, registered twice on one thread, gives
    the same affine and the same warp (a random seed moved the template-space T1w: correlation 0.93)."""
    import SimpleITK as sitk

    data, seg, affine = _t1_and_seg_2mm()
    template = load_template(TEMPLATE_SPACE, resolution=2.0)
    moving = itk.to_sitk(data * np.isin(seg, list(tissues.tissue_table())), affine)
    fixed = itk.to_sitk(template.t1, template.affine)
    runs = [register(moving, fixed, spacing=4.0, threads=1) for _ in range(2)]
    assert np.array_equal(runs[0].affine_lps, runs[1].affine_lps)
    first, second = (sitk.GetArrayFromImage(run.warp) for run in runs)
    assert np.abs(first).max() > 1.0  # a real warp, not the identity
    assert np.array_equal(first, second)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    image = shared_path("data", "t1", "t1_crop_2mm.nii.gz")
    seg = shared_path("data", "samseg", "t1_crop_2mm", "seg.mgz")
    out = tmp_path_factory.mktemp("preprocess")
    run = _run_cli("--i", str(image), "--seg", str(seg), "--o", str(out), "--prefix", "sub-01",
                   "--template", TEMPLATE_SPACE, "--resolution", "2")
    return out, output_paths(str(out), "sub-01", TEMPLATE_SPACE, 8.0), run


@pytest.mark.slow
def test_outputs_have_smriprep_names_and_load_in_nibabel(preprocessed):
    import nibabel as nib

    out, paths, run = preprocessed
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths.values())
    assert "wrote" in run.stdout and run.stderr == ""
    for key, path in paths.items():
        if path.endswith(".nii.gz"):
            image = nib.load(path)
            data = np.asarray(image.dataobj)
            assert np.isfinite(data).all(), key
            assert data.any(), key
    native = nib.load(paths["preproc"])
    assert native.shape == (128, 128, 128)
    standard = nib.load(paths["probseg_GM"])
    assert np.allclose(np.linalg.norm(standard.affine[:3, :3], axis=0), 2.0)
    gm = np.asarray(standard.dataobj)
    assert 0.0 <= gm.min() and gm.max() <= 1.0 + 1e-5
    record = json.loads(open(paths["metrics"]).read())
    assert record["provenance"]["template"] == TEMPLATE_SPACE
    metrics = record["metrics"]
    for name in ("inu_range", "inu_med", "tpm_overlap_gm", "tpm_overlap_wm"):
        assert np.isfinite(metrics[name]), name
    assert 0.35 < metrics["tpm_overlap_gm"] < 1 and 0.35 < metrics["tpm_overlap_wm"] < 1


@pytest.mark.slow
def test_registration_t1w_leaves_the_tissue_maps_out_of_the_registration(preprocessed, tmp_path):
    image = shared_path("data", "t1", "t1_crop_2mm.nii.gz")
    seg = shared_path("data", "samseg", "t1_crop_2mm", "seg.mgz")
    _run_cli("--i", str(image), "--seg", str(seg), "--o", str(tmp_path), "--prefix", "sub-01", "--template",
             TEMPLATE_SPACE, "--resolution", "2", "--registration", "t1w")
    alone = json.loads(open(output_paths(str(tmp_path), "sub-01", TEMPLATE_SPACE)["metrics"]).read())
    both = json.loads(open(preprocessed[1]["metrics"]).read())
    assert alone["provenance"]["registration"].endswith("on T1w)")
    assert both["provenance"]["registration"].endswith("on T1w + GM/WM maps)")
    # the maps in the registration are what raises the overlap with the template's priors (docs/preprocess.md)
    assert both["metrics"]["tpm_overlap_gm"] > alone["metrics"]["tpm_overlap_gm"] + 0.02
    bad = _run_cli("--i", str(image), "--seg", str(seg), "--o", str(tmp_path / "x"), "--registration", "tissues",
                   check=False)
    assert bad.returncode == 2 and "--registration" in bad.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_modulated_gm_integrates_to_the_native_gm_volume(preprocessed):
    import nibabel as nib

    _, paths, _ = preprocessed
    seg = nib.load(shared_path("data", "samseg", "t1_crop_2mm", "seg.mgz"))
    maps, _ = tissues.tissue_maps_from_labels(np.asarray(seg.dataobj).astype(np.int32))
    native = maps["GM"].sum() * abs(np.linalg.det(seg.affine[:3, :3]))
    for key in ("modulated_GM", "smoothed_GM"):
        image = nib.load(paths[key])
        integral = np.asarray(image.dataobj, dtype=np.float64).sum() * abs(np.linalg.det(image.affine[:3, :3]))
        assert integral == pytest.approx(native, rel=0.01), key
    unmodulated = nib.load(paths["probseg_GM"])
    plain = np.asarray(unmodulated.dataobj, dtype=np.float64).sum() * abs(np.linalg.det(unmodulated.affine[:3, :3]))
    assert abs(plain - native) > 0.02 * native  # modulation is doing the work here


@pytest.mark.slow
def test_forward_then_inverse_returns_points_and_reads_in_simpleitk(preprocessed):
    import nibabel as nib
    import SimpleITK as sitk

    _, paths, _ = preprocessed
    forward = sitk.ReadTransform(paths["forward_xfm"])
    inverse = sitk.ReadTransform(paths["inverse_xfm"])
    mask = nib.load(paths["template_mask"])
    points = np.argwhere(np.asarray(mask.dataobj) > 0)[::50]
    world = points @ mask.affine[:3, :3].T + mask.affine[:3, 3]
    errors, moved = [], []
    for x in world:
        lps = tuple(itk.LPS[:3, :3] @ x)
        y = forward.TransformPoint(lps)
        moved.append(np.linalg.norm(np.subtract(y, lps)))
        errors.append(np.linalg.norm(np.subtract(inverse.TransformPoint(y), lps)))
    # the inverse field is a numerical inversion (greedy's NCC adds noise, so runs differ): 99 % of the
    # points come back within 0.5 mm (p99 0.16 mm in four runs), the worst, at the mask's edge, within half
    # a voxel (0.31-0.51 mm)
    voxel = float(np.linalg.norm(mask.affine[:3, :3], axis=0).min())
    assert np.percentile(errors, 95) < 0.1 * voxel
    assert np.percentile(errors, 99) < 0.5
    assert max(errors) < 0.5 * voxel
    assert np.median(moved) > 2.0  # a real transform, not the identity
    # resampling the subject's T1 with the file gives the space-<template> T1 written beside it
    t1 = sitk.ReadImage(paths["preproc"], sitk.sitkFloat32)
    reference = sitk.ReadImage(paths["template_preproc"], sitk.sitkFloat32)
    again = sitk.GetArrayFromImage(sitk.Resample(t1, reference, forward, sitk.sitkLinear, 0.0))
    written = sitk.GetArrayFromImage(reference)
    assert np.abs(again - written).max() < 1e-2 * written.max()


@pytest.mark.slow
def test_forward_transform_resamples_in_antspy(preprocessed):
    """antsApplyTransforms (through ANTsPy) reads the composite .h5 and gives the space-<template> T1w."""
    ants = pytest.importorskip("ants", reason="needs antspyx (requirements-ants-nodeps.txt)")
    _, paths, _ = preprocessed
    reference = ants.image_read(paths["template_preproc"])
    again = ants.apply_transforms(reference, ants.image_read(paths["preproc"]), [paths["forward_xfm"]],
                                  interpolator="linear").numpy()
    written = reference.numpy()
    assert again.shape == written.shape
    assert np.abs(again - written).max() < 1e-2 * written.max()
    # the inverse brings the template-space T1w back onto the subject's grid, over the subject's brain
    native = ants.image_read(paths["preproc"])
    back = ants.apply_transforms(native, reference, [paths["inverse_xfm"]], interpolator="linear").numpy()
    brain = ants.image_read(paths["brain_mask"]).numpy() > 0
    assert np.corrcoef(back[brain], native.numpy()[brain])[0, 1] > 0.8


@pytest.mark.slow
def test_transforms_load_in_slicer_mrml(preprocessed):
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
    import SimpleITK as sitk

    _, paths, _ = preprocessed
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "to template")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(paths["forward_xfm"])
    assert storage.ReadData(node) == 1
    forward = sitk.ReadTransform(paths["forward_xfm"])
    for point in ([0.0, -20.0, 10.0], [30.0, 10.0, 20.0], [-25.0, -60.0, 0.0]):
        # the node moves the T1w into template space: its FromParent is the file's template -> subject map
        expected = itk.LPS[:3, :3] @ forward.TransformPoint(tuple(itk.LPS[:3, :3] @ point))
        # VTK's and ITK's interpolation of the displacement grid differ by ~0.01 mm where it bends sharply
        assert np.allclose(node.GetTransformFromParent().TransformPoint(point), expected, atol=0.05)
        there = node.GetTransformFromParent().TransformPoint(point)
        assert np.allclose(node.GetTransformToParent().TransformPoint(there), point, atol=0.5)


# ---- command-line behaviour (fast) -----------------------------------------------------------------------

def test_cli_refuses_existing_outputs_before_any_work(tmp_path):
    image = shared_path("data", "t1", "t1_crop_2mm.nii.gz")
    seg = shared_path("data", "samseg", "t1_crop_2mm", "seg.mgz")
    existing = output_paths(str(tmp_path), "sub-01", TEMPLATE_SPACE)["brain_mask"]
    open(existing, "w").close()
    run = _run_cli("--i", str(image), "--seg", str(seg), "--o", str(tmp_path), "--prefix", "sub-01",
                   "--template", TEMPLATE_SPACE, check=False)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "--overwrite" in run.stderr and "Traceback" not in run.stderr
    assert os.listdir(tmp_path) == [os.path.basename(existing)]


def test_cli_reports_a_missing_segmentation_in_one_line(tmp_path):
    image = shared_path("data", "t1", "t1_crop_2mm.nii.gz")
    run = _run_cli("--i", str(image), "--seg", str(tmp_path / "absent.mgz"), "--o", str(tmp_path / "out"), check=False)
    assert run.returncode != 0
    assert run.stderr.count("\n") == 1 and "absent.mgz" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_cli_rejects_a_negative_fwhm(tmp_path):
    run = _run_cli("--i", "x.nii.gz", "--o", str(tmp_path), "--fwhm", "-3", check=False)
    assert run.returncode == 2 and "--fwhm" in run.stderr and run.stderr.count("\n") == 1


@pytest.mark.slow
def test_slicer_nodes_put_the_native_t1w_into_template_space(preprocessed):
    """The adapter's transform node moves native points where the inverse file (template <- T1w) puts them."""
    pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
    import nibabel as nib
    import SimpleITK as sitk
    import slicer

    from segsuite_slicer import mrml

    _, paths, _ = preprocessed
    standard = nib.load(paths["template_preproc"])
    scene = slicer.vtkMRMLScene()
    nodes = mrml.add_preprocessed_nodes(np.asarray(standard.dataobj), standard.affine, paths["forward_xfm"],
                                        TEMPLATE_SPACE, scene=scene, name="sub-01")
    assert nodes["volume"].GetName() == f"sub-01 space-{TEMPLATE_SPACE} T1w"
    assert np.allclose(mrml.volume_node_geometry(nodes["volume"]), standard.affine, atol=1e-4)
    inverse_file = sitk.ReadTransform(paths["inverse_xfm"])
    mask = nib.load(paths["brain_mask"])
    native_points = np.argwhere(np.asarray(mask.dataobj) > 0)[::300] @ mask.affine[:3, :3].T + mask.affine[:3, 3]
    to_template = nodes["transform"].GetTransformToParent()
    errors = [np.linalg.norm(np.subtract(to_template.TransformPoint(point),
                                         itk.LPS[:3, :3] @ inverse_file.TransformPoint(tuple(itk.LPS[:3, :3] @ point))))
              for point in native_points]
    assert np.median(errors) < 0.5, np.percentile(errors, [50, 90, 100])
    with pytest.raises(Exception, match="could not be read"):
        mrml.add_preprocessed_nodes(np.zeros((2, 2, 2)), np.eye(4), paths["metrics"], TEMPLATE_SPACE, scene=scene)


# ---- group level (fast: small maps written here, the real records' layout) --------------------------------

def _fake_subject(folder, prefix, mask, gm, metrics):
    import nibabel as nib

    paths = output_paths(str(folder), prefix, TEMPLATE_SPACE)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), paths["template_mask"])
    nib.save(nib.Nifti1Image(gm.astype(np.float32), affine), paths["modulated_GM"])
    with open(paths["metrics"], "w") as handle:
        json.dump({"metrics": metrics, "provenance": {"template": TEMPLATE_SPACE}}, handle)


def test_group_cohort_mask_mean_gm_and_qc_table(tmp_path):
    import nibabel as nib
    import pandas as pd

    from segsuite.errors import InputError, OutputExistsError
    from segsuite.preprocess.group import write_preprocess_group

    rng = np.random.default_rng(0)
    masks = [np.zeros((6, 5, 4), bool) for _ in range(3)]
    masks[0][1:5] = True
    masks[1][2:5] = True
    masks[2][2:6] = True
    maps = [rng.random((6, 5, 4)) for _ in range(3)]
    for number, (mask, gm) in enumerate(zip(masks, maps)):
        folder = tmp_path / f"sub-{number}" / "anat"
        folder.mkdir(parents=True)
        _fake_subject(folder, f"sub-{number}", mask, gm, {"tpm_overlap_gm": 0.5 + number / 10, "inu_range": 0.1})
    out = tmp_path / "group"
    written = write_preprocess_group([tmp_path], out, mask_fraction=1.0)
    mask = np.asarray(nib.load(written[0]).dataobj) > 0
    assert np.array_equal(mask, masks[0] & masks[1] & masks[2])  # fraction 1: in every subject's mask
    assert np.allclose(nib.load(written[1]).get_fdata(), np.mean(maps, axis=0), atol=1e-6)
    table = pd.read_csv(written[2], sep="\t")
    assert list(table["participant_id"]) == ["sub-0", "sub-1", "sub-2"]
    assert table["session_id"].isna().all()  # written n/a: these subjects have no session
    assert np.allclose(table["tpm_overlap_gm"], [0.5, 0.6, 0.7])
    assert table["jacobian_min"].isna().all()  # absent in these records: n/a, not a made-up value
    half = write_preprocess_group([tmp_path], tmp_path / "half", mask_fraction=0.5)
    assert np.array_equal(np.asarray(nib.load(half[0]).dataobj) > 0, np.sum(masks, axis=0) >= 1.5)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_preprocess_group([tmp_path], out)
    with pytest.raises(InputError, match="no \\*_desc-preproc_qc.json"):
        write_preprocess_group([tmp_path / "group"], tmp_path / "none")


def _write_ratings(path, rows):
    lines = ["participant_id\tsession_id\tengine\trating\tnote"] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_registration_flags_and_a_fail_rating_leaves_the_subject_out_of_the_group_maps(tmp_path):
    import nibabel as nib
    import pandas as pd

    from segsuite.errors import InputError
    from segsuite.preprocess.group import registration_flags, write_preprocess_group
    from segsuite.review.ratings import read_ratings

    shape = (4, 4, 4)
    for number in range(7):
        folder = tmp_path / f"sub-{number}" / "ses-a" / "anat"
        folder.mkdir(parents=True)
        metrics = {"tpm_overlap_gm": 0.60 + 0.005 * number, "tpm_overlap_wm": 0.66 + 0.004 * number,
                   "inu_range": 0.20 + 0.01 * number, "jacobian_min": 0.3}
        if number == 6:
            metrics["tpm_overlap_gm"] = 0.30  # a failed registration overlaps the priors badly
        if number == 3:
            metrics["jacobian_min"] = -0.2
        _fake_subject(folder, f"sub-{number}_ses-a", np.ones(shape, bool), np.full(shape, float(number)), metrics)
    plain = pd.read_csv(write_preprocess_group([tmp_path], tmp_path / "plain")[2], sep="\t", keep_default_na=False)
    assert list(plain["session_id"]) == ["ses-a"] * 7
    flagged = dict(zip(plain["participant_id"], plain["qc_flags"]))
    assert "tpm_overlap_gm 0.3 below the cohort" in flagged["sub-6"] and "folds" not in flagged["sub-6"]
    assert "the warp folds (Jacobian minimum -0.2" in flagged["sub-3"]
    assert [p for p, why in flagged.items() if why != "n/a"] == ["sub-3", "sub-6"]
    # high overlap is never a flag, nor is low spread of the bias field
    assert registration_flags([{"tpm_overlap_gm": v, "inu_range": 1 - v} for v in (0.6, 0.61, 0.6, 0.62, 0.95)])[4] == []

    ratings = read_ratings(_write_ratings(tmp_path / "ratings.tsv", [("sub-6", "ses-a", "preprocess", "fail", "off by 1 cm"),
                                                                     ("sub-3", "ses-a", "synthseg", "fail", "")]))
    written = write_preprocess_group([tmp_path], tmp_path / "rated", ratings=ratings)
    mean = nib.load(written[1]).get_fdata()
    assert np.allclose(mean, np.mean(range(6)))  # sub-6 left out; sub-3's synthseg rating is not about registration
    table = pd.read_csv(written[2], sep="\t", keep_default_na=False).set_index("participant_id")
    assert table.loc["sub-6", "review_rating"] == "fail" and table.loc["sub-6", "tpm_overlap_gm"] == "n/a"
    assert table.loc["sub-6", "review_status"].startswith("excluded: rated fail")
    assert table.loc["sub-3", "review_status"].startswith("flagged by the automatic rules, not rated: preprocess: the warp folds")
    assert float(table.loc["sub-0", "tpm_overlap_gm"]) == pytest.approx(0.60)
    every = read_ratings(_write_ratings(tmp_path / "all.tsv", [(f"sub-{n}", "ses-a", "preprocess", "fail", "") for n in range(7)]))
    with pytest.raises(InputError, match="every subject's preprocessing is rated fail"):
        write_preprocess_group([tmp_path], tmp_path / "none", ratings=every)


def test_review_report_shows_each_registration_under_the_template_outlines(tmp_path):
    """segsuite bids ... group's report over preprocessed subjects: one view per subject (the T1w in
    template space under the template's GM/WM outlines, drawn in the right place), the registration flags
    and QC values beside it."""
    import io

    import nibabel as nib
    from PIL import Image

    from segsuite.cohort.group import collect_cohort_tables
    from segsuite.cohort.review import write_cohort_review
    from segsuite.review.page import read_page_data

    template = load_template(TEMPLATE_SPACE, resolution=2.0)
    for number in range(4):
        folder = tmp_path / f"sub-{number}"
        (folder / "anat").mkdir(parents=True)
        (folder / f"sub-{number}_segsuite.json").write_text(json.dumps({"input": "/gone/sub_T1w.nii.gz"}))
        paths = output_paths(str(folder / "anat"), f"sub-{number}", TEMPLATE_SPACE)
        shift = 6 if number == 3 else 0  # sub-3 registered 12 mm off along x
        nib.save(nib.Nifti1Image(np.roll(template.t1, shift, axis=0), template.affine), paths["template_preproc"])
        metrics = {"tpm_overlap_gm": 0.3 if number == 3 else 0.6 + 0.01 * number, "tpm_overlap_wm": 0.7, "inu_range": 0.2,
                   "jacobian_min": 0.4}
        (folder / "anat" / f"sub-{number}_desc-preproc_qc.json").write_text(json.dumps(
            {"metrics": metrics, "provenance": {"template": TEMPLATE_SPACE, "template_resolution": 2.0}}))
    cohort = collect_cohort_tables(tmp_path)
    built = write_cohort_review(tmp_path, cohort)
    data = read_page_data(tmp_path / built["name"])
    assert built["entries"] == 4 and not built["failures"]
    assert {name for name, _ in data["legends"]["preprocess"].values()} == {"template GM (prior > 0.5)", "template WM (prior > 0.5)"}
    assert "preproc_tpm_overlap_gm" in data["columns"] and "preproc_jacobian_min" in data["columns"]
    first = data["subjects"][0]
    assert first["p"] == "sub-3" and "preprocess: tpm_overlap_gm 0.3 below the cohort" in first["why"]
    assert all(s["n"] == 0 for s in data["subjects"][1:])
    folder = (tmp_path / built["name"]).parent

    def brightness_under(subject, colour):
        view = subject["views"][0]
        assert view["e"] == "preprocess" and "outlines" in view["t"]
        base = np.asarray(Image.open(io.BytesIO((folder / view["f"]["base"]).read_bytes())).convert("L"), dtype=float)
        fill = np.asarray(Image.open(io.BytesIO((folder / view["f"]["fill"]).read_bytes())).convert("RGBA"))
        under = np.all(fill[..., :3] == colour, axis=-1) & (fill[..., 3] > 0)
        assert under.sum() > 500
        return base[under].mean()

    aligned = next(s for s in data["subjects"] if s["p"] == "sub-0")
    # the template's own T1w under its outlines: WM (bright on a T1w) under the WM colour, GM under the GM colour
    assert brightness_under(aligned, (0, 200, 255)) > 1.15 * brightness_under(aligned, (255, 200, 0))
    contrast = brightness_under(first, (0, 200, 255)) / brightness_under(first, (255, 200, 0))
    assert contrast < brightness_under(aligned, (0, 200, 255)) / brightness_under(aligned, (255, 200, 0))


def test_bids_group_level_writes_the_preprocessing_group_maps(tmp_path):
    rng = np.random.default_rng(1)
    for number in range(2):
        folder = tmp_path / f"sub-{number}" / "anat"
        folder.mkdir(parents=True)
        _fake_subject(folder, f"sub-{number}", np.ones((4, 4, 4), bool), rng.random((4, 4, 4)), {"inu_range": 0.2})
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "SegmentationSuite") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "segsuite", "--progress", "none", "bids", str(tmp_path), str(tmp_path),
                          "group"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "group_desc-preproc_qc.tsv" in run.stdout
    assert (tmp_path / f"group_space-{TEMPLATE_SPACE}_label-GM_desc-modulatedmean_probseg.nii.gz").is_file()


def test_cli_refuses_an_intensity_image_as_the_segmentation(tmp_path):
    image = shared_path("data", "t1", "t1_crop_2mm.nii.gz")  # uint8: it would pass as integer labels
    run = _run_cli("--i", str(image), "--seg", str(image), "--o", str(tmp_path / "out"),
                   "--template", TEMPLATE_SPACE, check=False)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "--seg" in run.stderr and "intensity image" in run.stderr
    assert not (tmp_path / "out").exists()
