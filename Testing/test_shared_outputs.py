"""Outputs others can use: every folder and file the commands write has the mode the user's umask
gives (022 and 027; temporaries made by mkstemp/mkdtemp are 0600/0700 until they are renamed into
place), for segsuite bids (subject folders staged and renamed) and the single-image commands; and
the derivatives hold derivatives only: PyBIDS and bids2table list no file of the runner's own (work
files, logs), the real BIDS validator gives no error and no warning whose information the pipeline
has, the CodeURL is the project's, the .bidsignore has no duplicate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("bids2table")
nib = pytest.importorskip("nibabel")
torch = pytest.importorskip("torch")

from synthseg_helpers import write_random_synthseg_model  # noqa: E402
from test_cohort import SHARED, bids_validator_errors, crop_of  # noqa: E402
from test_faults import argv_for, assets  # noqa: E402,F401  (the single-image commands' inputs and models)

ROOT = Path(__file__).resolve().parents[1]
UMASKS = (0o022, 0o027)
# the validator's warnings about what the pipeline cannot know: the derivative's authors, and one spatial
# reference for the root look-up table that every subject's segmentation (each on its own T1w) shares
ACCEPTED_WARNINGS = {("TOO_FEW_AUTHORS", "/dataset_description.json"),
                     ("SIDECAR_KEY_RECOMMENDED", "/seg-synthseg_dseg.tsv")}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/t1 (real scans)")]


def with_umask(mask: int):
    return lambda: os.umask(mask)


def wrong_modes(folder: Path, mask: int) -> list[str]:
    """Paths under ``folder`` (itself included) whose mode is not what a new one gets under ``mask``."""
    wrong = []
    for path in [folder, *folder.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        mode = path.stat().st_mode & 0o777
        if mode != expected:
            wrong.append(f"{oct(mode)} {path.relative_to(folder.parent)}")
    return wrong


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    raw = tmp_path_factory.mktemp("bids") / "raw"
    for key, scan in (("sub-01", 0), ("sub-02/ses-1", 1)):
        (raw / key / "anat").mkdir(parents=True)
        data, affine = crop_of(scan, 0)
        nib.save(nib.Nifti1Image(data, affine), str(raw / key / "anat" / f"{key.replace('/', '_')}_T1w.nii.gz"))
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "crops", "BIDSVersion": "1.10.0"}))
    (raw / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    return raw


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # channel 1 wins nearly everywhere: a brain to measure for --morphometry
    return write_random_synthseg_model(tmp_path_factory.mktemp("synthseg_model"), winning_channel=1)


@pytest.fixture(scope="module", params=UMASKS, ids=lambda mask: f"umask{mask:03o}")
def cohort(request, dataset, model):
    """segsuite bids --morphometry under the umask, into raw/derivatives/... with the default work folder."""
    mask = request.param
    output = dataset / "derivatives" / f"segsuite-{mask:03o}"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "SegmentationSuite"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "segsuite", "--progress", "none", "bids", str(dataset), str(output),
                           "participant", "--synthseg-model", str(model), "--fast", "--crop", "64", "--morphometry",
                           "--omp-nthreads", "1", "--skip-bids-validation"], env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=with_umask(mask))
    assert done.returncode == 0, done.stderr
    return {"output": output, "umask": mask, "raw": dataset}


def test_cohort_outputs_have_the_umask_modes(cohort):
    output = cohort["output"]
    assert (output / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_seg-synthseg_dseg.nii.gz").is_file()
    assert wrong_modes(output, cohort["umask"]) == []


@pytest.mark.parametrize("mask", UMASKS, ids=lambda mask: f"umask{mask:03o}")
@pytest.mark.parametrize("command", ("synthseg", "run-engine", "samseg-filter"))
def test_single_image_outputs_have_the_umask_modes(command, mask, assets, tmp_path):  # noqa: F811
    inp = assets[command][0]
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "SegmentationSuite"), str(ROOT / "Testing")]))
    done = subprocess.run([sys.executable, "-m", "segsuite", "--progress", "none", *argv_for(command, assets, inp, out)],
                          env=env, capture_output=True, text=True, timeout=300, preexec_fn=with_umask(mask))
    assert done.returncode == 0, done.stderr
    assert any(out.rglob("*")), "nothing written"
    assert wrong_modes(out, mask) == []


def runner_files(paths, output: Path) -> list[str]:
    """Paths of the runner's own (work files, logs, locks, staging) among ``paths``."""
    names = [os.path.relpath(path, output) for path in paths]
    return [name for name in names if re.search(r"(^|/)(\.segsuite|\.staging|work|logs?)(/|$)|\.(jsonl|log|lock)$|"
                                                r"parquet|\.stamp$", name)]


def test_pybids_lists_no_runner_file_and_no_spurious_entity(cohort):
    bids = pytest.importorskip("bids")
    output = cohort["output"]
    assert list((output / ".segsuite" / "work").glob("*.jsonl")) and (output / ".segsuite" / "logs").is_dir()
    layout = bids.BIDSLayout(str(output), validate=False, is_derivative=True)
    files = layout.get()
    assert runner_files([f.path for f in files], output) == []
    assert [f.path for f in files if "model" in f.entities] == []   # was model=loads from work/model-loads.jsonl
    with_raw = bids.BIDSLayout(str(cohort["raw"]), derivatives=[str(output)])
    derived = with_raw.derivatives["SegmentationSuite"].get()
    assert runner_files([f.path for f in derived], output) == []
    assert {(f.entities["subject"], f.entities.get("session")) for f in derived if f.entities.get("suffix") == "dseg"
            and f.entities.get("extension") == ".nii.gz"} == {("01", None), ("02", "1")}


def test_bids2table_lists_no_runner_file(cohort):
    from bids2table import index_dataset

    table = index_dataset(cohort["output"]).to_pandas()
    paths = [os.path.join(root, path) for root, path in zip(table["root"], table["path"])]
    assert paths and runner_files(paths, cohort["output"]) == []


def test_validator_no_error_and_no_warning_the_pipeline_could_avoid(cohort):
    issues = bids_validator_errors(cohort["output"], ("error", "warning"))
    assert [i for i in issues if i["severity"] == "error"] == []
    avoidable = [(i["code"], i.get("location"), i.get("subCode")) for i in issues
                 if (i["code"], i.get("location")) not in ACCEPTED_WARNINGS]
    assert avoidable == []


def test_dataset_files_readme_code_url_and_bidsignore(cohort):
    output = cohort["output"]
    description = json.loads((output / "dataset_description.json").read_text())
    code_url = description["GeneratedBy"][0]["CodeURL"]
    catalog = json.loads((ROOT / "ExtensionsIndex" / "SegmentationSuite.json").read_text())
    assert code_url == catalog["scm_url"].removesuffix(".git")
    assert f'set(EXTENSION_HOMEPAGE "{code_url}#readme")' in (ROOT / "CMakeLists.txt").read_text()
    ignore = (output / ".bidsignore").read_text().splitlines()
    assert len(ignore) == len(set(ignore)) and ".segsuite/" in ignore
    readme = (output / "README.md").read_text()
    assert "seg-synthseg_dseg.tsv" in readme and code_url in readme
    sidecar = json.loads((output / "seg-synthseg_dseg.json").read_text())
    assert "SynthSeg" in sidecar["Description"]
