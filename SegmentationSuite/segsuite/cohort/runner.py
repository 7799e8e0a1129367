"""The cohort run: a Dask cluster, one task per image keyed by its ids, resume, failures isolated.

Clusters: an embedded LocalCluster (worker processes started by spawn, sized from --nprocs and
--omp-nthreads), a dask-jobqueue cluster (--cluster slurm|sge|pbs with a YAML config), or a
running scheduler (--scheduler ADDRESS).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import SegSuiteError, UsageError
from .derivatives import clear_staging, engine_fingerprints, logs_dir, missing_engines, write_tsv_atomic
from .index import CohortItem, duplicate_folders
from .worker import EnginePlugin, model_entries, segment_item

JOBQUEUE = {"slurm": "SLURMCluster", "sge": "SGECluster", "pbs": "PBSCluster"}
# one row per (subject, engine) that failed; the subject's other engines keep their outputs
FAILED_HEADER = ["participant_id", "session_id", "model", "input", "reason", "log"]


@dataclass
class ClusterConfig:
    nprocs: int = 1
    omp_nthreads: int = 1
    device: str = "cpu"
    cluster: Optional[str] = None          # slurm | sge | pbs
    cluster_config: Optional[str] = None   # YAML with the jobqueue keywords (+ "jobs": N)
    scheduler: Optional[str] = None        # address of a running scheduler
    retries: int = 2                       # worker deaths tolerated per task


@dataclass
class RunSummary:
    """Subjects (image keys) by outcome, and the (subject, engine) failures.

    done: subjects with at least one engine's outputs committed in this run; skipped: nothing to
    do (every engine's outputs up to date); failed: one record per (subject, engine) failure;
    not_started: subjects an interruption left without any new output; engines: per model name,
    the count of each outcome ("done", "skipped" for up to date or no input, "failed").
    """

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    not_started: list = field(default_factory=list)
    engines: dict = field(default_factory=dict)
    seconds: float = 0.0
    dashboard: str = ""

    @property
    def per_hour(self) -> float:
        return 3600.0 * len(self.done) / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed_subjects(self) -> list:
        """Subjects with a failure and no output committed in this run."""
        done = set(self.done)
        return sorted({f["key"] for f in self.failed} - done)

    def count(self, model: str, outcome: str) -> None:
        counts = self.engines.setdefault(model, {})
        counts[outcome] = counts.get(outcome, 0) + 1

    def engine_line(self) -> str:
        """e.g. "synthseg 3 done; sclimbic 1 done, 2 failed"."""
        return "; ".join(f"{name} " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
                         for name, counts in self.engines.items())


def read_cluster_config(path: Optional[str]) -> dict:
    if not path:
        return {}
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"cannot read the cluster config {path}: {error}") from None
    if not isinstance(content, dict):
        raise UsageError(f"the cluster config {path} must be a YAML mapping (queue:, walltime:, memory:, ...)")
    return content


def _sge_memory(memory: str) -> str:
    """dask's "16GB" / "16GiB" as Grid Engine writes it ("16G")."""
    text = str(memory).strip().upper().replace("IB", "B")
    return text[:-1] if text.endswith("B") and text[:-1][-1:].isalpha() else text


def import_jobqueue():
    """dask_jobqueue, imported with the process's SIGINT handler kept.

    Its runner module sets a SIGINT handler when imported: outside the main thread that raises
    "signal only works in main thread", and in it the command's signal policy would be replaced.
    So the first import happens in the main thread (ClusterStart does it before its thread starts)
    and the previous handler is put back."""
    import signal
    import threading

    if "dask_jobqueue" in sys.modules:
        return sys.modules["dask_jobqueue"]
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("dask_jobqueue must first be imported in the main thread (see import_jobqueue)")
    previous = signal.getsignal(signal.SIGINT)
    try:
        import dask_jobqueue
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return dask_jobqueue


# Dask runs tasks in a worker thread, and glibc gives that thread an arena of its own, whose heaps
# hold at most 64 MB: a network's larger tensors are then mapped afresh at every allocation, which
# memory.reuse_freed_memory (the main arena's settings) cannot prevent. One arena for the worker
# process: SynthSeg 39-40 s per 1 mm scan in a thread, 45 s without (the bare loop 39-42 s).
WORKER_ENVIRONMENT = {"MALLOC_ARENA_MAX": "1"}


def jobqueue_cluster(kind: str, config: dict, omp_nthreads: int, device: str):
    """A dask-jobqueue cluster from the YAML keywords; 'jobs' says how many to start, 'gpus' asks for GPUs.

    GPU jobs ask the batch system for the GPUs (SLURM --gres=gpu:N, SGE -l gpu=N, PBS ngpus=N in the
    select statement; 'gpu_directive' replaces the SLURM/SGE line for sites that name it otherwise)
    and their workers declare a GPU resource, which every task of a --device cuda run asks for.
    """
    dask_jobqueue = import_jobqueue()
    if kind not in JOBQUEUE:
        raise UsageError(f"unknown --cluster {kind!r}: use one of {', '.join(JOBQUEUE)}")
    options = dict(config)
    jobs = int(options.pop("jobs", 1))
    gpus = int(options.pop("gpus", 1 if device.startswith("cuda") else 0))
    gpu_directive = options.pop("gpu_directive", None)
    if device.startswith("cuda") and gpus < 1:
        raise UsageError("--device cuda needs GPU jobs: set gpus: 1 (or more) in the cluster config")
    options.setdefault("cores", max(1, omp_nthreads))
    options.setdefault("processes", 1)
    options.setdefault("memory", "8GB")
    extra = list(options.pop("job_extra_directives", []))
    worker_extra = list(options.pop("worker_extra_args", []))
    worker_extra += ["--nthreads", "1"]
    if kind == "sge" and "resource_spec" not in options:
        options["resource_spec"] = f"h_vmem={_sge_memory(options['memory'])}"
    if gpus:
        worker_extra += ["--resources", f"GPU={gpus}"]
        if gpu_directive:
            extra.append(str(gpu_directive).format(gpus=gpus))
        elif kind == "slurm":
            extra.append(f"--gres=gpu:{gpus}")
        elif kind == "sge":
            extra.append(f"-l gpu={gpus}")
        else:
            options["resource_spec"] = _pbs_select(options, gpus)
    env = list(options.pop("job_script_prologue", []))
    env.append(f"export OMP_NUM_THREADS={omp_nthreads}")
    env += [f"export {name}={value}" for name, value in WORKER_ENVIRONMENT.items()]
    cluster_class = getattr(dask_jobqueue, JOBQUEUE[kind])
    cluster = cluster_class(job_extra_directives=extra, worker_extra_args=worker_extra, job_script_prologue=env,
                            **options)
    return cluster, jobs


def _pbs_select(options: dict, gpus: int) -> str:
    """PBS Pro's chunk with the GPUs: the site's resource_spec plus ngpus, or dask-jobqueue's default."""
    spec = options.get("resource_spec")
    if spec:
        return spec if "ngpus=" in spec else f"{spec}:ngpus={gpus}"
    from dask.utils import parse_bytes

    import_jobqueue()
    from dask_jobqueue.pbs import pbs_format_bytes_ceil

    memory = pbs_format_bytes_ceil(parse_bytes(options["memory"]))
    return f"select=1:ncpus={options['cores']}:ngpus={gpus}:mem={memory}"


def start_client(config: ClusterConfig):
    """(client, cluster or None); the cluster is ours to close."""
    import dask
    from distributed import Client, LocalCluster

    # pre-spawn: glibc reads MALLOC_ARENA_MAX when the worker process starts
    dask.config.set({"distributed.worker.multiprocessing-method": "spawn",
                     "distributed.scheduler.allowed-failures": max(config.retries, 0),
                     **{f"distributed.nanny.pre-spawn-environ.{name}": value
                        for name, value in WORKER_ENVIRONMENT.items()}})
    if config.scheduler:
        try:
            return Client(config.scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as error:
            raise SegSuiteError(f"cannot reach the Dask scheduler at {config.scheduler}: {error}") from None
    if config.cluster:
        cluster, jobs = jobqueue_cluster(config.cluster, read_cluster_config(config.cluster_config),
                                         config.omp_nthreads, config.device)
        cluster.scale(jobs=jobs)
        return Client(cluster), cluster
    resources = {"GPU": 1} if config.device.startswith("cuda") else None
    cluster = LocalCluster(n_workers=max(1, config.nprocs), threads_per_worker=1, processes=True,
                           dashboard_address=":0", resources=resources, silence_logs=40)
    return Client(cluster), cluster


class ClusterStart:
    """The cluster and its engine plugin, started in a thread as soon as the command has its options.

    Spawning the workers, importing torch there and loading the models then overlap what the
    caller does meanwhile (the BIDS validator, the index): a bare engine loop does neither, so
    the run does not wait for them one after the other.
    """

    def __init__(self, config: ClusterConfig, plan: dict, work_dir: str | os.PathLike):
        import threading

        self.config, self.plan, self.work_dir = config, plan, Path(work_dir).resolve()
        self.began = time.perf_counter()
        self.client = self.cluster = None
        if config.cluster:
            import_jobqueue()  # here, in the main thread, not in the start thread
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._start, name="segsuite-cluster-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self.client, self.cluster = start_client(self.config)
            plugin = EnginePlugin(self.plan, self.config.device, self.config.omp_nthreads,
                                  str(self.work_dir / "model-loads.jsonl"))
            self.client.register_plugin(plugin)
        except BaseException as error:  # handed to the caller by wait()
            self._error = error

    def wait(self):
        """(client, cluster) once started and the plugin registered; the start's error otherwise."""
        self._thread.join()
        if self._error is not None:
            self.close()
            raise self._error
        return self.client, self.cluster

    def close(self) -> None:
        self._thread.join()
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None


def _failure(item: CohortItem, model: str, reason: str, log: Optional[str] = None) -> dict:
    return {"key": item.key, "participant_id": f"sub-{item.participant}",
            "session_id": f"ses-{item.session}" if item.session else "n/a", "model": model, "input": item.path,
            "reason": reason, "log": log or "n/a"}


def run_cohort(items: list[CohortItem], output_dir: str | os.PathLike, plan: dict, config: ClusterConfig,
               work_dir: str | os.PathLike, overwrite: bool = False, posteriors: bool = False,
               stop_on_first_crash: bool = False, progress="bar", on_models=None,
               starting: Optional[ClusterStart] = None) -> RunSummary:
    """Segment every item on a Dask cluster; returns what was done, skipped and failed.

    Each (item, engine) is an outcome of its own: an item is submitted when one of its engines'
    outputs is missing or stale, and its task redoes only those. A signal (Interrupted) is
    re-raised with ``.summary``: what was committed, skipped and failed, and what was not started.
    ``starting``: a ClusterStart begun earlier (closed here); otherwise the cluster starts now.
    ``progress``: "bar" (a bar on a terminal, plain lines otherwise), "json", "none" (or True/False).
    """
    from distributed import as_completed

    output_dir, work_dir = Path(output_dir).resolve(), Path(work_dir).resolve()
    logs = logs_dir(output_dir)
    summary = RunSummary()
    starting = starting or ClusterStart(config, plan, work_dir)
    started = starting.began
    missing: dict[str, list] = {}   # item key -> engines still to do when submitted
    pending: list[CohortItem] = []
    finished: set = set()
    expected: dict = {}
    try:
        try:
            clear_staging(output_dir)
        except BaseException:
            starting.close()
            raise
        duplicates = duplicate_folders(items)
        for folder, group in duplicates.items():
            names = ", ".join(os.path.basename(item.path) for item in group)
            for item in group:
                for model in plan:
                    summary.failed.append(_failure(item, model, f"{folder} has {len(group)} T1w images ({names}); "
                                                                "choose one with --bids-filter-file"))
                    summary.count(model, "failed")
        items = [item for item in items if item.folder not in duplicates]
        client, _ = starting.wait()
        try:
            summary.dashboard = client.dashboard_link or ""
            if summary.dashboard:
                print(f"segsuite bids: Dask dashboard at {summary.dashboard}", file=sys.stderr, flush=True)
            # Batch jobs may wait in the queue for hours; a local cluster or a running one answers soon.
            client.wait_for_workers(1, timeout=None if config.cluster else 600)
            resources = {"GPU": 1} if config.device.startswith("cuda") else None
            entries = client.submit(model_entries, pure=False, resources=resources).result()
            expected = engine_fingerprints(entries)
            if on_models is not None:
                on_models(entries)
            for item in items:
                missing[item.key] = list(plan) if overwrite else missing_engines(output_dir, item, expected)
                if missing[item.key]:
                    pending.append(item)
                else:
                    summary.skipped.append(item.key)
                    for model in plan:
                        summary.count(model, "skipped")
            by_key = {item.key: item for item in pending}
            futures = [client.submit(segment_item, item.as_dict(), str(output_dir), expected, posteriors,
                                     str(work_dir / "engine-calls.jsonl"), str(logs), overwrite, key=item.key,
                                     pure=False, retries=config.retries, resources=resources) for item in pending]
            bar = CohortProgress(len(items) + sum(len(group) for group in duplicates.values()), progress,
                                 initial=len(summary.skipped) + len(summary.failed_subjects))
            bar.update(summary)
            try:
                for future in as_completed(futures):
                    item = by_key[future.key]
                    try:
                        record = future.result()
                    except Exception as error:  # the worker died more often than retries allow, ...
                        reason = f"{type(error).__name__}: {error}".strip()
                        left = missing_engines(output_dir, item, {m: expected[m] for m in missing[item.key]})
                        record = {"engines": {m: ({"status": "failed", "reason": reason} if m in left
                                                  else {"status": "done"}) for m in missing[item.key]}}
                    _add_record(summary, item, record)
                    finished.add(item.key)
                    bar.update(summary)
                    if stop_on_first_crash and summary.failed:
                        for other in futures:
                            other.cancel()
                        break
            finally:
                bar.close()
        finally:
            starting.close()
            clear_staging(output_dir)
    except KeyboardInterrupt as stop:  # faults.Interrupted: say what the run did before it stopped
        for item in pending:
            if item.key not in finished:
                left = missing_engines(output_dir, item, {m: expected[m] for m in missing[item.key]})
                (summary.done if len(left) < len(missing[item.key]) else summary.not_started).append(item.key)
        summary.not_started += [item.key for item in items if item.key not in missing]
        summary.seconds = time.perf_counter() - started
        _write_failed(logs, summary)
        stop.summary = summary
        raise
    summary.seconds = time.perf_counter() - started
    _write_failed(logs, summary)
    return summary


def _add_record(summary: RunSummary, item: CohortItem, record: dict) -> None:
    """One task's per-engine outcomes into the summary."""
    outcomes = record.get("engines", {})
    for model, outcome in outcomes.items():
        status = outcome["status"]
        summary.count(model, {"complete": "skipped"}.get(status, status))
        if status == "failed":
            summary.failed.append(_failure(item, model, outcome.get("reason", "failed"), outcome.get("log")))
    statuses = {outcome["status"] for outcome in outcomes.values()}
    if "done" in statuses or "failed" not in statuses:
        summary.done.append(item.key)


def _write_failed(logs: Path, summary: RunSummary) -> None:
    if summary.failed or logs.parent.parent.is_dir():  # logs is OUTPUT_DIR/.segsuite/logs: not created for nothing
        rows = sorted(summary.failed, key=lambda f: (f["key"], f["model"]))
        write_tsv_atomic(logs / "failed.tsv", FAILED_HEADER, [[f[c] for c in FAILED_HEADER] for f in rows])


class CohortProgress:
    """Progress over subjects: done/skipped/failed counts, throughput and an ETA.

    "bar": a tqdm bar on a terminal, one plain line per finished subject otherwise (log files,
    pipes, batch jobs); "json": SEGSUITE_PROGRESS lines; "none": nothing. The ETA counts only the
    subjects processed in this run (skipped ones cost nothing and would make it too optimistic).
    """

    def __init__(self, total: int, mode="bar", initial: int = 0, stream=None, clock=time.perf_counter):
        mode = {True: "bar", False: "none"}.get(mode, mode)
        self.total, self.initial, self.stream, self.clock = total, initial, stream or sys.stderr, clock
        self.mode = "lines" if mode == "bar" and not _is_terminal(self.stream) else mode
        self.started = self.clock()
        self._shown = -1
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="subjects", unit="subj", file=self.stream)

    @staticmethod
    def counts(summary: RunSummary) -> tuple[int, int, int]:
        return len(summary.done), len(summary.skipped), len(summary.failed_subjects)

    def eta_seconds(self, summary: RunSummary) -> Optional[float]:
        """Seconds left at the pace of the subjects processed since the start (None before the first)."""
        finished = sum(self.counts(summary))
        remaining, processed = self.total - finished, finished - self.initial
        if remaining <= 0:
            return 0.0
        if processed <= 0:
            return None
        return remaining * (self.clock() - self.started) / processed

    def line(self, summary: RunSummary) -> str:
        done, skipped, failed = self.counts(summary)
        finished = done + skipped + failed
        elapsed = self.clock() - self.started
        rate = 3600.0 * done / elapsed if elapsed > 0 else 0.0
        eta = self.eta_seconds(summary)
        return (f"segsuite bids: {finished}/{self.total} subjects (done {done}, skipped {skipped}, failed {failed}), "
                f"{rate:.0f} subjects/hour, ETA {_clock(eta)}")

    def update(self, summary: RunSummary) -> None:
        done, skipped, failed = self.counts(summary)
        finished = done + skipped + failed
        if self.mode == "none" or finished == self._shown:
            return
        self._shown = finished
        if self.mode == "bar":
            self._bar.n = finished
            self._bar.set_postfix_str(f"done {done}, skipped {skipped}, failed {failed}", refresh=False)
            self._bar.refresh()
        elif self.mode == "json":
            import json

            from ..cli import PROGRESS_PREFIX

            record = {"fraction": round(finished / self.total, 4) if self.total else 1.0, "message": self.line(summary)}
            print(PROGRESS_PREFIX + json.dumps(record), file=self.stream, flush=True)
        else:
            print(self.line(summary), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
