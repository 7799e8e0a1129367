"""Flags users type from the reference tools: FreeSurfer 8's mri_synthseg (--autocrop, --addctab/--noaddctab,
--photo, -i/-o), mri_sclimbic_seg (--vmp, --debug), sct_deepseg (-qc-dataset, -qc-subject, -v), and the
models' hints. Reference code read: freesurfer/freesurfer mri_synthseg/mri_synthseg (argparse block, preprocess's
autocrop, save_volume(labels=...)), mri_sclimbic_seg/mri_sclimbic_seg; spinalcordtoolbox's -qc-dataset,
-qc-subject and -v help texts.
"""

from __future__ import annotations

import gzip
import json
import struct

import nibabel as nib
import numpy as np
import pytest

from segsuite import cli
from segsuite.labels import freesurfer_lut
from segsuite.synthseg.preprocess import autocrop_indices, ceil_to_multiple

from synthseg_helpers import write_random_synthseg_model


def reference_autocrop(image: np.ndarray) -> np.ndarray:
    """mri_synthseg's preprocess: nz_locs = argwhere(im > 0); nz_crop = max - min + 2; crop_shape to multiples of
    32 ('higher'); half_dim_diff = (crop_shape - nz_crop) // 2; min = max(min - half, 0); max = min(min + crop_shape, shape)."""
    locations = np.argwhere(image > 0)
    low, high = locations.min(axis=0), locations.max(axis=0)
    extent = high - low + 2
    shape = np.array([ceil_to_multiple(e, 32) for e in extent])
    start = np.maximum(low - (shape - extent) // 2, 0)
    return np.concatenate([start, np.minimum(start + shape, image.shape)])


@pytest.mark.parametrize("box", [((3, 40), (10, 20), (0, 63)), ((0, 0), (5, 61), (30, 31)), ((20, 50), (0, 63), (7, 9))])
def test_autocrop_box_is_the_references(box):
    image = np.zeros((64, 64, 64), dtype=np.float32)
    image[box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1, box[2][0]:box[2][1] + 1] = 0.5
    assert np.array_equal(autocrop_indices(image), reference_autocrop(image))
    assert autocrop_indices(np.zeros((8, 8, 8), np.float32)) is None


def read_embedded_colortable(path) -> dict:
    """The colour table after an .mgz volume, read by FreeSurfer's layout (surfa io/fsio.read_tag and
    read_binary_lookup_table; FreeSurfer utils/colortab.cpp): after the 284-byte header, the data and the
    5 float32 scan parameters, tag 1 without a length, version -2, max index + 1, file name, count, entries."""
    data = gzip.decompress(path.read_bytes())
    shape = struct.unpack(">4i", data[4:20])
    itemsize = {0: 1, 1: 4, 3: 4, 4: 2}[struct.unpack(">i", data[20:24])[0]]
    offset = 284 + int(np.prod(shape)) * itemsize + 5 * 4
    tag, version, _, name_size = struct.unpack(">iiii", data[offset:offset + 16])
    assert (tag, version) == (1, -2)
    offset += 16 + name_size
    (count,) = struct.unpack(">i", data[offset:offset + 4])
    offset += 4
    table = {}
    for _ in range(count):
        index, size = struct.unpack(">ii", data[offset:offset + 8])
        name = data[offset + 8:offset + 8 + size].rstrip(b"\0").decode()
        offset += 8 + size
        table[index] = (name, struct.unpack(">iiii", data[offset:offset + 16]))
        offset += 16
    assert offset == len(data)
    return table


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    return write_random_synthseg_model(tmp_path_factory.mktemp("flags_model"), winning_channel=1)


def _head(path):
    yy, xx, zz = np.mgrid[:40, :44, :36]
    image = (((xx - 22) ** 2 + (yy - 20) ** 2 + (zz - 18) ** 2) < 150).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(path))
    return path


@pytest.mark.slow
def test_synthseg_takes_recon_alls_flags(tmp_path, random_model, capsys):
    """FreeSurfer 8's recon-all calls mri_synthseg --keepgeom --addctab --vol; -i/-o as the other commands."""
    image = _head(tmp_path / "orig.nii.gz")
    out = tmp_path / "synthseg.mgz"
    assert cli.main(["--progress", "none", "synthseg", "-i", str(image), "-o", str(out), "--keepgeom", "--addctab",
                     "--autocrop", "--fast", "--vol", str(tmp_path / "vol.csv"), "--model", str(random_model), "--cpu",
                     "--threads", "1"]) == 0, capsys.readouterr().err
    segmentation = nib.load(str(out))
    assert segmentation.shape == (40, 44, 36) and np.asarray(segmentation.dataobj).max() == 2  # the winning channel
    table = read_embedded_colortable(out)
    lut = freesurfer_lut()
    assert len(table) == len(lut) and table[17] == ("Left-Hippocampus", (*lut.color(17), 0))


