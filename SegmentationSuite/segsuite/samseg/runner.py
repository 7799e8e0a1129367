"""Running SAMSEG itself, as a separate program, then the brain-mask filter on its output.

SAMSEG (FreeSurfer's run_samseg, or the PyPI ``samseg`` package) needs numpy<2 and
Python <= 3.11, so it never runs inside segsuite's own environment: it is found as an
executable, in this order,

1. ``$FREESURFER_HOME/bin/run_samseg`` (a FreeSurfer 7.x install),
2. ``run_samseg`` on PATH,
3. the Python of a dedicated virtual environment holding the PyPI package:
   ``$SEGSUITE_SAMSEG_PYTHON``, else ``<segsuite home>/samseg-venv`` (``segsuite samseg --setup``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from ..errors import InputError, SegSuiteError, UsageError
from ..progress import ProgressCallback, ensure_callback, sub_progress
from ..result import SegmentationResult
from .filter import SamsegBrainMask

SAMSEG_PACKAGE = "samseg==0.4a0"
SETUP_REQUIREMENTS = (SAMSEG_PACKAGE, "numpy<2")
SUPPORTED_PYTHONS = ((3, 9), (3, 10), (3, 11))  # the PyPI package has wheels for these only
VENV_FOLDER_NAME = "samseg-venv"

# Files the runner adds to SAMSEG's own outputs.
BRAIN_MASK_NAME = "brain_mask.mgz"
CLEANED_SEG_NAME = "seg_cleaned.mgz"
VOLUMES_NAME = "volumes.csv"
LOG_NAME = "run_samseg.log"

# SAMSEG's atlas names that differ from FreeSurferColorLUT's names for the same label.
_SAMSEG_TO_LUT_NAMES = {"Soft_Nonbrain_Tissue": "Head-ExtraCerebral", "Fluid_Inside_Eyes": "Eye-Fluid"}

LogCallback = Callable[[str], None]


def default_venv_dir() -> Path:
    from ..models.config import model_home

    return model_home() / VENV_FOLDER_NAME


def venv_python(venv_dir: str | os.PathLike) -> Path:
    venv_dir = Path(venv_dir)
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def setup_command_text(venv_dir: Optional[str | os.PathLike] = None) -> str:
    """The shell commands that create SAMSEG's own environment by hand."""
    venv_dir = Path(venv_dir) if venv_dir else default_venv_dir()
    return (f"python3.11 -m venv {venv_dir} && "
            f"{venv_python(venv_dir)} -m pip install {SAMSEG_PACKAGE} 'numpy<2'")


@dataclass
class SamsegExecutable:
    """How to start SAMSEG: the command prefix and where it was found."""

    command: list[str]
    origin: str
    uses_python: bool = False


# Runs the PyPI package's command-line entry point with the venv's interpreter.
_PYTHON_ENTRY = "import sys; from samseg.cli.run_samseg import main; sys.argv[0] = 'run_samseg'; sys.exit(main())"


def find_samseg(executable: Optional[str | os.PathLike] = None) -> SamsegExecutable:
    """Locate SAMSEG (see the module docstring for the order); clear error when absent."""
    if executable:
        path = Path(executable).expanduser().absolute()
        if not path.exists():
            raise InputError(f"SAMSEG executable not found: {path}")
        if _is_python(path):
            return SamsegExecutable([str(path), "-c", _PYTHON_ENTRY], f"Python {path}", uses_python=True)
        return SamsegExecutable([str(path)], str(path))
    freesurfer = os.environ.get("FREESURFER_HOME")
    if freesurfer:
        candidate = Path(freesurfer) / "bin" / "run_samseg"
        if candidate.is_file():
            return SamsegExecutable([str(candidate)], f"FreeSurfer ({candidate})")
    on_path = shutil.which("run_samseg")
    if on_path:
        return SamsegExecutable([on_path], f"PATH ({on_path})")
    configured = os.environ.get("SEGSUITE_SAMSEG_PYTHON")
    if configured:
        python = Path(configured).expanduser()
        if not python.exists():
            raise InputError(f"SEGSUITE_SAMSEG_PYTHON is set to {python}, which does not exist")
        return SamsegExecutable([str(python), "-c", _PYTHON_ENTRY], f"SEGSUITE_SAMSEG_PYTHON ({python})", uses_python=True)
    python = venv_python(default_venv_dir())
    if python.exists():
        return SamsegExecutable([str(python), "-c", _PYTHON_ENTRY], f"segsuite's SAMSEG environment ({python})", uses_python=True)
    raise SegSuiteError(
        "SAMSEG was not found: set FREESURFER_HOME to a FreeSurfer 7 install (it has bin/run_samseg), "
        "put run_samseg on PATH, or create segsuite's own SAMSEG environment with 'segsuite samseg --setup' "
        f"(it runs: {setup_command_text()}; needs Python 3.9-3.11), or point SEGSUITE_SAMSEG_PYTHON at the "
        "python of an environment where the samseg package is installed")


