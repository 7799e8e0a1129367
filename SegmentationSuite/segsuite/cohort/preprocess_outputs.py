"""The preprocessing step of a cohort run (``segsuite bids ... participant --preprocess``): segsuite
preprocess's outputs for each image, with the subject key as prefix, staged in the subject's folder
so they commit with its segmentation (all or nothing). The group level is segsuite.preprocess.group.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from ..result import SegmentationResult
from .index import CohortItem


@functools.lru_cache(maxsize=2)
def worker_template(space: str, resolution: float):
    """The template, loaded once per worker process."""
    from ..preprocess.templates import load_template

    return load_template(space, resolution=resolution)


def write_preprocess_derivatives(folder: Path, item: CohortItem, result: SegmentationResult, settings: dict,
                                 threads: Optional[int] = None) -> list[str]:
    """Preprocess the item's T1w with ``result`` and stage the files in ``folder``/anat; returns their names."""
    from ..preprocess.subject import preprocess_subject, write_preprocessed

    template = worker_template(settings["template"], float(settings["resolution"]))
    preprocessed = preprocess_subject(item.path, result, template, fwhm=float(settings["fwhm"]), threads=threads or 1,
                                      tissue_channels=settings.get("registration", "t1w+tissues") == "t1w+tissues")
    anat = Path(folder) / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    own_mask = not (anat / f"{item.key}_desc-brain_mask.nii.gz").exists()  # the engine's own mask stays
    written = write_preprocessed(preprocessed, str(anat), item.key, brain_mask=own_mask)
    return [Path(path).name for path in written]
