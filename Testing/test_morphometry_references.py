"""Our morphometry against the reference implementations: MRIQC's mriqc.qc.anatomical and PyPI freesurfer-stats.

Both need numpy < 2, so they live in their own environment (requirements-compat-tests.txt; .ci/run
builds it and runs this file there). Elsewhere these tests skip, saying which package is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from segsuite.morphometry import quality, stats_io, tissues

from test_morphometry import _phantom


def _cases(shared_dir):
    image, labels = _phantom(noise=5.0)
    yield "phantom", image, labels
    folder = shared_dir / "data" / "samseg" / "t1_crop_2mm"
    if folder.exists():
        import nibabel as nib

        yield ("t1_crop_2mm", np.asarray(nib.load(str(folder / "mode01_bias_corrected.mgz")).dataobj, dtype=np.float32),
               np.asarray(nib.load(str(folder / "seg.mgz")).dataobj).astype(np.int32))
    folder = shared_dir / "data" / "freesurfer"
    if folder.exists():
        import nibabel as nib

        yield ("mne_sample", np.asarray(nib.load(str(folder / "mne_sample_T1.mgz")).dataobj, dtype=np.float32),
               np.asarray(nib.load(str(folder / "mne_sample_aseg.mgz")).dataobj).astype(np.int32))


def test_image_quality_metrics_equal_mriqcs_own_functions(monkeypatch):
    anatomical = pytest.importorskip("mriqc.qc.anatomical", reason="MRIQC is not installed here "
                                     "(it needs numpy<2: see requirements-compat-tests.txt)")
    import logging

    # MRIQC's loggers exist only once its workflow set them up; snr_dietrich warns on a flat background
    monkeypatch.setattr(anatomical.config.loggers, "interface", logging.getLogger("mriqc.interface"), raising=False)
    from conftest import SHARED

    checked = 0
    for name, image, labels in _cases(SHARED):
        maps, _ = tissues.tissue_maps_from_labels(labels)
        dseg = tissues.dseg_from_maps(maps)
        brain = dseg > 0
        head, air = quality.head_and_air_masks(image, brain)
        ours, our_stats = quality.image_quality_metrics(image, maps, dseg, brain, head, air)
        data = np.clip(np.nan_to_num(image.astype(np.float64)), 0, None)
        pvms = {"csf": maps["CSF"], "gm": maps["GM"], "wm": maps["WM"], "bg": air.astype(np.uint8)}
        stats = anatomical.summary_stats(data, pvms)
        for tissue in ("csf", "gm", "wm", "bg"):
            for key in ("mean", "median", "p95", "p05", "stdv", "mad", "n"):
                assert our_stats[tissue][key] == pytest.approx(stats[tissue][key], rel=1e-6, abs=1e-12), (name, tissue, key)
        reference = {
            "mriqc_cnr": anatomical.cnr(stats["wm"]["median"], stats["gm"]["median"], stats["bg"]["stdv"],
                                        stats["wm"]["stdv"], stats["gm"]["stdv"]),
            "mriqc_cjv": anatomical.cjv(stats["wm"]["median"], stats["gm"]["median"], stats["wm"]["mad"], stats["gm"]["mad"]),
            "mriqc_efc": anatomical.efc(data),
            "mriqc_fber": anatomical.fber(data, head.astype(np.uint8)),
            "mriqc_wm2max": anatomical.wm2max(data, stats["wm"]["median"]),
        }
        for tissue in ("csf", "gm", "wm"):
            reference[f"mriqc_snr_{tissue}"] = anatomical.snr(stats[tissue]["median"], stats[tissue]["stdv"], stats[tissue]["n"])
            reference[f"mriqc_snrd_{tissue}"] = anatomical.snr_dietrich(stats[tissue]["median"], mad_air=stats["bg"]["mad"],
                                                                       sigma_air=stats["bg"]["stdv"])
        reference["mriqc_snr_total"] = float(np.mean([reference[f"mriqc_snr_{t}"] for t in ("csf", "wm", "gm")]))
        reference["mriqc_snrd_total"] = float(np.mean([reference[f"mriqc_snrd_{t}"] for t in ("csf", "wm", "gm")]))
        for key, value in reference.items():
            assert ours[key] == pytest.approx(value, rel=1e-6), (name, key)
        checked += 1
    assert checked >= 1


def test_aparc_readings_agree_with_freesurfer_stats(shared):
    freesurfer_stats = pytest.importorskip("freesurfer_stats", reason="PyPI freesurfer-stats is not installed here "
                                           "(it needs numpy<2 and pandas<2: see requirements-compat-tests.txt)")
    folder = shared("data", "freesurfer", "stats_soichi")
    files = sorted(folder.glob("?h.aparc*.stats"))
    assert len(files) == 6
    columns = {"NumVert": "number_of_vertices", "SurfArea": "surface_area_mm^2", "GrayVol": "gray_matter_volume_mm^3",
               "ThickAvg": "average_thickness_mm", "ThickStd": "thickness_stddev_mm",
               "MeanCurv": "integrated_rectified_mean_curvature_mm^-1",
               "GausCurv": "integrated_rectified_gaussian_curvature_mm^-2", "FoldInd": "folding_index",
               "CurvInd": "intrinsic_curvature_index"}
    for path in files:
        reference = freesurfer_stats.CorticalParcellationStats.read(str(path))
        ours = stats_io.read_stats(path)
        assert ours.hemisphere == {"left": "lh", "right": "rh"}[reference.hemisphere]
        assert ours.subject == reference.headers["subjectname"]
        structures = reference.structural_measurements
        assert [row["StructName"] for row in ours.rows] == list(structures["structure_name"])
        for column, their_column in columns.items():
            assert np.allclose([row[column] for row in ours.rows], structures[their_column].astype(float)), (path.name, column)
        whole = reference.whole_brain_measurements.iloc[0]
        by_name = {measure.name: measure.value for measure in ours.measures}
        assert by_name["eTIV"] == pytest.approx(whole["estimated_total_intracranial_volume_mm^3"])
        assert by_name["MeanThickness"] == pytest.approx(whole["mean_thickness_mm"])
        assert by_name["WhiteSurfArea"] == pytest.approx(whole["white_surface_total_area_mm^2"])
        # every measure they read is one of ours (we also keep the NumVert line they drop)
        values = sorted(measure.value for measure in ours.measures)
        assert all(np.isclose(values, float(value)).any() for value in whole.values)
        assert len(ours.measures) >= len(reference.whole_brain_measurements.columns)


def test_collected_freesurfer_5_to_7_aparc_files_agree_with_freesurfer_stats():
    """stats2table's reader against freesurfer-stats on the real FreeSurfer 5.3, 6.0, 7.0 and 7.4.1 files of
    Testing/fixtures/freesurfer_stats (FreeSurfer 6's comma-less CortexVol line included)."""
    freesurfer_stats = pytest.importorskip("freesurfer_stats", reason="PyPI freesurfer-stats is not installed here "
                                           "(it needs numpy<2 and pandas<2: see requirements-compat-tests.txt)")
    from pathlib import Path

    folder = Path(__file__).parent / "fixtures" / "freesurfer_stats"
    files = sorted(folder.glob("*/stats/?h.*.stats"))
    assert {path.parts[-3].split("_")[0] for path in files} == {"fs5.3", "fs6.0", "fs7.0", "fs7.4.1"}
    checked = 0
    for path in files:
        try:
            reference = freesurfer_stats.CorticalParcellationStats.read(str(path))
        except Exception as error:  # noqa: BLE001 - a file it cannot read is not a comparison
            print(f"freesurfer-stats cannot read {path.name}: {error}")
            continue
        warnings: list = []
        ours = stats_io.read_stats(path, warnings)
        assert warnings == []
        structures = reference.structural_measurements
        assert [row["StructName"] for row in ours.rows] == list(structures["structure_name"]), path
        assert np.allclose([row["GrayVol"] for row in ours.rows], structures["gray_matter_volume_mm^3"].astype(float))
        assert np.allclose([row["SurfArea"] for row in ours.rows], structures["surface_area_mm^2"].astype(float))
        values = [measure.value for measure in ours.measures]
        for column, value in reference.whole_brain_measurements.iloc[0].items():
            assert np.isclose(values, float(value)).any(), (path, column)
        if "total_cortical_gray_matter_volume_mm^3" in reference.whole_brain_measurements.columns:
            by_name = {measure.name: measure.value for measure in ours.measures}
            assert by_name["CortexVol"] == pytest.approx(
                float(reference.whole_brain_measurements["total_cortical_gray_matter_volume_mm^3"].iloc[0]))
        checked += 1
    assert checked >= 10
