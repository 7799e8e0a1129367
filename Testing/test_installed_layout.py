"""The extension as Slicer's build installs it: real CMake, the Slicer macros replaced by stand-ins.

Testing/slicer_cmake/ holds a stand-in SlicerConfig.cmake and UseSlicer.cmake that do with the files
what Slicer 5.10's slicerMacroBuildScriptedModule and CTK's ctkMacroCompilePythonScript do (copy
every SCRIPTS and RESOURCES entry, relative path kept, into one lib/Slicer-5.10/qt-scripted-modules
folder, install that folder). The installed folder is then used from fresh interpreters whose
path holds it and the requirements but not the checkout: anything the code reads at run time that
the CMake lists leave out fails here (a second case removes registry.json from a copy of the lists).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, shared_path

STANDINS = REPO_ROOT / "Testing" / "slicer_cmake"
MODULE_DIR = "lib/Slicer-5.10/qt-scripted-modules"
MODULE_NAMES = ["SynthSeg", "ScLimbic", "SpinalCordEPI", "SamsegBrainMask", "SegmentationSuiteModels",
                "SegmentationSuitePreprocess"]

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake on PATH")


def build_and_install(source: Path, work: Path) -> Path:
    """cmake configure, build and install ``source``; the installed qt-scripted-modules folder."""
    build, prefix = work / "build", work / "install"
    for command in (["cmake", "-S", str(source), "-B", str(build), f"-DSlicer_DIR={STANDINS}"],
                    ["cmake", "--build", str(build)],
                    ["cmake", "--install", str(build), "--prefix", str(prefix)]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{command[:2]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return prefix / MODULE_DIR


def installed_env(folder: Path, home: Path) -> dict:
    """The environment of a fresh interpreter: the installed folder first, no checkout on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGSUITE_", "PYTHON"))}
    env.update(PYTHONPATH=str(folder), SEGSUITE_HOME=str(home), SEGSUITE_CONFIG=str(home / "config.json"),
               PYTHONDONTWRITEBYTECODE="1")
    return env