def _is_python(path: Path) -> bool:
    return re.fullmatch(r"python(\d+(\.\d+)?)?(\.exe)?", path.name.lower()) is not None


def find_base_python(python: Optional[str] = None) -> str:
    """A Python 3.9-3.11 interpreter to build SAMSEG's environment with."""
    candidates = [python] if python else []
    if not python:
        if sys.version_info[:2] in SUPPORTED_PYTHONS:
            candidates.append(sys.executable)
        candidates += [shutil.which(f"python{major}.{minor}") for major, minor in reversed(SUPPORTED_PYTHONS)]
    for candidate in candidates:
        if not candidate:
            continue
        version = _python_version(candidate)
        if version in SUPPORTED_PYTHONS:
            return candidate
        if python:
            raise UsageError(f"{python} is Python {'.'.join(map(str, version or ())) or '(unknown)'}; "
                             "SAMSEG's package needs Python 3.9, 3.10 or 3.11")
    raise SegSuiteError(
        "SAMSEG's package needs Python 3.9, 3.10 or 3.11 and none was found: install one "
        "(e.g. 'apt install python3.11-venv', pyenv or conda) and pass it with --python")


def _python_version(python: str) -> Optional[tuple[int, int]]:
    try:
        output = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                                capture_output=True, text=True, timeout=60, env=_clean_env())
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        major, minor = output.stdout.split()
        return int(major), int(minor)
    except ValueError:
        return None


def setup_samseg_venv(venv_dir: Optional[str | os.PathLike] = None, python: Optional[str] = None,
                      log: Optional[LogCallback] = None) -> Path:
    """Create (or reuse) the virtual environment holding the PyPI samseg package.

    Returns its Python. Runs ``<python> -m venv DIR`` then ``DIR/bin/python -m pip install
    samseg==0.4a0 'numpy<2'``; a folder this call created is removed again if that fails.
    """
    log = log or _print_log
    venv_dir = (Path(venv_dir) if venv_dir else default_venv_dir()).expanduser().absolute()
    target = venv_python(venv_dir)
    if target.exists() and _has_samseg(target):
        log(f"SAMSEG's environment is ready: {venv_dir}")
        return target
    created = not venv_dir.exists()
    base = find_base_python(python)
    try:
        if not target.exists():
            log(f"creating {venv_dir} with {base}")
            _run_logged([base, "-m", "venv", str(venv_dir)], log)
        log(f"installing {' '.join(SETUP_REQUIREMENTS)} (about 60 MB) into {venv_dir}")
        _run_logged([str(target), "-m", "pip", "install", "--disable-pip-version-check", *SETUP_REQUIREMENTS], log)
        if not _has_samseg(target):
            raise SegSuiteError(f"samseg was installed into {venv_dir} but cannot be imported; see the log above")
    except BaseException:
        if created:
            shutil.rmtree(venv_dir, ignore_errors=True)
        raise
    log(f"SAMSEG's environment is ready: {venv_dir}")
    return target


def _has_samseg(python: Path) -> bool:
    check = subprocess.run([str(python), "-c", "import samseg.cli.run_samseg"], capture_output=True,
                           timeout=300, env=_clean_env())
    return check.returncode == 0


def _run_logged(command: Sequence[str], log: LogCallback) -> None:
    try:
        process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=_clean_env(), bufsize=1)
    except OSError as error:
        raise SegSuiteError(f"cannot start {command[0]}: {error.strerror}") from error
    assert process.stdout is not None
    for line in process.stdout:
        log(line.rstrip("\n"))
    if process.wait() != 0:
        raise SegSuiteError(f"'{' '.join(command)}' failed (exit status {process.returncode}); see the log above")


def _clean_env(threads: Optional[int] = None) -> dict:
    """Our environment minus what would make another Python load our packages (numpy 2)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    return env


def _print_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_samseg_stats(path: str | os.PathLike) -> dict[str, float]:
    """SAMSEG's samseg.stats ('# Measure <name>, <volume>, mm^3' lines) as {name: mm3}, in order."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise InputError(f"cannot read SAMSEG's stats file {path}: {error.strerror}") from error
    measures: dict[str, float] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = re.fullmatch(r"#\s*Measure\s+(.+?),\s*([-+0-9.eE]+),\s*mm\^3\s*", line.strip())
        if not match:
            raise InputError(f"{path}, line {number}: expected '# Measure <name>, <volume>, mm^3', got {line.strip()!r}")
        measures[match.group(1).strip()] = float(match.group(2))
    if not measures:
        raise InputError(f"{path} holds no '# Measure' lines: is it SAMSEG's samseg.stats?")
    return measures


