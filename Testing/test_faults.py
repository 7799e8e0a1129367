"""Fault injection over every command: each fault gives its exit code, one clear line naming the
user's path (never a temporary), nothing new in any output folder, and inputs byte-identical.

Signals reach fixed points of a run through segsuite.faults.checkpoint (SEGSUITE_FAULT_AT):
``before-network`` (after the pre-flight), ``network`` (the first progress report of the work,
a download for ``models``) and ``writing`` (temporaries written, before the renames). Read-only
and full disks are small tmpfs mounts made by the test (root only; skipped with the reason
otherwise). A table of faults x commands goes to the test log.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from model_server import ModelServer, file_entry, tiny_registry, write_registry
from synthseg_helpers import write_keras_h5

PACKAGE_PARENT = str(Path(__file__).resolve().parents[1] / "SegmentationSuite")
pytestmark = pytest.mark.slow  # about 5 minutes on 2 cores: one process per case (CI runs it in the slow block)

COMMANDS = ("synthseg", "sclimbic", "scepi", "samseg", "samseg-filter", "run-engine", "models")
TABLE: dict = {}


@pytest.fixture(scope="module", autouse=True)
def fault_table(request):
    yield
    faults = sorted({fault for fault, _ in TABLE})
    width = max([len(f) for f in faults] + [10])
    lines = ["", "fault injection: faults x commands (ok = every check held; - = not applicable)",
             "fault".ljust(width) + "  " + "  ".join(c.ljust(13) for c in COMMANDS)]
    for fault in faults:
        lines.append(fault.ljust(width) + "  " + "  ".join(TABLE.get((fault, c), "-").ljust(13) for c in COMMANDS))
    text = "\n".join(lines)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(text)
    else:
        print(text)


# ---------------------------------------------------------------------------------- the commands
def _sphere(shape=(24, 26, 22), seed=0):
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    centre = [s / 2 for s in shape]
    inside = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) < 60
    return (inside * 100 + np.random.default_rng(seed).random(shape) * 5).astype(np.float32)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Inputs and small fixture models for each command (no download, nothing from ../shared)."""
    root = tmp_path_factory.mktemp("fault_assets")
    made = {}
    synthseg_model = root / "synthseg"
    synthseg_model.mkdir()
    torch.manual_seed(0)
    from segsuite.nets.unet import KerasUNet

    write_keras_h5(synthseg_model / "synthseg_2.0.h5", KerasUNet("unet", 1, 33).keras_layers())
    t1 = root / "t1.nii.gz"
    nib.save(nib.Nifti1Image(_sphere(), np.eye(4)), str(t1))
    made["synthseg"] = (t1, synthseg_model)
    made["run-engine"] = (t1, synthseg_model)   # the Slicer modules' child process, here with SynthSeg

    from test_sclimbic_units import brain_like, write_random_model

    sclimbic_model = write_random_model(root / "sclimbic")
    data, affine = brain_like()
    sclimbic_t1 = root / "sclimbic_t1.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(sclimbic_t1))
    made["sclimbic"] = (sclimbic_t1, sclimbic_model.parent)

    try:
        from segsuite.scepi.tiny import build_tiny_model
        from test_scepi_cli import write_epi

        epi = write_epi(root / "bold_mean.nii.gz")
        made["scepi"] = (epi, build_tiny_model(root / "scepi_model", patch_size=(8, 32, 32)))
    except ImportError:  # nnunetv2 absent
        pass

    seg = np.zeros((20, 20, 20), dtype=np.int32)
    seg[4:16, 4:16, 4:16] = 2
    seg[2:18, 2:4, 2:18] = 165
    seg_path = root / "seg.mgz"
    nib.save(nib.MGHImage(seg, np.eye(4)), str(seg_path))
    made["samseg-filter"] = (seg_path, None)

    from test_samseg_runner import make_fake_samseg

    samseg_dir = root / "fake_samseg"
    samseg_dir.mkdir()
    made["samseg"] = (t1, make_fake_samseg(samseg_dir))
    return made


def argv_for(command: str, assets, inp: Path, out: Path) -> list[str]:
    """The command line that reads ``inp`` and writes under the folder ``out``."""
    _, model = assets[command]
    if command == "synthseg":
        return ["synthseg", "--i", str(inp), "--o", str(out / "seg.nii.gz"), "--vol", str(out / "vol.csv"),
                "--model", str(model), "--cpu", "--threads", "1", "--fast"]
    if command == "sclimbic":
        return ["sclimbic", "--i", str(inp), "--o", str(out / "t1.sclimbic.nii.gz"), "--write_volumes",
                "--model", str(model), "--device", "cpu", "--threads", "1"]
    if command == "scepi":
        return ["scepi", "-i", str(inp), "-o", str(out) + os.sep, "--model", str(model), "--device", "cpu",
                "--threads", "1"]
    if command == "samseg-filter":
        return ["samseg-filter", "--i", str(inp), "--o", str(out / "mask.nii.gz"), "--volumes", str(out / "vol.csv")]
    if command == "samseg":
        return ["samseg", "--i", str(inp), "--o", str(out / "samseg"), "--samseg", str(model), "--threads", "1"]
    if command == "run-engine":
        return ["run-engine", "--engine", "synthseg", "-i", str(inp), "-o", str(out), "--options", '{"fast": true}',
                "--model", str(model), "--device", "cpu", "--threads", "1"]
    raise AssertionError(command)


