"""Cohort processing: a BIDS App (and manifest mode) on Dask distributed.

The engines know nothing of BIDS or Dask; this package owns both:

    index.py        BIDS datasets (bids2table, cached) and CSV/TSV manifests -> CohortItem list
    derivatives.py  BIDS derivative names, sidecars, tables, atomic per-subject commit, resume
    worker.py       the Dask worker plugin (each model loaded once per worker) and the task
    runner.py       the cluster (LocalCluster, dask-jobqueue, or a running scheduler) and the run
    group.py        per-subject tables -> group tables (the hook for group statistics)
    morphometry_outputs.py  --morphometry: tissue maps, masks and metrics per subject; the group step
"""
