"""`segsuite preprocess` from Slicer: the command line of one Apply, its inputs, what its end means, and
its outputs as nodes.

The preprocessing runs in its own process as the engines do (EngineRunLogic: export, child process,
timer, cancel, scene close); only the command, the outcome rule and the loading differ. The outputs
are the files docs/preprocess.md lists, read back with SimpleITK (bundled with Slicer): the T1w in
template space and the T1w -> template transform (mrml.add_preprocessed_nodes), optionally the
modulated GM map, and the QC line (MRIQC's tpm_overlap_gm/wm and inu_range).
No Qt here; MRML only in the functions that take nodes or a scene.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from segsuite.commands.preprocess import REGISTRATION_CHOICES, default_prefix, non_negative_mm
from segsuite.preprocess.templates import NLIN2009A, NLIN2009C, TEMPLATES

from .engine_run import EngineRunLogic, RunPlan
from .run_rules import RunOutcome, choose_output_folder, parse_bool, parse_threads, run_outcome

AUTO_TEMPLATE = "auto"  # the command's own default: 2009cAsym when TemplateFlow has it locally, else 2009aSym
TEMPLATE_CHOICES = (AUTO_TEMPLATE,) + TEMPLATES
RESOLUTION_CHOICES = ("1", "2")
# GUI parameters (strings, as a parameter node keeps them); the command's defaults, threads 0 = its default
PREPROCESS_DEFAULTS = {"template": AUTO_TEMPLATE, "resolution": "1", "fwhm": "8", "registration": REGISTRATION_CHOICES[0],
                       "threads": "0"}
QC_SHOWN = ("tpm_overlap_gm", "tpm_overlap_wm", "inu_range")


def check_preprocess_parameters(parameters: dict) -> dict:
    """The GUI's strings as the command's settings; a ValueError naming the setting when one is wrong."""
    template = str(parameters.get("template") or AUTO_TEMPLATE).strip()
    if template not in TEMPLATE_CHOICES:
        raise ValueError(f"unknown template {template!r}: choose {', '.join(TEMPLATE_CHOICES)}")
    resolution = str(parameters.get("resolution") or "1").strip()
    try:
        resolution_mm = float(resolution)
    except ValueError:
        resolution_mm = float("nan")
    if resolution_mm not in (1.0, 2.0):
        raise ValueError(f"the template-space resolution must be 1 or 2 mm, not {resolution!r}")
    try:
        fwhm = non_negative_mm(str(parameters.get("fwhm") if parameters.get("fwhm") not in (None, "") else "8").strip())
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"smoothing FWHM: {error}") from None
    registration = str(parameters.get("registration") or REGISTRATION_CHOICES[0]).strip()
    if registration not in REGISTRATION_CHOICES:
        raise ValueError(f"unknown registration {registration!r}: choose {' or '.join(REGISTRATION_CHOICES)}")
    return {"template": template, "resolution": int(resolution_mm), "fwhm": fwhm, "registration": registration,
            "threads": parse_threads(parameters.get("threads", "0"))}


def preprocess_arguments(t1: str, seg: str, output_dir: str, parameters: dict) -> list[str]:
    """``segsuite preprocess`` arguments of one Apply (``seg`` empty: SynthSeg runs first in the child)."""
    settings = check_preprocess_parameters(parameters)
    arguments = ["preprocess", "--i", t1]
    if seg:
        arguments += ["--seg", seg]
    arguments += ["--o", output_dir, "--prefix", default_prefix(t1), "--resolution", str(settings["resolution"]),
                  "--fwhm", f"{settings['fwhm']:g}", "--registration", settings["registration"]]
    if settings["template"] != AUTO_TEMPLATE:
        arguments += ["--template", settings["template"]]
    if settings["threads"] > 0:
        arguments += ["--threads", str(settings["threads"])]
    return arguments


def planned_space(template: str) -> str:
    """The space the command will use, known before it runs (the output names carry it)."""
    if template != AUTO_TEMPLATE:
        return template
    from segsuite.preprocess.templates import available_templates

    return NLIN2009C if NLIN2009C in available_templates() else NLIN2009A


def preprocess_outcome(returncode: Optional[int], expected: Sequence[str], error_message: str = "",
                       cancelled: bool = False, stopped_reason: str = "") -> RunOutcome:
    """Done only when the process succeeded and every planned output is there (the command writes
    all of them or none); cancelled and stopped as for the engines (run_rules.run_outcome)."""
    if stopped_reason or cancelled:
        return run_outcome(returncode, "", error_message, cancelled=cancelled, stopped_reason=stopped_reason)
    missing = [path for path in expected if not os.path.isfile(path)]
    if returncode == 0 and not missing:
        return RunOutcome("done")
    if returncode == 0:
        return RunOutcome("failed", f"The preprocessing ended without writing {os.path.basename(missing[0])}; see the log.")
    return RunOutcome("failed", error_message or f"The preprocessing failed (exit status {returncode}); see the log.")


def qc_status(metrics: dict, space: str) -> str:
    """The status line after loading: the space and MRIQC's registration / bias-field numbers."""
    shown = [f"{name} {float(metrics[name]):.3f}" for name in QC_SHOWN if isinstance(metrics.get(name), (int, float))]
    return f"Done: the T1w in {space}." + (f" QC: {', '.join(shown)}." if shown else "")


