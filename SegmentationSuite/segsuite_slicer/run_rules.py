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


def parse_threads(value) -> int:
    """'' or '0' -> 0 (let PyTorch choose); a negative or non-integer value is a user error."""
    text = str(value if value is not None else "").strip()
    if not text:
        return 0
    try:
        threads = int(text)
    except ValueError:
        raise ValueError(f"the number of CPU threads must be a whole number, not {text!r}") from None
    if threads < 0:
        raise ValueError(f"the number of CPU threads cannot be negative ({threads})")
    return threads


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
    """The ``<output_dir>/<subject>`` paths that exist already (would be replaced)."""
    return [str(Path(output_dir, name)) for name in subjects if Path(output_dir, name).exists()]


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
