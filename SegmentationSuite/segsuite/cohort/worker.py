"""What runs on a Dask worker: the plugin that loads each model once, and the per-image task.

The plugin builds every engine when the worker starts (spawned process, torch threads set
explicitly because the nanny sets OMP_NUM_THREADS=1) and keeps them on the worker; each task
looks them up, so a model is loaded once per worker however many subjects it segments.

A task runs every engine's header-level checks (and finds the inputs of the engines that read
other files) before the first network, then runs and commits the engines one by one: an engine
refused or failed is one failure record, the others' outputs are kept. Model loads, the checks
and engine calls are appended to logs in the work folder (what the tests and benchmarks/cohort.py
count).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Optional

from distributed import WorkerPlugin, get_worker

from ..checksum import sha256_of
from ..engine import build_engine, check_input
from ..errors import SegSuiteError, with_flags
from .derivatives import SubjectCommit, write_segmentation
from .engines_inputs import (OTHER_INPUT_MODELS, ModelSkipped, find_other_inputs, has_no_t1w, note_skips,
                             root_label_table, run_other_input_model, table_to_rows)
from .index import CohortItem

PLUGIN_NAME = "segsuite-engines"
# model name (segsuite.engine.ENGINES) -> derivative "seg" label
MODELS = {"synthseg": "synthseg", "sclimbic": "sclimbic", "scepi": "scepi", "samseg-filter": "samseg"}


def append_line(path: Optional[str], record: dict) -> None:
    """One JSON line, appended with O_APPEND (whole lines from concurrent processes)."""
    if not path:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def weights_sha256(engine) -> list[str]:
    """The sha256 of the weights an engine loaded (SynthSeg keeps them per network)."""
    weights = getattr(engine, "weights", None)
    if isinstance(weights, dict):
        return sorted(str(entry.get("sha256")) for entry in weights.values())
    checkpoints = getattr(getattr(engine, "model", None), "checkpoint_paths", None)  # sc_epi's nnU-Net folds
    if callable(checkpoints):
        return sorted(sha256_of(path) for path in checkpoints())
    model_path = getattr(engine, "model_path", None)
    if model_path and os.path.isfile(model_path):
        return [sha256_of(model_path)]
    return []


class EngineSet:
    """The engines of one worker, built once: {model name: engine} with their fingerprints."""

    def __init__(self, plan: dict, device: str, threads: Optional[int], load_log: Optional[str] = None):
        from ..engine import set_threads

        set_threads(threads)
        self.plan, self.device, self.threads = plan, device, threads
        self.engines, self.segment_options, self.entries = {}, {}, {}
        for name, spec in plan.items():
            try:
                self.engines[name], self.segment_options[name] = build_engine(
                    name, spec.get("model"), device, threads, spec.get("options", {}))
            except SegSuiteError as error:  # the hint names the flag of the command that made the plan
                error.args = (with_flags(str(error), spec.get("flags")),)
                raise
            options = dict(spec.get("options", {}), **({"morphometry": True} if spec.get("morphometry") else {}),
                           **({"preprocess": spec["preprocess"]} if spec.get("preprocess") else {}))
            self.entries[name] = {"options": options, "sha256": weights_sha256(self.engines[name]),
                                  "model": getattr(self.engines[name], "model_name", None) or name,
                                  "labels": table_to_rows(root_label_table(name, self.engines[name]))}
            append_line(load_log, {"pid": os.getpid(), "model": name, "time": time.time()})
        self._cpu_fallback: Optional["EngineSet"] = None

    def cpu_fallback(self) -> "EngineSet":
        """The same engines on the CPU, built on the first CUDA out-of-memory."""
        if self._cpu_fallback is None:
            self._cpu_fallback = EngineSet(self.plan, "cpu", self.threads)
        return self._cpu_fallback


class EnginePlugin(WorkerPlugin):
    """Loads each model once per worker, when the worker starts."""

    name = PLUGIN_NAME

    def __init__(self, plan: dict, device: str = "cpu", threads: Optional[int] = None,
                 load_log: Optional[str] = None):
        self.plan, self.device, self.threads, self.load_log = plan, device, threads, load_log

    def setup(self, worker) -> None:
        os.environ["OMP_NUM_THREADS"] = str(self.threads or 1)
        worker.segsuite_engines, worker.segsuite_setup_error = None, None
        try:
            worker.segsuite_engines = EngineSet(self.plan, self.device, self.threads, self.load_log)
        except Exception as error:  # one line for the driver (the first task raises it), not a plugin traceback
            worker.segsuite_setup_error = setup_reason(error)

    def teardown(self, worker) -> None:
        worker.segsuite_engines = None


def setup_reason(error: Exception) -> str:
    if isinstance(error, SegSuiteError):
        return str(error)
    if isinstance(error, OSError) and error.filename:
        from ..image import write_error

        return str(write_error(error, error.filename))
    return f"internal error: {type(error).__name__}: {error}"


def worker_engines() -> EngineSet:
    worker = get_worker()
    engines = getattr(worker, "segsuite_engines", None)
    if engines is None:
        reason = getattr(worker, "segsuite_setup_error", None)
        raise SegSuiteError(f"a Dask worker could not build the engines: {reason}" if reason else
                            "this Dask worker has no segsuite engines (the worker plugin did not load)")
    return engines


def model_entries() -> dict:
    """{model name: {options, sha256, model}} of this worker's engines: the resume fingerprint's input."""
    return worker_engines().entries


def _is_cuda_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, getattr(torch.cuda, "OutOfMemoryError", ())) or "CUDA out of memory" in str(error)


def segment_item(item_values: dict, output_dir: str, expected: dict, posteriors: bool = False,
                 call_log: Optional[str] = None, log_dir: Optional[str] = None, redo: bool = False) -> dict:
    """Segment one image with every model whose outputs are missing or stale (all with ``redo``).

    ``expected``: {model name: fingerprint}. Returns {"key", "seconds", "engines": {name: outcome}}
    where an outcome's "status" is "complete" (committed before), "done", "skipped" (no input for
    the model) or "failed" (with "reason" and "log").
    """
    item = CohortItem.from_dict(item_values)
    started = time.perf_counter()
    engines = worker_engines()
    commit = SubjectCommit(output_dir, item)
    check_log = os.path.join(os.path.dirname(call_log), "engine-checks.jsonl") if call_log else None
    outcomes: dict[str, dict] = {}
    skips: list[tuple[str, str]] = []

    def failed(name: str, error: BaseException, messages: list, refused: bool = False) -> dict:
        reason = str(error) if isinstance(error, SegSuiteError) else f"internal error: {type(error).__name__}: {error}"
        reason = with_flags(" ".join(reason.split()), engines.plan[name].get("flags"))
        log_path = None
        if log_dir and not refused:
            log_path = os.path.join(log_dir, f"{item.key}_{name}.log")
            os.makedirs(log_dir, exist_ok=True)
            Path(log_path).write_text("\n".join(messages + [traceback.format_exc()]), encoding="utf-8")
        return {"status": "failed", "reason": reason, "log": log_path}

    # every engine's checks first: a refusal costs no network time
    todo = []
    for name in engines.plan:
        if not redo and commit.is_complete(name, expected[name]):
            outcomes[name] = {"status": "complete"}
            continue
        check = {"key": item.key, "model": name, "pid": os.getpid()}
        try:
            if name in OTHER_INPUT_MODELS:  # inputs other than the T1w: BOLD series, SAMSEG derivatives
                find_other_inputs(name, engines, item)
            elif has_no_t1w(item):
                raise ModelSkipped(f"no T1w image in {item.folder}")
            else:
                check_input(engines.engines[name], item.path)
        except ModelSkipped as skipped:  # this folder has no input for the model: a reason, not a failure
            append_line(check_log, dict(check, outcome="skipped", reason=str(skipped), time=time.time()))
            skips.append((name, str(skipped)))
            note = f"{name}: skipped: {skipped}"
            commit.commit_engine(name, None, {"fingerprint": expected[name], "status": "skipped",
                                              "reason": str(skipped), "seconds": 0.0, "notes": [note]},
                                 _model_record(engines, name))
            outcomes[name] = {"status": "skipped", "reason": str(skipped)}
            continue
        except Exception as error:
            outcomes[name] = failed(name, error, [], refused=True)
            append_line(check_log, dict(check, outcome="refused", reason=outcomes[name]["reason"], time=time.time()))
            continue
        append_line(check_log, dict(check, outcome="ok", time=time.time()))
        todo.append(name)

    for name in todo:
        append_line(call_log, {"key": item.key, "model": name, "pid": os.getpid(), "time": time.time()})
        engine_started = time.perf_counter()
        messages: list[str] = []
        staged = commit.stage()
        try:
            result = _run_engine(name, engines, item, staged, posteriors, messages)
            if result is not None and engines.plan[name].get("morphometry"):
                from .morphometry_outputs import write_morphometry_derivatives

                write_morphometry_derivatives(staged, item, MODELS[name], result, kept=commit.engine_files(name))
            if result is not None and engines.plan[name].get("preprocess"):
                from .preprocess_outputs import write_preprocess_derivatives

                write_preprocess_derivatives(staged, item, result, engines.plan[name]["preprocess"],
                                             threads=engines.threads)
            commit.commit_engine(name, staged, {"fingerprint": expected[name], "status": "done",
                                                "seconds": round(time.perf_counter() - engine_started, 3),
                                                "notes": messages}, _model_record(engines, name))
            outcomes[name] = {"status": "done", "notes": messages}
        except BaseException as error:
            commit.discard(staged)
            if not isinstance(error, Exception):
                raise
            outcomes[name] = failed(name, error, messages)
    note_skips(output_dir, item, skips)
    return {"key": item.key, "engines": outcomes, "seconds": time.perf_counter() - started}


def _model_record(engines: EngineSet, name: str) -> dict:
    return {k: v for k, v in engines.entries[name].items() if k != "labels"}


def _run_engine(name: str, engines: EngineSet, item: CohortItem, staged: Path, posteriors: bool, messages: list):
    """One engine on one image, its files written into ``staged``; the T1w engines' result."""

    def segment(model: str, source):
        try:
            return engines.engines[model].segment(source, **_segment_kwargs(model, engines))
        except Exception as error:
            if not _is_cuda_oom(error):
                raise
            messages.append(f"{model}: CUDA out of memory; retried on the CPU")
            fallback = engines.cpu_fallback()
            return fallback.engines[model].segment(source, **_segment_kwargs(model, fallback))

    if name in OTHER_INPUT_MODELS:
        run_other_input_model(name, engines, item, staged, segment, posteriors)
        return None
    result = segment(name, item.path)
    result.subject = item.key
    write_segmentation(staged, item, MODELS[name], result, engines.entries[name], posteriors)
    return result


def _segment_kwargs(name: str, engines: EngineSet) -> dict:
    options = dict(engines.segment_options[name])
    if name == "synthseg":
        options.setdefault("resample_output", True)  # labels on the input's grid (BIDS SpatialReference)
    return options