def samseg_volumes(stats: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Split samseg.stats into structure volumes (FreeSurferColorLUT names) and whole-head measures.

    'Intra-Cranial' goes to the measures; 'Unknown' (background) is left out.
    """
    volumes: dict[str, float] = {}
    measures: dict[str, float] = {}
    for name, value in stats.items():
        if name == "Intra-Cranial":
            measures["Intra-Cranial"] = value
        elif name != "Unknown":
            volumes[_SAMSEG_TO_LUT_NAMES.get(name, name)] = value
    return volumes, measures


class _SamsegProgress:
    """Turns SAMSEG's log lines into a rough fraction: registration, then two EM levels."""

    def __init__(self, report: ProgressCallback):
        self.report = report
        self.level = 0
        self.fraction = 0.0

    def __call__(self, line: str) -> None:
        text = line.strip()
        if text.startswith("performing affine atlas registration"):
            self._set(0.02, "affine registration to the atlas")
        elif text.startswith("atlas registration complete"):
            self._set(0.12, "registration done")
        elif text.startswith("iterationNumber:"):
            try:
                iteration = int(text.split(":", 1)[1])
            except ValueError:
                return
            if iteration == 0:
                self.level += 1
            level = min(max(self.level, 1), 2)
            start, end = (0.12, 0.45) if level == 1 else (0.45, 0.93)
            # Levels stop at 100 iterations but usually converge in about 5-15.
            self._set(start + (end - start) * (1 - math.exp(-iteration / 6)),
                      f"fitting the atlas, level {level}/2, iteration {iteration}")
        elif text.startswith("using default intracranial structures"):
            self._set(0.96, "writing the segmentation and volumes")

    def _set(self, fraction: float, message: str) -> None:
        self.fraction = max(self.fraction, fraction)
        self.report(self.fraction, message)


class SamsegRunner:
    """Runs SAMSEG on a T1 and then the brain-mask filter on its seg.mgz.

        runner = SamsegRunner(threads=2)                 # finds SAMSEG (see find_samseg)
        result = runner.segment("t1.nii.gz", output_dir="out/sub-01")
        result.images["brain_mask"], result.labels (cleaned), result.volumes (from samseg.stats)

    ``output_dir`` receives SAMSEG's files (seg.mgz, samseg.stats, ...) plus brain_mask.mgz,
    seg_cleaned.mgz and volumes.csv, all at once at the end (nothing is left by a failed run).
    """

    def __init__(self, model=None, device: Optional[str] = "auto", threads: Optional[int] = None,
                 executable: Optional[str | os.PathLike] = None, exclude_labels: Optional[Iterable[int]] = None,
                 preset: Optional[str] = None, extra_args: Sequence[str] = ()):
        if model is not None:
            raise UsageError("SAMSEG uses its own atlas; leave model unset")
        if device not in (None, "auto", "cpu"):
            raise UsageError("SAMSEG runs on the CPU only: use --device cpu or auto")
        self.threads = int(threads) if threads and threads > 0 else (os.cpu_count() or 1)
        self.samseg = find_samseg(executable)
        self.filter = SamsegBrainMask(exclude_labels=exclude_labels, preset=preset)
        self.extra_args = list(extra_args)

    def segment(self, source, progress: Optional[ProgressCallback] = None, output_dir: Optional[str | os.PathLike] = None,
                overwrite: bool = False, log: Optional[LogCallback] = None) -> SegmentationResult:
        report = ensure_callback(progress)
        log = log or _print_log
        if output_dir is not None:
            output_dir = Path(output_dir).absolute()
            if output_dir.exists() and not output_dir.is_dir():
                raise InputError(f"{output_dir} exists and is not a folder")
            if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
                from ..errors import OutputExistsError

                raise OutputExistsError(f"output folder {output_dir} exists and is not empty; "
                                        "pass --overwrite to replace it or choose another folder")
            from ..faults import clean_stale_temporaries, temp_prefix

            parent = output_dir.parent
            created = [folder for folder in (parent, *parent.parents) if not folder.exists()]
            parent.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(parent)   # work folders of killed runs
            work = Path(tempfile.mkdtemp(prefix=f"{temp_prefix()}samseg-{output_dir.name}-", dir=parent))
        else:
            created = []
            work = Path(tempfile.mkdtemp(prefix="segsuite-samseg-"))
        finished = False
        try:
            input_path = self._input_path(source, work)
            samseg_dir = work / "samseg"
            log_path = work / LOG_NAME
            self._run(input_path, samseg_dir, log_path, sub_progress(report, 0.0, 0.93), log)
            seg_path = samseg_dir / "seg.mgz"
            if not seg_path.exists():
                raise SegSuiteError(f"SAMSEG finished without writing seg.mgz in {samseg_dir}; see its log above")
            report(0.94, "removing non-brain labels and building the brain mask")
            result = self.filter.segment(str(seg_path))
            stats_path = samseg_dir / "samseg.stats"
            if stats_path.exists():
                volumes, measures = samseg_volumes(parse_samseg_stats(stats_path))
                result.tables["filtered_label_volumes"] = result.volumes
                result.volumes = volumes
                result.measures.update(measures)
            result.provenance.update({
                "engine": "samseg", "samseg": self.samseg.origin, "threads": self.threads,
                "input": str(source) if isinstance(source, (str, os.PathLike)) else "(in memory)"})
            result.subject = _case_name(source)
            if output_dir is not None:
                report(0.98, f"writing {output_dir}")
                write_filter_outputs(result, samseg_dir)
                os.replace(log_path, samseg_dir / LOG_NAME)
                from ..faults import checkpoint

                checkpoint("writing")
                _replace_folder(samseg_dir, output_dir)
                result.provenance["output_dir"] = str(output_dir)
            report(1.0, "done")
            finished = True
            return result
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if not finished:
                for folder in created:   # innermost first; only folders this run made and left empty
                    with contextlib.suppress(OSError):
                        folder.rmdir()

    def _input_path(self, source, work: Path) -> Path:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise InputError(f"input not found: {path}")
            return path.absolute()
        from ..image import as_volume, make_image, squeeze_to_3d
        import nibabel as nib

        volume = as_volume(source)
        path = work / "input.nii.gz"
        nib.save(make_image(squeeze_to_3d(volume.data), volume.affine, str(path)), str(path))
        return path

    def _run(self, input_path: Path, samseg_dir: Path, log_path: Path, report: ProgressCallback,
             log: LogCallback) -> None:
        command = [*self.samseg.command, "--input", str(input_path), "--output", str(samseg_dir),
                   "--threads", str(self.threads), *self.extra_args]
        log(f"running SAMSEG from {self.samseg.origin} with {self.threads} thread(s)")
        tracker = _SamsegProgress(report)
        tail: list[str] = []
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env=_clean_env(self.threads), bufsize=1, errors="replace")
        except OSError as error:
            raise SegSuiteError(f"cannot start SAMSEG ({command[0]}): {error.strerror}") from error
        assert process.stdout is not None
        try:
            with open(log_path, "w", encoding="utf-8") as saved_log:
                saved_log.write(" ".join(command) + "\n")
                for line in process.stdout:
                    line = line.rstrip("\n")
                    saved_log.write(line + "\n")
                    log(line)
                    tail = (tail + [line])[-20:]
                    tracker(line)
            status = process.wait()
        except BaseException:  # Ctrl+C or a cancelled Slicer task: do not leave SAMSEG running
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()
            raise
        if status != 0:
            hint = ""
            if any("No module named 'samseg'" in line or "No module named samseg" in line for line in tail):
                hint = f"; the samseg package is missing from that Python: run 'segsuite samseg --setup' ({setup_command_text()})"
            raise SegSuiteError(f"SAMSEG failed (exit status {status}){hint}; last output: {' | '.join(tail[-3:])}")


