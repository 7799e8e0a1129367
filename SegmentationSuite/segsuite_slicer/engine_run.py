"""The logic every engine module shares: input export, the child process, loading results.

A module's Logic mixes this in and only says which engine it runs and how its GUI options map to
engine options. The engine runs in ``segsuite run-engine`` in a separate process (see
segsuite.runner); a timer polls it so the GUI stays responsive. Cancel stops the process tree from a
worker thread (terminating can take seconds) while the timer keeps polling until the process is gone.
Where results go, and whether an existing result may be replaced, follows run_rules; what the
process's end means (exit status 1 with some subjects written included) is run_rules.run_outcome.

The logic owns a run's whole lifetime (process, timer, exported input, scene observer): every
early end goes through ``stop``. Closing the scene stops the run (nothing is loaded into the new
scene); the widget's cleanup, which Slicer calls for each module when the application exits
(qSlicerCoreApplication::onAboutToQuit -> unloadModules -> moduleAboutToBeUnloaded, v5.10.0),
stops it and waits, so the exported input is deleted before Slicer goes.
Qt is imported only when a timer is needed, and MRML only when results are loaded, so the
option and argument building is testable without Slicer.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from segsuite.runner import FinishedEvent, LogEvent, ProcessRunner, ProgressEvent

from .run_rules import (FLAG_THRESHOLDS, OutputChoice, RunOutcome, choose_output_folder, device_argument,
                        existing_outputs, overwrite_arguments, parse_bool, parse_threads, planned_subjects, run_outcome)

log = logging.getLogger("SegmentationSuite")


def slicer_python() -> str:
    """The Python that can import Slicer's packages: PythonSlicer inside Slicer, else this one."""
    return shutil.which("PythonSlicer") or sys.executable


@dataclass
class RunPlan:
    """What one Apply will read and write, known before the process starts (so the GUI can ask)."""

    work_dir: str
    inputs: list
    output: OutputChoice
    subjects: list
    existing: list  # <output>/<subject> folders that exist and would be replaced


def cancel_in_background(runner: ProcessRunner, previous: Optional[threading.Thread] = None) -> threading.Thread:
    """Stop ``runner``'s process tree from a worker thread (SIGTERM, SIGKILL after the grace time),
    so the GUI thread never waits; a cancel already under way is returned as it is."""
    if previous is not None and previous.is_alive():
        return previous
    runner.cancelled = True
    thread = threading.Thread(target=runner.cancel, name="segsuite-cancel", daemon=True)
    thread.start()
    return thread


def stop_and_wait(runner: Optional[ProcessRunner], cancel_thread: Optional[threading.Thread] = None) -> None:
    """Stop ``runner``'s process tree and return only when it is gone (module cleanup, application exit)."""
    if cancel_thread is not None and cancel_thread.is_alive():
        cancel_thread.join()
    if runner is not None and runner.process is not None and runner.process.poll() is None:
        runner.cancel()


def ensure_parameter_defaults(node, defaults: dict) -> None:
    """Give every empty parameter its default. Closing the scene empties a singleton parameter node
    (MRML resets it), so this runs on module entry and again after every scene close."""
    was_modifying = node.StartModify()
    for key, value in defaults.items():
        if not node.GetParameter(key):
            node.SetParameter(key, str(value))
    node.EndModify(was_modifying)


