"""The sc_epi engine end to end with a tiny random-weight nnU-Net model: geometry, parity with a bare
nnUNetPredictor, 4D handling, thresholds, label table, and errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="sc_epi needs nnunetv2 (requirements-scepi*.txt)")

import nibabel as nib  # noqa: E402

from segsuite.errors import InputError, UsageError  # noqa: E402
from segsuite.progress import ProgressRecorder  # noqa: E402
from segsuite.scepi import ScEpiEngine, reorient, sct_to_nibabel_axcodes, undo_reorient  # noqa: E402
from segsuite.scepi.engine import make_predictor  # noqa: E402
from segsuite.scepi.tiny import TRAINER_FOLDER, build_tiny_model  # noqa: E402

EPI = ("data", "spinal_cord", "sub-leipzigR01_task-rest_desc-mocomean_bold.nii.gz")
EPI_4D = ("data", "spinal_cord", "sct_testing_fmri_EPI_4d.nii.gz")
PATCH = (8, 32, 32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("scepi") / "model", patch_size=PATCH)


@pytest.fixture(scope="module")
def engine(model_dir):
    return ScEpiEngine(model_dir, device="cpu")


@pytest.fixture(scope="module")
def bare(model_dir):
    """A bare nnUNetPredictor with SCT's settings, for parity."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir / TRAINER_FOLDER), ("all",), "checkpoint_final.pth")
    return predictor


def bare_predict(predictor, data: np.ndarray, zooms, probabilities=False):
    """What SCT hands nnU-Net: (z, y, x) array with a channel axis, spacing reversed; result back in (x, y, z)."""
    output = predictor.predict_single_npy_array(data.transpose(2, 1, 0)[None].astype(np.float32),
                                                {"spacing": [float(z) for z in zooms[::-1]]}, None, None, probabilities)
    if probabilities:
        return output[0].transpose(2, 1, 0), output[1].transpose(3, 2, 1, 0)
    return output.transpose(2, 1, 0)