def write_filter_outputs(result: SegmentationResult, folder: str | os.PathLike) -> None:
    """brain_mask.mgz, seg_cleaned.mgz and volumes.csv in ``folder`` (used inside a temp folder)."""
    import nibabel as nib
    import numpy as np

    folder = Path(folder)
    nib.save(nib.MGHImage(result.images["brain_mask"].astype(np.uint8), result.affine), str(folder / BRAIN_MASK_NAME))
    nib.save(nib.MGHImage(np.asarray(result.labels, dtype=np.int32), result.affine), str(folder / CLEANED_SEG_NAME))
    (folder / VOLUMES_NAME).write_text(volumes_csv_text(result), encoding="utf-8")


def volumes_csv_text(result: SegmentationResult) -> str:
    """One header row (subject, then measures and structures, mm3) and one row of values."""
    import csv
    import io

    names = list(result.measures) + list(result.volumes)
    values = list(result.measures.values()) + list(result.volumes.values())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["subject", *names])
    writer.writerow([result.subject, *(f"{value:.3f}" for value in values)])
    return buffer.getvalue()


def _replace_folder(source: Path, target: Path) -> None:
    """Move a finished folder into place; an existing target is replaced only after that works."""
    trash = None
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".segsuite-old-{target.name}-", dir=target.parent))
        os.replace(target, trash / target.name)
    try:
        os.replace(source, target)
    except OSError:
        if trash is not None:
            os.replace(trash / target.name, target)
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _case_name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        from ..image import strip_image_suffix

        return os.path.basename(strip_image_suffix(source))
    return ""
