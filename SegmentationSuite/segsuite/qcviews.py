"""Slice views for every QC page the suite writes, in one orientation convention.

Radiological display, as Slicer and the Spinal Cord Toolbox show it: axial and coronal views with the
patient's right on the screen's left, anterior (axial) or superior (coronal, sagittal) up; sagittal views
with anterior on the left. Every view carries its orientation letters (R/L, A/P, S/I) burned into the
image, so a view read out of its page still says how it is oriented. The volume is first brought to
RAS voxel order along its nearest axes (an oblique scan is shown in its own, nearly anatomical planes).

    views = make_views(image, labels, affine, table)          # 3 planes x 3 levels
    base, fill, outline = render_views(views)                 # RGB, RGBA, RGBA of one size

The tiles keep the image's own resolution (non-square pixels are repeated to the finest in-plane size).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

PLANES = ("axial", "coronal", "sagittal")
PLANE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}   # the RAS axis a plane is a level of
# (screen left, screen right, top, bottom) of each plane in the radiological convention
LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}
CONVENTION = ("Radiological convention, as in Slicer and the Spinal Cord Toolbox: the patient's right is on the "
              "screen's left in axial and coronal views, anterior on the left in sagittal views; the letters on "
              "each view name the patient's side at that edge.")
LETTER_COLOR = (255, 214, 0)

# 5 x 7 glyphs of the orientation letters (1: ink)
_GLYPHS = {
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "A": ["01110", "10001", "10001", "11111", "10001", "10001", "10001"],
    "P": ["11110", "10001", "10001", "11110", "10000", "10000", "10000"],
    "S": ["01111", "10000", "10000", "01110", "00001", "00001", "11110"],
    "I": ["11111", "00100", "00100", "00100", "00100", "00100", "11111"],
}


def glyph(letter: str, scale: int = 1) -> np.ndarray:
    """The boolean bitmap of an orientation letter, ``scale`` pixels per glyph dot."""
    dots = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]], dtype=bool)
    return np.repeat(np.repeat(dots, scale, axis=0), scale, axis=1)


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` in RAS voxel order along its nearest axes, and the voxel sizes (mm) of those axes."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(np.asarray(array), ornt)
    sizes = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return ras, sizes[ornt[:, 0].astype(int)]


def display_plane(volume_ras: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of a RAS-ordered volume as it is shown: rows top to bottom, columns screen left to right."""
    section = np.take(volume_ras, int(index), axis=PLANE_AXIS[plane])
    # the two remaining RAS axes, each shown from its positive end: R, A or S first
    return section[::-1, ::-1].T


def _plane_pixel_sizes(sizes: np.ndarray, plane: str) -> tuple[float, float]:
    """(row, column) pixel sizes of a displayed plane."""
    remaining = [axis for axis in range(3) if axis != PLANE_AXIS[plane]]
    return float(sizes[remaining[1]]), float(sizes[remaining[0]])


def _square_pixels(plane: np.ndarray, row_size: float, column_size: float) -> np.ndarray:
    """Repeat rows or columns (nearest) so that pixels are square at the finest in-plane size."""
    finest = min(row_size, column_size)
    rows = max(1, int(round(plane.shape[0] * row_size / finest)))
    columns = max(1, int(round(plane.shape[1] * column_size / finest)))
    if (rows, columns) == plane.shape:
        return plane
    row_index = np.minimum((np.arange(rows) * plane.shape[0] / rows).astype(int), plane.shape[0] - 1)
    column_index = np.minimum((np.arange(columns) * plane.shape[1] / columns).astype(int), plane.shape[1] - 1)
    return plane[row_index][:, column_index]


@dataclass
class Tile:
    plane: str
    level: int                 # voxel index along the plane's RAS axis
    grey: np.ndarray           # uint8 (rows, columns)
    labels: np.ndarray         # int (rows, columns), same shape


