"""The data-safety rules of an Apply, without Slicer or Qt (unit-tested anywhere).

- A user's existing ``<output folder>/<subject>`` is replaced only after the user agreed:
  ``existing_outputs`` says what would be replaced, ``overwrite_arguments`` passes ``--overwrite``
  only with that consent.
- A batch never writes into the temporary work folder (``EngineRunLogic.cleanup`` deletes it):
  ``choose_output_folder`` gives the folder the user chose or a persistent default, which the GUI shows.
- GUI parameters are strings (a parameter node stores strings): ``parse_bool`` / ``parse_threads``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

FLAG_THRESHOLDS = {
    # SynthSeg's QC scores: a structure group below 0.65 is considered failed (Billot et al., PNAS 2023).
    "synthseg": [0.65],
    # ScLimbic z-scores against its population table: |z| >= 3 is flagged.
    "sclimbic": [-3.0, 3.0],
}


# Volume classes that derive from vtkMRMLScalarVolumeNode but are not one grey-scale image an engine reads.
NOT_SCALAR_INPUT_CLASSES = ["vtkMRMLLabelMapVolumeNode", "vtkMRMLVectorVolumeNode", "vtkMRMLTensorVolumeNode",
                            "vtkMRMLDiffusionWeightedVolumeNode", "vtkMRMLDiffusionTensorVolumeNode"]


def first_input_volume(scene, allow_label_map: bool = False):
    """The first scalar volume of the scene an engine can read (the default input), or None."""
    refused = [c for c in NOT_SCALAR_INPUT_CLASSES if not (allow_label_map and c == "vtkMRMLLabelMapVolumeNode")]
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if not any(node.IsA(class_name) for class_name in refused):
            return node
    return None


def parse_bool(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def parse_count(value, what: str) -> int:
    """A GUI string that must be a whole number >= 0 ('' -> 0); anything else is a user error naming ``what``."""
    text = str(value if value is not None else "").strip()
    if not text:
        return 0
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"the {what} must be a whole number, not {text!r}") from None
    if number < 0:
        raise ValueError(f"the {what} cannot be negative ({number})")
    return number


def parse_threads(value) -> int:
    """'' or '0' -> 0 (let PyTorch choose); a negative or non-integer value is a user error."""
    return parse_count(value, "number of CPU threads")


def default_batch_output_folder(engine: str, base: Optional[str] = None) -> str:
    """Where a batch goes when the user chose no folder: ``<base>/SegmentationSuite/<engine>``.

    ``base`` is Slicer's default scene folder in the GUI (persistent, in the user's documents);
    without it the home folder.
    """
    root = Path(base) if base else Path.home()
    return str(root / "SegmentationSuite" / engine)


@dataclass(frozen=True)
class OutputChoice:
    folder: str
    temporary: bool  # True only for a single volume with no folder chosen: loaded into the scene, then deleted


def _inside(path: str, folder: str) -> bool:
    path_, folder_ = os.path.realpath(path), os.path.realpath(folder)
    return path_ == folder_ or path_.startswith(folder_.rstrip(os.sep) + os.sep)


def choose_output_folder(batch: bool, chosen: str, work_dir: str, engine: str,
                         default_base: Optional[str] = None) -> OutputChoice:
    """The output folder of one Apply (see the module docstring)."""
    chosen = (chosen or "").strip()
    if chosen:
        if _inside(chosen, work_dir):
            raise ValueError(f"the output folder {chosen} is inside the temporary work folder, which is deleted "
                             "after the run: choose another folder")
        return OutputChoice(os.path.abspath(chosen), temporary=False)
    if batch:
        return OutputChoice(default_batch_output_folder(engine, default_base), temporary=False)
    return OutputChoice(os.path.join(work_dir, "results"), temporary=True)


def planned_subjects(inputs: Sequence[str]) -> list[str]:
    """The subject names run-engine will write, one folder each (same rules as run-engine)."""
    from segsuite.commands.run_engine import collect_inputs, subject_name

    return [subject_name(path) for path in collect_inputs(list(inputs))]


def existing_outputs(output_dir: str, subjects: Sequence[str]) -> list[str]:
    """The ``<output_dir>/<subject>`` paths and ``<output_dir>/manifest.json`` (run-engine writes it
    there) that exist already: they would be replaced, so the user is asked first."""
    paths = [Path(output_dir, name) for name in subjects] + [Path(output_dir, "manifest.json")]
    return [str(path) for path in paths if path.exists()]


def overwrite_arguments(existing: Sequence[str], consent: bool) -> list[str]:
    """``['--overwrite']`` only when something would be replaced and the user agreed to it."""
    if existing and not consent:
        raise PermissionError(f"{existing[0]} exists and would be replaced: choose another output folder or "
                              "agree to replace it")
    return ["--overwrite"] if existing else []


def overwrite_question(existing: Sequence[str], limit: int = 5) -> str:
    """The confirm-dialog text naming what would be replaced."""
    shown = "\n".join(existing[:limit]) + (f"\n... and {len(existing) - limit} more" if len(existing) > limit else "")
    return (f"These results exist already and would be replaced:\n\n{shown}\n\n"
            "Replace them? (Cancel keeps them; choose another output folder to keep both.)")


def flagged_scores(engine: str, scores: dict) -> list[str]:
    """Names of the QC scores / z-scores outside the engine's flag thresholds."""
    thresholds = FLAG_THRESHOLDS.get(engine)
    if not thresholds:
        return []
    if len(thresholds) == 1:
        return [name for name, value in scores.items() if value is not None and value < thresholds[0]]
    low, high = min(thresholds), max(thresholds)
    return [name for name, value in scores.items() if value is not None and not low < value < high]