class EngineRunLogic:
    """Run one engine over a volume node or a folder, in a child process."""

    engine = ""  # run-engine's --engine name, set by each module
    accepts_label_maps = False  # the SAMSEG filter reads a segmentation, which may be a label map node
    # Device, CPU threads, posteriors and a model file: for the engines that run a network (PyTorch).
    network_options = True
    default_parameters: dict[str, str] = {"device": "auto", "threads": "0", "posteriors": "false"}

    def __init__(self) -> None:
        self.runner: Optional[ProcessRunner] = None
        self.work_dir: Optional[str] = None
        self._timer = None
        self.keep_work_dir = False
        self.outcome: Optional[RunOutcome] = None  # how the last run ended
        self._cancel_thread: Optional[threading.Thread] = None
        self._stopped_reason = ""
        self._scene = None
        self._scene_observer = None
        self._callbacks: tuple = (None, None, None, "")
        self.on_log: Optional[Callable[[str], None]] = None  # each line the engine prints (the module's log box)

    # -- things modules override -------------------------------------------------------
    def engine_options(self, parameters: dict) -> dict:
        """GUI parameters (strings) -> engine constructor options."""
        return {}

    # -- arguments -----------------------------------------------------------------------
    def build_arguments(self, inputs: list[str], output_dir: str, parameters: dict,
                        manifest: Optional[str] = None) -> list[str]:
        import json

        arguments = ["run-engine", "--engine", self.engine, "--output-dir", output_dir,
                     "--options", json.dumps(self.engine_options(parameters))]
        if manifest:  # a copy in the run's own work folder: proof that this run wrote it (run_rules.run_outcome)
            arguments += ["--manifest", manifest]
        for path in inputs:
            arguments += ["--input", path]
        if not self.network_options:
            return arguments
        arguments += ["--device", device_argument(parameters.get("device", "auto"), parameters.get("gpu", "0"))]
        threads = parse_threads(parameters.get("threads", "0"))
        if threads > 0:
            arguments += ["--threads", str(threads)]
        if parameters.get("model"):
            arguments += ["--model", parameters["model"]]
        if parse_bool(parameters.get("posteriors", "false")):
            arguments.append("--posteriors")
        return arguments

    # -- input ----------------------------------------------------------------------------
    @classmethod
    def export_volume_node(cls, volume_node, folder: str) -> str:
        """Write a volume node (world geometry, parent transforms included) as NIfTI for the child."""
        import nibabel as nib
        import numpy as np

        from .mrml import array_affine_from_volume_node, check_scalar_volume_node

        check_scalar_volume_node(volume_node, allow_label_map=cls.accepts_label_maps)
        array, affine = array_affine_from_volume_node(volume_node)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (volume_node.GetName() or "input")) or "input"
        path = os.path.join(folder, f"{safe}.nii.gz")
        image = nib.Nifti1Image(np.asarray(array), affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        nib.save(image, path)
        return path

    # -- running ----------------------------------------------------------------------------
    def prepare(self, parameters: dict, input_volume_node=None, input_folder: str = "",
                default_base: Optional[str] = None) -> RunPlan:
        """Export the input into a fresh work folder and decide the output folder; nothing runs yet."""
        if self.runner is not None and self.runner.running:
            raise RuntimeError("a segmentation is already running; cancel it first")
        if input_volume_node is None and not input_folder:
            raise ValueError("choose an input volume or an input folder")
        self.cleanup()
        self.work_dir = tempfile.mkdtemp(prefix=f"segsuite-{self.engine}-")
        try:
            if input_volume_node is not None:
                inputs = [self.export_volume_node(input_volume_node, self.work_dir)]
            else:
                inputs = [input_folder]
            output = choose_output_folder(input_volume_node is None, parameters.get("outputFolder", ""),
                                          self.work_dir, self.engine, default_base)
            subjects = planned_subjects(inputs)
        except BaseException:
            self.cleanup()
            raise
        return RunPlan(self.work_dir, inputs, output, subjects, existing_outputs(output.folder, subjects))

    def start(self, parameters: dict, input_volume_node=None, input_folder: str = "",
              on_progress: Optional[Callable[[float, str], None]] = None,
              on_finished: Optional[Callable[[str], None]] = None,
              on_error: Optional[Callable[[str], None]] = None,
              use_timer: bool = True, plan: Optional[RunPlan] = None, overwrite: bool = False,
              scene=None) -> ProcessRunner:
        """Start the child process; callbacks run on the GUI thread (from the timer).

        Existing results in the output folder are replaced only with ``overwrite=True`` (the user's
        consent, asked by the widget); without it an existing result stops the run before it starts.
        With ``scene``, closing that scene stops the run (its results belong to the closed scene).
        """
        if self.runner is not None and self.runner.running:
            raise RuntimeError("a segmentation is already running; cancel it first")
        if plan is None:
            plan = self.prepare(parameters, input_volume_node, input_folder)
        output_dir = plan.output.folder
        arguments = (self.build_arguments(plan.inputs, output_dir, parameters, manifest=self.run_manifest_path())
                     + overwrite_arguments(plan.existing, overwrite))
        self.runner = ProcessRunner.for_segsuite(arguments, python=parameters.get("python") or slicer_python())
        self._callbacks = (on_progress, on_finished, on_error, output_dir)
        self._cancel_thread = None
        self._stopped_reason = ""
        self.outcome = None
        log.info("Starting: %s", " ".join(self.runner.command))
        self.runner.start()
        if scene is not None:
            self._scene = scene
            self._scene_observer = scene.AddObserver(scene.StartCloseEvent, self._on_scene_start_close)
        if use_timer:
            import qt

            self._timer = qt.QTimer()
            self._timer.setInterval(100)
            self._timer.timeout.connect(self.poll_once)
            self._timer.start()
        return self.runner

    def run_manifest_path(self) -> Optional[str]:
        """Where this run's manifest goes: its own work folder (fresh per run)."""
        return os.path.join(self.work_dir, "manifest.json") if self.work_dir else None

    def poll_once(self) -> bool:
        """Forward progress and log lines; at the end call on_finished (results to load, failed
        subjects included) or on_error (cancelled, stopped, failed: see ``self.outcome``).
        True while running."""
        if self.runner is None:
            return False
        on_progress, on_finished, on_error, output_dir = self._callbacks
        for event in self.runner.poll():
            if isinstance(event, ProgressEvent) and on_progress:
                on_progress(event.fraction, event.message)
            elif isinstance(event, LogEvent):
                log.info("%s", event.line)
                if self.on_log:
                    self.on_log(event.line)
            elif isinstance(event, FinishedEvent):
                self._stop_timer()
                self._forget_scene()
                self.outcome = self.finished_outcome(event.returncode)
                if self.outcome.kind == "done":
                    if on_finished:
                        on_finished(output_dir)
                else:
                    if self.outcome.kind == "stopped":
                        self.cleanup()  # nobody will load these results: the exported input goes now
                    if on_error:
                        on_error(self.outcome.message)
                return False
        return True

    def finished_outcome(self, returncode: Optional[int]) -> RunOutcome:
        """What the ended process means (run_rules.run_outcome: run-engine's manifest in the work folder)."""
        return run_outcome(returncode, self.run_manifest_path() or "", self.runner.error_message(),
                           cancelled=self.runner.cancelled, stopped_reason=self._stopped_reason)

    def cancel(self) -> None:
        """Ask the process tree to stop and return at once; poll_once reports "Cancelled." when it is gone."""
        if self.runner is None or not self.runner.running:
            return
        self._cancel_thread = cancel_in_background(self.runner, self._cancel_thread)

    def stop(self, reason: str, wait: bool = False) -> None:
        """End the run early, whatever the cause; nothing of it will be loaded.

        ``wait=False`` (scene close): returns at once; the timer keeps polling, and when the process
        has gone on_error gets "Stopped: <reason>..." and the work folder is deleted.
        ``wait=True`` (module cleanup, application exit): returns when the process tree is gone and
        the work folder deleted; no callback runs (the widget is going away).
        """
        running = self.runner is not None and self.runner.running
        if running and not self._stopped_reason:
            self._stopped_reason = reason
        if wait:
            self._callbacks = (None, None, None, self._callbacks[3])
            stop_and_wait(self.runner, self._cancel_thread)
            self._forget_scene()
            self.cleanup()
        elif running:
            self.cancel()

    def _on_scene_start_close(self, caller=None, event=None) -> None:
        self.stop("the scene was closed")

    def _forget_scene(self) -> None:
        if self._scene is not None and self._scene_observer is not None:
            self._scene.RemoveObserver(self._scene_observer)
        self._scene, self._scene_observer = None, None

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def cleanup(self) -> None:
        self._stop_timer()
        if self.work_dir and not self.keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir = None

    # -- results ----------------------------------------------------------------------------
    def load_results(self, output_dir: str, scene=None, reference_volume_node=None, parameters: Optional[dict] = None,
                     load_segmentations: bool = True, manifest_path: Optional[str] = None,
                     output_segmentation_node=None) -> dict:
        """Bundles -> MRML: a segmentation per subject (or only tables for batches), tables, posteriors.

        The manifest is this run's (in its work folder) when there is one, else ``<output_dir>/manifest.json``.
        ``output_segmentation_node``: the user's chosen output for a single result, whose content is
        replaced (node, display and segment IDs kept); without it a new node is added.
        """
        import json

        from segsuite.result_io import load_result_bundle

        from . import mrml

        parameters = parameters or {}
        if manifest_path is None:
            own = self.run_manifest_path()
            manifest_path = own if own and os.path.exists(own) else os.path.join(output_dir, "manifest.json")
        manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
        results = [load_result_bundle(Path(output_dir, item["bundle"])) for item in manifest["results"]]
        nodes: dict = {"segmentations": [], "tables": [], "charts": [], "posteriors": [],
                       "failures": manifest.get("failures", [])}
        batch = len(results) > 1
        for result in results:
            if load_segmentations and not batch:
                name = parameters.get("outputName") or (
                    f"{reference_volume_node.GetName()} {self.engine}" if reference_volume_node is not None
                    else f"{result.subject} {self.engine}")
                nodes["segmentations"].append(mrml.add_segmentation_from_result(
                    result, scene=scene, name=name, reference_volume_node=reference_volume_node,
                    segmentation_node=output_segmentation_node))
                if result.posteriors is not None and parse_bool(parameters.get("posteriors", "false")):
                    nodes["posteriors"] += mrml.add_posterior_volumes(result, scene=scene, base_name=name)
        if batch:
            for kind in ("volumes", "qc"):
                if any(getattr(r, kind) for r in results):
                    nodes["tables"].append(mrml.add_batch_table(results, kind=kind, scene=scene,
                                                                name=f"{self.engine} {kind}"))
        elif results:
            result = results[0]
            if result.volumes:
                nodes["tables"].append(mrml.add_volumes_table(result, scene=scene, name=f"{result.subject} {self.engine} volumes"))
            if result.qc or result.measures:
                nodes["tables"].append(mrml.add_qc_table(result, scene=scene, name=f"{result.subject} {self.engine} QC"))
            if result.qc and self.engine in FLAG_THRESHOLDS:
                nodes["charts"].append(mrml.add_score_chart(
                    result.qc, f"{result.subject} {self.engine} QC", FLAG_THRESHOLDS[self.engine], scene=scene,
                    y_title=result.units.get("qc") or "score")["chart"])
        nodes["results"] = results
        return nodes
