"""The install path as Slicer runs it, with real pip (issue 29, defects 1, 2, 4, 9, 10).

A child Python runs ``segsuite_slicer.install.ensure_requirements`` against the stand-in ``slicer``
package of Testing/slicer_standin/, which builds each pip run's arguments as Slicer does
(``slicer.packaging.pip_install`` at v5.12.3, ``slicer.util.pip_install`` at v5.10.0; PyTorchUtils
as SlicerPyTorch e1c85cc) and runs this interpreter's real pip. In CI's Slicer environments
(.ci/slicer_python_envs) that is pip 25.1.1 (5.10) and 26.1.1 (5.12), as Slicer bundles them.
pip runs offline and as a dry run (PIP_NO_INDEX, PIP_DRY_RUN; PIP_REPORT per run): nothing here
changes the environment. A sitecustomize makes chosen distributions look absent to the install
code only (pip still sees them installed, so the steps it is given succeed when well formed).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("packaging")
from packaging.utils import canonicalize_name  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402
from segsuite_slicer import install  # noqa: E402

STANDIN = REPO_ROOT / "Testing" / "slicer_standin"
SLICER_VERSIONS = ["5.10", "5.12"]

HIDE = """
import importlib.metadata as _m
_hidden = {%s}
_version = _m.version
def version(name):
    if name.lower().replace("_", "-") in _hidden:
        raise _m.PackageNotFoundError(name)
    return _version(name)
