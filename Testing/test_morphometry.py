"""Morphometry: tissue maps, spec SNR/CNR, MRIQC-style metrics, group TIV corrections, CLI on real data."""

from __future__ import annotations

import numpy as np
import pytest

from segsuite.cli import main
from segsuite.labels import freesurfer_lut
from segsuite.morphometry import group, quality, tissues
from segsuite.morphometry.subject import compute_morphometry
from segsuite.result import SegmentationResult
from segsuite.synthseg import labels as synthseg_labels


def _phantom(shape=(60, 60, 60), seed=0, noise=4.0, gm_mean=60.0, wm_mean=110.0):
    """A head: air with noise, a scalp shell, a GM shell around a WM core; known means and noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float64) - (np.array(shape)[:, None, None, None] - 1) / 2
    radius = np.sqrt((grid ** 2).sum(axis=0))
    labels = np.zeros(shape, dtype=np.int32)
    labels[radius < 20] = 3     # cortex (GM)
    labels[radius < 14] = 2     # white matter
    labels[(radius < 8) & (grid[0] > 0)] = 4  # a ventricle (CSF)
    image = rng.normal(0, noise, shape)
    image[radius < 25] += 40    # scalp/skull
    image[labels == 3] = gm_mean + rng.normal(0, noise, (labels == 3).sum())
    image[labels == 2] = wm_mean + rng.normal(0, noise, (labels == 2).sum())
    image[labels == 4] = 20 + rng.normal(0, noise, (labels == 4).sum())
    return image.astype(np.float32), labels


def test_tissue_table_covers_every_synthseg_label():
    table = tissues.tissue_table()
    assert all(value in table for value in synthseg_labels.LABELS_V2 if value != 0)
    assert all(value in table for value in synthseg_labels.PARC_LABELS if value != 0)
    # fMRIPrep's classes for a few well-known labels
    assert (table[3], table[2], table[4], table[17], table[16], table[24]) == ("GM", "WM", "CSF", "GM", "WM", "CSF")
    with pytest.raises(Exception, match="tissue table line"):
        tissues.parse_tissue_table("label\ttissue\n2\tBONE\n")


def test_tissue_maps_sum_to_the_brain_posterior_mass():
    rng = np.random.default_rng(1)
    channel_labels = [int(v) for v in synthseg_labels.LABELS_V2]
    logits = rng.normal(size=(12, 10, 8, len(channel_labels))).astype(np.float32)
    posteriors = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    maps, unknown = tissues.tissue_maps_from_posteriors(posteriors, channel_labels)
    assert unknown == []
    total = maps["GM"] + maps["WM"] + maps["CSF"]
    assert np.max(np.abs(total - (1 - posteriors[..., 0]))) < 1e-5
    # each map is exactly its labels' sum
    gm_channels = [i for i, v in enumerate(channel_labels) if v and tissues.tissue_table()[v] == "GM"]
    assert np.allclose(maps["GM"], posteriors[..., gm_channels].sum(axis=-1), atol=1e-5)
    dseg = tissues.dseg_from_maps(maps)
    assert set(np.unique(dseg)) <= {0, 1, 2, 3}


def test_spec_snr_and_cnr_match_the_known_means_and_noise():
    image, labels = _phantom(noise=4.0, gm_mean=60.0, wm_mean=110.0)
    brain = labels > 0
    outside = image[~brain]
    # the spec's formula, evaluated with the phantom's known truth: mean brain / std outside
    expected_snr = image[brain].mean() / outside.std()
    assert quality.spec_snr(image, brain) == pytest.approx(expected_snr, rel=1e-6)
    # CNR: |60 - 110| / 4 by construction
    assert quality.spec_cnr(image, labels == 3, labels == 2) == pytest.approx(50 / 4.0, rel=0.01)
    # over air only (pure noise of sd 4, outside the scalp): mean brain / 4
    head, air = quality.head_and_air_masks(image, brain)
    assert quality.spec_snr(image, brain, air) == pytest.approx(image[brain].mean() / 4.0, rel=0.01)
    assert head[30, 30, 30] and not head[0, 0, 0] and air[0, 0, 0]


def test_mriqc_style_metrics_on_the_phantom():
    image, labels = _phantom(noise=4.0)
    maps, _ = tissues.tissue_maps_from_labels(labels)
    dseg = tissues.dseg_from_maps(maps)
    brain = dseg > 0
    head, air = quality.head_and_air_masks(image, brain)
    metrics, statistics = quality.image_quality_metrics(image, maps, dseg, brain, head, air)
    # every metric but those of the bias field and the smoothness (compute_morphometry adds them)
    assert set(metrics) == {key for key in quality.DEFINITIONS if not key.startswith(("mriqc_inu", "mriqc_fwhm"))}
    assert statistics["wm"]["median"] == pytest.approx(110, abs=1)
    assert statistics["gm"]["median"] == pytest.approx(60, abs=1)
    # cjv = (MAD_wm + MAD_gm) / |110 - 60| with Gaussian MADs of ~4
    assert metrics["mriqc_cjv"] == pytest.approx(8 / 50, rel=0.1)
    assert metrics["mriqc_snr_wm"] == pytest.approx(110 / 4, rel=0.1)
    noisier, _ = _phantom(noise=12.0)
    worse, _ = quality.image_quality_metrics(noisier, maps, dseg, brain, head, air)
    assert worse["mriqc_snr_wm"] < metrics["mriqc_snr_wm"] and worse["mriqc_cjv"] > metrics["mriqc_cjv"]


def test_histogram_statistics_equal_the_voxelwise_definitions():
    """An integer-valued image takes the histogram path (medians, percentiles, sums by intensity); it must
    give what the voxel-wise definitions give on the same arrays."""
    image, labels = _phantom(noise=6.0)
    image = np.round(np.clip(image, 0, None) * 3)  # integer-valued, a few hundred distinct values
    maps, _ = tissues.tissue_maps_from_labels(labels)
    maps["GM"] = maps["GM"] * np.float32(0.8)  # fractional weights for the weighted statistics
    dseg = tissues.dseg_from_maps(maps)
    brain = dseg > 0
    head, air = quality.head_and_air_masks(image, brain)
    metrics, statistics = quality.image_quality_metrics(image, maps, dseg, brain, head, air)
    expected = {"spec_snr": quality.spec_snr(image, brain), "spec_snr_air": quality.spec_snr(image, brain, air),
                "spec_cnr": quality.spec_cnr(image, dseg == 1, dseg == 2), "mriqc_efc": quality.mriqc_efc(image),
                "mriqc_fber": quality.mriqc_fber(image, head),
                "mriqc_wm2max": quality.mriqc_wm2max(image.astype(np.float64), statistics["wm"]["median"])}
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-9), name
    # maps in another memory layout (as SynthSeg's channel-first posteriors give them): the same numbers
    for flip in (slice(None), slice(None, None, -1)):  # axes permuted; and one of them reversed too
        relaid = {name: np.ascontiguousarray(np.transpose(m, (2, 0, 1))[flip])[flip].transpose(1, 2, 0)
                  for name, m in maps.items()}
        assert not relaid["GM"].flags.c_contiguous and np.array_equal(relaid["GM"], maps["GM"])
        again, again_statistics = quality.image_quality_metrics(image, relaid, dseg, brain, head, air)
        assert again == pytest.approx(metrics, rel=1e-12)
        assert all(again_statistics[t] == pytest.approx(statistics[t], rel=1e-12) for t in statistics)
    voxelwise = {"csf": maps["CSF"], "gm": maps["GM"], "wm": maps["WM"], "bg": air.astype(np.uint8)}
    for tissue, probability in voxelwise.items():
        assert statistics[tissue] == pytest.approx(quality.tissue_statistics(image, probability), rel=1e-9), tissue


def test_a_class_the_segmentation_lacks_gives_nan_not_an_error():
    image, labels = _phantom(noise=4.0)
    image = np.round(np.clip(image, 0, None))
    labels[labels == 3] = 2  # no grey matter left
    maps, _ = tissues.tissue_maps_from_labels(labels)
    dseg = tissues.dseg_from_maps(maps)
    head, air = quality.head_and_air_masks(image, dseg > 0)
    metrics, statistics = quality.image_quality_metrics(image, maps, dseg, dseg > 0, head, air)
    assert np.isnan(metrics["spec_cnr"]) and np.isnan(statistics["gm"]["median"])
    assert np.isfinite(metrics["spec_snr"]) and np.isfinite(metrics["mriqc_snr_wm"])


def test_head_and_air_masks_on_the_head_box_equal_the_whole_volume_morphology():
    """The closing, hole filling and dilation run on the head's bounding box; the masks must equal the
    same operations on the whole volume, also where the head touches the volume's edge."""
    from scipy import ndimage

    image, labels = _phantom(noise=4.0)
    image, labels = image[:, 8:, :], labels[:, 8:, :]  # the scalp now reaches one face of the volume
    for padding in (0, 20):
        padded = np.pad(image, ((0, 0), (0, 0), (padding, 0)))
        brain = np.pad(labels, ((0, 0), (0, 0), (padding, 0))) > 0
        head, air = quality.head_and_air_masks(padded, brain)
        sample = padded[::2, ::2, ::2]
        bright = (padded > quality.otsu_threshold(sample[sample > sample.min()])) | brain
        components, _ = ndimage.label(bright)
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        keep = np.isin(components, np.union1d([np.argmax(sizes)], np.unique(components[brain])))
        expected_head = ndimage.binary_fill_holes(ndimage.binary_closing(keep, iterations=2) | keep)
        assert np.array_equal(head, expected_head), padding
        assert np.array_equal(air, ~ndimage.binary_dilation(expected_head, iterations=2)), padding
        assert head[:, 0, :].any() and air[0, 0, 0]