def run_installed(folder: Path, home: Path, args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=installed_env(folder, home), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def segsuite_cli(folder: Path, home: Path, cwd: Path, *args) -> subprocess.CompletedProcess:
    return run_installed(folder, home, ["-m", "segsuite", "--progress", "none", *map(str, args)], cwd)


# Run in the fresh interpreter: import every Slicer-free module from the installed folder and
# say where each came from (the module files themselves need Slicer's GUI: they are compiled).
IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
folder = sys.argv[1]
import segsuite, segsuite_slicer
names = ["segsuite", "segsuite_slicer"]
for package in (segsuite, segsuite_slicer):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        names.append(info.name)
skipped = {"segsuite_slicer.module_gui", "segsuite_slicer.preprocess_gui"}   # import qt: Slicer's GUI only
try:
    import slicer, vtk  # noqa: F401  (slicer-core gives MRML without the GUI)
except ImportError:
    skipped.add("segsuite_slicer.mrml")
# the cohort runner's extras (requirements-cohort.txt): not part of what Slicer installs
optional = {"dask", "distributed", "dask_jobqueue", "bids2table", "yaml", "pyarrow", "bids"}
files = {}
for name in names:
    if name in skipped or name.endswith(".__main__"):
        continue
    try:
        files[name] = importlib.import_module(name).__file__
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in optional:
            raise
        skipped.add(name)
for module in sys.argv[2:]:
    path = f"{folder}/{module}.py"
    compile(open(path, encoding="utf-8").read(), path, "exec")
from segsuite_slicer import models_client
models = models_client.list_models()
print(json.dumps({"files": files, "skipped": sorted(skipped), "models": [m["id"] for m in models],
                  "cache": models_client.cache_folder()}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("installed_layout")
    return build_and_install(REPO_ROOT, work), work


def registry_ids() -> list[str]:
    data = json.loads((REPO_ROOT / "SegmentationSuite/segsuite/models/registry.json").read_text(encoding="utf-8"))
    models = data["models"] if isinstance(data, dict) and "models" in data else data
    return [m["id"] for m in models] if isinstance(models, list) else list(models)


def test_every_package_file_is_installed_with_its_relative_path(installed):
    folder, _ = installed
    source = REPO_ROOT / "SegmentationSuite"
    for package in ("segsuite", "segsuite_slicer"):
        for path in (source / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                relative = path.relative_to(source)
                assert (folder / relative).is_file(), f"{relative} is not installed"
    for name in MODULE_NAMES:
        assert (folder / f"{name}.py").is_file()
        assert (folder / "Resources" / "UI" / f"{name}.ui").is_file()
        assert (folder / "Resources" / "Icons" / f"{name}.png").is_file()


def test_generic_tests_are_named_after_the_real_modules(installed):
    _, work = installed
    listing = subprocess.run(["ctest", "-N"], cwd=work / "build", capture_output=True, text=True).stdout
    tests = set(re.findall(r"^\s*Test\s+#\d+:\s*(\S+)", listing, re.MULTILINE))
    generic = {t[len("py_nomainwindow_qSlicer"):-len("ModuleGenericTest")] for t in tests
               if t.startswith("py_nomainwindow_qSlicer")}
    assert generic == set(MODULE_NAMES)
    for name in generic:        # Slicer registers slicer.modules.<name lower case> for class <name>
        text = (REPO_ROOT / "SegmentationSuite" / f"{name}.py").read_text(encoding="utf-8")
        assert f"class {name}(ScriptedLoadableModule)" in text
    assert {f"py_{name}" for name in MODULE_NAMES} <= tests          # each module's self-test


def test_installed_folder_imports_lists_and_serves_the_models_client(installed, tmp_path):
    folder, _ = installed
    done = run_installed(folder, tmp_path / "home", ["-c", IMPORT_ALL, str(folder), *MODULE_NAMES], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    checkout = str(REPO_ROOT / "SegmentationSuite")
    for name, file in report["files"].items():
        assert file.startswith(str(folder)) and not file.startswith(checkout), f"{name} came from {file}"
    assert "segsuite.models.registry" in report["files"] and "segsuite_slicer.install" in report["files"]
    # only the cohort runner may be left out, and only for its optional extras
    assert all(name.startswith("segsuite.cohort.") or name in ("segsuite_slicer.module_gui", "segsuite_slicer.mrml",
                                                                 "segsuite_slicer.preprocess_gui")
               for name in report["skipped"]), report["skipped"]
    assert report["models"] == registry_ids()
    assert Path(report["cache"]) == tmp_path / "home"

    listing = segsuite_cli(folder, tmp_path / "home", tmp_path, "models", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert [m["id"] for m in json.loads(listing.stdout)] == registry_ids()


@pytest.mark.slow
def test_engines_run_from_the_installed_folder_on_real_input(installed, tmp_path):
    """ScLimbic (fixture weights, 64 mm FOV), SynthSeg (fixture weights, 64^3 patch), sc_epi (tiny nnU-Net), samseg-filter (real SAMSEG)."""
    folder, _ = installed
    home = tmp_path / "home"
    t1 = shared_path("data", "t1", "t1_crop.nii.gz")
    models = shared_path("fixtures", "sclimbic", "models")
    out = tmp_path / "t1.sclimbic.nii.gz"
    done = segsuite_cli(folder, home, tmp_path, "sclimbic", "--i", t1, "--o", out, "--fov", "64", "--threads", "1",
                        "--model", models / "sclimbic_fixture_seed16.h5", "--ctab", models / "sclimbic.ctab",
                        "--population-stats", models / "sclimbic.volstats.csv", "--write_volumes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.stat().st_size > 0

    seg = shared_path("data", "samseg", "t1_crop_2mm", "seg.mgz")
    mask = tmp_path / "brain_mask.nii.gz"
    done = segsuite_cli(folder, home, tmp_path, "samseg-filter", "--i", seg, "--o", mask)
    assert done.returncode == 0, done.stderr[-3000:]
    assert mask.stat().st_size > 0

    # SynthSeg --fast on a centred 64^3 patch keeps the full-size networks to a few seconds.
    weights = tmp_path / "synthseg_2.0.h5"
    with gzip.open(shared_path("fixtures", "synthseg", "models", "synthseg_2.0.h5.gz"), "rb") as reader, \
            open(weights, "wb") as writer:
        shutil.copyfileobj(reader, writer)
    labels, volumes = tmp_path / "t1.synthseg.nii.gz", tmp_path / "t1.volumes.csv"
    done = segsuite_cli(folder, home, tmp_path, "synthseg", "--i", shared_path("fixtures", "synthseg", "inputs",
                        "t1_crop_fov.nii.gz"), "--o", labels, "--vol", volumes, "--fast", "--crop", "64",
                        "--threads", "1", "--model", weights)
    assert done.returncode == 0, done.stderr[-3000:]
    assert labels.stat().st_size > 0 and "total intracranial" in volumes.read_text()

    pytest.importorskip("nnunetv2")
    from segsuite.scepi.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "scepi_model", patch_size=(8, 32, 32))
    epi = shared_path("data", "spinal_cord", "sub-leipzigR01_task-rest_desc-mocomean_bold.nii.gz")
    cord = tmp_path / "cord.nii.gz"
    done = segsuite_cli(folder, home, tmp_path, "scepi", "-i", epi, "-o", cord, "--model", model)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cord.stat().st_size > 0


def test_listing_fails_when_registry_json_is_left_out_of_the_cmake_lists(tmp_path):
    """The same build from a copy whose CMake lists drop registry.json: the installed layout breaks."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy2(REPO_ROOT / "CMakeLists.txt", source / "CMakeLists.txt")
    shutil.copytree(REPO_ROOT / "SegmentationSuite", source / "SegmentationSuite",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    lists = source / "SegmentationSuite" / "CMakeLists.txt"
    text = lists.read_text(encoding="utf-8")
    anchor = "slicerMacroBuildScriptedModule("
    assert anchor in text
    text = text.replace(anchor, 'list(FILTER MODULE_PYTHON_RESOURCES EXCLUDE REGEX "registry\\\\.json$")\n' + anchor, 1)
    lists.write_text(text, encoding="utf-8")
    folder = build_and_install(source, tmp_path)
    assert not (folder / "segsuite" / "models" / "registry.json").exists()
    listing = segsuite_cli(folder, tmp_path / "home", tmp_path, "models", "list", "--json")
    assert listing.returncode != 0
    assert "registry" in listing.stderr
