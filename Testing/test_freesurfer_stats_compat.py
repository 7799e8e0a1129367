"""Our stats files as FreeSurfer's own tools read them, and stats2table on real FreeSurfer 5.3-7.4 files.

``freesurfer_rules_read`` applies the parsing rules of FreeSurfer's asegstats2table and aparcstats2table,
python/fsbindings/legacy.py of github.com/freesurfer/freesurfer (commit 21ca5cc3e66727f7c367789153a86fd20fb08d53):
  AsegStatsParser.parse  ``if line.rfind('#') == -1:`` a table row is any line without '#';
                         ``strlst = line.split()``; ``seg = strlst[1]``; ``self.id_name_map[seg] = strlst[4]``;
                         ``float(strlst[self.measure_column_map[measure]])`` with
                         ``measure_column_map = {'nvoxels':2, ..., 'volume':3, ...}``;
                         Measure lines by prefix, e.g. ``'# Measure EstimatedTotalIntraCranialVol, eTIV,'``,
                         ``strlst = line.split(',')``; ``float(strlst[3])``.
and of PyPI freesurfer-stats 1.2.1 (CorticalParcellationStats._parse_whole_brain_measurements_line):
  ``structure, name, description, value, unit = ... line.split(',')``: exactly five comma-separated fields.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segsuite.cli import main
from segsuite.labels import freesurfer_lut
from segsuite.morphometry import stats_io
from segsuite.morphometry.subject import compute_morphometry, write_morphometry
from segsuite.result import SegmentationResult
from segsuite.sclimbic.stats import StatsRow, format_stats

from test_morphometry import _phantom

FIXTURES = Path(__file__).parent / "fixtures" / "freesurfer_stats"
ETIV_PREFIX = "# Measure EstimatedTotalIntraCranialVol, eTIV,"   # legacy.py beg_struct_tuple
STIV_PREFIX = "# Measure SegmentedTotalIntraCranialVol, sTIV,"


def freesurfer_rules_read(path) -> tuple[dict, dict]:
    """(rows by SegId: (name, nvoxels, volume), Measure values by name) read as FreeSurfer's tools do."""
    rows, measures = {}, {}
    for line in Path(path).read_text().splitlines(keepends=True):
        if line.rfind("#") == -1:
            strlst = line.split()
            rows[strlst[1]] = (strlst[4], float(strlst[2]), float(strlst[3]))
        elif line.startswith("# Measure"):
            strlst = line.split(",")
            assert len(strlst) == 5, f"not five comma-separated fields: {line!r}"
            measures[strlst[1].strip()] = float(strlst[3])
    return rows, measures


def _write_inputs(folder: Path, labels: np.ndarray, image: np.ndarray) -> tuple[str, str]:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / "t1.nii.gz"))
    nib.save(nib.Nifti1Image(labels.astype(np.int32), np.eye(4)), str(folder / "seg.nii.gz"))
    return str(folder / "t1.nii.gz"), str(folder / "seg.nii.gz")


def test_default_aseg_stats_names_the_tissue_map_tiv_as_what_it_is(tmp_path):
    image, labels = _phantom()
    t1, seg = _write_inputs(tmp_path / "in", labels, image)
    assert main(["morphometry", "--i", t1, "--seg", seg, "--o", str(tmp_path / "out"), "--prefix", "sub-1"]) == 0
    path = tmp_path / "out" / "sub-1_aseg.stats"
    rows, measures = freesurfer_rules_read(path)
    text = path.read_text()
    assert ETIV_PREFIX not in text and STIV_PREFIX not in text  # no eTIV line for a TIV that is not one
    assert measures["tmTIV"] == pytest.approx(sum(measures[f"Total{t}Vol"] for t in ("GM", "WM", "CSF")), rel=1e-9)
    for value in (2, 3, 4):
        name, nvoxels, volume = rows[str(value)]
        assert name == freesurfer_lut().get(value).name and nvoxels == (labels == value).sum() == volume


def test_hand_given_etiv_is_freesurfers_etiv_line(tmp_path):
    image, labels = _phantom()
    t1, seg = _write_inputs(tmp_path / "in", labels, image)
    assert main(["morphometry", "--i", t1, "--seg", seg, "--etiv", "1523456.5", "--o", str(tmp_path / "out"),
                 "--prefix", "sub-1"]) == 0
    text = (tmp_path / "out" / "sub-1_aseg.stats").read_text()
    etiv_lines = [line for line in text.splitlines() if line.startswith(ETIV_PREFIX)]
    assert etiv_lines == ["# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, "
                          "1523456.500000, mm^3"]
    assert float(etiv_lines[0].split(",")[3]) == 1523456.5
    import json

    sidecar = json.loads((tmp_path / "out" / "sub-1_morphometry.json").read_text())
    assert sidecar["TIV_source"] == "eTIV (given by the user)" and "ScLimbic" not in text