def synthetic_cord(shape=(40, 36, 12), seed=1) -> np.ndarray:
    """A bright tube along z in noise: an EPI-like volume with structure for the network to respond to."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    tube = np.exp(-((x - shape[0] * 0.55) ** 2 + (y - shape[1] * 0.4) ** 2) / 18.0)
    data = 200 + 600 * tube[..., None] + rng.normal(0, 40, shape)
    data[: shape[0] // 4] *= 0.5  # an intensity gradient, so flips change what the network sees
    return data.astype(np.float32)


def oblique_affine(zooms=(1.0, 1.2, 4.0), angle_deg=20.0) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(angle / 2), -np.sin(angle / 2)], [0, np.sin(angle / 2), np.cos(angle / 2)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ tilt @ np.diag(zooms)
    affine[:3, 3] = (-20.0, 15.0, -30.0)
    return affine


def store_as(data: np.ndarray, affine: np.ndarray, axcodes) -> tuple[np.ndarray, np.ndarray]:
    """The same image (same world content) stored with another voxel axis order/direction."""
    new_data, new_affine, _ = reorient(data, affine, axcodes)
    return np.ascontiguousarray(new_data), new_affine


def test_sct_orientation_names_are_the_opposite_of_nibabel_codes():
    assert sct_to_nibabel_axcodes("LPI") == ("R", "A", "S")
    assert sct_to_nibabel_axcodes("rpi") == ("L", "A", "S")
    assert sct_to_nibabel_axcodes("AIL") == ("P", "S", "R")
    with pytest.raises(Exception, match="image_orientation"):
        sct_to_nibabel_axcodes("LLI")


def test_reorient_round_trip_is_exact_and_keeps_world_positions():
    data = synthetic_cord()
    affine = oblique_affine()
    for codes in [("L", "P", "S"), ("P", "S", "R"), ("S", "L", "A")]:
        moved, moved_affine, transform = reorient(data, affine, codes)
        assert nib.aff2axcodes(moved_affine) == codes
        np.testing.assert_array_equal(undo_reorient(moved, transform), data)
        # voxel (i, j, k) of the original is at the same world position in the reoriented grid
        index = np.array([3, 5, 7, 1.0])
        world = affine @ index
        moved_index = np.linalg.solve(moved_affine, world)
        np.testing.assert_allclose(moved_index, np.round(moved_index), atol=1e-9)
        assert moved[tuple(np.round(moved_index[:3]).astype(int))] == data[3, 5, 7]


@pytest.mark.parametrize("storage", ["RAS", "LPI", "oblique"])
def test_engine_equals_bare_predictor_and_keeps_the_grid(engine, bare, storage):
    data = synthetic_cord()
    if storage == "RAS":
        affine = np.diag([1.0, 1.2, 4.0, 1.0])
    elif storage == "LPI":
        affine = np.diag([-1.0, -1.2, -4.0, 1.0])
    else:  # oblique and stored with permuted axes (closest orientation P, S, R)
        data, affine = store_as(data, oblique_affine(), ("P", "S", "R"))
    result = engine.segment((data, affine))
    assert result.labels.shape == data.shape
    np.testing.assert_array_equal(result.affine, affine)

    # What SCT does by hand: reorient to LPI (= nibabel RAS), run nnU-Net, undo.
    model_data, model_affine, transform = reorient(data, affine, ("R", "A", "S"))
    zooms = np.sqrt((model_affine[:3, :3] ** 2).sum(axis=0))
    expected = undo_reorient(bare_predict(bare, model_data, zooms), transform)
    np.testing.assert_array_equal(result.labels, expected)
    fraction = result.labels.mean()
    assert 0.01 < fraction < 0.99, "the tiny model should give a non-trivial segmentation"


def test_same_image_in_another_storage_order_gives_the_same_world_segmentation(engine):
    data = synthetic_cord()
    affine = oblique_affine()
    reference = engine.segment((data, affine)).labels
    for codes in [("L", "P", "I"), ("A", "S", "L")]:
        moved, moved_affine = store_as(data, affine, codes)
        result = engine.segment((moved, moved_affine))
        np.testing.assert_array_equal(result.affine, moved_affine)
        back, _ = store_as(result.labels, moved_affine, nib.aff2axcodes(affine))
        np.testing.assert_array_equal(back, reference)


def test_real_spinal_cord_epi(engine, bare, shared, tmp_path):
    path = shared(*EPI)
    image = nib.load(path)
    recorder = ProgressRecorder()
    result = engine.segment(str(path), progress=recorder)
    assert result.labels.shape == image.shape and result.labels.dtype == np.uint8
    np.testing.assert_array_equal(result.affine, image.affine)
    assert nib.aff2axcodes(image.affine) != ("R", "A", "S"), "this file exercises a real reorientation"
    canonical = nib.as_closest_canonical(image)
    expected = bare_predict(bare, canonical.get_fdata(dtype=np.float32), canonical.header.get_zooms()[:3])
    expected_native, _ = store_as(expected, canonical.affine, nib.aff2axcodes(image.affine))
    np.testing.assert_array_equal(result.labels, expected_native)
    # Saved and reloaded, the label map sits on the input's grid.
    out = tmp_path / "seg.nii.gz"
    nib.save(result.label_nifti(), out)
    saved = nib.load(out)
    np.testing.assert_allclose(saved.affine, image.affine, atol=1e-6)
    fractions = [f for f, _ in recorder.calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert sum(m == "Segmenting the spinal cord" for _, m in recorder.calls) > 3, "per-patch progress"
    assert result.subject == "sub-leipzigR01_task-rest_desc-mocomean_bold"


def test_label_table_volumes_and_provenance(engine):
    data = synthetic_cord()
    affine = oblique_affine(zooms=(0.8, 0.9, 5.0))
    result = engine.segment((data, affine))
    assert result.label_table.values == [0, 1]
    assert result.label_table.name(1) == "Spinal-Cord" and result.label_table.name(0) == "Background"
    voxel = abs(np.linalg.det(affine[:3, :3]))
    assert result.volumes["Spinal-Cord"] == pytest.approx((result.labels == 1).sum() * voxel)
    assert result.units["volumes"] == "mm3"
    assert result.provenance["nnunetv2_version"] and len(result.provenance["checkpoint_sha256"][0]) == 64
    assert engine.output_arrays(result)[0][0] == "_seg"


def test_4d_series_is_refused_unless_averaged(engine, model_dir):
    data = np.stack([synthetic_cord(seed=s) for s in range(3)], axis=-1)
    affine = np.diag([1.0, 1.2, 4.0, 1.0])
    with pytest.raises(InputError, match="--mean"):
        engine.segment((data, affine))
    averaging = ScEpiEngine(model_dir, device="cpu", mean=True)
    result = averaging.segment((data, affine))
    expected = engine.segment((data.mean(axis=-1).astype(np.float32), affine))
    np.testing.assert_array_equal(result.labels, expected.labels)


def test_real_4d_epi_with_mean(model_dir, shared):
    path = shared(*EPI_4D)
    image = nib.load(path)
    result = ScEpiEngine(model_dir, device="cpu", mean=True).segment(str(path))
    assert result.labels.shape == image.shape[:3]
    np.testing.assert_array_equal(result.affine, image.affine)


@pytest.mark.parametrize("shape", [(40, 36), (40, 36, 1), (1, 1, 12)])
def test_2d_input_is_refused(engine, shape):
    with pytest.raises(InputError, match="3D"):
        engine.segment((np.ones(shape, np.float32), np.eye(4)))


def test_non_finite_and_bad_affine_are_refused(engine):
    data = synthetic_cord()
    data[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        engine.segment((data, np.eye(4)))
    with pytest.raises(InputError, match="voxel-to-world"):
        engine.segment((synthetic_cord(), np.diag([1.0, 0.0, 1.0, 1.0])))


def test_threshold_binarizes_the_soft_output(model_dir, bare):
    data = synthetic_cord()
    affine = np.diag([1.0, 1.2, 4.0, 1.0])
    _, probabilities = bare_predict(bare, data, (1.0, 1.2, 4.0), probabilities=True)
    low = ScEpiEngine(model_dir, device="cpu", threshold=0.2, probabilities=True).segment((data, affine))
    high = ScEpiEngine(model_dir, device="cpu", threshold=0.8).segment((data, affine))
    np.testing.assert_array_equal(low.labels, (probabilities[..., 1] > 0.2).astype(np.uint8))
    np.testing.assert_array_equal(high.labels, (probabilities[..., 1] > 0.8).astype(np.uint8))
    assert low.labels.sum() > high.labels.sum()
    assert low.posteriors.shape == data.shape + (2,)
    np.testing.assert_allclose(low.posteriors.sum(axis=-1), 1.0, atol=1e-4)
    with pytest.raises(UsageError, match="-thr"):
        ScEpiEngine(model_dir, device="cpu", threshold=1.5)


def test_postprocessing_options_reach_the_output(model_dir, engine):
    data = synthetic_cord()
    affine = np.diag([1.0, 1.2, 4.0, 1.0])
    plain = engine.segment((data, affine)).labels
    largest = ScEpiEngine(model_dir, device="cpu", keep_largest=True).segment((data, affine)).labels
    from scipy import ndimage

    components, count = ndimage.label(plain)
    assert count > 1, "the random model should give several objects"
    assert ndimage.label(largest)[1] == 1
    assert largest.sum() == np.bincount(components.ravel())[1:].max()
    cleaned = ScEpiEngine(model_dir, device="cpu", remove_small=["20mm3"]).segment((data, affine)).labels
    sizes = np.bincount(ndimage.label(cleaned, structure=ndimage.generate_binary_structure(3, 2))[0].ravel())[1:]
    minimum_voxels = round(20 / (1.0 * 1.2 * 4.0))  # SCT rounds the mm3 size to whole voxels
    plain_sizes = np.bincount(ndimage.label(plain, structure=ndimage.generate_binary_structure(3, 2))[0].ravel())[1:]
    assert plain_sizes.min() < minimum_voxels <= sizes.min()
    assert sorted(sizes) == sorted(s for s in plain_sizes if s >= minimum_voxels)


def test_model_orientation_from_dataset_json(tmp_path, bare):
    # A model trained in SCT orientation "AIL" (nibabel P, S, R) gets its input in that orientation.
    model = build_tiny_model(tmp_path / "ail", patch_size=PATCH, image_orientation="AIL")
    engine = ScEpiEngine(model, device="cpu")
    data, affine = synthetic_cord(), np.diag([1.0, 1.2, 4.0, 1.0])
    result = engine.segment((data, affine))
    model_data, model_affine, transform = reorient(data, affine, ("P", "S", "R"))
    zooms = np.sqrt((model_affine[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_array_equal(result.labels, undo_reorient(bare_predict(bare, model_data, zooms), transform))
    assert result.provenance["model_orientation_sct"] == "AIL"


def test_multi_class_model_names_one_output_per_label(tmp_path):
    model = build_tiny_model(tmp_path / "multi", patch_size=PATCH,
                             labels={"background": 0, "sc": 1, "lesion": 2}, foreground_fraction=0.5)
    engine = ScEpiEngine(model, device="cpu")
    result = engine.segment((synthetic_cord(), np.diag([1.0, 1.2, 4.0, 1.0])))
    assert result.label_table.values == [0, 1, 2]
    assert result.label_table.name(1) == "Spinal-Cord" and result.label_table.name(2) == "lesion"
    outputs = dict(engine.output_arrays(result))
    assert list(outputs) == ["_sc_seg", "_lesion_seg"]
    np.testing.assert_array_equal(outputs["_lesion_seg"], (result.labels == 2).astype(np.uint8))


def test_make_predictor_is_quiet(capsys):
    make_predictor("cpu")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
