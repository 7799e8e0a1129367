"""ScLimbic unit tests that need no ../shared: geometry, posterior clean-up, names, stats files,
eTIV arithmetic, and the command line end to end on a tiny random model (--fov 32)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from segsuite.cli import main
from segsuite.errors import InputError
from segsuite.sclimbic import clean_posteriors, geometry
from segsuite.sclimbic.etiv import ETIV_SCALE_FACTOR, etiv_from_matrix, etiv_from_transform_file, read_lta, read_xfm
from segsuite.sclimbic.names import canonical_name, match_name
from segsuite.sclimbic.stats import (PopulationStat, StatsRow, format_case_csv, format_stats, read_case_csv,
                                     read_population_stats, read_stats, z_scores)

CTAB = """# Color table for subcortical limbic structures (sclimbic)
#ctTType   0  unknown                           0   0   0    0
   0 Unknown                      0   0   0 0 0
  26 Left-Nucleas-Accumbens     234 197 102 0 2
  58 Right-Nucleus-Accumbens    245 155   0 0 2
 853 Mid-AntCom                  60  58 210 0 3
 843 Left-MammilliaryBody        178 255  80 0 2
"""
VOLSTATS = """VolStat_mm3,mean,std,min,max
Left-Nucleus-Accumbens,369.6154,124.8495
Right-Nucleus-Accumbens,374.1538,113.3487
Mid-AntCom,201.5641, 55.8168
Left-MammillaryBody, 48.2051, 11.4459
"""


# ---------------------------------------------------------------------------------- geometry

def lia_affine(shape=(20, 22, 24)):
    affine = np.array([[-1.0, 0, 0, 10], [0, 0, 1, -12], [0, -1, 0, 11], [0, 0, 0, 1]])
    return affine


def test_orientation_and_reorient_keep_world_positions():
    rng = np.random.default_rng(0)
    data = rng.random((5, 6, 7)).astype(np.float32)
    affine = lia_affine()
    assert geometry.orientation_of(affine) == "LIA"
    out, out_affine, sizes = geometry.reorient_to_ras(data, affine, (1.0, 2.0, 3.0))
    assert geometry.orientation_of(out_affine) == "RAS"
    assert out.shape == (5, 7, 6)
    np.testing.assert_allclose(sizes, (1.0, 3.0, 2.0))
    # every voxel keeps its world position
    for index in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:
        world = affine @ np.append(index, 1)
        new_index = np.round(np.linalg.inv(out_affine) @ world).astype(int)[:3]
        assert out[tuple(new_index)] == data[index]


@pytest.mark.parametrize("size,target", [(7, 4), (6, 9), (8, 8), (5, 10)])
def test_centred_pad_crop_puts_the_odd_voxel_at_the_end(size, target):
    data = np.arange(size, dtype=np.float32).reshape(size, 1, 1) + 1
    data = np.broadcast_to(data, (size, target, target)).copy()
    out, affine = geometry.centred_pad_crop(data, np.eye(4), (target, target, target))
    assert out.shape == (target,) * 3
    delta = (target - size) / 2
    first_source = max(0, -int(np.ceil(delta)))
    first_target = max(0, int(np.floor(delta)))
    assert out[first_target, 0, 0] == first_source + 1
    # world position of the first kept voxel is unchanged
    np.testing.assert_allclose(affine @ [first_target, 0, 0, 1], [first_source, 0, 0, 1])


def test_axis_aligned_interpolation_matches_the_general_path():
    rng = np.random.default_rng(1)
    source = rng.random((9, 8, 7, 2)).astype(np.float32)
    vox2vox = np.array([[0, 0, -0.8, 6.3], [0.7, 0, 0, -0.4], [0, 1.3, 0, 0.2], [0, 0, 0, 1]])
    for method in ("linear", "nearest"):
        fast = geometry.interpolate(source, vox2vox, (11, 6, 9), method=method)
        general = geometry._interpolate_general(source, vox2vox, (11, 6, 9), method, 0)
        np.testing.assert_allclose(fast, general, atol=1e-5)


def test_nearest_rounds_half_away_and_fills_outside():
    source = np.arange(4, dtype=np.int32).reshape(4, 1, 1)
    vox2vox = np.diag([1.0, 1, 1, 1])
    vox2vox[0, 3] = -1.5  # target x -> x - 1.5
    out = geometry.interpolate(source, vox2vox, (6, 1, 1), method="nearest", fill=-1)
    # x=0 -> -1.5 (outside), x=1 -> -0.5 (outside), x=2 -> 0.5 -> 1, x=5 -> 3.5 -> 4 == n -> n-1
    assert out[:, 0, 0].tolist() == [-1, -1, 1, 2, 3, 3]


def test_linear_repeats_the_last_voxel_and_weights_by_distance():
    source = np.array([0.0, 10.0, 20.0], dtype=np.float32).reshape(3, 1, 1)
    vox2vox = np.diag([0.5, 1, 1, 1])
    out = geometry.interpolate(source, vox2vox, (6, 1, 1), method="linear")
    np.testing.assert_allclose(out[:, 0, 0], [0, 5, 10, 15, 20, 20])


def test_bounding_box_with_margin_and_empty():
    mask = np.zeros((10, 10, 10), bool)
    mask[3:5, 6, 9] = True
    assert geometry.bounding_box(mask, 2) == (slice(1, 7), slice(4, 9), slice(7, 10))
    assert geometry.bounding_box(np.zeros((3, 4, 5), bool), 2) == (slice(0, 3), slice(0, 4), slice(0, 5))


# ---------------------------------------------------------------------------------- posteriors

def test_clean_posteriors_keeps_each_label_near_its_voxels_only():
    posteriors = np.full((7, 7, 7, 3), 0.2, dtype=np.float32)
    posteriors[..., 0] = 0.6
    seg = np.zeros((7, 7, 7), dtype=np.int64)
    seg[3, 3, 3] = 1
    cleaned = clean_posteriors(posteriors.copy(), seg)
    # label 1 survives at the voxel and its 6 face neighbours, not at a corner neighbour
    assert cleaned[3, 3, 3, 1] > 0 and cleaned[2, 3, 3, 1] > 0 and cleaned[3, 3, 4, 1] > 0
    assert cleaned[2, 2, 3, 1] == 0 and cleaned[0, 0, 0, 1] == 0
    # label 2 never wins, so it is removed everywhere; background takes up the rest
    assert np.all(cleaned[..., 2] == 0)
    np.testing.assert_allclose(cleaned.sum(-1), 1, atol=1e-6)
    np.testing.assert_allclose(cleaned[0, 0, 0], [1, 0, 0])
    np.testing.assert_allclose(cleaned[3, 3, 3], [0.8, 0.2, 0], atol=1e-6)


def test_clean_posteriors_clips_negative_background_and_renormalises():
    posteriors = np.zeros((3, 3, 3, 3), dtype=np.float32)
    posteriors[..., 1] = 0.7
    posteriors[..., 2] = 0.6
    seg = np.ones((3, 3, 3), dtype=np.int64)
    seg[1, 1, 1] = 2
    cleaned = clean_posteriors(posteriors, seg)
    # at the centre both labels survive: background 1 - 1.3 < 0 -> 0, then renormalised
    np.testing.assert_allclose(cleaned[1, 1, 1], [0, 0.7 / 1.3, 0.6 / 1.3], rtol=1e-6)
    assert cleaned.min() >= 0


# ---------------------------------------------------------------------------------- names and stats

def test_names_match_despite_old_ctab_spellings():
    stats = {"Left-Nucleus-Accumbens": 1, "Left-MammillaryBody": 2, "Right-SeptalNuc": 3}
    assert match_name("Left-Nucleas-Accumbens", stats) == 1
    assert match_name("Left-MammilliaryBody", stats) == 2
    assert match_name("right_septalnuc", stats) == 3
    assert match_name("Right-Nucleas-Accumbens", stats) is None
    assert canonical_name("Left-Nucleas-Accumbens") == canonical_name("left nucleus accumbens")


def test_population_stats_and_z_scores(tmp_path):
    path = tmp_path / "volstats.csv"
    path.write_text(VOLSTATS)
    population = read_population_stats(path)
    assert population["Left-MammillaryBody"] == PopulationStat(48.2051, 11.4459)
    scores = z_scores({"Left-Nucleas-Accumbens": 494.4649, "Left-MammilliaryBody": 48.2051, "Other": 3.0}, population)
    assert scores == pytest.approx({"Left-Nucleas-Accumbens": 1.0, "Left-MammilliaryBody": 0.0})
    bad = tmp_path / "bad.csv"
    bad.write_text("name,average\nx,1\n")
    with pytest.raises(InputError, match="VolStat_mm3"):
        read_population_stats(bad)


def test_stats_file_round_trip_and_reference_layout(tmp_path):
    rows = [StatsRow(26, 121, 635.7156, "Left-Nucleus-Accumbens"),
            StatsRow(821, 325947, 657937.4375, "Left-Fornix"),
            StatsRow(870, 0, 12714.8037, "Right-SeptalNuc")]
    text = format_stats(rows, etiv=1543210.123456)
    path = tmp_path / "a.stats"
    path.write_text(text)
    read_rows, measures = read_stats(path)
    assert read_rows == rows
    assert measures == {"eTIV": pytest.approx(1543210.123456)}
    lines = text.splitlines()
    assert lines[0] == "# Subcortical Limbic Volumetric Stats"
    assert "# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, 1543210.123456, mm^3" in lines
    assert "# ColHeaders Index SegId NVoxels Volume_mm3 StructName" in lines
    # small numbers: byte-identical to the reference's row layout
    assert lines[-3] == "1        26   121    635.7156    Left-Nucleus-Accumbens"
    # large counts stay separated (the reference writes 821325947)
    assert lines[-2].split()[1:3] == ["821", "325947"]
    # the reader accepts the reference's run-together columns
    reference = tmp_path / "ref.stats"
    reference.write_text("# ColHeaders Index SegId NVoxels Volume_mm3 StructName\n"
                         "5       821325947 657937.4375    Left-Fornix\n")
    assert read_stats(reference)[0] == [StatsRow(821, 325947, 657937.4375, "Left-Fornix")]


def test_case_csv_round_trip(tmp_path):
    text = format_case_csv(["A", "B"], {"case1": [1.23456, 0.0], "case2": [-2.0, None]})
    assert text.splitlines() == ["case,A,B", "case1,1.2346,0.0000", "case2,-2.0000,"]
    path = tmp_path / "t.csv"
    path.write_text(text)
    columns, rows = read_case_csv(path)
    assert columns == ["A", "B"] and rows["case2"] == [-2.0, None]


# ---------------------------------------------------------------------------------- eTIV

XFM = """MNI Transform File
% avi2talxfm

