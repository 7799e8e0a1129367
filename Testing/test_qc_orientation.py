"""Every QC page shows the patient's left on the screen's right (radiological), with its letters:
a synthetic head with a marker on the patient's left, front and top, stored as RAS, LIA and oblique."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))

from orientation_phantom import FRONT, LEFT, TOP, letter_at, marker_side, phantom  # noqa: E402

from segsuite import qcviews  # noqa: E402

ORIENTATIONS = ("RAS", "LIA", "oblique")


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def check_sheet(base: np.ndarray, fill: np.ndarray, places) -> None:
    """The markers and letters of every tile of a rendered sheet (base RGB, fill RGBA)."""
    fill_rgb = fill[..., :3]
    seen = set()
    for plane, _, top, left, height, width in places:
        tile = base[top:top + height, left:left + width]
        colours = fill_rgb[top:top + height, left:left + width]
        west, east, north, south = qcviews.LETTERS[plane]
        for letter, where in ((west, "left"), (east, "right"), (north, "top"), (south, "bottom")):
            assert letter_at(tile, letter, where), f"{plane}: no {letter} at the {where}"
        for value, expectation in ((LEFT, "right"), (FRONT, None), (TOP, "top")):
            colour = np.array(qcviews_colour(value))
            mask = np.all(colours == colour, axis=-1)
            if not mask.any():
                continue
            row, column = marker_side(mask.astype(int), 1)
            seen.add((plane, value))
            if value == LEFT and plane in ("axial", "coronal"):
                assert column > 0.6, f"{plane}: the left marker shows at column {column:.2f} (should be on the right)"
            if value == FRONT and plane == "axial":
                assert row < 0.4, f"axial: the anterior marker at row {row:.2f} (should be at the top)"
            if value == FRONT and plane == "sagittal":
                assert column < 0.4, f"sagittal: the anterior marker at column {column:.2f} (should be on the left)"
            if value == TOP and plane in ("coronal", "sagittal"):
                assert row < 0.4, f"{plane}: the superior marker at row {row:.2f} (should be at the top)"
    assert {("axial", LEFT), ("coronal", LEFT), ("axial", FRONT), ("sagittal", FRONT), ("sagittal", TOP)} <= seen, seen


def qcviews_colour(value: int):
    from segsuite.labels import freesurfer_lut

    return freesurfer_lut()[value].color


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_views_are_radiological_with_letters(orientation):
    image, labels, affine = phantom(orientation)
    views = qcviews.make_views(image, labels, affine, levels=3, focus=labels > 2)
    base, fill, _, sheet = qcviews.render_views(views)
    check_sheet(base, fill, sheet.places)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_morphometry_mosaic_is_radiological(orientation):
    from segsuite.labels import freesurfer_lut
    from segsuite.morphometry.report import subject_mosaic

    image, labels, affine = phantom(orientation)
    _, data = subject_mosaic(image, labels, affine, image_format="png")
    picture = _decode(data)[..., :3]
    places = qcviews.layout(qcviews.make_views(image, labels, affine, levels=1)).places
    assert picture.shape[:2] == (max(p[2] + p[4] for p in places), max(p[3] + p[5] for p in places))
    for plane, _, top, left, h, w in places:
        tile = picture[top:top + h, left:left + w]
        west, east, north, south = qcviews.LETTERS[plane]
        assert letter_at(tile, west, "left") and letter_at(tile, east, "right"), plane
        assert letter_at(tile, north, "top") and letter_at(tile, south, "bottom"), plane
    axial = [p for p in places if p[0] == "axial"][0]
    _, _, top, left, h, w = axial
    mask = np.all(picture[top:top + h, left:left + w] == np.array(freesurfer_lut()[LEFT].color), axis=-1)
    assert mask.any() and np.nonzero(mask)[1].mean() / w > 0.6, "the left marker is not on the screen's right"


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_scepi_qc_mosaic_is_radiological(orientation):
    from segsuite.scepi.qc import axial_mosaic

    image, labels, affine = phantom(orientation)
    cord = (labels == LEFT).astype(np.uint8)  # the "cord" sits on the patient's left
    plain, overlay = axial_mosaic(image, cord, affine, crop_mm=None, tile_pixels=40)
    count = int(np.count_nonzero(np.any(phantom("RAS")[1] == LEFT, axis=(0, 1))))
    tile_w = plain.shape[1] // count
    first = plain[:, :tile_w]
    changed = np.any(overlay[:, :tile_w] != first, axis=-1)
    assert changed.any() and np.nonzero(changed)[1].mean() / tile_w > 0.6, \
        "sc_epi: the marker on the patient's left is not on the screen's right"
    assert letter_at(first, "R", "left") and letter_at(first, "L", "right")
    assert letter_at(first, "A", "top") and letter_at(first, "P", "bottom")


def test_scepi_qc_page_states_the_convention(tmp_path):
    from segsuite.image import OutputTransaction
    from segsuite.scepi.qc import add_qc_entry, write_qc_index

    image, labels, affine = phantom("LIA")
    with OutputTransaction(overwrite=True) as transaction:
        entries = add_qc_entry(transaction, tmp_path, image, (labels == LEFT).astype(np.uint8), affine,
                               str(tmp_path / "epi.nii.gz"), [], (255, 0, 0), {"cord": 1.0})
        write_qc_index(transaction, tmp_path, entries)
    assert qcviews.CONVENTION in (tmp_path / "index.html").read_text().replace("&#x27;", "'")
