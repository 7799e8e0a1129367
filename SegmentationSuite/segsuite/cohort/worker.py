"""What runs on a Dask worker: the plugin that loads each model once, and the per-image task.

The plugin builds every engine when the worker starts (spawned process, torch threads set
explicitly because the nanny sets OMP_NUM_THREADS=1) and keeps them on the worker; each task
looks them up, so a model is loaded once per worker however many subjects it segments. Model
loads and engine calls are appended to logs in the work folder (what the tests and
benchmarks/cohort.py count).
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
from ..errors import SegSuiteError
from .derivatives import SubjectCommit, write_segmentation
from .engines_inputs import (OTHER_INPUT_MODELS, ModelSkipped, has_no_t1w, note_skips, root_label_table,
                             run_other_input_model, table_to_rows)
from .index import CohortItem

PLUGIN_NAME = "segsuite-engines"
# model name -> (engine spec as segsuite run-engine takes it, derivative "seg" label)
MODELS = {"synthseg": ("segsuite.synthseg:SynthSegEngine", "synthseg"),
          "sclimbic": ("segsuite.sclimbic:ScLimbicEngine", "sclimbic"),
          "scepi": ("segsuite.scepi:ScEpiEngine", "scepi"),
          "samseg-filter": ("segsuite.samseg:SamsegBrainMask", "samseg")}


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
        from ..commands.run_engine import resolve_engine, split_options
        from ..engine import set_threads

        set_threads(threads)
        self.plan, self.device, self.threads = plan, device, threads
        self.engines, self.segment_options, self.entries = {}, {}, {}
        for name, spec in plan.items():
            engine_class = resolve_engine(MODELS[name][0])
            init_options, segment_options = split_options(engine_class, dict(spec.get("options", {})))
            self.engines[name] = engine_class(model=spec.get("model"), device=device, threads=threads, **init_options)
            self.segment_options[name] = segment_options
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
        worker.segsuite_engines = EngineSet(self.plan, self.device, self.threads, self.load_log)

    def teardown(self, worker) -> None:
        worker.segsuite_engines = None


def worker_engines() -> EngineSet:
    engines = getattr(get_worker(), "segsuite_engines", None)
    if engines is None:
        raise SegSuiteError("this Dask worker has no segsuite engines (the worker plugin did not load)")
    return engines


def model_entries() -> dict:
    """{model name: {options, sha256, model}} of this worker's engines: the resume fingerprint's input."""
    return worker_engines().entries


def _is_cuda_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, getattr(torch.cuda, "OutOfMemoryError", ())) or "CUDA out of memory" in str(error)


def segment_item(item_values: dict, output_dir: str, fingerprint: str, posteriors: bool = False,
                 call_log: Optional[str] = None, log_dir: Optional[str] = None) -> dict:
    """Segment one image with every model and commit its folder; failures come back as a record."""
    item = CohortItem.from_dict(item_values)
    started = time.perf_counter()
    engines = worker_engines()
    log_path = os.path.join(log_dir, f"{item.key}.log") if log_dir else None
    commit = SubjectCommit(output_dir, item)
    messages: list[str] = []
    skips: list[tuple[str, str]] = []

    def segment(name: str, source):
        try:
            return engines.engines[name].segment(source, **_segment_kwargs(name, engines))
        except Exception as error:
            if not _is_cuda_oom(error):
                raise
            messages.append(f"{name}: CUDA out of memory; retried on the CPU")
            fallback = engines.cpu_fallback()
            return fallback.engines[name].segment(source, **_segment_kwargs(name, fallback))

    try:
        morphometry_of = None  # (seg, result) of the engine whose result gets the morphometry step
        preprocess_of = None   # (result, settings) of the engine whose result drives segsuite preprocess
        for name in engines.plan:
            append_line(call_log, {"key": item.key, "model": name, "pid": os.getpid(), "time": time.time()})
            try:
                if name in OTHER_INPUT_MODELS:  # inputs other than the T1w: BOLD series, SAMSEG derivatives
                    run_other_input_model(name, engines, item, commit.folder, segment, posteriors)
                    continue
                if has_no_t1w(item):
                    raise ModelSkipped(f"no T1w image in {item.folder}")
            except ModelSkipped as skipped:  # this folder has no input for the model: a reason, not a failure
                skips.append((name, str(skipped)))
                messages.append(f"{name}: skipped: {skipped}")
                continue
            result = segment(name, item.path)
            result.subject = item.key
            write_segmentation(commit.folder, item, MODELS[name][1], result, engines.entries[name], posteriors)
            if engines.plan[name].get("morphometry"):
                morphometry_of = (MODELS[name][1], result)
            if engines.plan[name].get("preprocess"):
                preprocess_of = (result, engines.plan[name]["preprocess"])
        if morphometry_of is not None:  # after every engine: their outputs take precedence on shared names
            from .morphometry_outputs import write_morphometry_derivatives

            write_morphometry_derivatives(commit.folder, item, *morphometry_of)
        if preprocess_of is not None:
            from .preprocess_outputs import write_preprocess_derivatives

            write_preprocess_derivatives(commit.folder, item, *preprocess_of, threads=engines.threads)
        models = {name: {k: v for k, v in entry.items() if k != "labels"} for name, entry in engines.entries.items()}
        commit.commit({"fingerprint": fingerprint, "input": item.path, "models": models,
                       "seconds": round(time.perf_counter() - started, 3), "notes": messages})
        note_skips(output_dir, item, skips)
        return {"key": item.key, "status": "done", "seconds": time.perf_counter() - started, "notes": messages}
    except BaseException as error:
        commit.discard()
        if not isinstance(error, Exception):
            raise
        reason = str(error) if isinstance(error, SegSuiteError) else f"internal error: {type(error).__name__}: {error}"
        if log_path:
            os.makedirs(log_dir, exist_ok=True)
            Path(log_path).write_text("\n".join(messages + [traceback.format_exc()]), encoding="utf-8")
        return {"key": item.key, "status": "failed", "reason": " ".join(reason.split()), "log": log_path,
                "seconds": time.perf_counter() - started}


def _segment_kwargs(name: str, engines: EngineSet) -> dict:
    options = dict(engines.segment_options[name])
    if name == "synthseg":
        options.setdefault("resample_output", True)  # labels on the input's grid (BIDS SpatialReference)
    return options
