"""The fault policy's parts, in-process and fast: model states and their repair commands, the
all-or-nothing writer, stale temporaries, and the command line's consistent output and flags."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from model_server import file_entry, tiny_registry, write_registry
from segsuite import cli
from segsuite.errors import ModelError, SegSuiteError
from segsuite.faults import clean_stale_temporaries, temp_prefix
from segsuite.image import OutputTransaction, list_images
from segsuite.models import manager
from test_models_cli import server  # noqa: F401  (the local model server fixture)

BODY = os.urandom(40_000)


@pytest.fixture
def registry(tmp_path, monkeypatch, server):
    """'tiny' (sha256 in the registry) and 'tofu' (trust on first use) from the local server."""
    server.weights = server.add("/w.h5", BODY)
    server.add("/t.txt", b"first-use text")
    tofu = {"name": "t.txt", "size": None, "sha256": None, "verify": "first-use", "sources": [{"url": server.url("/t.txt")}]}
    data = tiny_registry([file_entry("w.h5", BODY, [server.url("/w.h5")])])
    data["models"].append({"id": "tofu", "title": "tofu", "version": "1", "files": [tofu]})
    data["models"].append({"id": "broken", "title": "broken", "version": "1",
                           "files": [file_entry("b.h5", b"x", [server.url("/missing.h5")])]})
    monkeypatch.setenv("SEGSUITE_REGISTRY", str(write_registry(tmp_path / "registry.json", data)))
    Path(os.environ["SEGSUITE_CONFIG"]).write_text(json.dumps({"download": {"retries": 0, "backoff": 0.01}}))
    return Path(os.environ["SEGSUITE_HOME"])


def test_corrupt_model_is_reported_with_the_offline_repair_and_never_downloaded_over(registry, server, capsys):
    assert cli.main(["--progress", "none", "models", "download", "tiny"]) == 0
    installed = registry / "models" / "tiny" / "w.h5"
    data = bytearray(installed.read_bytes())
    data[100] ^= 0xFF                         # same size, another sha256
    installed.write_bytes(bytes(data))
    models = manager()
    assert models.state("tiny") == "corrupt (sha256 mismatch)"
    served = server.weights.served
    with pytest.raises(ModelError, match=r"corrupt \(sha256 mismatch\).*models install tiny --from FILE"):
        models.ensure("tiny")
    assert server.weights.served == served        # no download behind the user's back
    capsys.readouterr()
    assert cli.main(["models", "list"]) == 0
    assert "corrupt (sha256 mismatch)" in next(l for l in capsys.readouterr().out.splitlines() if l.startswith("tiny"))
    assert cli.main(["models", "verify", "tiny"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "segsuite models install tiny --from FILE" in out
    installed.unlink()                         # a missing file is corrupt too
    assert manager().state("tiny") == "corrupt (sha256 mismatch)"


def test_trust_on_first_use_record_only_and_forget(registry, server, tmp_path, capsys):
    assert cli.main(["--progress", "none", "models", "download", "tofu"]) == 0
    assert cli.main(["models", "remove", "tofu"]) == 0
    assert "--forget" in capsys.readouterr().out
    assert manager().state("tofu") == "trust-on-first-use record only"
    capsys.readouterr()
    cli.main(["models", "list"])
    assert "trust-on-first-use record only" in capsys.readouterr().out
    other = tmp_path / "t.txt"
    other.write_bytes(b"changed upstream")
    assert cli.main(["--progress", "none", "models", "install", "tofu", "--from", str(other)]) == 1
    assert "segsuite models remove tofu --forget" in capsys.readouterr().err
    assert cli.main(["models", "remove", "tofu", "--forget"]) == 0
    assert manager().state("tofu") == "not installed"
    assert cli.main(["--progress", "none", "models", "install", "tofu", "--from", str(other)]) == 0


def test_download_all_goes_on_after_a_failure_and_reports_all(registry, capsys, monkeypatch):
    assert cli.main(["--progress", "none", "models", "download", "tiny", "broken", "tofu"]) == 1
    captured = capsys.readouterr()
    assert "broken: FAILED" in captured.out
    assert manager().state("tiny") == "installed" and manager().state("tofu") == "installed"
    assert "1 of 3 models failed to download: broken" in captured.err
    failure = captured.out[captured.out.index("broken: FAILED"):]
    assert failure.count("/missing.h5") == 1                     # the URL once
    for way in ("--model", "SEGSUITE_MIRROR", "models import-freesurfer", "models install broken --from FILE"):
        assert way in failure


@contextlib.contextmanager
def _disk_full_when_renaming_to(monkeypatch, name: str):
    """os.replace fails with ENOSPC for targets named ``name`` (a commit's late failure); a suffix
    match also hit random temporary names ending in it (the rollback's own renames), a flaky test."""
    real_replace = os.replace

    def failing_replace(source, target):
        if os.path.basename(target) == name:
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    try:
        yield
    finally:
        monkeypatch.setattr(os, "replace", real_replace)


def test_commit_across_folders_restores_what_it_moved(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    (first / "x.txt").write_text("old x")
    transaction = OutputTransaction(overwrite=True)
    transaction.write_text(first / "x.txt", "new x")
    transaction.write_text(second / "y.txt", "new y")
    with _disk_full_when_renaming_to(monkeypatch, "y.txt"):
        with pytest.raises(SegSuiteError, match=r"cannot write .*y\.txt: the disk is full"):
            transaction.commit()
    assert (first / "x.txt").read_text() == "old x"
    assert sorted(p.name for p in first.iterdir()) == ["x.txt"] and not list(second.iterdir())


def test_folder_outputs_commit_whole_replace_only_with_consent_and_restore(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub-01").mkdir()
    (out / "sub-01" / "old.txt").write_text("the previous bundle")
    with pytest.raises(SegSuiteError, match="output exists: .*sub-01"):
        OutputTransaction().temp_dir(out / "sub-01")
    transaction = OutputTransaction(overwrite=True)
    staged = Path(transaction.temp_dir(out / "sub-01"))
    (staged / "labels.nii.gz").write_bytes(b"new")
    failed = Path(transaction.temp_dir(out / "sub-02"))
    (failed / "half.nii.gz").write_bytes(b"half")
    transaction.discard(out / "sub-02")            # a failed subject: gone, the others stay staged
    assert not failed.exists() and staged.exists()
    transaction.write_text(out / "manifest.json", "{}")
    with _disk_full_when_renaming_to(monkeypatch, "manifest.json"):
        with pytest.raises(SegSuiteError, match=r"cannot write .*manifest\.json: the disk is full"):
            transaction.commit()
    # the old bundle is back, whole, and no temporary folder is left
    assert sorted(p.name for p in out.iterdir()) == ["sub-01"]
    assert sorted(p.name for p in (out / "sub-01").iterdir()) == ["old.txt"]
    transaction = OutputTransaction(overwrite=True)
    (Path(transaction.temp_dir(out / "sub-01")) / "labels.nii.gz").write_bytes(b"new")
    assert transaction.commit() == [str(out / "sub-01")]
    assert sorted(p.name for p in (out / "sub-01").iterdir()) == ["labels.nii.gz"]
    assert ((out / "sub-01").stat().st_mode & 0o777) == 0o777 & ~_umask()
    assert sorted(p.name for p in out.iterdir()) == ["sub-01"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stale_temporaries_of_dead_runs_are_removed_and_never_taken_for_inputs(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".segsuite-{int(dead.stdout)}-abc.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(stale))
    live = tmp_path / f"{temp_prefix()}mine.nii.gz"
    live.write_bytes(b"in progress")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(tmp_path / "scan.nii.gz"))
    assert list_images(tmp_path) == [str(tmp_path / "scan.nii.gz")]
    assert clean_stale_temporaries(tmp_path) == [str(stale)]
    assert live.exists() and not stale.exists()


def test_threads_zero_is_rejected_and_global_flags_go_after_the_subcommand(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["synthseg", "--i", "x.nii.gz", "--o", "y.nii.gz", "--threads", "0"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--threads must be at least 1" in error and "(see segsuite synthseg --help)" in error
    with pytest.raises(SystemExit):
        cli.main(["models", "download", "--bogus"])
    assert "see segsuite models download --help" in capsys.readouterr().err
    assert cli.main(["sclimbic", "--progress", "json", "--verbose"]) == 2   # accepted after the subcommand
    assert "(see segsuite sclimbic --help)" in capsys.readouterr().err


def test_progress_is_plain_lines_off_a_terminal(tmp_path):
    code = ("import argparse, sys; from segsuite.cli import progress_for\n"
            "report, close = progress_for(argparse.Namespace(progress='bar'), 'Job')\n"
            "[report(i / 100, f'step {i}') for i in range(101)]; close()\n")
    env = dict(os.environ, PYTHONPATH=str(Path(cli.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    lines = done.stderr.splitlines()
    assert "\r" not in done.stderr and 5 <= len(lines) <= 12, done.stderr
    assert lines[0] == "Job:   0% step 0" and lines[-1] == "Job: 100% step 100"


def test_written_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli.print_written([tmp_path / "out" / "seg.nii.gz", "/elsewhere/x.csv"])
    assert capsys.readouterr().out.splitlines() == [f"wrote {os.path.join('out', 'seg.nii.gz')}", "wrote /elsewhere/x.csv"]


def test_sclimbic_resolution_error_names_the_command_line_flag():
    from segsuite.errors import InputError
    from segsuite.sclimbic.engine import ScLimbicEngine

    engine = ScLimbicEngine.__new__(ScLimbicEngine)
    engine.conform = False
    with pytest.raises(InputError, match="rerun with --conform"):
        engine.check_resolution(np.array([2.0, 2.0, 2.0]))


def test_engine_reports_a_corrupt_installed_model_by_name(tmp_path, monkeypatch, capsys):
    """synthseg without --model on a damaged installed copy: the checksum, not a download, is reported."""
    import torch

    from segsuite.nets.unet import KerasUNet
    from synthseg_helpers import write_keras_h5

    weights = tmp_path / "synthseg_2.0.h5"
    torch.manual_seed(0)
    write_keras_h5(weights, KerasUNet("unet", 1, 33).keras_layers())
    body = weights.read_bytes()
    data = tiny_registry([file_entry("synthseg_2.0.h5", body, ["http://127.0.0.1:9/never"])])
    data["models"][0]["id"] = "synthseg-2.0"
    monkeypatch.setenv("SEGSUITE_REGISTRY", str(write_registry(tmp_path / "registry.json", data)))
    assert cli.main(["--progress", "none", "models", "install", "synthseg-2.0", "--from", str(weights)]) == 0
    installed = manager().path("synthseg-2.0") / "synthseg_2.0.h5"
    installed.write_bytes(body[:-10] + b"0123456789")
    scan = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4)), str(scan))
    capsys.readouterr()
    assert cli.main(["--progress", "none", "synthseg", "--i", str(scan), "--o", str(tmp_path / "out" / "seg.nii.gz"),
                     "--cpu"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "synthseg-2.0 is corrupt (sha256 mismatch)" in error and "models install synthseg-2.0 --from FILE" in error
    assert not (tmp_path / "out").exists()


def test_bad_input_is_reported_before_any_model_download(tmp_path, monkeypatch, server, capsys):
    """Issue item 5: synthseg without --model on a non-image names the input; no byte is downloaded."""
    weights = server.add("/synthseg_2.0.h5", BODY)
    data = tiny_registry([file_entry("synthseg_2.0.h5", BODY, [server.url("/synthseg_2.0.h5")])])
    data["models"][0]["id"] = "synthseg-2.0"
    monkeypatch.setenv("SEGSUITE_REGISTRY", str(write_registry(tmp_path / "registry.json", data)))
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"not an image at all" * 20)
    assert cli.main(["--progress", "none", "synthseg", "--i", str(fake), "--o", str(tmp_path / "out" / "seg.nii.gz"),
                     "--cpu"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(fake) in error[0] and "download" not in error[0]
    assert weights.served == 0 and manager().state("synthseg-2.0") == "not installed"
    assert not (tmp_path / "out").exists()


SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
ICBM_T1 = SHARED / "data" / "templates" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def test_sample_t1_comes_out_of_the_nilearn_wheel_verified_and_its_path_is_printed(tmp_path, monkeypatch, server, capsys):
    """Issue item 7: `models download sample-t1` takes the ICBM152 T1 out of a (local) copy of the
    nilearn wheel, checks the shipped sha256, and `models path sample-t1 --file` gives an image path."""
    import io
    import zipfile

    from segsuite.preflight import check_input_image

    if not ICBM_T1.exists():
        pytest.skip("../shared/data/templates (the ICBM152 T1) is absent")
    shipped = json.loads((Path(cli.__file__).parent / "models" / "registry.json").read_text())
    spec = next(m for m in shipped["models"] if m["id"] == "sample-t1")
    (entry,) = spec["files"]
    source = entry["sources"][0]
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("nilearn/__init__.py", "")
        archive.writestr(source["member"], ICBM_T1.read_bytes())
    server.add("/nilearn.whl", wheel.getvalue())
    data = tiny_registry([dict(entry, sources=[dict(source, url=server.url("/nilearn.whl"))])], model_id="sample-t1")
    monkeypatch.setenv("SEGSUITE_REGISTRY", str(write_registry(tmp_path / "registry.json", data)))
    assert cli.main(["--progress", "none", "models", "download", "sample-t1"]) == 0
    capsys.readouterr()
    assert cli.main(["models", "path", "sample-t1", "--file"]) == 0
    path = capsys.readouterr().out.strip()
    assert Path(path).name == entry["name"] and Path(path).read_bytes() == ICBM_T1.read_bytes()
    check_input_image(path)   # what the README's synthseg command reads


def test_readme_first_commands_install_the_cpu_torch_first_and_run_the_sample(capsys):
    """Issue item 7: the CPU command takes torch's CPU wheel before the requirements (which would pull
    the CUDA build), the GPU command does not, and both end in a synthseg command the CLI accepts."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    commands = [line.strip() for line in readme.splitlines() if line.startswith("    python3 -m venv")]
    cpu, gpu = commands[:2]
    assert cpu.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu") < cpu.index(
        "pip install -r requirements.txt")
    assert "whl/cpu" not in gpu and "pip install -r requirements.txt" in gpu
    for command in (cpu, gpu):
        steps = [step.strip() for step in command.split("&&")]
        assert "segsuite models download sample-t1" in steps
        synthseg = next(step for step in steps if step.startswith("segsuite synthseg"))
        words = synthseg.replace('"$(segsuite models path sample-t1 --file)"', "sample.nii.gz").split()[1:]
        args = cli.build_parser().parse_args(words)
        assert args.input == "sample.nii.gz" and args.output and args.vol and args.qc


def test_models_list_gives_sclimbic_a_size():
    """Issue item 6: sclimbic's unpublished text-file sizes no longer make its size '?'."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["models", "list"]) == 0
    row = next(line for line in out.getvalue().splitlines() if line.startswith("sclimbic"))
    assert "~3.3 MB" in row and " ? " not in row