def test_noaddctab_is_the_plain_output_and_excludes_addctab(tmp_path):
    from segsuite.mgh_colortable import mgz_bytes

    labels = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    with_table, plain = tmp_path / "t.mgz", tmp_path / "p.mgz"
    with_table.write_bytes(mgz_bytes(labels, np.eye(4)))
    nib.save(nib.MGHImage(labels, np.eye(4)), str(plain))
    assert np.array_equal(np.asarray(nib.load(str(with_table)).dataobj), labels)  # nibabel reads past the tag
    assert gzip.decompress(with_table.read_bytes()).startswith(gzip.decompress(plain.read_bytes()))
    parser = cli.build_parser()
    assert parser.parse_args(["synthseg", "-i", "a.nii.gz", "-o", "b.mgz", "--noaddctab"]).noaddctab
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["synthseg", "-i", "a.nii.gz", "-o", "b.mgz", "--noaddctab", "--addctab"])
    assert stop.value.code == 2


@pytest.mark.parametrize("flags, expected", [
    (["--photo", "both"], "mri_synthseg --photo"),
    (["--autocrop", "--crop", "64"], "--autocrop cannot be used with --crop"),
    (["--addctab"], "--addctab embeds the colour table in .mgz"),
])
def test_synthseg_flags_it_cannot_honour_say_what_to_use(tmp_path, random_model, capsys, flags, expected):
    image = _head(tmp_path / "t1.nii.gz")
    status = cli.main(["--progress", "none", "synthseg", "-i", str(image), "-o", str(tmp_path / "seg.nii.gz"),
                       "--model", str(random_model), *flags])
    error = capsys.readouterr().err.strip()
    assert status == 2 and expected in error and "\n" not in error
    assert not (tmp_path / "seg.nii.gz").exists()


def test_sclimbic_vmp_and_debug(tmp_path, capsys):
    from test_sclimbic_units import brain_like, run_cli, write_random_model

    model = write_random_model(tmp_path / "model")
    data, affine = brain_like()
    nib.save(nib.MGHImage(data, affine), str(tmp_path / "t1.mgz"))
    assert run_cli("--i", tmp_path / "t1.mgz", "--o", tmp_path / "a.mgz", "--model", model, "--vmp") == 0
    out = capsys.readouterr().out
    peak = [line for line in out.splitlines() if line.startswith("#@# segsuite sclimbic vmpeak ")]
    assert len(peak) == 1 and int(peak[0].split()[-1]) > 100_000  # kB: a Python with torch is > 100 MB
    assert run_cli("--i", tmp_path / "t1.mgz", "--o", tmp_path / "b.mgz", "--model", model, "--debug") == 0
    captured = capsys.readouterr()
    steps = [line for line in captured.err.splitlines() if line.startswith("segsuite sclimbic: debug:")]
    assert len(steps) >= 2 and all(line.split()[4] == "s" for line in steps)
    assert "vmpeak" in captured.out


def test_scepi_takes_scts_qc_labels_and_verbosity(tmp_path, capsys):
    pytest.importorskip("nnunetv2", reason="sc_epi needs nnunetv2 (requirements-scepi*.txt)")
    from segsuite.scepi.tiny import build_tiny_model
    from test_scepi_cli import write_epi

    model = build_tiny_model(tmp_path / "model", patch_size=(8, 32, 32))
    epi = write_epi(tmp_path / "sub-01_bold.nii.gz")
    qc = tmp_path / "qc"
    common = ["--progress", "none", "scepi", "-i", str(epi), "--model", str(model), "--device", "cpu"]
    assert cli.main(common + ["-qc", str(qc), "-qc-dataset", "ds-test", "-qc-subject", "sub-01", "-v", "0"]) == 0
    assert capsys.readouterr().out == ""  # -v 0: errors and warnings only
    entries = json.loads(next(qc.glob("*.json")).read_text())
    assert (entries[0]["dataset"], entries[0]["subject"]) == ("ds-test", "sub-01")
    page = (qc / "index.html").read_text()
    assert "<th>Dataset</th><th>Subject</th>" in page and "<td>ds-test</td><td>sub-01</td>" in page
    assert cli.main(common + ["-qc-subject", "sub-01", "-o", str(tmp_path / "x.nii.gz")]) == 2
    assert "give -qc DIR as well" in capsys.readouterr().err
    assert cli.main(common + ["-o", str(tmp_path / "y.nii.gz"), "-v", "1"]) == 0
    assert "y.nii.gz" in capsys.readouterr().out


def test_model_hints_name_only_what_works_for_that_model(tmp_path, monkeypatch, capsys):
    from segsuite.models.manager import ModelManager, _failure_message
    from segsuite.models.registry import Registry

    registry = Registry.load()
    scepi, synthseg = registry.get("sc-epi"), registry.get("synthseg-2.0")
    assert not scepi.in_freesurfer and synthseg.in_freesurfer
    assert "import-freesurfer" not in _failure_message(scepi, scepi.files[0], ["x: HTTP 404"])
    assert "import-freesurfer" in _failure_message(synthseg, synthseg.files[0], ["x: HTTP 404"])
    manager = ModelManager()
    assert "import-freesurfer" not in manager.repair_hint("sc-epi", "corrupt (sha256 mismatch)")
    # and import-freesurfer says where sc-epi comes from instead of a bare 'skipped'
    freesurfer = tmp_path / "freesurfer"
    (freesurfer / "models").mkdir(parents=True)
    outcomes = dict(manager.import_freesurfer(freesurfer, ["sc-epi"]))
    assert "segsuite models download sc-epi" in outcomes["sc-epi"]
    with pytest.raises(SystemExit):
        cli.main(["models", "install", "--help"])
    assert "sha256" in capsys.readouterr().out.split("--from FILE_OR_DIR")[-1]