# ----------------------------------------------------------------------------- what a run's end means

@dataclass(frozen=True)
class RunOutcome:
    """How one run ended, for the GUI: ``kind`` is "done" (load the results; ``failures`` lists
    the subjects that failed), "cancelled" (the user's Cancel), "stopped" (the scene or the module
    was closed: nothing may be loaded) or "failed" (nothing was written; ``message`` says why)."""

    kind: str
    message: str = ""
    failures: tuple = ()


def read_manifest(path: str) -> Optional[dict]:
    """The manifest ``run-engine`` wrote, or None when there is none (or it is unreadable)."""
    import json

    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def run_outcome(returncode: Optional[int], manifest_path: str, error_message: str = "", cancelled: bool = False,
                stopped_reason: str = "") -> RunOutcome:
    """The one rule for what a finished ``run-engine`` means to the GUI.

    ``manifest_path`` is in the run's own fresh work folder, so a manifest there was written by
    this run: run-engine writes it, with the bundles, only at the end. With at least one result it
    is "done" whatever the exit status (1 means some subjects failed; they are listed); without
    one the run failed, with the process's own message.
    """
    if stopped_reason:
        return RunOutcome("stopped", f"Stopped: {stopped_reason}; nothing was loaded.")
    if cancelled:
        return RunOutcome("cancelled", "Cancelled.")
    manifest = read_manifest(manifest_path) if returncode in (0, 1) else None
    if manifest is not None and manifest.get("results"):
        return RunOutcome("done", failures=tuple(manifest.get("failures") or ()))
    if returncode == 0:
        return RunOutcome("failed", "The segmentation ended without writing its results (no manifest); see the log.")
    return RunOutcome("failed", error_message or f"The segmentation failed (exit status {returncode}); see the log.")


def finished_status(failures: Sequence[dict], flagged: Sequence[str] = ()) -> str:
    """The status line after results were loaded."""
    status = "Done." if not failures else f"Done; {len(failures)} subject(s) failed (see the log)."
    if flagged:
        status += f" Flagged by QC: {', '.join(flagged)}."
    return status


def failure_lines(failures: Sequence[dict]) -> list[str]:
    """One log line per failed subject."""
    return [f"{item.get('subject', '?')}: {item.get('error', 'failed')}" for item in failures]


# ----------------------------------------------------------------------------- device

def device_argument(device: str, gpu_index) -> str:
    """run-engine's --device from the GUI's choice and CUDA device index: "cuda" + 1 -> "cuda:1"."""
    device = (device or "auto").strip() or "auto"
    if device != "cuda":
        return device
    return f"cuda:{parse_count(gpu_index, 'CUDA device index')}"


# ----------------------------------------------------------------------------- GUI state

def apply_button_state(ready: bool, running: bool, installing: bool) -> tuple[bool, str]:
    """(enabled, text) of Apply: Cancel while a run goes on; disabled while the first-use install
    runs (Slicer 5.10's pip_install processes events, so a second click would start a second one)."""
    if installing:
        return False, "Installing..."
    if running:
        return True, "Cancel"
    return ready, "Apply"
