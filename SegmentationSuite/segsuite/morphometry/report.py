"""The visual QC report: one self-contained HTML file (no network needed), flagged subjects first.

    from segsuite.morphometry.report import subject_mosaic, write_report
    mosaics = {("sub-01", ""): subject_mosaic(image, labels, affine), ...}
    write_report("qc.html", tables, mosaics)          # tables: group.build_group_tables(...)

Per subject: a 3-plane mosaic of the segmentation's outline over the image (a small WebP/PNG thumbnail,
inlined as base64 and decoded lazily), its QC figures and flags. Group plots (matplotlib): each metric's
distribution with the flagged outliers marked, every region's volume against TIV. A filter box and a
"flagged only" switch keep 1,000 subjects usable; thumbnails are ~5-10 kB each.
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Mapping, Optional

import numpy as np

from ..qcviews import CONVENTION

PRIMARY_METRICS = ("spec_snr", "spec_cnr", "mriqc_snr_total", "mriqc_cnr", "mriqc_cjv", "mriqc_efc")


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


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.5em}
table{border-collapse:collapse;font-size:12px} td,th{padding:3px 6px;border-bottom:1px solid #ddd;text-align:left}
tr.flagged{background:#fff0ee} .reasons{color:#a31;max-width:28em} img.mosaic{image-rendering:pixelated;height:112px}
.controls{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ccc}
.num{font-variant-numeric:tabular-nums}
"""

_SCRIPT = """
(function(){
  var box=document.getElementById('filter'), only=document.getElementById('flagged-only');
  var rows=Array.prototype.slice.call(document.querySelectorAll('#subjects tbody tr'));
  function apply(){
    var text=box.value.toLowerCase(), flagged=only.checked, shown=0;
    rows.forEach(function(row){
      var ok=(!text||row.dataset.id.indexOf(text)>=0)&&(!flagged||row.classList.contains('flagged'));
      row.style.display=ok?'':'none'; if(ok){shown++;}
    });
    document.getElementById('shown').textContent=shown;
  }
  box.addEventListener('input',apply); only.addEventListener('change',apply); apply();
  document.body.setAttribute('data-ready','yes');
})();
"""


def _format(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    return "n/a" if not np.isfinite(number) else f"{number:.4g}"


def write_report(path: str | os.PathLike, tables, mosaics: Mapping[tuple, tuple[str, bytes]] = None,
                 title: str = "SegmentationSuite QC report") -> int:
    """Write the HTML report (atomically) and return its size in bytes.

    ``mosaics``: (participant_id, session_id) -> (MIME type, image bytes) from subject_mosaic."""
    from ..image import OutputTransaction

    mosaics = mosaics or {}
    ranking = tables.ranking
    metric_columns = [c for c in PRIMARY_METRICS if c in ranking.columns]
    qc_columns = [c for c in ranking.columns if c.startswith("qc_")]
    header = "".join(f"<th>{html.escape(c)}</th>" for c in
                     ["rank", "subject", "session", "mosaic (axial, coronal, sagittal)", "flags", "reasons"]
                     + metric_columns + qc_columns)
    body = []
    for _, row in ranking.iterrows():
        key = (str(row["participant_id"]), str(row["session_id"]))
        picture = mosaics.get(key)
        cell = ""
        if picture is not None:
            mime, data = picture
            cell = (f'<img class="mosaic" loading="lazy" decoding="async" alt="{html.escape(key[0])}" '
                    f'src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}">')
        flagged = int(row["n_flags"]) > 0
        values = "".join(f'<td class="num">{_format(row[c])}</td>' for c in metric_columns + qc_columns)
        body.append(f'<tr class="{"flagged" if flagged else "ok"}" data-id="{html.escape(key[0].lower())}">'
                    f'<td>{int(row["rank"])}</td><td>{html.escape(key[0])}</td><td>{html.escape(key[1])}</td>'
                    f'<td>{cell}</td><td>{int(row["n_flags"])}</td><td class="reasons">{html.escape(str(row["reasons"]))}</td>'
                    f"{values}</tr>")
    flagged_count = int((ranking["n_flags"] > 0).sum())
    metrics_figure = metric_plots(tables)
    volumes_figure = volume_plots(tables)
    figures = ""
    if metrics_figure:
        figures += f'<h2>Quality metrics across subjects (red: flagged)</h2><img loading="lazy" alt="metrics" src="{metrics_figure}">'
    if volumes_figure:
        figures += (f'<h2>Region volumes (mm3) against TIV (L), cohort fit (the residual TIV correction)</h2>'
                    f'<img loading="lazy" alt="volumes" src="{volumes_figure}">')
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head><body>'
            f"<h1>{html.escape(title)}</h1><p>{len(ranking)} subjects, {flagged_count} flagged; ranked worst first. "
            "Flags: SynthSeg QC below the threshold, metrics beyond 3 MADs of the cohort median, ScLimbic |z| &gt; 3. "
            "Metric definitions: spec_* as the UK Biobank sMRI spec's code, mriqc_* as MRIQC's.</p>"
            f'<p class="convention">{html.escape(CONVENTION)}</p>'
            '<div class="controls"><label>Filter subjects <input id="filter" type="search"></label> '
            '<label><input id="flagged-only" type="checkbox"> flagged only</label> '
            '<span id="shown"></span> shown</div>'
            f'<table id="subjects"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f"{figures}<script>{_SCRIPT}</script></body></html>")
    encoded = page.encode("utf-8")
    with OutputTransaction(overwrite=True) as transaction:
        temp = transaction.temp_path(path)
        with open(temp, "wb") as handle:
            handle.write(encoded)
    return len(encoded)