# ----------------------------------------------------------------------------- inputs (MRML)

def labels_from_segmentation_node(segmentation_node) -> tuple[np.ndarray, np.ndarray]:
    """(labels [i, j, k], affine) of a segmentation whose segments carry their FreeSurfer value (the
    tag SegmentationSuite's modules set); segments must share one grid, as the modules make them."""
    from . import mrml

    name = segmentation_node.GetName()
    if segmentation_node.GetParentTransformNode() is not None:
        raise ValueError(f"the segmentation {name!r} is under a transform: harden it first")
    segmentation = segmentation_node.GetSegmentation()
    parts, grid = [], None
    for segment_id in segmentation.GetSegmentIDs():
        segment = segmentation.GetSegment(segment_id)
        value = mrml.segment_label_value(segment)
        if value is None:
            raise ValueError(f"segment {segment.GetName()!r} of {name!r} has no FreeSurfer label value: choose a "
                             "segmentation made by a SegmentationSuite module, or a label map with FreeSurfer values")
        mask, affine, start = mrml.segment_binary_labelmap(segmentation_node, segment_id)
        if grid is None:
            grid = affine
        elif not np.allclose(affine, grid, atol=1e-4):
            raise ValueError(f"the segments of {name!r} lie on different grids: export it as a label map first")
        if mask.any():
            parts.append((value, mask, np.asarray(start)))
    if not parts:
        raise ValueError(f"the segmentation {name!r} is empty: choose one with brain labels")
    low = np.min([start for _, _, start in parts], axis=0)
    high = np.max([start + mask.shape for _, mask, start in parts], axis=0)
    labels = np.zeros(tuple(int(n) for n in high - low), dtype=np.int32)
    for value, mask, start in parts:
        box = tuple(slice(int(a), int(a) + n) for a, n in zip(start - low, mask.shape))
        labels[box][mask] = value
    shift = np.eye(4)
    shift[:3, 3] = low
    return labels, grid @ shift