def test_weighted_quantiles_follow_the_sas_definition():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    assert quality.weighted_quantiles(values, np.ones(4), [0.5])[0] == 2.5  # exact hit: halfway
    assert quality.weighted_quantiles(values, np.array([1, 1, 1, 5.0]), [0.5])[0] == 4.0
    assert quality.weighted_quantiles(values, np.array([0, 0, 1, 0.0]), [0.05, 0.95]).tolist() == [3.0, 3.0]


def test_compute_morphometry_on_a_result_with_posteriors():
    image, labels = _phantom()
    channel_labels = [0, 2, 3, 4]
    posteriors = np.stack([(labels == v).astype(np.float32) for v in channel_labels], axis=-1)
    posteriors = 0.9 * posteriors + 0.025  # soft, still summing to 1
    result = SegmentationResult(labels=labels, affine=np.eye(4), label_table=freesurfer_lut().subset([0, 2, 3, 4]),
                                posteriors=posteriors, posterior_labels=channel_labels, qc={"general grey matter": 0.9},
                                measures={"total intracranial": 12345.0}, subject="phantom")
    morphometry = compute_morphometry((image, np.eye(4)), result)
    total = sum(morphometry.tissue_maps[t] for t in tissues.TISSUES)
    assert np.max(np.abs(total - (1 - posteriors[..., 0]))) < 1e-5
    # TIV: the non-background channels' posterior mass, whatever total the engine reported (the files lack it)
    assert morphometry.tiv == pytest.approx(float(np.sum(posteriors[..., 1:], dtype=np.float64)), rel=1e-9)
    assert morphometry.tiv_source == "sum of the GM, WM and CSF maps"
    assert morphometry.volumes["tissue-GM"] == pytest.approx(posteriors[..., 2].sum(), rel=1e-6)
    row = morphometry.table_row("sub-1", "01")
    assert row["participant_id"] == "sub-1" and row["qc_general grey matter"] == 0.9 and "spec_snr" in row
    assert set(quality.DEFINITIONS) <= set(row)
    result.measures["eTIV"] = 999.0
    assert compute_morphometry((image, np.eye(4)), result).tiv == 999.0


