"""SynthSeg's file conventions: which outputs go where, and the volumes/QC CSV formats."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import InputError, UsageError
from ..image import image_suffix, list_images

OUTPUT_KINDS = ("seg", "post", "resample", "vol", "qc")
SUFFIXES = {"seg": "synthseg", "post": "posteriors", "resample": "resampled"}


@dataclass
class Job:
    """One input image and the paths of its outputs (None = not asked for)."""

    image: str
    outputs: dict = field(default_factory=dict)


@dataclass
class Plan:
    jobs: list
    shared_csv: dict  # kind -> path of the CSV shared by all subjects (file or folder input)


def _read_list(path: str, what: str) -> list[str]:
    if not os.path.isfile(path):
        raise InputError(f"the list file {path} ({what}) does not exist")
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _with_suffix(name: str, suffix: str) -> str:
    """x.nii.gz -> x_<suffix>.nii.gz, x.mgz -> x_<suffix>.mgz (SynthSeg's renaming)."""
    ext = image_suffix(name)
    if not ext:
        return f"{name}_{suffix}.nii.gz"
    return name[: -len(ext)] + f"_{suffix}" + name[-len(ext):]


def _csv_path(path: str) -> str:
    return path if path.endswith(".csv") else path + ".csv"


def plan_outputs(inputs: str, outputs: dict) -> Plan:
    """Map --i and the output options (kind -> path or None) to per-image output paths.

    --i may be an image, a folder of images, or a .txt list; the outputs must be of the same kind
    (a file or folder for an image, folders for a folder, .txt lists for a list).
    """
    if not inputs:
        raise UsageError("give the input image, folder or .txt list with --i")
    if not outputs.get("seg"):
        raise UsageError("give the output segmentation (file or folder) with --o")
    inputs = os.path.abspath(os.path.expanduser(inputs))
    given = {kind: os.path.abspath(os.path.expanduser(path)) for kind, path in outputs.items() if path}
    if inputs.endswith(".txt"):
        images = _read_list(inputs, "--i")
        if not images:
            raise InputError(f"the list {inputs} names no image")
        jobs = [Job(image=os.path.abspath(p)) for p in images]
        for kind, path in given.items():
            if not path.endswith(".txt"):
                raise UsageError(f"--i is a .txt list, so --{'o' if kind == 'seg' else kind} must be one too")
            paths = _read_list(path, f"--{kind}")
            if len(paths) != len(jobs):
                raise UsageError(f"{path} lists {len(paths)} paths but {inputs} lists {len(jobs)} images")
            for job, target in zip(jobs, paths):
                job.outputs[kind] = os.path.abspath(target)
        return Plan(jobs=jobs, shared_csv={})
    if os.path.isdir(inputs):
        images = [p for p in list_images(inputs) if image_suffix(p) in (".nii.gz", ".nii", ".mgz")]
        if not images:
            raise InputError(f"no .nii, .nii.gz or .mgz image in the folder {inputs}")
        jobs = [Job(image=p) for p in images]
        shared = {}
        for kind, path in given.items():
            if path.endswith(".txt"):
                raise UsageError(f"--{kind} can only be a .txt list when --i is one")
            if kind in ("vol", "qc"):
                shared[kind] = _csv_path(path)
                continue
            if image_suffix(path):
                raise UsageError(f"--i is a folder, so --{'o' if kind == 'seg' else kind} must be a folder, not {path}")
            for job in jobs:
                job.outputs[kind] = os.path.join(path, _with_suffix(os.path.basename(job.image), SUFFIXES[kind]))
        return Plan(jobs=jobs, shared_csv=shared)
    if not image_suffix(inputs):
        if os.path.isfile(inputs):
            raise InputError(f"{inputs}: unsupported extension; give a .nii, .nii.gz or .mgz image, a folder or a .txt list")
        raise InputError(f"input not found: {inputs}")
    if not os.path.isfile(inputs):
        raise InputError(f"input not found: {inputs}")
    job = Job(image=inputs)
    shared = {}
    for kind, path in given.items():
        if path.endswith(".txt"):
            raise UsageError(f"--{kind} can only be a .txt list when --i is one")
        if kind in ("vol", "qc"):
            shared[kind] = _csv_path(path)
        elif image_suffix(path):
            job.outputs[kind] = path
        else:  # a folder: SynthSeg names the file after the input
            job.outputs[kind] = os.path.join(path, _with_suffix(os.path.basename(inputs), SUFFIXES[kind]))
    return Plan(jobs=[job], shared_csv=shared)


def format_volume(value: float, dtype: str = "float64") -> str:
    # SynthSeg writes str() of numpy scalars rounded to 3 decimals: the shortest repr of a float32
    # (e.g. 1185534.1) when its volumes are float32, of a float64 otherwise
    return str(np.float32(value)) if dtype == "float32" else repr(float(value))


def format_qc(value: float) -> str:
    return "%.4f" % value


def csv_text(header: Sequence[str], rows: Sequence[Sequence[str]], shared: bool) -> str:
    """A SynthSeg CSV: 'subject,<names>' then one row per subject (shared file), or a header whose
    first cell is empty and the single row (per-subject file of a .txt list). Lines end in CRLF
    like Python's csv module writes them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if shared:
        writer.writerow(["subject", *header])
    else:
        writer.writerow(["", *header])
    writer.writerows(rows)
    return buffer.getvalue()


def volume_row(subject: str, volumes: dict, dtype: str = "float64") -> list[str]:
    return [subject, *(format_volume(v, dtype) for v in volumes.values())]


def qc_row(subject: str, qc: dict) -> list[str]:
    return [subject, *(format_qc(v) for v in qc.values())]
