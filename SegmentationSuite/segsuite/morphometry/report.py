"""The per-subject QC mosaic (written beside the morphometry outputs) and the group plots of the
review report (segsuite.review): each metric's distribution with the flagged outliers marked, every
region's volume against TIV with the cohort's fit.
"""

from __future__ import annotations

import base64
import io
from typing import Optional

import numpy as np


def subject_mosaic(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, size: Optional[int] = None,
                   image_format: str = "webp") -> tuple[str, bytes]:
    """Axial, coronal and sagittal slices through the labels' centre with their outlines in their
    FreeSurfer colours, radiological with orientation letters (qcviews); tiles at the image's own
    resolution, or ``size`` x ``size`` each. Returns (MIME type, encoded bytes)."""
    from .. import qcviews

    views = qcviews.make_views(image, labels, affine, levels=1)
    if size:
        views = qcviews.resized(views, size)
    base, _, edges, _ = qcviews.render_views(views, gap=0 if size else qcviews.GAP)
    mosaic = qcviews.blend(base, edges)
    if image_format == "webp":
        return qcviews.encode(mosaic, lossless=True)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mosaic).save(buffer, format="PNG", optimize=True)
    return "image/png", buffer.getvalue()


def _figure_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def metric_plots(tables) -> Optional[str]:
    """One figure: each quality column's values across subjects, flagged subjects in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in tables.quality.columns if c not in ("participant_id", "session_id")
               and np.isfinite(tables.quality[c].to_numpy(dtype=float)).any()]
    if not columns:
        return None
    flagged = (tables.flags["n_flags"] > 0).to_numpy()
    per_row = 4
    rows = (len(columns) + per_row - 1) // per_row
    figure, axes = plt.subplots(rows, per_row, figsize=(3.2 * per_row, 1.6 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    for axis, column in zip(axes.ravel(), columns):
        values = tables.quality[column].to_numpy(dtype=float)
        jitter = rng.uniform(-0.3, 0.3, values.size)
        axis.scatter(values[~flagged], jitter[~flagged], s=6, color="#4477aa", alpha=0.6)
        axis.scatter(values[flagged], jitter[flagged], s=10, color="#cc3311")
        finite = values[np.isfinite(values)]
        if finite.size:
            axis.axvline(np.median(finite), color="grey", linewidth=0.8)
        axis.set_title(column, fontsize=8)
        axis.set_yticks([])
        axis.tick_params(labelsize=7)
    for axis in axes.ravel()[len(columns):]:
        axis.axis("off")
    figure.tight_layout()
    return _figure_data_uri(figure)


def volume_plots(tables) -> Optional[str]:
    """One figure: every region's volume against TIV, with the cohort's fitted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = tables.volume_columns
    if not regions:
        return None
    tiv = tables.wide["TIV"].to_numpy(dtype=float) / 1e6
    fit = tables.residual_fit.set_index("region")
    flagged = (tables.flags["n_flags"] > 0).to_numpy()
    per_row = 8
    rows = (len(regions) + per_row - 1) // per_row
    figure, axes = plt.subplots(rows, per_row, figsize=(1.9 * per_row, 1.5 * rows), squeeze=False)
    span = np.linspace(np.nanmin(tiv), np.nanmax(tiv), 2) if np.isfinite(tiv).any() else np.array([0, 1])
    for axis, region in zip(axes.ravel(), regions):
        volume = tables.wide[region].to_numpy(dtype=float)
        axis.scatter(tiv[~flagged], volume[~flagged], s=4, color="#4477aa", alpha=0.6)
        axis.scatter(tiv[flagged], volume[flagged], s=6, color="#cc3311")
        slope, intercept = fit.loc[region, "slope"], fit.loc[region, "intercept"]
        if np.isfinite(slope):
            axis.plot(span, intercept + slope * span * 1e6, color="grey", linewidth=0.8)
        axis.set_title(region[:28], fontsize=6)
        axis.tick_params(labelsize=5)
    for axis in axes.ravel()[len(regions):]:
        axis.axis("off")
    figure.tight_layout()
    return _figure_data_uri(figure)
