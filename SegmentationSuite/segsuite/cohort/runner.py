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
from .derivatives import clear_staging, fingerprint, is_complete, write_tsv_atomic
from .index import CohortItem, duplicate_folders
from .worker import EnginePlugin, model_entries, segment_item

JOBQUEUE = {"slurm": "SLURMCluster", "sge": "SGECluster", "pbs": "PBSCluster"}
FAILED_HEADER = ["participant_id", "session_id", "input", "reason", "log"]


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
    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    seconds: float = 0.0
    dashboard: str = ""

    @property
    def per_hour(self) -> float:
        return 3600.0 * len(self.done) / self.seconds if self.seconds > 0 else 0.0


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


def jobqueue_cluster(kind: str, config: dict, omp_nthreads: int, device: str):
    """A dask-jobqueue cluster from the YAML keywords; 'jobs' says how many to start, 'gpus' asks for GPUs."""
    import dask_jobqueue

    if kind not in JOBQUEUE:
        raise UsageError(f"unknown --cluster {kind!r}: use one of {', '.join(JOBQUEUE)}")
    options = dict(config)
    jobs = int(options.pop("jobs", 1))
    gpus = int(options.pop("gpus", 0))
    options.setdefault("cores", max(1, omp_nthreads))
    options.setdefault("processes", 1)
    options.setdefault("memory", "8GB")
    extra = list(options.pop("job_extra_directives", []))
    worker_extra = list(options.pop("worker_extra_args", []))
    worker_extra += ["--nthreads", "1"]
    if gpus:
        worker_extra += ["--resources", f"GPU={gpus}"]
        if kind == "slurm":
            extra.append(f"--gres=gpu:{gpus}")
    env = list(options.pop("job_script_prologue", []))
    env.append(f"export OMP_NUM_THREADS={omp_nthreads}")
    cluster_class = getattr(dask_jobqueue, JOBQUEUE[kind])
    cluster = cluster_class(job_extra_directives=extra, worker_extra_args=worker_extra, job_script_prologue=env,
                            **options)
    return cluster, jobs


def start_client(config: ClusterConfig):
    """(client, cluster or None); the cluster is ours to close."""
    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.worker.multiprocessing-method": "spawn",
                     "distributed.scheduler.allowed-failures": max(config.retries, 0)})
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


def _failure(item: CohortItem, reason: str, log: Optional[str] = None) -> dict:
    return {"key": item.key, "participant_id": f"sub-{item.participant}",
            "session_id": f"ses-{item.session}" if item.session else "n/a", "input": item.path,
            "reason": reason, "log": log or "n/a"}


def run_cohort(items: list[CohortItem], output_dir: str | os.PathLike, plan: dict, config: ClusterConfig,
               work_dir: str | os.PathLike, overwrite: bool = False, posteriors: bool = False,
               stop_on_first_crash: bool = False, progress: bool = True, on_models=None) -> RunSummary:
    """Segment every item on a Dask cluster; returns what was done, skipped and failed."""
    from distributed import as_completed

    output_dir, work_dir = Path(output_dir).resolve(), Path(work_dir).resolve()
    logs = output_dir / "logs"
    summary = RunSummary()
    started = time.perf_counter()
    clear_staging(output_dir)
    duplicates = duplicate_folders(items)
    for folder, group in duplicates.items():
        names = ", ".join(os.path.basename(item.path) for item in group)
        for item in group:
            summary.failed.append(_failure(item, f"{folder} has {len(group)} T1w images ({names}); "
                                                 "choose one with --bids-filter-file"))
    items = [item for item in items if item.folder not in duplicates]
    client, cluster = start_client(config)
    try:
        summary.dashboard = client.dashboard_link or ""
        if summary.dashboard:
            print(f"segsuite bids: Dask dashboard at {summary.dashboard}", file=sys.stderr, flush=True)
        plugin = EnginePlugin(plan, config.device, config.omp_nthreads, str(work_dir / "model-loads.jsonl"))
        client.register_plugin(plugin)
        client.wait_for_workers(1, timeout=600)
        resources = {"GPU": 1} if config.device.startswith("cuda") else None
        entries = client.submit(model_entries, pure=False, resources=resources).result()
        expected = fingerprint({name: {"options": e["options"], "sha256": e["sha256"]} for name, e in entries.items()})
        if on_models is not None:
            on_models(entries)
        pending = []
        for item in items:
            if not overwrite and is_complete(output_dir, item, expected):
                summary.skipped.append(item.key)
            else:
                pending.append(item)
        by_key = {item.key: item for item in pending}
        futures = [client.submit(segment_item, item.as_dict(), str(output_dir), expected, posteriors,
                                 str(work_dir / "engine-calls.jsonl"), str(logs), key=item.key, pure=False,
                                 retries=config.retries, resources=resources) for item in pending]
        bar = _progress_bar(len(items) + sum(len(group) for group in duplicates.values()), progress,
                            initial=len(summary.skipped) + len(summary.failed))
        try:
            for future in as_completed(futures):
                item = by_key[future.key]
                try:
                    record = future.result()
                except Exception as error:  # the worker died more often than retries allow, ...
                    record = {"status": "failed", "reason": f"{type(error).__name__}: {error}".strip(), "log": None}
                if record["status"] == "done":
                    summary.done.append(item.key)
                else:
                    summary.failed.append(_failure(item, record["reason"], record.get("log")))
                _update(bar, summary)
                if stop_on_first_crash and summary.failed:
                    for other in futures:
                        other.cancel()
                    break
        finally:
            bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        clear_staging(output_dir)
    summary.seconds = time.perf_counter() - started
    write_tsv_atomic(logs / "failed.tsv", FAILED_HEADER,
                     [[f[c] for c in FAILED_HEADER] for f in sorted(summary.failed, key=lambda f: f["key"])])
    return summary


def _progress_bar(total: int, enabled: bool, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="subjects", unit="subj", disable=not enabled, file=sys.stderr)


def _update(bar, summary: RunSummary) -> None:
    bar.n = len(summary.done) + len(summary.skipped) + len(summary.failed)
    bar.set_postfix_str(f"done {len(summary.done)}, skipped {len(summary.skipped)}, failed {len(summary.failed)}",
                        refresh=False)
    bar.refresh()