_m.version = version
"""

ENSURE = """
import sys
from segsuite_slicer import install
print("RESULT", install.ensure_requirements(sys.argv[1]))
"""


def installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def make_wheel(folder: Path, name: str, version: str, requires=()) -> Path:
    """A metadata-only wheel (pip resolves it; the dry runs never install it)."""
    stem = f"{name.replace('-', '_')}-{version}"
    files = {f"{stem}.dist-info/METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: %s\n%s" % (
                 name, version, "".join(f"Requires-Dist: {spec}\n" for spec in requires)),
             f"{stem}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{stem}.dist-info/RECORD,,")
    files[f"{stem}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


class StandinRun:
    def __init__(self, done: subprocess.CompletedProcess, log: Path):
        self.done = done
        self.entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    @property
    def pip_runs(self) -> list:
        return [entry for entry in self.entries if entry.get("module") == "pip"]

    def planned(self) -> list[str]:
        """Every distribution the pip runs would install or change (from their --report files)."""
        names = []
        for entry in self.pip_runs:
            if entry["report"] and os.path.getsize(entry["report"]):
                report = json.loads(Path(entry["report"]).read_text())
                names += [item["metadata"]["name"] for item in report.get("install", [])]
        return names


def run_standin(tmp_path: Path, slicer_version: str, script: str, *args, hide=(), testing=False,
                wheels: Path | None = None) -> StandinRun:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE % ", ".join(repr(canonicalize_name(n)) for n in hide))
    reports, log = tmp_path / "reports", tmp_path / "standin.jsonl"
    reports.mkdir(exist_ok=True)
    if wheels is None:
        wheels = tmp_path / "wheels"
        wheels.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "SEGSUITE_STANDIN"))}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(STANDIN), str(REPO_ROOT / "SegmentationSuite")]),
               PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DRY_RUN="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_REPORT_DIR=str(reports),
               SEGSUITE_STANDIN_SLICER=slicer_version, SEGSUITE_STANDIN_LOG=str(log),
               SEGSUITE_STANDIN_TESTING="1" if testing else "0")
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    return StandinRun(done, log)


def requirement_arguments(args: list[str]) -> list[str]:
    """The requirements of a pip install argument list (not options, not the constraints file)."""
    found, skip_next = [], False
    for arg in args[1:]:
        if skip_next:
            skip_next = False
        elif arg in ("-c", "--constraint"):
            skip_next = True
        elif not arg.startswith("-"):
            found.append(arg)
    return found


def test_pip_steps_are_never_empty_and_no_deps_comes_first():
    assert install.pip_steps([], []) == []
    assert install.pip_steps(["tqdm>=4.60"], []) == [["tqdm>=4.60"]]
    assert install.pip_steps([], ["nnunetv2>=2.5"]) == [["--no-deps", "nnunetv2>=2.5"]]
    assert install.pip_steps(["a>=1"], ["b>=1", "c>=1"]) == [["--no-deps", "b>=1", "c>=1"], ["a>=1"]]


@pytest.mark.parametrize("slicer_version", SLICER_VERSIONS)
def test_first_apply_of_spinal_cord_epi_gives_pip_a_requirement_in_every_run(tmp_path, slicer_version):
    """Defect 1: on 5.12 the old plan called pip_install([], no_deps_requirements=...), whose normal
    step is `pip install -c FILE`: pip exits 1, "You must give at least one requirement"."""
    no_deps = ["nnunetv2", "dynamic-network-architectures"]
    if not all(installed(name) for name in no_deps + ["tqdm"]):
        pytest.skip("needs nnunetv2, dynamic-network-architectures and tqdm installed (requirements-scepi*.txt)")
    run = run_standin(tmp_path, slicer_version, ENSURE, "scepi", hide=no_deps + ["tqdm"])
    assert run.done.returncode == 0, run.done.stderr[-3000:] + json.dumps(run.pip_runs)[-3000:]
    assert "RESULT True" in run.done.stdout
    assert [entry["answer"] for entry in run.entries if "dialog" in entry] == [True]     # asked once
    assert run.pip_runs and all(entry["returncode"] == 0 for entry in run.pip_runs)
    steps = [entry["args"] for entry in run.pip_runs]
    assert all(requirement_arguments(args) for args in steps), steps
    assert all("-c" in args for args in steps)                      # every run under the constraints file
    no_deps_steps = [args for args in steps if "--no-deps" in args]
    assert len(no_deps_steps) == 1 and requirement_arguments(no_deps_steps[0]) == install.SCEPI_NO_DEPS_REQUIREMENTS
    assert ["tqdm>=4.60"] in [requirement_arguments(args) for args in steps if "--no-deps" not in args]
    assert run.planned() == []                                      # pip found all of it already there


@pytest.mark.parametrize("slicer_version", SLICER_VERSIONS)
def test_testing_mode_installs_nothing_and_says_why(tmp_path, slicer_version):
    """Defect 2: the factory runs Slicer with --testing; 5.12's pip_ensure skipped silently (then
    `import nibabel` failed), 5.10 pip-installed into the factory's Slicer."""
    run = run_standin(tmp_path, slicer_version, ENSURE, "synthseg", hide=["tqdm", "torch"], testing=True)
    assert run.done.returncode != 0
    assert "TestingModeRefusal" in run.done.stderr and "testing mode" in run.done.stderr
    assert "tqdm>=4.60" in run.done.stderr
    assert run.pip_runs == [] and [entry for entry in run.entries if "dialog" in entry or "event" in entry] == []


@pytest.mark.parametrize("slicer_version", SLICER_VERSIONS)
def test_light_the_torch_is_installed_under_the_pins_when_it_fits_them(tmp_path, slicer_version):
    """Slicer 5.10 (pip 25.1.1) and light-the-torch 0.8.1 (pip<26.1): it is installed, under the constraints."""
    if not installed("torch"):
        pytest.skip("needs torch installed (pip resolves the fallback against it)")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "light-the-torch", "0.8.1", requires=["pip>=22.3"])
    run = run_standin(tmp_path, slicer_version, ENSURE, "synthseg", hide=["torch"], wheels=wheels)
    assert run.done.returncode == 0, run.done.stderr[-3000:]
    ltt_steps = [entry["args"] for entry in run.pip_runs if "light-the-torch>=0.5" in entry["args"]]
    assert len(ltt_steps) == 1 and ltt_steps[0][-2] == "-c"
    assert [canonicalize_name(name) for name in run.planned()] == ["light-the-torch"]


