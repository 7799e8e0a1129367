"""The cohort's Dask workers keep a network's freed memory for reuse in the thread that runs the task
(cohort.runner.WORKER_ENVIRONMENT): a real LocalCluster from start_client, page faults counted in the
task thread while a large block is allocated again and again inside memory.reuse_freed_memory."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

from segsuite import memory  # noqa: E402
from segsuite.cohort.runner import ClusterConfig, start_client  # noqa: E402

BLOCK = 256 * 2 ** 20  # larger than the 64 MB heaps of a thread's own glibc arena


def test_the_task_thread_reuses_freed_blocks_instead_of_faulting_them_in_again():
    if not memory.available():
        pytest.skip("memory reuse is glibc's (Linux) only")

    def faults_of_repeated_blocks():
        import os
        import resource
        import threading

        import numpy as np

        from segsuite.memory import reuse_freed_memory

        counts = []
        with reuse_freed_memory():
            for _ in range(4):
                before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
                block = np.ones(BLOCK // 8)
                del block
                counts.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
        return threading.current_thread() is threading.main_thread(), counts, os.environ.get("MALLOC_ARENA_MAX")

    client, cluster = start_client(ClusterConfig(nprocs=1))
    try:
        in_main_thread, counts, arenas = client.submit(faults_of_repeated_blocks, pure=False).result(timeout=120)
    finally:
        client.close()
        cluster.close()
    assert not in_main_thread  # Dask's task thread, where glibc would give the task an arena of its own
    assert arenas == "1"
    # faults are counted per page, or per 2 MB with transparent huge pages: compare with the first block
    assert counts[0] > 0  # the first block is faulted in
    assert max(counts[1:]) < 0.1 * counts[0], counts  # the next ones reuse it (without: as many as the first)
