"""One (subject, engine)'s views for the review report: three layers of one size (the image with the
orientation letters, the labels filled, the labels outlined) and what the page needs to show them.

Per engine (``VIEW_STYLES``): whole-brain engines at three levels per plane through the labels;
ScLimbic centred on its small structures, in 90 mm windows; sc_epi as SCT's QC shows the cord: axial
windows of 40 mm along the cord and a sagittal and coronal view through it; the SAMSEG filter's brain
mask over the whole head, next to SAMSEG's labels before the filter.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import qcviews

VIEW_STYLES = {
    "default": {"levels": 3},
    "sclimbic": {"levels": 3, "crop_mm": 90.0},
    "scepi": {"levels": {"axial": 6, "sagittal": 1, "coronal": 1}, "crop_mm": 40.0, "crop_planes": ("axial",)},
    "samseg": {"levels": 3},
}
LAYERS = ("base", "fill", "outline")
BEFORE_ONLY = 2  # the value of "labelled before the filter, outside its mask" in a filter's view


@dataclass
class ViewSource:
    """Where one (subject, engine)'s views come from."""

    participant_id: str
    session_id: str
    engine: str                    # the rated unit's engine name (the ratings TSV's engine column)
    image: object                  # path, Volume or (array, affine): the background
    labels: object                 # path, Volume or (array, affine): on any grid (the image is resampled)
    title: str = ""
    style: str = "default"
    rated: bool = True             # False: shown for reference only (SAMSEG before the filter)
    label_table: object = None
    before: object = None          # the segmentation before a filter (labels' grid): its voxels outside
                                   # ``labels`` get the value BEFORE_ONLY, so one view shows before and after


def _volume(source):
    from ..image import as_volume, load_volume

    if isinstance(source, (str, os.PathLike)):
        return load_volume(str(source))
    return as_volume(source)


def views_of(source: ViewSource) -> qcviews.Views:
    """The Views of one source: the background resampled onto the labels' grid."""
    from ..image import squeeze_to_3d
    from ..morphometry.subject import _image_on_grid

    labels_volume = _volume(source.labels)
    labels = squeeze_to_3d(np.asarray(labels_volume.data), "the segmentation")
    labels = np.rint(labels).astype(np.int32) if labels.dtype.kind == "f" else labels.astype(np.int32)
    if source.before is not None:
        from ..synthseg.engine import reslice_nearest

        before_volume = _volume(source.before)
        before = squeeze_to_3d(np.asarray(before_volume.data), "the segmentation before the filter")
        before = reslice_nearest(before, before_volume.affine, labels.shape, labels_volume.affine)
        labels = np.where(labels > 0, labels, np.where(before > 0, BEFORE_ONLY, 0)).astype(np.int32)
    image_volume = _volume(source.image)
    if np.asarray(image_volume.data).ndim == 4:  # a one-volume series (sc_epi's mean EPI)
        image_volume = type(image_volume)(np.asarray(image_volume.data)[..., 0], image_volume.affine)
    image = _image_on_grid(image_volume, labels.shape, labels_volume.affine)
    style = dict(VIEW_STYLES.get(source.style, VIEW_STYLES["default"]))
    return qcviews.make_views(image, labels, labels_volume.affine, source.label_table, **style)


def file_stem(source: ViewSource) -> str:
    parts = [source.participant_id] + ([source.session_id] if source.session_id else []) + [f"seg-{source.engine}"]
    if not source.rated:
        parts.append("desc-reference")
    return "_".join(parts)


def write_views(source: ViewSource, folder: str | os.PathLike) -> dict:
    """Write the three layers of ``source`` into ``folder``; returns the page's entry for it
    (engine, files relative to ``folder``, layout, legend)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    views = views_of(source)
    base, fill, outline, sheet = qcviews.render_views(views)
    stem = file_stem(source)
    files = {}
    for layer, picture, lossless in (("base", base, False), ("fill", fill, True), ("outline", outline, True)):
        mime, data = qcviews.encode(picture, lossless=lossless)
        name = f"{stem}_{layer}.{'webp' if mime == 'image/webp' else 'png'}"
        temp = folder / f".{name}.tmp"
        temp.write_bytes(data)
        os.replace(temp, folder / name)
        files[layer] = name
    entry = {"engine": source.engine, "title": source.title or source.engine, "rated": source.rated,
             "width": sheet.width, "height": sheet.height, "files": files,
             "tiles": [[plane, level, top, left, h, w] for plane, level, top, left, h, w in sheet.places],
             "legend": [[value, name, "#%02x%02x%02x" % color] for value, name, color in views.legend],
             "bytes": sum((folder / name).stat().st_size for name in files.values())}
    (folder / f"{stem}.json").write_text(json.dumps(entry), encoding="utf-8")
    return entry


def _write_one(arguments) -> tuple[int, Optional[dict], Optional[str]]:
    index, source, folder = arguments
    try:
        return index, write_views(source, folder), None
    except Exception as error:  # one unreadable subject costs only its own views
        return index, None, f"{type(error).__name__}: {error}"


def write_all_views(sources: list[ViewSource], folder: str | os.PathLike, workers: int = 1) -> tuple[list, list]:
    """Write every source's views (``workers`` processes); returns (entries in order, failures).

    A failed source gives None in place and (source, reason) in the failures."""
    jobs = [(index, source, str(folder)) for index, source in enumerate(sources)]
    entries: list = [None] * len(sources)
    failures = []
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_write_one, jobs, chunksize=4))
    else:
        done = [_write_one(job) for job in jobs]
    for index, entry, reason in done:
        entries[index] = entry
        if reason:
            failures.append((sources[index], reason))
    return entries, failures