def _parc_result() -> tuple[SegmentationResult, np.ndarray]:
    """A SynthSeg --parc result: the cortex (3) split into two parcels in the label map, while the
    posteriors keep a cortex channel (as SynthSeg's do), and SynthSeg's total intracranial volume."""
    image, labels = _phantom()
    channels = [int(value) for value in np.unique(labels)]
    posteriors = np.stack([(labels == value).astype(np.float32) for value in channels], axis=-1)
    cortex = labels == 3
    labels[cortex & (np.indices(labels.shape)[1] < 30)] = 1001
    labels[cortex & (np.indices(labels.shape)[1] >= 30)] = 1002
    table_values = sorted(set(channels) | {1001, 1002})
    result = SegmentationResult(labels=labels, affine=np.eye(4), label_table=freesurfer_lut().subset(table_values),
                                posteriors=posteriors, posterior_labels=channels,
                                measures={"total intracranial": 123456.75}, subject="sub-parc")
    return result, image


def test_parc_aseg_stats_rows_are_labels_of_the_map_and_the_cortex_a_measure(tmp_path):
    result, image = _parc_result()
    morphometry = compute_morphometry((image, np.eye(4)), result)
    paths = write_morphometry(morphometry, str(tmp_path), "sub-parc", result=result)
    rows, measures = freesurfer_rules_read(paths["aseg_stats"])
    counts = np.bincount(result.labels.ravel())
    for seg_id, (name, nvoxels, volume) in rows.items():
        assert nvoxels == counts[int(seg_id)] > 0, name  # never 'NVoxels 0 Volume 94011.56'
        assert volume == pytest.approx(nvoxels, abs=0.5)
    assert {"3", "42"}.isdisjoint(rows) and {"1001", "1002", "2", "4"} <= set(rows)
    assert rows["1001"][0] == "ctx-lh-bankssts"
    cortex_channel = result.posterior_labels.index(3)
    assert measures["lhCortexVol"] == pytest.approx(float(result.posteriors[..., cortex_channel].sum()), abs=1e-6)
    text = Path(paths["aseg_stats"]).read_text()
    # SynthSeg's total intracranial is FreeSurfer 8's sTIV, not an eTIV
    assert ETIV_PREFIX not in text and measures["sTIV"] == 123456.75
    assert any(line.startswith(STIV_PREFIX) for line in text.splitlines())
    # and asegstats2table's prefix for lhCortexVol finds it
    assert any(line.startswith("# Measure lhCortex, lhCortexVol,") for line in text.splitlines())


def test_sclimbic_stats_read_by_freesurfers_rules_with_and_without_etiv(tmp_path):
    rows = [StatsRow(821, 325947, 657937.4375, "Left-Fornix"), StatsRow(843, 512, 498.25, "Left-Nucleus-Accumbens")]
    for etiv in (None, 1650000.125):
        path = tmp_path / f"sclimbic_{etiv}.stats"
        path.write_text(format_stats(rows, etiv))
        read_rows, measures = freesurfer_rules_read(path)
        # SegId and NVoxels stay apart even at NVoxels >= 100000 (the reference runs them together)
        assert read_rows == {"821": ("Left-Fornix", 325947.0, 657937.4375), "843": ("Left-Nucleus-Accumbens", 512.0, 498.25)}
        assert measures == ({} if etiv is None else {"eTIV": etiv})
        table = stats_io.tidy_table([path])
        assert (table["region"] == "Left-Fornix").sum() == 1


def test_measure_lines_refuse_commas_in_fields():
    with pytest.raises(ValueError, match="comma"):
        stats_io.measure_line("X", "Y", "sum of the GM, WM and CSF maps", 1.0)


def _fixture_files():
    return sorted(FIXTURES.glob("*/stats/*.stats"))