@dataclass
class Views:
    """The tiles of one subject and engine, plane by plane, with the label names and colours drawn."""

    tiles: list[Tile]
    legend: list[tuple[int, str, tuple[int, int, int]]] = field(default_factory=list)
    palette: Optional[np.ndarray] = None


def _centre_and_extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axis: centre of mass, first and last index of the mask (the volume's middle when empty)."""
    count = int(np.count_nonzero(mask))
    if count == 0:
        shape = np.array(mask.shape)
        return shape // 2, np.zeros(3, int), shape - 1
    centre, low, high = [], [], []
    for axis in range(3):
        profile = np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != axis))
        present = np.flatnonzero(profile)
        centre.append(int(round(np.dot(profile, np.arange(mask.shape[axis])) / count)))
        low.append(int(present[0]))
        high.append(int(present[-1]))
    return np.array(centre), np.array(low), np.array(high)


def choose_levels(mask: np.ndarray, count: int = 3) -> dict[str, list[int]]:
    """Levels per plane spread over the mask's extent (25%, 50%, 75% for three), through its centre."""
    centre, low, high = _centre_and_extent(mask)
    levels = {}
    for plane in PLANES:
        axis = PLANE_AXIS[plane]
        if count == 1:
            levels[plane] = [int(centre[axis])]
            continue
        spread = np.linspace(low[axis], high[axis], count + 2)[1:-1].round().astype(int).tolist()
        spread[count // 2] = int(centre[axis])
        levels[plane] = sorted(set(spread))
    return levels


def make_views(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, table=None, levels=3,
               focus: Optional[np.ndarray] = None, crop_mm: Optional[float] = None,
               planes: Sequence[str] = PLANES, crop_planes: Sequence[str] = PLANES) -> Views:
    """Tiles of ``image`` with ``labels`` (same grid) at ``levels`` levels per plane (a number, or
    {plane: number}) through the labelled region (or through ``focus``, a mask on the same grid, e.g.
    ScLimbic's small structures); with ``crop_mm`` the tiles of ``crop_planes`` are windows of that
    size centred on the focus."""
    from .labels import fallback_color, freesurfer_lut

    image = np.asarray(image, dtype=np.float32)
    if image.shape != np.asarray(labels).shape:
        raise ValueError(f"image {image.shape} and labels {np.asarray(labels).shape} must share a grid")
    grey, sizes = to_ras(image, affine)
    segment, _ = to_ras(np.asarray(labels), affine)
    focus_ras = to_ras(np.asarray(focus, dtype=bool), affine)[0] if focus is not None else segment > 0
    counts = levels if isinstance(levels, dict) else {plane: levels for plane in PLANES}
    chosen = {plane: choose_levels(focus_ras, counts.get(plane, 1))[plane] for plane in planes}
    inside = grey[segment > 0] if np.any(segment > 0) else grey[np.isfinite(grey)]
    low, high = np.percentile(inside, [1, 99.5]) if inside.size else (0.0, 1.0)
    scale = max(float(high - low), 1e-6)
    centre = _centre_and_extent(focus_ras)[0]
    tiles = []
    for plane in planes:
        for level in chosen[plane]:
            grey_plane = display_plane(grey, plane, level)
            label_plane = display_plane(segment, plane, level)
            if crop_mm and plane in crop_planes:
                grey_plane, label_plane = _crop(grey_plane, label_plane, centre, plane, sizes, crop_mm, grey.shape)
            row_size, column_size = _plane_pixel_sizes(sizes, plane)
            grey_plane = _square_pixels(grey_plane, row_size, column_size)
            label_plane = _square_pixels(label_plane, row_size, column_size)
            scaled = (np.clip((grey_plane - low) / scale, 0, 1) * 255).round().astype(np.uint8)
            tiles.append(Tile(plane, int(level), scaled, label_plane.astype(np.int32)))
    values = sorted({int(v) for tile in tiles for v in np.unique(tile.labels) if v > 0})
    lut = table if table is not None else freesurfer_lut()
    fallback = freesurfer_lut()
    palette = np.zeros((max(values, default=0) + 1, 3), dtype=np.uint8)
    legend = []
    for value in values:
        label = lut.get(value) or fallback.get(value)
        color = tuple(int(c) for c in (label.color if label else fallback_color(value)))
        palette[value] = color
        legend.append((value, label.name if label else f"Label-{value}", color))
    return Views(tiles, legend, palette)


def _crop(grey_plane, label_plane, centre_ras, plane, sizes, crop_mm, shape_ras):
    """A window of ``crop_mm`` around the focus centre, padded with zeros where it leaves the image."""
    remaining = [axis for axis in range(3) if axis != PLANE_AXIS[plane]]
    # displayed rows run along remaining[1] reversed, columns along remaining[0] reversed
    row_centre = shape_ras[remaining[1]] - 1 - centre_ras[remaining[1]]
    column_centre = shape_ras[remaining[0]] - 1 - centre_ras[remaining[0]]
    half_rows = max(4, int(round(crop_mm / 2 / sizes[remaining[1]])))
    half_columns = max(4, int(round(crop_mm / 2 / sizes[remaining[0]])))
    out_grey = np.zeros((2 * half_rows, 2 * half_columns), dtype=grey_plane.dtype)
    out_labels = np.zeros((2 * half_rows, 2 * half_columns), dtype=label_plane.dtype)
    r0, c0 = int(row_centre) - half_rows, int(column_centre) - half_columns
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + 2 * half_rows, grey_plane.shape[0]), min(c0 + 2 * half_columns, grey_plane.shape[1])
    if re > rs and ce > cs:
        out_grey[rs - r0:re - r0, cs - c0:ce - c0] = grey_plane[rs:re, cs:ce]
        out_labels[rs - r0:re - r0, cs - c0:ce - c0] = label_plane[rs:re, cs:ce]
    return out_grey, out_labels