@pytest.mark.parametrize("slicer_version", SLICER_VERSIONS)
def test_torch_install_never_changes_slicers_pip(tmp_path, slicer_version):
    """Defect 9: PyTorchUtils pip-installs light-the-torch unconstrained, and light-the-torch pins
    pip below what Slicer ships (0.8.1: pip<26.1; Slicer 5.12.3 bundles pip 26.1.1): pip downgrades
    Slicer's pip. Here a light-the-torch that wants an older pip than the one installed is offered
    (with that older pip): no pip run of ours may plan to change pip."""
    if not installed("torch"):
        pytest.skip("needs torch installed (pip resolves the fallback against it)")
    pip_version = importlib.metadata.version("pip")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "light-the-torch", "0.8.1", requires=[f"pip<{pip_version}", "packaging>=23.0"])
    make_wheel(wheels, "pip", "22.3")
    run = run_standin(tmp_path, slicer_version, ENSURE, "synthseg", hide=["torch"], wheels=wheels)
    planned = [canonicalize_name(name) for name in run.planned()]
    assert "pip" not in planned, f"a pip run would change Slicer's pip: {run.pip_runs}"
    assert run.done.returncode == 0, run.done.stderr[-3000:]
    torch_steps = [args for args in (entry["args"] for entry in run.pip_runs) if "torch>=2.1" in args]
    assert torch_steps and all("-c" in args for args in torch_steps)
    assert not any("light-the-torch>=0.5" in entry["args"] for entry in run.pip_runs)  # refused by the dry run


@pytest.mark.parametrize("slicer_version", SLICER_VERSIONS)
def test_samseg_filter_asks_for_no_torch(tmp_path, slicer_version):
    """Defect 4: the SAMSEG filter is numpy/scipy only; torch missing must not start an install."""
    run = run_standin(tmp_path, slicer_version, ENSURE, "samseg-filter", hide=["torch"])
    assert run.done.returncode == 0, run.done.stderr[-3000:]
    assert "RESULT True" in run.done.stdout and run.entries == []
    assert not install.needs_torch("samseg-filter") and not install.needs_torch("models")
    assert all(install.needs_torch(engine) for engine in ("synthseg", "sclimbic", "scepi"))


CONSTRAINTS = """
import importlib.metadata, sys
sys.path.append(sys.argv[2])          # as setuptools' _vendor is appended when setuptools is imported
import setuptools  # noqa: F401
from segsuite_slicer import install
open(sys.argv[1], "w").write(install.bundled_constraints())
print("FIRST", importlib.metadata.version("packaging"))
"""


def test_bundled_constraints_pin_each_package_once_and_pip_reads_them(tmp_path):
    """Defect 10: a second packaging distribution later on the path (setuptools/_vendor holds
    packaging 26.0 beside Slicer 5.12's 26.2) gave two pins; pip then finds no version at all."""
    vendor = tmp_path / "vendor"
    (vendor / "packaging-0.1.dist-info").mkdir(parents=True)
    (vendor / "packaging-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: packaging\nVersion: 0.1\n")
    constraints = tmp_path / "constraints.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PYTHONPATH"] = str(REPO_ROOT / "SegmentationSuite")
    done = subprocess.run([sys.executable, "-c", CONSTRAINTS, str(constraints), str(vendor)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first = done.stdout.split("FIRST ")[1].strip()
    names = [canonicalize_name(line.split("==")[0]) for line in constraints.read_text().splitlines()]
    assert len(names) == len(set(names)), constraints.read_text()
    assert f"packaging=={first}" in constraints.read_text().splitlines()      # the one imported and seen by pip
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    read = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-c", str(constraints),
                           "packaging>=20"], env=env, capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stdout + read.stderr