def test_stats2table_reads_every_collected_freesurfer_file(tmp_path, capsys):
    files = _fixture_files()
    versions = {path.parts[-3].split("_")[0] for path in files}
    assert versions == {"fs5.3", "fs6.0", "fs7.0", "fs7.4.1"}
    out = tmp_path / "tidy.tsv"
    assert main(["stats2table", *map(str, files), "--o", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    import pandas as pd

    table = pd.read_csv(out, sep="\t", na_values=["n/a"], keep_default_na=False)
    for path in files:
        part = table[table["file"] == str(path)]
        lines = path.read_text().splitlines()
        assert (part["kind"] == "measure").sum() == sum(line.startswith("# Measure ") for line in lines), path
        assert (part["kind"] == "structure").sum() == sum(bool(line.strip()) and not line.startswith("#") for line in lines)
        assert part["subject"].notna().all() and (part["subject"] != "").all()
    # FreeSurfer 6's 'CortexVol Total cortical gray matter volume' line (comma missing) is read
    fs6 = table[table["file"].str.contains("fs6.0_fabian/stats/lh.aparc.stats")]
    cortex = fs6[fs6["region"] == "CortexVol"].iloc[0]
    assert cortex["value"] == 553998.311189 and cortex["description"] == "Total cortical gray matter volume"
    # brainvol.stats has no subjectname: it takes that of the aseg.stats beside it
    brainvol = table[table["file"].str.endswith("fs7.4.1_corrected_filled/stats/brainvol.stats")]
    assert set(brainvol["subject"]) == {"corrected_filled"}
    # a FreeSurfer 5.3 aseg row as asegstats2table reads it
    aseg53 = FIXTURES / "fs5.3_198451" / "stats" / "aseg.stats"
    rows, measures = freesurfer_rules_read(aseg53)
    ours = table[(table["file"] == str(aseg53)) & (table["kind"] == "structure")].set_index("SegId")
    for seg_id, (name, nvoxels, volume) in rows.items():
        assert ours.loc[int(seg_id), "region"] == name and ours.loc[int(seg_id), "volume_mm3"] == volume
    etiv = table[(table["file"] == str(aseg53)) & (table["region"] == "eTIV")]["value"].iloc[0]
    assert etiv == measures["eTIV"]


def test_stats2table_skips_an_odd_line_with_a_warning_and_keeps_the_rest(tmp_path, capsys):
    source = (FIXTURES / "fs7.4.1_corrected_filled" / "stats" / "aseg.stats").read_text().splitlines()
    rows_before = sum(bool(line.strip()) and not line.startswith("#") for line in source)
    first_row = next(i for i, line in enumerate(source) if line.strip() and not line.startswith("#"))
    source.insert(first_row + 1, "  99 99999 this row is broken")
    source.insert(5, "# Measure Broken, BrokenVol, no value here, mm^3")
    subject = tmp_path / "subj" / "stats"
    subject.mkdir(parents=True)
    (subject / "aseg.stats").write_text("\n".join(source) + "\n")
    (subject / "notes.stats").write_text("nothing a stats reader can use\n")
    out = tmp_path / "tidy.tsv"
    assert main(["stats2table", str(subject / "aseg.stats"), str(subject / "notes.stats"), "--o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{subject / 'aseg.stats'}, line {first_row + 3}:" in err and f"{subject / 'aseg.stats'}, line 6:" in err
    # the two odd lines of aseg.stats, then notes.stats: its one line and the file itself
    assert err.count("segsuite stats2table: warning:") == 4 and "notes.stats has no readable" in err
    import pandas as pd

    table = pd.read_csv(out, sep="\t")
    assert (table["kind"] == "structure").sum() == rows_before


def test_subject_from_path_follows_freesurfers_subjects_dir_layout(tmp_path, capsys):
    source = FIXTURES / "fs7.4.1_corrected_filled" / "stats" / "aseg.stats"
    layout = tmp_path / "subjects" / "sub-07" / "stats"
    layout.mkdir(parents=True)
    (layout / "aseg.stats").write_text(source.read_text())
    out = tmp_path / "tidy.tsv"
    assert main(["stats2table", str(layout / "aseg.stats"), "--subject-from-path", "--o", str(out)]) == 0
    import pandas as pd

    assert set(pd.read_csv(out, sep="\t")["subject"]) == {"sub-07"}
    # .../freesurfer/stats_soichi/aseg.stats is no <subject>/stats/ layout: refused, nothing written
    odd = tmp_path / "freesurfer" / "stats_soichi"
    odd.mkdir(parents=True)
    (odd / "aseg.stats").write_text(source.read_text())
    capsys.readouterr()
    assert main(["stats2table", str(odd / "aseg.stats"), "--subject-from-path", "--o", str(tmp_path / "x.tsv")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--subdir stats_soichi" in err and "\n" not in err and not (tmp_path / "x.tsv").exists()
    # asegstats2table's --subdir names the folder
    assert main(["stats2table", str(odd / "aseg.stats"), "--subject-from-path", "--subdir", "stats_soichi",
                 "--o", str(tmp_path / "y.tsv")]) == 0
    assert set(pd.read_csv(tmp_path / "y.tsv", sep="\t")["subject"]) == {"freesurfer"}


def test_stats2table_reads_samseg_and_sclimbic_reference_files(shared, tmp_path):
    samseg = shared("data", "samseg", "t1_crop_1mm")
    sclimbic = shared("fixtures", "sclimbic", "runs")
    files = [samseg / "samseg.stats", samseg / "sbtiv.stats", *sorted(sclimbic.glob("*/*.stats"))]
    warnings: list = []
    table = stats_io.tidy_table(files, warnings=warnings)
    assert warnings == []
    intra = table[(table["file"] == str(samseg / "samseg.stats")) & (table["region"] == "Intra-Cranial")].iloc[0]
    assert intra["value"] == 1564625.356666 and intra["unit"] == "mm^3"
    # mri_sclimbic_seg's run-together SegId/NVoxels rows are split back
    for path in sorted(sclimbic.glob("*/*.stats")):
        from segsuite.sclimbic.stats import read_stats as read_sclimbic

        reference_rows, _ = read_sclimbic(path)
        part = table[(table["file"] == str(path)) & (table["kind"] == "structure")]
        assert list(part["SegId"]) == [row.seg_id for row in reference_rows]
        assert list(part["NVoxels"]) == [row.n_voxels for row in reference_rows]
        assert np.allclose(part["volume_mm3"], [row.volume for row in reference_rows])


def test_sclimbic_cli_stats_in_subject_mode_read_by_freesurfers_rules(tmp_path):
    """`segsuite sclimbic --s` writes stats/sclimbic.stats with the talairach eTIV: asegstats2table's parser
    reads every row and the eTIV line, and stats2table names the subject after its SUBJECTS_DIR folder."""
    import nibabel as nib

    from test_sclimbic_units import XFM, brain_like, run_cli, write_random_model

    subject = tmp_path / "subjects" / "bert"
    (subject / "mri" / "transforms").mkdir(parents=True)
    (subject / "stats").mkdir()
    data, affine = brain_like()
    nib.save(nib.MGHImage(data, affine), str(subject / "mri" / "nu.mgz"))
    (subject / "mri" / "transforms" / "talairach.xfm").write_text(XFM)
    assert run_cli("--s", "bert", "--sd", tmp_path / "subjects", "--model", write_random_model(tmp_path / "model")) == 0
    path = subject / "stats" / "sclimbic.stats"
    rows, measures = freesurfer_rules_read(path)
    assert measures["eTIV"] == pytest.approx(1948106 / 0.99, rel=1e-6)
    assert any(line.startswith(ETIV_PREFIX) for line in path.read_text().splitlines())
    table = stats_io.tidy_table([path], from_path=True)
    structures = table[table["kind"] == "structure"].set_index("SegId")
    assert set(table["subject"]) == {"bert"} and len(structures) == len(rows)
    for seg_id, (name, nvoxels, volume) in rows.items():
        assert structures.loc[int(seg_id), "region"] == name and structures.loc[int(seg_id), "volume_mm3"] == volume


def test_subfield_volume_lists_are_read(tmp_path):
    """The hippocampal-subfield and amygdala tools write 'name volume' lines without a header
    (lh.hippoSfVolumes-T1.v21.txt); no such real file was found in a public repository, so this
    one is written here in that layout."""
    path = tmp_path / "lh.hippoSfVolumes-T1.v21.txt"
    path.write_text("Hippocampal_tail 532.590418\nsubiculum-body 231.062861\nWhole_hippocampus 3390.412547\n")
    table = stats_io.tidy_table([path])
    assert list(table["region"]) == ["Hippocampal_tail", "subiculum-body", "Whole_hippocampus"]
    assert list(table["volume_mm3"]) == [532.590418, 231.062861, 3390.412547]
    assert set(table["hemi"]) == {"lh"} and set(table["atlas"]) == {"hippoSfVolumes-T1.v21"}