Transform_Type = Linear;
Linear_Transform =
 0.9 0.1 0.0 -2.0
 0.0 1.0 0.0 3.5
 0.0 0.0 1.1 4.0;
"""


def test_etiv_from_xfm_is_the_scale_factor_over_the_determinant(tmp_path):
    path = tmp_path / "talairach.xfm"
    path.write_text(XFM)
    matrix = read_xfm(path)
    np.testing.assert_allclose(matrix[:3, 3], [-2.0, 3.5, 4.0])
    assert etiv_from_transform_file(path) == pytest.approx(1e3 * ETIV_SCALE_FACTOR / (0.9 * 1.0 * 1.1))
    assert etiv_from_matrix(np.eye(4)) == pytest.approx(1948106.0)
    with pytest.raises(InputError):
        etiv_from_matrix(np.diag([1.0, 1.0, -1.0, 1.0]))


def _lta_text(matrix, kind, src_vox2ras=None, dst_vox2ras=None):
    def info(vox2ras, shape=(256, 256, 256)):
        sizes = np.sqrt((vox2ras[:3, :3] ** 2).sum(0))
        axes = vox2ras[:3, :3] / sizes
        centre = vox2ras[:3, :3] @ (np.array(shape) / 2) + vox2ras[:3, 3]
        return ("valid = 1  # volume info valid\nfilename = x.mgz\n"
                f"dimensions = {shape[0]} {shape[1]} {shape[2]}\n"
                f"voxelsize = {sizes[0]} {sizes[1]} {sizes[2]}\n"
                f"xras = {axes[0, 0]} {axes[1, 0]} {axes[2, 0]}\n"
                f"yras = {axes[0, 1]} {axes[1, 1]} {axes[2, 1]}\n"
                f"zras = {axes[0, 2]} {axes[1, 2]} {axes[2, 2]}\n"
                f"c_ras = {centre[0]} {centre[1]} {centre[2]}\n")
    rows = "\n".join(" ".join(f"{v:.10f}" for v in row) for row in matrix)
    text = f"type      = {kind}\nnxforms   = 1\nmean      = 0.0 0.0 0.0\nsigma     = 1.0\n1 4 4\n{rows}\n"
    if src_vox2ras is not None:
        text += "src volume info\n" + info(src_vox2ras) + "dst volume info\n" + info(dst_vox2ras)
    return text


def test_etiv_from_lta_ras2ras_and_vox2vox(tmp_path):
    ras2ras = np.array([[0.95, 0.02, 0, 1], [0, 1.05, 0.01, -2], [0, 0, 0.9, 3], [0, 0, 0, 1]])
    path = tmp_path / "ras.lta"
    path.write_text(_lta_text(ras2ras, 1))
    np.testing.assert_allclose(read_lta(path), ras2ras)
    # the same transform stored vox2vox between a 1 mm LIA source and a 2 mm RAS target
    src = np.array([[-1.0, 0, 0, 128], [0, 0, 1, -128], [0, -1, 0, 128], [0, 0, 0, 1]])
    dst = np.diag([2.0, 2.0, 2.0, 1.0])
    dst[:3, 3] = -128
    vox2vox = np.linalg.inv(dst) @ ras2ras @ src
    path2 = tmp_path / "vox.lta"
    path2.write_text(_lta_text(vox2vox, 0, src, dst))
    np.testing.assert_allclose(read_lta(path2), ras2ras, atol=1e-6)
    assert etiv_from_transform_file(path2) == pytest.approx(1948106.0 / np.linalg.det(ras2ras[:3, :3]))


# ---------------------------------------------------------------------------------- command line

def write_random_model(folder, seed=3):
    """A ScLimbic-shaped Keras .h5 (random weights) with a 5-label ctab and stats beside it."""
    import h5py

    from segsuite.nets.unet import KerasUNet
    from torch import nn

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sclimbic.ctab").write_text(CTAB)
    (folder / "sclimbic.volstats.csv").write_text(VOLSTATS)
    rng = np.random.default_rng(seed)
    network = KerasUNet("unet", 1, 5, n_levels=3, n_features=24)
    path = folder / "sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5"
    with h5py.File(path, "w") as handle:
        names = list(network.keras_layers())
        handle.attrs["layer_names"] = [n.encode() for n in names]
        for name, module in network.keras_layers().items():
            group = handle.create_group(name)
            if isinstance(module, nn.Conv3d):
                out_c, in_c, *k = module.weight.shape
                bound = np.sqrt(6 / (in_c * np.prod(k) + out_c))
                values = {"kernel": rng.uniform(-bound, bound, (*k, in_c, out_c)),
                          "bias": rng.uniform(-0.1, 0.1, out_c)}
            else:
                n = module.num_features
                values = {"gamma": rng.uniform(0.8, 1.2, n), "beta": rng.uniform(-0.1, 0.1, n),
                          "moving_mean": rng.uniform(-0.1, 0.1, n), "moving_variance": rng.uniform(0.5, 1.5, n)}
            group.attrs["weight_names"] = [f"{name}/{v}:0".encode() for v in values]
            for variable, value in values.items():
                group.create_dataset(f"{name}/{variable}:0", data=value.astype(np.float32))
    return path


def brain_like(shape=(30, 34, 28), voxel=1.0, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    data = 100 * np.exp(-(grid ** 2).sum(0) * 2) + rng.normal(0, 5, shape)
    affine = np.array([[-voxel, 0, 0, 15], [0, 0, voxel, -17], [0, -voxel, 0, 14], [0, 0, 0, 1.0]])
    return np.clip(data, 0, None).astype(np.float32), affine


@pytest.fixture
def model(tmp_path):
    return write_random_model(tmp_path / "model")


def run_cli(*argv):
    return main(["--progress", "none", "sclimbic", "--fov", "32", "--threads", "1", *map(str, argv)])


def test_subject_mode_writes_mri_and_stats_with_etiv(tmp_path, model, capsys):
    subjects = tmp_path / "subjects"
    for name in ("bert", "ernie"):
        (subjects / name / "mri" / "transforms").mkdir(parents=True)
        (subjects / name / "stats").mkdir()
        data, affine = brain_like(seed=len(name))
        nib.save(nib.MGHImage(data, affine), subjects / name / "mri" / "nu.mgz")
        (subjects / name / "mri" / "transforms" / "talairach.xfm").write_text(XFM)
    status = run_cli("--s", "--sd", subjects, "--model", model, "--write_posteriors", "--write_qa_stats", "--etiv")
    assert status == 0, capsys.readouterr().err
    for name in ("bert", "ernie"):
        seg = nib.load(subjects / name / "mri" / "sclimbic.mgz")
        assert seg.shape == (30, 34, 28)
        np.testing.assert_allclose(seg.affine, brain_like()[1])
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 26, 58, 853, 843}
        assert nib.load(subjects / name / "mri" / "sclimbic.posteriors.mgz").shape[-1] == 5
        rows, measures = read_stats(subjects / name / "stats" / "sclimbic.stats")
        assert [r.seg_id for r in rows] == [26, 58, 843]  # 853 excluded by default
        assert measures["eTIV"] == pytest.approx(1948106 / 0.99, rel=1e-6)
        assert not (subjects / name / "stats" / "sclimbic.qa.stats").exists()  # as the reference
    columns, volumes = read_case_csv(subjects / "sclimbic_volumes_all.csv")
    assert columns == ["Left-Nucleas-Accumbens", "Right-Nucleus-Accumbens", "Left-MammilliaryBody", "eTIV"]
    assert sorted(volumes) == ["bert", "ernie"]
    z_columns, _ = read_case_csv(subjects / "sclimbic_zqa_scores_all.csv")
    assert z_columns == ["Left-Nucleas-Accumbens", "Right-Nucleus-Accumbens", "Left-MammilliaryBody"]


def test_subject_mode_paths_and_errors(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from segsuite.commands.sclimbic import plan_subject_jobs
    from segsuite.errors import UsageError

    (tmp_path / "s1" / "mri" / "transforms").mkdir(parents=True)
    (tmp_path / "s1" / "mri" / "nu.mgz").write_bytes(b"")
    (tmp_path / "s1" / "mri" / "transforms" / "talairach.xfm.lta").write_text("")
    (tmp_path / "s2" / "mri").mkdir(parents=True)
    (tmp_path / "s2" / "mri" / "nu.mgz").write_bytes(b"")
    (tmp_path / "notasubject").mkdir()
    args = SimpleNamespace(sd=None, subjects=[], output_base="limbic", write_posteriors=False, tal=None, etiv=False)
    monkeypatch.setenv("SUBJECTS_DIR", str(tmp_path))
    jobs, prefix = plan_subject_jobs(args)
    assert [j.case for j in jobs] == ["s1", "s2"]
    assert jobs[0].segmentation == str(tmp_path / "s1" / "mri" / "limbic.mgz")
    assert jobs[0].stats == str(tmp_path / "s1" / "stats" / "limbic.stats")
    assert jobs[0].etiv == str(tmp_path / "s1" / "mri" / "transforms" / "talairach.xfm.lta")
    assert jobs[1].etiv is None  # no transform and no --etiv: no eTIV
    args.etiv = True
    assert plan_subject_jobs(args)[0][1].etiv == "register"  # --etiv without a transform: registration
    assert prefix == str(tmp_path / "limbic_")
    args.tal = "mri/transforms/other.xfm"
    assert plan_subject_jobs(args)[0][0].etiv == str(tmp_path / "s1" / "mri/transforms/other.xfm")
    args.subjects = ["missing"]
    with pytest.raises(InputError, match="missing"):
        plan_subject_jobs(args)
    monkeypatch.delenv("SUBJECTS_DIR")
    args.subjects = []
    with pytest.raises(UsageError, match="SUBJECTS_DIR"):
        plan_subject_jobs(args)


def test_single_file_mode_outputs_and_case_names(tmp_path, model):
    data, affine = brain_like()
    source = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), source)
    out = tmp_path / "out" / "t1.sclimbic.nii.gz"
    assert run_cli("--i", source, "--o", out, "--model", model, "--write_volumes", "--write_qa_stats") == 0
    assert out.exists() and (tmp_path / "out" / "t1.sclimbic.stats").exists()
    assert not (tmp_path / "out" / "t1.sclimbic.volumes_all.csv").exists()  # single file: no volumes CSV
    columns, rows = read_case_csv(tmp_path / "out" / "t1.sclimbic.confidences_all.csv")
    assert list(rows) == [str(tmp_path / "out" / "t1.sclimbic")]
    assert all(0 <= v <= 1 for v in rows[str(tmp_path / "out" / "t1.sclimbic")])
    # existing outputs are refused without --overwrite, accepted with it
    assert run_cli("--i", source, "--o", out, "--model", model) == 1
    assert run_cli("--i", source, "--o", out, "--model", model, "--overwrite") == 0


def test_keep_ac_and_exclude_change_the_stats_labels(tmp_path, model):
    from segsuite.sclimbic import ScLimbicEngine

    data, affine = brain_like()
    engine = ScLimbicEngine(model=model, keep_ac=True, exclude=[58], threads=1, fov=32)
    result = engine.segment((data, affine))
    assert list(result.volumes) == ["Left-Nucleas-Accumbens", "Mid-AntCom", "Left-MammilliaryBody"]
    assert set(result.qc) == set(result.volumes)  # the misspelt names still get z-scores
    assert result.labels.shape == data.shape and result.labels.dtype == np.int32
    engine = ScLimbicEngine(model=model, vox_count_volumes=True, threads=1, fov=32)
    result = engine.segment((data, affine))
    assert all(v == int(v) for v in result.volumes.values())
    counts = result.tables["voxel_counts"]
    assert all(result.volumes[n] == counts[n] for n in counts)


@pytest.mark.parametrize("case", ["two_mm", "four_d", "not_image", "blank"])
def test_bad_input_gives_a_clear_error_and_no_outputs(tmp_path, model, capsys, case):
    data, affine = brain_like()
    source = tmp_path / "input.nii.gz"
    if case == "two_mm":
        data, affine = brain_like(voxel=2.0)
        message = "--conform"
    elif case == "four_d":
        data = np.stack([data, data], axis=-1)
        message = "3D"
    elif case == "blank":
        data = np.zeros_like(data)
        message = "blank"
    if case == "not_image":
        source.write_bytes(b"this is not an image")
        message = "cannot read"
    else:
        nib.save(nib.Nifti1Image(data, affine), source)
    out = tmp_path / "out" / "seg.nii.gz"
    status = run_cli("--i", source, "--o", out, "--model", model, "--write_volumes", "--write_qa_stats")
    error = capsys.readouterr().err
    assert status == 1 and message in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_conform_accepts_two_mm_and_returns_the_input_grid(tmp_path, model):
    from segsuite.sclimbic import ScLimbicEngine

    data, affine = brain_like(shape=(16, 18, 14), voxel=2.0)
    engine = ScLimbicEngine(model=model, conform=True, threads=1, fov=32, posteriors=True)
    result = engine.segment((data, affine))
    assert result.labels.shape == data.shape
    np.testing.assert_allclose(result.affine, affine)
    assert result.posteriors.shape[-1] == 5
    np.testing.assert_allclose(np.sqrt((result.posteriors_affine[:3, :3] ** 2).sum(0)), 2.0)


def test_usage_errors_exit_2(tmp_path, model):
    assert run_cli("--model", model) == 2
    assert run_cli("--i", tmp_path, "--model", model) == 2
    assert run_cli("--i", tmp_path, "--o", tmp_path / "x", "--s", "a", "--model", model) == 2


def test_etiv_by_registration_follows_the_head_scale(tmp_path):
    """A synthetic 'template' and the same head scaled by known factors: eTIV scales with the volume."""
    from segsuite.sclimbic.registration import MNI305_TO_TEMPLATE_DET, etiv_by_registration

    shape = (64, 76, 64)
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
    radii = np.array([26.0, 32.0, 24.0])
    inside = ((grid / radii[:, None, None, None]) ** 2).sum(0)
    head = np.where(inside < 1, 80 + 30 * np.cos(grid[0] / 4) * np.cos(grid[1] / 5), 0).astype(np.float32)
    head[(inside > 0.5) & (inside < 0.6)] = 150  # an inner shell gives the fit some edges
    affine = np.eye(4)
    affine[:3, 3] = -np.array(shape) / 2
    nib.save(nib.Nifti1Image(head, affine), tmp_path / "template.nii.gz")
    reference = etiv_by_registration(head, affine, template=tmp_path / "template.nii.gz", threads=1)
    assert reference == pytest.approx(1e3 * ETIV_SCALE_FACTOR * MNI305_TO_TEMPLATE_DET, rel=0.01)
    scaled = np.diag([1.1, 0.95, 1.05, 1.0]) @ affine
    estimate = etiv_by_registration(head, scaled, template=tmp_path / "template.nii.gz", threads=1)
    assert estimate / reference == pytest.approx(1.1 * 0.95 * 1.05, rel=0.01)


def test_etiv_by_registration_is_bit_identical_between_identical_runs(shared):
    """ITK's multi-threaded metric made eTIV differ in the 7th digit between identical runs; on one
    thread (whatever ``threads`` asks) it is the same number every time."""
    from segsuite.sclimbic.registration import etiv_by_registration

    image = nib.load(str(shared("data", "t1", "t1_crop.nii.gz")))
    data = np.asarray(image.dataobj, dtype=np.float32)
    template = shared("data", "templates")
    runs = {etiv_by_registration(data, image.affine, template, threads=threads) for threads in (None, None, 2)}
    assert len(runs) == 1


def test_etiv_registration_without_a_template_says_what_to_do(monkeypatch):
    from segsuite.errors import ModelError
    from segsuite.sclimbic.registration import resolve_template

    monkeypatch.delenv("SEGSUITE_MNI_TEMPLATE", raising=False)
    with pytest.raises(ModelError, match="--etiv-template"):
        resolve_template("/nonexistent/template.nii.gz")
    monkeypatch.setitem(__import__("sys").modules, "segsuite.models", None)  # no model manager
    with pytest.raises(ModelError, match="--etiv-template"):
        resolve_template(None)


def test_model_files_default_beside_the_weights_and_from_freesurfer_home(tmp_path, model, monkeypatch):
    import sys

    from segsuite.errors import ModelError
    from segsuite.sclimbic import resolve_model_files

    weights, ctab, stats = resolve_model_files(model)
    assert ctab == model.parent / "sclimbic.ctab" and stats == model.parent / "sclimbic.volstats.csv"
    assert resolve_model_files(model.parent)[0] == model  # a folder with the standard names
    (model.parent / "sclimbic.ctab").unlink()
    with pytest.raises(ModelError, match="--ctab"):
        resolve_model_files(model)
    monkeypatch.setitem(sys.modules, "segsuite.models", None)  # no model manager installed
    home = tmp_path / "fs"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("FREESURFER_HOME", str(home))
    with pytest.raises(ModelError, match="--model"):
        resolve_model_files(None)
    for name in ("sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5", "sclimbic.ctab", "sclimbic.volstats.csv"):
        (home / "models" / name).write_text("x")
    assert resolve_model_files(None)[0] == home / "models" / "sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5"


def test_network_runs_without_tf32(model, monkeypatch):
    """cuDNN may run float32 convolutions as TF32 on GPUs; the network must run in IEEE float32."""
    from precision_helpers import ieee_state, record_tf32_state_in_networks, tf32_state

    from segsuite.sclimbic import ScLimbicEngine

    seen = record_tf32_state_in_networks(monkeypatch)
    before = tf32_state()
    data, affine = brain_like()
    ScLimbicEngine(model=model, threads=1, fov=32).segment((data, affine))
    assert seen and all(state == ieee_state() for state in seen)
    assert tf32_state() == before


def test_folder_input_keeps_the_good_outputs_and_reports_the_failed_images(tmp_path, model, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, voxel, blank in (("a_good", 1.0, False), ("b_two_mm", 2.0, False), ("c_blank", 1.0, True)):
        data, affine = brain_like(voxel=voxel)
        nib.save(nib.Nifti1Image(np.zeros_like(data) if blank else data, affine), inputs / f"{name}.nii.gz")
    out = tmp_path / "out"
    status = run_cli("--i", inputs, "--o", out, "--model", model, "--write_volumes")
    error = capsys.readouterr().err
    assert status == 1 and "2 of 3 images failed" in error and "Traceback" not in error, error
    assert f"segsuite sclimbic: {inputs / 'b_two_mm.nii.gz'}: the input has 2.00 x 2.00 x 2.00 mm voxels" in error
    assert f"segsuite sclimbic: {inputs / 'c_blank.nii.gz'}: the input image is blank" in error
    assert sorted(p.name for p in out.iterdir()) == ["a_good.sclimbic.nii.gz", "a_good.sclimbic.stats",
                                                      "sclimbic_volumes_all.csv"]
    rows = (out / "sclimbic_volumes_all.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("a_good,")