def snapshot(*folders) -> dict:
    """Every file (and folder) under the folders, with the bytes' sha256."""
    state = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            continue
        for path in sorted(folder.rglob("*")):
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return state


def run_cli(argv, fault_at=None, fault_signal="SIGTERM", cwd=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT, str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    env.pop("SEGSUITE_FAULT_AT", None)
    if fault_at:
        env["SEGSUITE_FAULT_AT"], env["SEGSUITE_FAULT_SIGNAL"] = fault_at, fault_signal
    return subprocess.run([sys.executable, "-m", "segsuite", "--progress", "none", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def check_fault(fault, command, result, code, names, out_before, out_folders, inputs_before):
    """The common checks: exit code, one clear line naming the user's path, nothing new, inputs intact."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert lines, "no message"
    last = lines[-1]
    assert "Traceback" not in result.stderr and ".segsuite-" not in result.stderr, result.stderr
    assert any(name in last for name in names), (names, last)
    assert snapshot(*out_folders) == out_before, "files left behind"
    assert snapshot(*inputs_before[0]) == inputs_before[1], "an input changed"
    TABLE[(fault, command)] = "ok"


def _needs(command, assets):
    if command not in assets:
        pytest.skip(f"{command} needs its optional packages (nnunetv2)")


# ---------------------------------------------------------------------------------- mounts
def _mount_tmpfs(folder: Path, options: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the read-only and full-disk cases are skipped")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); read-only/full-disk cases skipped")


@pytest.fixture
def mounts():
    made = []

    def mount(folder: Path, options: str) -> Path:
        _mount_tmpfs(folder, options)
        made.append(folder)
        return folder

    yield mount
    for folder in reversed(made):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill_up(folder: Path) -> None:
    """Write a file until the file system is full."""
    handle = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(handle, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(handle)


FILE_COMMANDS = ("synthseg", "sclimbic", "scepi", "samseg", "samseg-filter", "run-engine")


def _prepare(command, assets, tmp_path):
    _needs(command, assets)
    source, _ = assets[command]
    inp = tmp_path / "in" / source.name
    inp.parent.mkdir()
    inp.write_bytes(source.read_bytes())
    return inp, ([inp.parent], snapshot(inp.parent))


# ---------------------------------------------------------------------------------- output faults
@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_read_only_output_folder(command, assets, tmp_path, mounts):
    inp, inputs = _prepare(command, assets, tmp_path)
    out = mounts(tmp_path / "ro", "ro,size=1m")
    before = snapshot(out)
    result = run_cli(argv_for(command, assets, inp, out))
    check_fault("read-only folder", command, result, 1, [str(out)], before, [out], inputs)
    assert "read-only" in result.stderr


def test_one_read_only_folder_of_two_stops_the_run_before_any_work(assets, tmp_path, mounts):
    """Issue item 1: --o in a writable folder, --vol on a read-only one: nothing is written to either."""
    inp, inputs = _prepare("synthseg", assets, tmp_path)
    ok = tmp_path / "ok"
    ok.mkdir()
    read_only = mounts(tmp_path / "ro", "ro,size=1m")
    argv = argv_for("synthseg", assets, inp, ok)
    argv[argv.index("--vol") + 1] = str(read_only / "vol.csv")
    before = snapshot(ok, read_only)
    result = run_cli(argv, fault_at="before-network")
    check_fault("one of two folders read-only", "synthseg", result, 1, [str(read_only / "vol.csv")], before,
                [ok, read_only], inputs)
    assert "read-only" in result.stderr


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_full_disk(command, assets, tmp_path, mounts):
    inp, inputs = _prepare(command, assets, tmp_path)
    out = mounts(tmp_path / "full", "size=64k")
    fill_up(out)
    before = snapshot(out)
    result = run_cli(argv_for(command, assets, inp, out))
    check_fault("full disk", command, result, 1, [str(out)], before, [out], inputs)
    assert "disk is full" in result.stderr


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_disk_too_small_for_the_outputs_before_any_work(command, assets, tmp_path, mounts):
    """One 4 KiB page: the 4 KiB probe fits, the outputs (two files or more, so two pages at least) do not."""
    inp, inputs = _prepare(command, assets, tmp_path)
    out = mounts(tmp_path / "small", "size=4k")
    argv = argv_for(command, assets, inp, out)
    if command == "scepi":  # its QC pages make the second file
        argv += ["-qc", str(out / "qc")]
    before = snapshot(out)
    # the signal at before-network would fire if the pre-flight let the run through
    result = run_cli(argv, fault_at="before-network")
    check_fault("disk too small for outputs", command, result, 1, [str(out)], before, [out], inputs)
    last = result.stderr.strip().splitlines()[-1]
    assert "not enough free space" in last and "4.0 KiB free" in last, last


@pytest.mark.parametrize("command", ("synthseg", "sclimbic", "samseg-filter"))
def test_output_path_is_a_folder(command, assets, tmp_path):
    inp, inputs = _prepare(command, assets, tmp_path)
    out = tmp_path / "out"
    argv = argv_for(command, assets, inp, out)
    target = Path(argv[argv.index("--o") + 1])
    target.mkdir(parents=True)
    before = snapshot(out)
    result = run_cli(argv)
    assert result.returncode in (1, 2)
    check_fault("output is a folder", command, result, result.returncode, [target.name], before, [out], inputs)


@pytest.mark.parametrize("command", ("samseg", "scepi", "run-engine"))
def test_output_folder_is_a_file(command, assets, tmp_path):
    inp, inputs = _prepare(command, assets, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    argv = argv_for(command, assets, inp, out)
    if command == "samseg":
        (out / "samseg").write_text("a file")
        names = ["samseg"]
    elif command == "run-engine":
        argv[argv.index("-o") + 1] = str(out / "file.txt")
        (out / "file.txt").write_text("a file")
        names = ["file.txt"]
    else:
        argv[argv.index("-o") + 1] = str(out / "file.txt")
        (out / "file.txt").write_text("a file")
        argv[argv.index("-o") + 1] = str(out / "file.txt") + "/"
        names = ["file.txt"]
    before = snapshot(out)
    result = run_cli(argv)
    check_fault("output is a folder", command, result, result.returncode, names, before, [out], inputs)
    assert result.returncode in (1, 2)


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_missing_output_parent_is_removed_again_when_interrupted(command, assets, tmp_path):
    inp, inputs = _prepare(command, assets, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    deep = out / "new" / "deeper"
    before = snapshot(out)
    result = run_cli(argv_for(command, assets, inp, deep), fault_at="writing")
    check_fault("missing parent + SIGTERM", command, result, 128 + signal.SIGTERM, ["SIGTERM"], before, [out], inputs)
    # and without the fault the folders are made and the outputs written, each printed once
    result = run_cli(argv_for(command, assets, inp, deep))
    assert result.returncode == 0, result.stderr[-2000:]
    if command != "samseg":
        written = [line for line in result.stdout.splitlines() if line.startswith("wrote ")]
        assert written and all(Path(line[6:]).exists() for line in written)
    TABLE[("missing parent (created)", command)] = "ok"


# ---------------------------------------------------------------------------------- signals
SIGNAL_CASES = [("SIGTERM", "before-network"), ("SIGTERM", "network"), ("SIGTERM", "writing"),
                ("SIGINT", "network"), ("SIGHUP", "writing")]


@pytest.mark.parametrize("command", ("synthseg", "sclimbic", "scepi", "samseg-filter", "run-engine"))
@pytest.mark.parametrize("name,point", SIGNAL_CASES)
def test_signal_removes_every_temporary(command, name, point, assets, tmp_path):
    inp, inputs = _prepare(command, assets, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("the user's own file")
    before = snapshot(out)
    result = run_cli(argv_for(command, assets, inp, out), fault_at=point, fault_signal=name)
    signum = getattr(signal, name)
    check_fault(f"{name} at {point}", command, result, 128 + signum, [name], before, [out], inputs)


def test_samseg_signals_before_during_and_while_writing(assets, tmp_path):
    inp, inputs = _prepare("samseg", assets, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(out)
    for name, point in (("SIGTERM", "before-network"), ("SIGINT", "before-network"), ("SIGHUP", "before-network"),
                        ("SIGTERM", "network"), ("SIGINT", "network"),     # network: while SAMSEG runs
                        ("SIGTERM", "writing"), ("SIGHUP", "writing")):    # writing: its files made, not moved in
        result = run_cli(argv_for("samseg", assets, inp, out), fault_at=point, fault_signal=name)
        check_fault(f"{name} at {point}", "samseg", result, 128 + getattr(signal, name), [name], before,
                    [out], inputs)


@pytest.mark.parametrize("command", ("synthseg", "sclimbic", "scepi", "samseg", "samseg-filter", "run-engine"))
def test_sigkill_while_writing_then_rerun(command, assets, tmp_path):
    inp, inputs = _prepare(command, assets, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(argv_for(command, assets, inp, out), fault_at="writing", fault_signal="SIGKILL")
    assert result.returncode == -signal.SIGKILL
    stale = [p for p in out.rglob("*") if p.name.startswith(".segsuite-")]
    assert stale, "the killed run should have left its temporaries (nothing can remove them)"
    # nothing outside them (run-engine stages whole bundle folders: their files are temporaries too)
    assert not [p for p in out.rglob("*") if p.is_file() and not _in_temporary(p.relative_to(out))]
    result = run_cli(argv_for(command, assets, inp, out))
    assert result.returncode == 0, result.stderr[-2000:]
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".segsuite-")]
    assert not leftovers, leftovers
    written = {Path(line[len("wrote "):]).resolve() for line in result.stdout.splitlines() if line.startswith("wrote ")}
    assert written == {p.resolve() for p in out.rglob("*") if p.is_file()}
    assert snapshot(inp.parent) == inputs[1]
    TABLE[("SIGKILL, rerun", command)] = "ok"


def _in_temporary(relative: Path) -> bool:
    return any(part.startswith(".segsuite-") for part in relative.parts)


# ---------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("command", FILE_COMMANDS)
@pytest.mark.parametrize("kind", ("truncated", "not an image"))
def test_bad_input_before_any_work(command, kind, assets, tmp_path):
    inp, _ = _prepare(command, assets, tmp_path)
    data = inp.read_bytes()
    inp.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"this is not an image at all" * 10)
    inputs = ([inp.parent], snapshot(inp.parent))
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(out)
    # the signal at before-network would fire if the pre-flight let the input through
    result = run_cli(argv_for(command, assets, inp, out), fault_at="before-network")
    check_fault(f"{kind} input", command, result, 1, [str(inp)], before, [out], inputs)


# ---------------------------------------------------------------------------------- models
BODY = os.urandom(300_000)


@pytest.fixture
def model_env(tmp_path, monkeypatch):
    server = ModelServer()
    route = server.add("/w.h5", BODY, chunk_delay=0.002)
    data = tiny_registry([file_entry("w.h5", BODY, [server.url("/w.h5")])])
    monkeypatch.setenv("SEGSUITE_REGISTRY", str(write_registry(tmp_path / "registry.json", data)))
    Path(os.environ["SEGSUITE_CONFIG"]).write_text(json.dumps({"download": {"retries": 1, "backoff": 0.01,
                                                                             "min_free_bytes": 0}}))
    yield Path(os.environ["SEGSUITE_HOME"]), route
    server.close()


def _model_files(home: Path) -> dict:
    return {k: v for k, v in snapshot(home).items() if "/locks" not in k and not k.endswith("trusted-hashes.json")}


@pytest.mark.parametrize("name", ("SIGTERM", "SIGINT", "SIGHUP"))
@pytest.mark.parametrize("point", ("before-network", "network"))
def test_models_download_interrupted(model_env, name, point):
    home, _ = model_env
    before = {k: v for k, v in _model_files(home).items()}
    result = run_cli(["models", "download", "tiny"], fault_at=point, fault_signal=name)
    assert result.returncode == 128 + getattr(signal, name), result.stderr
    left = {k for k in _model_files(home) if k not in before}
    # only folders and a resumable .part of the download may stay (never an installed model)
    assert not [k for k in left if "/models/tiny" in k], left
    assert all(k.endswith((".part", "downloads", "models")) for k in left), left
    assert name in result.stderr.splitlines()[-1]
    TABLE[(f"{name} at {point}", "models")] = "ok"


def test_models_read_only_and_full_cache(model_env, tmp_path, mounts, monkeypatch):
    for fault, options, words in (("read-only folder", "ro,size=1m", "permission denied"),
                                  ("full disk", "size=64k", "disk is full")):
        home = mounts(tmp_path / fault.replace(" ", "_"), options)
        if "ro" not in options.split(","):
            fill_up(home)
        monkeypatch.setenv("SEGSUITE_HOME", str(home))
        before = snapshot(home)
        result = run_cli(["models", "download", "tiny"])
        assert result.returncode == 1, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert str(home) in last and "Traceback" not in result.stderr, last
        assert snapshot(home) == before
        TABLE[(fault, "models")] = "ok"


def test_models_sigkill_during_download_then_rerun(model_env):
    home, _ = model_env
    result = run_cli(["models", "download", "tiny"], fault_at="network", fault_signal="SIGKILL")
    assert result.returncode == -signal.SIGKILL
    result = run_cli(["models", "download", "tiny"])
    assert result.returncode == 0, result.stderr
    installed = home / "models" / "tiny" / "w.h5"
    assert installed.read_bytes() == BODY
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]
    TABLE[("SIGKILL, rerun", "models")] = "ok"