def export_segmentation_input(node, folder: str) -> str:
    """A label map node (FreeSurfer values) or a segmentation node as the child's ``--seg`` NIfTI."""
    import nibabel as nib

    from .mrml import array_affine_from_volume_node

    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        labels, affine = array_affine_from_volume_node(node)
    elif node.IsA("vtkMRMLSegmentationNode"):
        labels, affine = labels_from_segmentation_node(node)
    else:
        raise ValueError(f"{node.GetName()!r} is a {node.GetClassName()}: choose a segmentation or a label map")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "seg.nii.gz")
    image = nib.Nifti1Image(np.asarray(labels, dtype=np.int32), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
    return path


# ----------------------------------------------------------------------------- outputs (MRML)

def read_image(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(array [i, j, k], RAS affine) of an output, read with SimpleITK (bundled with Slicer)."""
    import SimpleITK as sitk

    from segsuite.preprocess import itk

    image = sitk.ReadImage(path)
    return itk.from_sitk(image), itk.sitk_affine(image)


def load_preprocessed(paths: dict, space: str, scene=None, name: str = "", modulated_gm: bool = True,
                      input_volume_node=None) -> dict:
    """Outputs -> nodes: {"volume", "transform"[, "modulated_gm"], "metrics", "status"}. With
    ``input_volume_node``, that volume is placed under the transform (shown in template space),
    unless it is under a transform already (the preprocessing read it with that one applied)."""
    from . import mrml

    t1, affine = read_image(paths["template_preproc"])
    nodes = mrml.add_preprocessed_nodes(t1, affine, paths["forward_xfm"], space, scene=scene, name=name)
    if modulated_gm:
        gm, gm_affine = read_image(paths["modulated_GM"])
        nodes["modulated_gm"] = mrml.add_volume_node(np.asarray(gm, dtype=np.float32), gm_affine,
                                                     f"{name} space-{space} GM modulated".strip(), scene)
    moved = input_volume_node is not None and input_volume_node.GetParentTransformNode() is None
    if moved:
        input_volume_node.SetAndObserveTransformNodeID(nodes["transform"].GetID())
    nodes["metrics"] = json.loads(Path(paths["metrics"]).read_text(encoding="utf-8")).get("metrics", {})
    nodes["status"] = qc_status(nodes["metrics"], space)
    if input_volume_node is not None and not moved:
        nodes["status"] += (f" {input_volume_node.GetName()!r} is under a transform already, so it was not moved: "
                            f"harden that transform, then put it under {nodes['transform'].GetName()!r}.")
    return nodes


class PreprocessRunLogic(EngineRunLogic):
    """One `segsuite preprocess` run over a volume node (and a segmentation node or label map)."""

    engine = "preprocess"
    network_options = False
    default_parameters = dict(PREPROCESS_DEFAULTS)

    def __init__(self) -> None:
        EngineRunLogic.__init__(self)
        self.expected_outputs: dict = {}  # output_paths of the planned run
        self.space = ""

    def prepare(self, parameters: dict, input_volume_node=None, input_folder: str = "",
                default_base: Optional[str] = None, segmentation_node=None) -> RunPlan:
        """Check the settings, export the input(s) into a fresh work folder, plan the outputs; nothing runs yet."""
        from segsuite.preprocess.subject import output_paths

        if self.runner is not None and self.runner.running:
            raise RuntimeError("a preprocessing is already running; cancel it first")
        if input_folder:
            raise ValueError("the preprocessing takes one T1w volume, not a folder (use segsuite bids --preprocess)")
        if input_volume_node is None:
            raise ValueError("choose the T1-weighted input volume")
        settings = check_preprocess_parameters(parameters)
        self.cleanup()
        self.work_dir = tempfile.mkdtemp(prefix="segsuite-preprocess-")
        try:
            inputs = [self.export_volume_node(input_volume_node, self.work_dir)]
            if segmentation_node is not None:
                inputs.append(export_segmentation_input(segmentation_node, os.path.join(self.work_dir, "seg")))
            output = choose_output_folder(False, parameters.get("outputFolder", ""), self.work_dir, self.engine,
                                          default_base)
            prefix = default_prefix(inputs[0])
            self.space = planned_space(settings["template"])
            self.expected_outputs = output_paths(output.folder, prefix, self.space, settings["fwhm"])
        except BaseException:
            self.cleanup()
            raise
        existing = [path for path in self.expected_outputs.values() if os.path.exists(path)]
        return RunPlan(self.work_dir, inputs, output, [prefix], existing)

    def build_arguments(self, inputs: list[str], output_dir: str, parameters: dict,
                        manifest: Optional[str] = None) -> list[str]:
        return preprocess_arguments(inputs[0], inputs[1] if len(inputs) > 1 else "", output_dir, parameters)

    def finished_outcome(self, returncode: Optional[int]) -> RunOutcome:
        return preprocess_outcome(returncode, list(self.expected_outputs.values()), self.runner.error_message(),
                                  cancelled=self.runner.cancelled, stopped_reason=self._stopped_reason)

    def load_results(self, output_dir: str = "", scene=None, reference_volume_node=None,
                     parameters: Optional[dict] = None, **unused) -> dict:
        """The planned outputs as nodes (load_preprocessed), named after the input volume."""
        parameters = parameters or {}
        name = reference_volume_node.GetName() if reference_volume_node is not None else ""
        under = reference_volume_node if parse_bool(parameters.get("inputUnderTransform")) else None
        return load_preprocessed(self.expected_outputs, self.space, scene=scene, name=name,
                                 modulated_gm=parse_bool(parameters.get("loadModulatedGM", "true")),
                                 input_volume_node=under)