def test_tiv_corrections_equal_a_direct_numpy_computation():
    rng = np.random.default_rng(7)
    n = 50
    tiv = rng.uniform(1.2e6, 1.8e6, n)
    slope, intercept = 0.003, 500.0
    hippocampus = intercept + slope * tiv + rng.normal(0, 50, n)
    import pandas as pd

    table = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(n)], "session_id": "",
                          "TIV": tiv, "Left-Hippocampus": hippocampus, "qc_general grey matter": rng.uniform(0.7, 1, n),
                          "spec_snr": rng.normal(20, 1, n)})
    table.loc[3, "qc_general grey matter"] = 0.4
    table.loc[5, "spec_snr"] = 60.0
    tables = group.build_group_tables(table)
    assert np.allclose(tables.proportional["Left-Hippocampus"], hippocampus / tiv * 1.5e6)
    fitted_slope, fitted_intercept = np.polyfit(tiv, hippocampus, 1)
    fit = tables.residual_fit.set_index("region").loc["Left-Hippocampus"]
    assert fit["slope"] == pytest.approx(fitted_slope, rel=1e-9)
    assert fit["intercept"] == pytest.approx(fitted_intercept, rel=1e-9)
    assert fit["slope"] == pytest.approx(slope, rel=0.1)
    assert np.allclose(tables.residual["Left-Hippocampus"], hippocampus - (fitted_intercept + fitted_slope * tiv))
    flagged = tables.ranking[tables.ranking["n_flags"] > 0]["participant_id"].tolist()
    assert set(flagged) == {"sub-03", "sub-05"} and tables.ranking["participant_id"].iloc[:2].tolist() == flagged
    assert "SynthSeg QC" in tables.flags.set_index("participant_id").loc["sub-03", "reasons"]


