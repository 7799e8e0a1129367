"""A tiny engine with the real contract, for process-runner and CLI tests (no model, no torch)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from segsuite.errors import InputError
from segsuite.image import as_volume, squeeze_to_3d
from segsuite.labels import freesurfer_lut
from segsuite.progress import ensure_callback
from segsuite.result import SegmentationResult


class FakeEngine:
    def __init__(self, model=None, device="auto", threads=None, steps=4, delay=0.0, fail_with=None,
                 child_pid_file=None, fail_on=None):
        self.steps, self.delay, self.fail_with, self.child_pid_file = steps, delay, fail_with, child_pid_file
        self.fail_on = fail_on  # fail only for inputs whose path contains this text (one bad subject of a batch)

    def segment(self, source, progress=None):
        report = ensure_callback(progress)
        volume = as_volume(source)
        data = squeeze_to_3d(np.asarray(volume.data, dtype=np.float32))
        if self.child_pid_file:  # a grandchild process, to check that cancel reaches it
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            with open(self.child_pid_file, "w") as handle:
                handle.write(str(child.pid))
        for step in range(self.steps):
            report(step / self.steps, f"step {step + 1} of {self.steps}")
            time.sleep(self.delay)
        if self.fail_with:
            raise InputError(self.fail_with)
        if self.fail_on and self.fail_on in str(source):
            raise InputError(f"cannot segment {self.fail_on}: the image is not a brain MRI")
        labels = np.where(data > np.median(data), 17, 0).astype(np.int32)
        labels[: labels.shape[0] // 2][labels[: labels.shape[0] // 2] == 17] = 53
        table = freesurfer_lut().subset([0, 17, 53])
        voxel = float(abs(np.linalg.det(volume.affine[:3, :3])))
        volumes = {table.name(v): float((labels == v).sum() * voxel) for v in (17, 53)}
        report(1.0, "done")
        return SegmentationResult(labels=labels, affine=volume.affine, label_table=table, volumes=volumes,
                                  qc={"score": 0.5}, provenance={"engine": "fake"})