def outline(labels: np.ndarray) -> np.ndarray:
    """The labelled pixels that touch another value (4-neighbourhood)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels > 0)


def letter_scale(tile_shape: Sequence[int]) -> int:
    return 1 if min(tile_shape) < 96 else 2


def stamp_letters(rgb: np.ndarray, plane: str, top: int = 0, left: int = 0, height: Optional[int] = None,
                  width: Optional[int] = None, covered: Optional[np.ndarray] = None) -> None:
    """Burn the plane's orientation letters into the tile at (top, left) of ``rgb`` (in place);
    ``covered`` (a boolean image like ``rgb``) is set where a letter or its backing lies."""
    height = rgb.shape[0] - top if height is None else height
    width = rgb.shape[1] - left if width is None else width
    scale = letter_scale((height, width))
    glyph_h, glyph_w = 7 * scale, 5 * scale
    margin = scale
    west, east, north, south = LETTERS[plane]
    places = {west: (top + (height - glyph_h) // 2, left + margin),
              east: (top + (height - glyph_h) // 2, left + width - glyph_w - margin),
              north: (top + margin, left + (width - glyph_w) // 2),
              south: (top + height - glyph_h - margin, left + (width - glyph_w) // 2)}
    for letter, (row, column) in places.items():
        ink = glyph(letter, scale)
        box = rgb[row - scale:row + glyph_h + scale, column - scale:column + glyph_w + scale] if row >= scale and \
            column >= scale else None
        if box is not None:
            box //= 3  # a dark backing keeps the letter legible on bright tissue
            if covered is not None:
                covered[row - scale:row + glyph_h + scale, column - scale:column + glyph_w + scale] = True
        window = rgb[row:row + glyph_h, column:column + glyph_w]
        window[ink[:window.shape[0], :window.shape[1]]] = LETTER_COLOR


@dataclass
class Layout:
    """Where each tile sits in the rendered sheet: (plane, level, top, left, height, width)."""

    width: int
    height: int
    places: list[tuple[str, int, int, int, int, int]]


GAP = 2
SEPARATOR = 110  # grey in the gaps between tiles: black-backed tiles (and their edge letters) stay apart


def layout(views: Views, gap: int = GAP) -> Layout:
    """One row per plane, its levels side by side (one row of three when each plane has one level)."""
    rows: dict[str, list[Tile]] = {}
    for tile in views.tiles:
        rows.setdefault(tile.plane, []).append(tile)
    if all(len(tiles) == 1 for tiles in rows.values()):
        rows = {"all": list(views.tiles)}
    places, top, width = [], 0, 0
    for plane, tiles in rows.items():
        left, row_height = 0, max(t.grey.shape[0] for t in tiles)
        for tile in tiles:
            places.append((tile.plane, tile.level, top, left, tile.grey.shape[0], tile.grey.shape[1]))
            left += tile.grey.shape[1] + gap
        width = max(width, left - gap)
        top += row_height + gap
    return Layout(width=max(width, 1), height=max(top - gap, 1), places=places)


def resized(views: Views, size: int) -> Views:
    """The same views with every tile resized (nearest) to size x size: thumbnails."""
    def square(plane):
        rows = np.minimum((np.arange(size) * plane.shape[0] / size).astype(int), plane.shape[0] - 1)
        columns = np.minimum((np.arange(size) * plane.shape[1] / size).astype(int), plane.shape[1] - 1)
        return plane[rows][:, columns]

    tiles = [Tile(t.plane, t.level, square(t.grey), square(t.labels)) for t in views.tiles]
    return Views(tiles, views.legend, views.palette)


def render_views(views: Views, gap: int = GAP) -> tuple[np.ndarray, np.ndarray, np.ndarray, Layout]:
    """(base RGB with letters, filled labels RGBA, label outlines RGBA, layout): layers of one size."""
    sheet = layout(views, gap)
    base = np.zeros((sheet.height, sheet.width, 3), dtype=np.uint8)
    fill = np.zeros((sheet.height, sheet.width, 4), dtype=np.uint8)
    edges = np.zeros_like(fill)
    palette = views.palette if views.palette is not None else np.zeros((1, 3), np.uint8)
    lettered = np.zeros(base.shape[:2], dtype=bool)
    for tile, (plane, _, top, left, height, width) in zip(views.tiles, sheet.places):
        window = (slice(top, top + height), slice(left, left + width))
        base[top:top + height + gap, left:left + width + gap] = SEPARATOR  # the gaps right of and below it
        base[window] = tile.grey[..., None]
        stamp_letters(base, plane, top, left, height, width, lettered)
        inside = tile.labels > 0
        colours = palette[np.clip(tile.labels, 0, len(palette) - 1)]
        fill[window][inside] = np.concatenate([colours[inside], np.full((int(inside.sum()), 1), 255, np.uint8)], 1)
        rim = outline(tile.labels)
        edges[window][rim] = np.concatenate([colours[rim], np.full((int(rim.sum()), 1), 255, np.uint8)], 1)
    fill[lettered] = 0  # the overlays never hide an orientation letter
    edges[lettered] = 0
    return base, fill, edges, sheet


def encode(picture: np.ndarray, lossless: bool = True) -> tuple[str, bytes]:
    """(MIME type, bytes): WebP (lossless for overlays and letters) or PNG where Pillow lacks WebP."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(picture)
    try:
        image.save(buffer, format="WEBP", lossless=lossless, quality=80 if not lossless else 100, method=4)
        return "image/webp", buffer.getvalue()
    except (OSError, KeyError, ValueError):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        return "image/png", buffer.getvalue()


def blend(base: np.ndarray, overlay: np.ndarray, opacity: float = 1.0) -> np.ndarray:
    """An RGBA overlay over an RGB base at ``opacity`` (what the browser shows, for static pages)."""
    alpha = overlay[..., 3:4].astype(np.float32) / 255 * opacity
    return (base * (1 - alpha) + overlay[..., :3] * alpha).round().astype(np.uint8)