def test_morphometry_and_group_cli_on_a_real_scan(shared, tmp_path, capsys):
    folder = shared("data", "samseg", "t1_crop_2mm")
    image, seg = str(folder / "mode01_bias_corrected.mgz"), str(folder / "seg.mgz")
    tables = []
    for number in (1, 2, 3):
        out = tmp_path / f"sub-{number}"
        assert main(["morphometry", "--i", image, "--seg", seg, "--o", str(out), "--prefix", f"sub-{number}"]) == 0
        tables.append(str(out / f"sub-{number}_morphometry.tsv"))
    outputs = sorted(p.name for p in (tmp_path / "sub-1").iterdir())
    assert outputs == sorted(["sub-1_label-GM_probseg.nii.gz", "sub-1_label-WM_probseg.nii.gz",
                              "sub-1_label-CSF_probseg.nii.gz", "sub-1_dseg.nii.gz", "sub-1_dseg.tsv",
                              "sub-1_desc-brain_mask.nii.gz", "sub-1_morphometry.tsv", "sub-1_morphometry.json",
                              "sub-1_aseg.stats", "sub-1_desc-qc_mosaic.webp"])
    import nibabel as nib

    dseg = np.asarray(nib.load(str(tmp_path / "sub-1" / "sub-1_dseg.nii.gz")).dataobj)
    samseg = np.asarray(nib.load(seg).dataobj)
    assert np.all(dseg[samseg == 2] == 2) and np.all(dseg[samseg == 3] == 1) and np.all(dseg[samseg == 4] == 3)
    # existing outputs need consent; nothing is half-written
    assert main(["morphometry", "--i", image, "--seg", seg, "--o", str(tmp_path / "sub-1"), "--prefix", "sub-1"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["group", *tables, "--o", str(tmp_path / "group"), "--report"]) == 0
    wide = (tmp_path / "group" / "group_volumes.tsv").read_text().splitlines()
    assert wide[0].startswith("participant_id\tsession_id\tTIV\t") and len(wide) == 4
    from segsuite.review.page import read_page_data

    data = read_page_data(tmp_path / "group" / "group_qc_report.html")
    assert sorted(s["p"] for s in data["subjects"]) == ["sub-1", "sub-2", "sub-3"]
    assert all(len(s["views"]) == 1 and set(s["views"][0]["f"]) == {"base", "fill", "outline"} for s in data["subjects"])
    assert all((tmp_path / "group" / path).is_file() for s in data["subjects"] for path in s["views"][0]["f"].values())


def test_morphometry_cli_errors_are_one_line(tmp_path, capsys):
    image = tmp_path / "image.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(image))
    assert main(["morphometry", "--i", str(image), "--seg", str(image), "--o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "no brain voxel" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def _counted_rows(path):
    lines = path.read_text().splitlines()
    measures = sum(1 for line in lines if line.startswith("# Measure "))
    rows = sum(1 for line in lines if line.strip() and not line.startswith("#"))
    return measures, rows


def test_stats_reader_keeps_every_row_and_header_measure_of_real_freesurfer_files(shared, tmp_path):
    from segsuite.morphometry import stats_io

    folder = shared("data", "freesurfer", "stats_soichi")
    files = sorted(folder.glob("*.stats"))
    assert {p.name for p in files} >= {"aseg.stats", "brainvol.stats", "wmparc.stats", "lh.aparc.stats",
                                       "rh.aparc.a2009s.stats", "lh.aparc.DKTatlas.stats"}
    table = stats_io.tidy_table(files)
    for path in files:
        measures, rows = _counted_rows(path)
        part = table[table["file"] == str(path)]
        assert (part["kind"] == "measure").sum() == measures and (part["kind"] == "structure").sum() == rows, path.name
    aseg = table[(table["atlas"] == "aseg") & (table["region"] == "Left-Hippocampus")].iloc[0]
    assert aseg["volume_mm3"] == pytest.approx(float(aseg["Volume_mm3"])) and aseg["SegId"] == 17
    bankssts = table[(table["atlas"] == "aparc") & (table["hemi"] == "lh") & (table["region"] == "bankssts")].iloc[0]
    assert (bankssts["volume_mm3"], bankssts["thickness_mm"], bankssts["surface_area_mm2"]) == (1536.0, 2.144, 732.0)
    assert set(table["atlas"]) == {"aseg", "brainvol", "wmparc", "aparc", "aparc.a2009s", "aparc.DKTatlas"}
    etiv = table[(table["region"] == "eTIV") & (table["atlas"] == "aseg")]["value"].iloc[0]
    assert etiv == pytest.approx(1420434.160521)
    # the CLI writes the same table
    out = tmp_path / "tidy.tsv"
    assert main(["stats2table", *map(str, files), "--o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == len(table) + 1


def test_aseg_stats_writer_round_trips_through_the_reader(tmp_path):
    from segsuite.morphometry import stats_io

    image, labels = _phantom()
    result = SegmentationResult(labels=labels, affine=np.diag([1.0, 1.0, 1.0, 1.0]),
                                label_table=freesurfer_lut().subset([0, 2, 3, 4]), subject="phantom")
    morphometry = compute_morphometry((image, np.eye(4)), result)
    path = tmp_path / "aseg.stats"
    path.write_text(stats_io.aseg_stats_text(morphometry, result))
    stats = stats_io.read_stats(path)
    assert stats.subject == "phantom" and stats.columns == ["Index", "SegId", "NVoxels", "Volume_mm3", "StructName"]
    by_name = {row["StructName"]: row for row in stats.rows}
    for value, name in ((2, "Left-Cerebral-White-Matter"), (3, "Left-Cerebral-Cortex"), (4, "Left-Lateral-Ventricle")):
        assert by_name[name]["SegId"] == value and by_name[name]["NVoxels"] == int((labels == value).sum())
        assert by_name[name]["Volume_mm3"] == pytest.approx(morphometry.volumes[name], abs=1e-4)
    measures = {m.name: m for m in stats.measures}
    # the TIV here is the tissue maps' sum: named as that (tmTIV), never as FreeSurfer's eTIV
    assert measures["tmTIV"].value == pytest.approx(morphometry.tiv, abs=1e-6) and measures["tmTIV"].unit == "mm^3"
    assert "eTIV" not in measures
    # and the group step reads it through stats2table's tidy table
    tidy = tmp_path / "tidy.tsv"
    assert main(["stats2table", str(path), "--o", str(tidy)]) == 0
    frame = group.read_subject_tables([tidy])
    assert frame.loc[0, "TIV"] == pytest.approx(morphometry.tiv, abs=1e-6)
    assert frame.loc[0, "Left-Cerebral-Cortex"] == pytest.approx(morphometry.volumes["Left-Cerebral-Cortex"], abs=1e-4)



def test_tissue_maps_from_reversed_channel_first_posteriors_equal_the_channel_sums():
    """SynthSeg's posteriors are a channel-first array seen as (X, Y, Z, C) through flips and transposes;
    the maps are summed in the channels' memory direction, and must equal adding the channels in order."""
    rng = np.random.default_rng(3)
    channel_labels = [int(v) for v in synthseg_labels.LABELS_V2]
    channel_first = rng.random((len(channel_labels), 9, 11, 13), dtype=np.float32)
    view = np.moveaxis(channel_first, 0, -1)[::-1, :, ::-1].transpose(0, 2, 1, 3)  # axes reversed and permuted
    assert any(stride < 0 for stride in view.strides)
    maps, _ = tissues.tissue_maps_from_posteriors(view, channel_labels)
    table = tissues.tissue_table()
    for tissue in tissues.TISSUES:
        members = [i for i, v in enumerate(channel_labels) if v and table[v] == tissue]
        expected = np.zeros(view.shape[:3], dtype=np.float32)
        for index in members:  # float32, in the table's order
            expected = expected + view[..., index]
        assert np.array_equal(maps[tissue], expected), tissue
        assert np.allclose(maps[tissue], view[..., members].sum(axis=-1, dtype=np.float64), rtol=0, atol=1e-5)
        assert all(stride > 0 for stride in maps[tissue].strides)


@pytest.mark.parametrize("layout", ["C", "F", "reversed", "box"])
def test_cross_dilation_and_erosion_equal_scipy(layout):
    from scipy import ndimage

    rng = np.random.default_rng(5)
    mask = ndimage.gaussian_filter(rng.random((30, 34, 38)), 1.5) > 0.5
    mask[0, 3:9, 4:10] = True  # on a face: eroded there (border value 0)
    mask = {"C": mask, "F": np.asfortranarray(mask), "reversed": np.asfortranarray(mask)[::-1, :, ::-1],
            "box": mask[2:, 1:-3, ::2]}[layout]
    for iterations in (1, 2, 3):
        assert np.array_equal(quality.binary_dilation_cross(mask, iterations),
                              ndimage.binary_dilation(mask, iterations=iterations)), iterations
        assert np.array_equal(quality.binary_erosion_cross(mask, iterations),
                              ndimage.binary_erosion(mask, iterations=iterations)), iterations
    assert np.array_equal(quality.binary_dilation_cross(mask, 0), mask)


def test_tissue_cores_counted_with_the_masks_equal_their_own_histograms(monkeypatch):
    """The MAD's core voxels (above half each map's maximum) are counted in the masks' joint histogram;
    without room for them there, each tissue gathers its own: both give the same statistics."""
    image, labels = _phantom(noise=6.0)
    image = np.round(np.clip(image, 0, None) * 3)
    maps, _ = tissues.tissue_maps_from_labels(labels)
    maps["GM"] = maps["GM"] * np.float32(0.8)
    maps["WM"][labels == 2] = np.random.default_rng(2).uniform(0.2, 1.0, (labels == 2).sum()).astype(np.float32)
    dseg = tissues.dseg_from_maps(maps)
    head, air = quality.head_and_air_masks(image, dseg > 0)
    metrics, statistics = quality.image_quality_metrics(image, maps, dseg, dseg > 0, head, air)
    monkeypatch.setattr(quality, "JOINT_COUNT_LIMIT", 0)
    apart, apart_statistics = quality.image_quality_metrics(image, maps, dseg, dseg > 0, head, air)
    assert apart == metrics and apart_statistics == statistics
    for tissue in ("csf", "gm", "wm"):  # the MAD as its definition: median |x - median| / 0.6745 over the core
        probability = maps[tissue.upper()]
        core = image[probability > 0.5 * probability.max()].astype(np.float64)
        mad = np.median(np.abs(core - statistics[tissue]["median"])) / quality.GAUSSIAN_MAD_SCALE
        assert statistics[tissue]["mad"] == pytest.approx(round(mad, 4), abs=1e-12), tissue


def test_weighted_statistics_of_a_map_over_most_of_the_volume():
    """A map whose box holds over half the volume is histogrammed over the whole volume (its voxels outside
    the box weigh 0); that must equal the box's histogram (taken where negative values lie outside the
    box, which the box leaves out) and the voxel-wise definition."""
    image, _ = _phantom(noise=6.0)
    image = np.round(np.clip(image, 0, None) * 3)
    grid = np.indices(image.shape).astype(np.float32)
    probability = np.clip(1.2 - ((grid - 25) ** 2).sum(axis=0) / 2000, 0, 1).astype(np.float32)
    probability[:3] = 0  # outside the box
    box = quality.bounding_box(probability > 0)
    assert 2 * probability[box].size > probability.size and probability[box].min() == 0
    index = quality.IntensityIndex(image, exact=True, layout=probability)
    whole = quality.tissue_statistics(image, probability, index=index)
    negative_outside = probability.copy()
    negative_outside[:3] = -0.3
    boxed = quality.tissue_statistics(image, negative_outside, index=index)
    assert whole == boxed
    assert whole == pytest.approx(quality.tissue_statistics(image, probability), rel=1e-9)


def test_dseg_equals_the_argmax_of_background_and_tissues():
    """dseg_from_maps works in ~1 MiB slabs of the maps' slowest memory axis; it must equal numpy's argmax
    over (1 - GM - WM - CSF, GM, WM, CSF), ties included, in any layout."""
    rng = np.random.default_rng(4)
    shape = (300, 40, 41)  # 2 MB of float32: more than one slab
    maps = {tissue: (rng.integers(0, 4, shape) / 10).astype(np.float32) for tissue in tissues.TISSUES}  # many ties
    stack = np.stack([1.0 - (maps["GM"] + maps["WM"] + maps["CSF"])] + [maps[t] for t in tissues.TISSUES])
    expected = np.argmax(stack, axis=0)
    assert np.array_equal(tissues.dseg_from_maps(maps), expected)
    relaid = {name: np.asfortranarray(m[:, ::-1])[:, ::-1] for name, m in maps.items()}  # same values
    assert relaid["GM"].strides[1] < 0 and np.array_equal(relaid["GM"], maps["GM"])
    assert np.array_equal(tissues.dseg_from_maps(relaid), expected)


def test_the_image_copied_into_the_maps_layout_keeps_every_value():
    from segsuite.morphometry.subject import _in_layout_of

    rng = np.random.default_rng(6)
    image = np.asfortranarray(rng.integers(-5, 300, (70, 45, 66)).astype(np.int16))  # a NIfTI's layout
    maps_layout = np.moveaxis(np.zeros((3, 70, 66, 45), np.float32), 0, -1)[::-1, :, :, 0].transpose(0, 2, 1)
    for reference in (maps_layout, np.zeros((70, 45, 66), np.float32)):
        copied = _in_layout_of(reference, image, tile=16)  # tiles that do not divide the shape
        assert copied.dtype == np.float32 and np.array_equal(copied, image)
        assert sorted(copied.strides) == sorted(abs(s) for s in reference.strides)
        assert np.argsort(copied.strides).tolist() == np.argsort(np.abs(reference.strides)).tolist()


def test_an_image_too_wide_for_the_joint_count_takes_the_voxel_path(monkeypatch):
    """The masks' joint (intensity, code) count is bounded (an integer image spanning millions of values
    would need gigabytes): past the bound the metrics come from the voxels, with the same values up to
    float32 rounding (wm2max: 1.3e-8 relative)."""
    image, labels = _phantom(noise=6.0)
    image = np.round(np.clip(image, 0, None) * 3)
    maps, _ = tissues.tissue_maps_from_labels(labels)
    dseg = tissues.dseg_from_maps(maps)
    head, air = quality.head_and_air_masks(image, dseg > 0)
    metrics, statistics = quality.image_quality_metrics(image, maps, dseg, dseg > 0, head, air)
    counted = []
    original = np.bincount
    monkeypatch.setattr(quality.np, "bincount", lambda *a, **k: counted.append(k.get("minlength", 0)) or original(*a, **k))
    monkeypatch.setattr(quality, "JOINT_COUNT_MAX", 0)
    voxels, voxel_statistics = quality.image_quality_metrics(image, maps, dseg, dseg > 0, head, air)
    monkeypatch.undo()
    width = int(image.max() - image.min()) + 1
    assert not any(length >= 32 * width for length in counted)  # no joint count was built
    assert voxels == pytest.approx(metrics, rel=1e-6)
    assert all(voxel_statistics[t] == pytest.approx(statistics[t], rel=1e-6) for t in statistics)
