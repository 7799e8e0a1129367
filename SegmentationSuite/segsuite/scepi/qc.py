"""A QC report like SCT's -qc: an HTML page with one row per run, each an axial mosaic of the
cord segmentation over the image (PNG written with numpy + zlib), appended across runs."""

from __future__ import annotations

import datetime
import html
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import SegSuiteError
from ..qcviews import CONVENTION

QC_INDEX = "index.html"
QC_ENTRIES = "qc_entries.json"
QC_IMAGES = "images"


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB (H, W, 3) or grey (H, W) image as PNG bytes."""
    image = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if image.ndim == 2:
        color_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"expected (H, W) or (H, W, 3), got {image.shape}")
    height, width = image.shape[:2]
    rows = image.reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 per row

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _normalise(slices: np.ndarray) -> np.ndarray:
    values = slices[np.isfinite(slices)]
    low, high = (np.percentile(values, [1, 99]) if values.size else (0.0, 1.0))
    if high <= low:
        high = low + 1.0
    return (np.clip((slices - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def axial_mosaic(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, color: Sequence[int] = (255, 0, 0),
                 columns: int = 12, crop_mm: Optional[float] = 40.0, tile_pixels: int = 96, alpha: float = 0.6):
    """Axial slices centred on the cord, radiological as every QC page of the suite (qcviews): anterior
    up, the patient's right on the screen's left, with R/L/A/P letters on each tile.

    Returns (image_only, overlay), two RGB mosaics of the same size. Slices with cord are shown;
    when the segmentation is empty (or ``crop_mm`` is None) the slices are shown uncropped.
    """
    from .. import qcviews

    image, sizes = qcviews.to_ras(np.asarray(image, dtype=np.float32), affine)
    labels, _ = qcviews.to_ras(np.asarray(labels), affine)

    slices_with_cord = [z for z in range(labels.shape[2]) if labels[:, :, z].any()]
    chosen = slices_with_cord or list(range(labels.shape[2]))
    if len(chosen) > 4 * columns:
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, 4 * columns).round().astype(int)]
    crop = bool(slices_with_cord) and crop_mm is not None
    # displayed rows run along y (anterior first), columns along x (the patient's right first)
    half = [max(int(round(crop_mm / 2 / sizes[axis])), 4) for axis in (1, 0)] if crop else None
    tiles_image, tiles_overlay = [], []
    for z in chosen:
        plane = qcviews.display_plane(image, "axial", z)
        mask = qcviews.display_plane(labels, "axial", z) > 0
        if crop:
            cy, cx = (int(round(c)) for c in np.argwhere(mask).mean(axis=0))
            window = [slice(max(c - h, 0), c + h) for c, h in zip((cy, cx), half)]
            plane, mask = plane[tuple(window)], mask[tuple(window)]
            target = (2 * half[0], 2 * half[1])
            pad = [(0, t - s) for s, t in zip(plane.shape, target)]
            plane, mask = np.pad(plane, pad), np.pad(mask, pad)
        tiles_image.append(plane)
        tiles_overlay.append(mask)
    grey = _normalise(np.stack(tiles_image))
    count = len(chosen)
    rows = -(-count // columns)
    columns = min(columns, count)
    tile_h, tile_w = grey.shape[1:]
    # Upscale (nearest) so tiles are readable, and account for non-square pixels (rows: y, columns: x).
    scale_y = max(1, int(round(tile_pixels / max(tile_h, 1))))
    aspect = sizes[0] / sizes[1]
    scale_x = max(1, int(round(scale_y * aspect)))
    canvas = np.zeros((rows * tile_h * scale_y, columns * tile_w * scale_x, 3), np.uint8)
    overlay = canvas.copy()
    color_array = np.array(color, dtype=np.float32)
    for index, (tile, mask) in enumerate(zip(grey, tiles_overlay)):
        row, column = divmod(index, columns)
        tile = np.repeat(np.repeat(tile, scale_y, axis=0), scale_x, axis=1)
        mask = np.repeat(np.repeat(mask, scale_y, axis=0), scale_x, axis=1)
        rgb = np.repeat(tile[..., None], 3, axis=2)
        qcviews.stamp_letters(rgb, "axial")
        blended = rgb.astype(np.float32)
        blended[mask] = (1 - alpha) * blended[mask] + alpha * color_array
        window = (slice(row * tile.shape[0], (row + 1) * tile.shape[0]),
                  slice(column * tile.shape[1], (column + 1) * tile.shape[1]))
        canvas[window] = rgb
        overlay[window] = blended.round().astype(np.uint8)
    return canvas, overlay


def _safe_stem(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep.strip("._") or "image"


def add_qc_entry(transaction, qc_folder: str | os.PathLike, image: np.ndarray, labels: np.ndarray,
                 affine: np.ndarray, input_path: str, output_paths: Sequence[str], color: Sequence[int],
                 volumes: dict, pending_entries: Optional[list] = None, dataset: Optional[str] = None,
                 subject: Optional[str] = None) -> list:
    """Add one run's mosaics to the QC folder through ``transaction``; returns the updated entry list.

    The entry list is read from the folder the first time and carried in ``pending_entries`` for batch
    runs; call ``write_qc_index`` once at the end to write index.html and the entry list. ``dataset`` and
    ``subject`` label the row, as SCT's -qc-dataset and -qc-subject do.
    """
    folder = Path(qc_folder)
    entries = pending_entries if pending_entries is not None else read_qc_entries(folder)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = _safe_stem(os.path.basename(input_path).split(".nii")[0].split(".mg")[0])
    taken = {entry.get("overlay") for entry in entries} | {entry.get("image") for entry in entries}
    number = 0
    while True:
        base = f"{QC_IMAGES}/{stem}_{stamp}" + (f"_{number}" if number else "")
        if f"{base}_overlay.png" not in taken and not (folder / f"{base}_overlay.png").exists():
            break
        number += 1
    plain, overlay = axial_mosaic(image, labels, affine, color=color)
    for suffix, picture in (("_image.png", plain), ("_overlay.png", overlay)):
        temp = transaction.temp_path(folder / f"{base}{suffix}")
        with open(temp, "wb") as handle:
            handle.write(png_bytes(picture))
    entries.append({
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "input": os.path.abspath(input_path), "outputs": [os.path.abspath(p) for p in output_paths],
        "command": "segsuite scepi", "volumes_mm3": volumes,
        "image": f"{base}_image.png", "overlay": f"{base}_overlay.png",
        "dataset": dataset or "", "subject": subject or "",
    })
    return entries


def read_qc_entries(folder: Path) -> list:
    path = Path(folder) / QC_ENTRIES
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise ValueError("not a list")
        return entries
    except (OSError, ValueError) as error:
        raise SegSuiteError(f"the QC folder's {path} is unreadable ({error}); choose another -qc folder "
                            "or remove that file") from error


def write_qc_index(transaction, qc_folder: str | os.PathLike, entries: list) -> None:
    """Write the entry list and index.html (one table row per run, newest last)."""
    folder = Path(qc_folder)
    transaction.write_text(folder / QC_ENTRIES, json.dumps(entries, indent=1))
    rows = []
    for number, entry in enumerate(entries, start=1):
        volumes = ", ".join(f"{html.escape(str(k))}: {v:.1f} mm³" for k, v in entry.get("volumes_mm3", {}).items())
        outputs = "<br>".join(html.escape(p) for p in entry.get("outputs", []))
        overlay, image = html.escape(entry["overlay"]), html.escape(entry["image"])
        rows.append(
            f"<tr><td>{number}</td><td>{html.escape(entry.get('date', ''))}</td>"
            f"<td>{html.escape(entry.get('dataset', ''))}</td><td>{html.escape(entry.get('subject', ''))}</td>"
            f"<td>{html.escape(entry.get('input', ''))}</td><td>{outputs}</td><td>{volumes}</td>"
            f"<td><img src=\"{overlay}\" data-overlay=\"{overlay}\" data-image=\"{image}\" "
            "title=\"hover to hide the segmentation\" "
            "onmouseover=\"this.src=this.dataset.image\" onmouseout=\"this.src=this.dataset.overlay\"></td></tr>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>SegmentationSuite sc_epi QC</title>\n"
        "<style>body{font-family:sans-serif;background:#222;color:#eee}table{border-collapse:collapse}"
        "td,th{border:1px solid #555;padding:4px;vertical-align:top;font-size:12px}img{max-width:1200px}</style>"
        "</head><body>\n<h1>Spinal cord segmentation on EPI (sc_epi): QC</h1>\n"
        "<p>Axial slices containing the cord, segmentation in colour; hover an image to see it without the "
        f"segmentation.</p>\n<p class=\"convention\">{html.escape(CONVENTION)}</p>\n"
        "<table><tr><th>#</th><th>Date</th><th>Dataset</th><th>Subject</th><th>Input</th><th>Outputs</th><th>Volumes</th>"
        "<th>Axial mosaic</th></tr>\n"
        + "\n".join(rows) + "\n</table></body></html>\n")
    transaction.write_text(folder / QC_INDEX, page)
