"""GM, WM and CSF maps from a segmentation, by the tissue table in ``data/tissue_classes.tsv``.

The table says which FreeSurfer label belongs to which tissue (sMRIPrep's aseg-to-3-tissue mapping);
the tissue probability of a voxel is the sum of its labels' posteriors, so GM + WM + CSF is the brain's
posterior mass (1 - background). Without posteriors the maps are the hard labels' indicators.
The 3-class ``dseg`` uses fMRIPrep's values (0 background, 1 GM, 2 WM, 3 CSF).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from .quality import forward_slices

TISSUES = ("GM", "WM", "CSF")
# BIDS-Derivatives / fMRIPrep values of the 3-class tissue segmentation (_dseg)
DSEG_VALUES = {"GM": 1, "WM": 2, "CSF": 3}


def parse_tissue_table(text: str) -> dict[int, str]:
    """label -> tissue from the TSV text (``label<TAB>tissue<TAB>structure``; ``first-last`` ranges)."""
    table: dict[int, str] = {}
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in TISSUES:
            raise InputError(f"tissue table line {number}: expected 'label<TAB>GM|WM|CSF', got {line!r}")
        first, _, last = fields[0].partition("-")
        for value in range(int(first), int(last or first) + 1):
            table[value] = fields[1]
    return table


@functools.lru_cache(maxsize=1)
def tissue_table() -> dict[int, str]:
    """The shipped label -> tissue table."""
    text = resources.files(__package__.rsplit(".", 1)[0]).joinpath("data/tissue_classes.tsv").read_text(encoding="utf-8")
    return parse_tissue_table(text)


def labels_by_tissue(values: Sequence[int], table: Optional[dict[int, str]] = None) -> tuple[dict[str, list[int]], list[int]]:
    """The given label values grouped by tissue, and those the table does not know (background excluded)."""
    table = tissue_table() if table is None else table
    groups: dict[str, list[int]] = {tissue: [] for tissue in TISSUES}
    unknown = []
    for value in values:
        value = int(value)
        if value == 0:
            continue
        if value in table:
            groups[table[value]].append(value)
        else:
            unknown.append(value)
    return groups, unknown


def tissue_maps_from_posteriors(posteriors: np.ndarray, channel_labels: Sequence[int],
                                table: Optional[dict[int, str]] = None) -> tuple[dict[str, np.ndarray], list[int]]:
    """(X, Y, Z, C) posteriors -> {tissue: float32 (X, Y, Z)} summed by the tissue table; unknown labels."""
    if posteriors.ndim != 4 or posteriors.shape[-1] != len(channel_labels):
        raise InputError(f"the posteriors have shape {posteriors.shape} but {len(channel_labels)} labels were given "
                         "for their channels; give the posteriors SynthSeg wrote with this segmentation")
    groups, unknown = labels_by_tissue(channel_labels, table)
    channel = {int(value): index for index, value in enumerate(channel_labels)}
    # Sum each channel in its own memory direction: SynthSeg's posteriors are channel-first arrays seen
    # through the input's orientation (reversed axes among them), and adding a reversed view into a
    # forward array leaves numpy's strided loop (5x slower). The map is flipped back once at the end.
    forward = forward_slices(posteriors.strides[:3])
    channels = posteriors[forward]
    maps = {}
    for tissue in TISSUES:
        members = [channel[value] for value in groups[tissue]]
        total = np.zeros_like(channels[..., 0], dtype=np.float32)
        if members:  # the first channel copied (0 + a is a), the others added in the table's order
            np.copyto(total, channels[..., members[0]], casting="unsafe")
        for index in members[1:]:
            np.add(total, channels[..., index], out=total, casting="unsafe")
        if any(axis.step == -1 for axis in forward):  # back to the posteriors' indexing
            flipped = np.empty_like(posteriors[..., 0], dtype=np.float32)
            np.copyto(flipped, total[forward])
            total = flipped
        maps[tissue] = total
    return maps, unknown


def tissue_maps_from_labels(labels: np.ndarray, table: Optional[dict[int, str]] = None) -> tuple[dict[str, np.ndarray], list[int]]:
    """A hard label map -> {tissue: float32 0/1 indicator}; unknown labels."""
    table = tissue_table() if table is None else table
    values = distinct_labels(labels)
    groups, unknown = labels_by_tissue(values, table)
    lookup = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.uint8)
    for tissue, members in groups.items():
        lookup[members] = DSEG_VALUES[tissue]
    dseg = lookup[np.clip(labels, 0, None)]
    return {tissue: (dseg == DSEG_VALUES[tissue]).astype(np.float32) for tissue in TISSUES}, unknown


def distinct_labels(labels: np.ndarray) -> np.ndarray:
    """np.unique of a label map, by counting when it is an integer map of moderate range (no sort, no
    flattening copy of a Fortran-ordered NIfTI array)."""
    labels = np.asarray(labels)
    if labels.size and np.issubdtype(labels.dtype, np.integer):
        flat = labels.ravel(order="K")
        low, high = int(flat.min()), int(flat.max())
        if high - low < 10_000_000:
            return np.flatnonzero(np.bincount(flat - low if low else flat)) + low
    return np.unique(labels)


def dseg_from_maps(maps: dict[str, np.ndarray]) -> np.ndarray:
    """The 3-class dseg (uint8, fMRIPrep values): the most probable of background, GM, WM, CSF.

    Ties go to the first of background, GM, WM, CSF (numpy's argmax order)."""
    gm, wm, csf = (maps[tissue] for tissue in TISSUES)
    best = np.zeros_like(gm, dtype=np.uint8)  # in the maps' memory layout
    # slabs across the slowest memory axis, ~1 MiB each: the eight passes below then stay in cache
    slowest = int(np.argmax(np.abs(gm.strides)))
    planes = max(1, (1 << 20) // max(1, gm.nbytes // max(1, gm.shape[slowest])))
    for start in range(0, gm.shape[slowest], planes):
        slab = tuple(slice(start, start + planes) if axis == slowest else slice(None) for axis in range(gm.ndim))
        best_value = gm[slab] + wm[slab]
        best_value += csf[slab]
        np.subtract(1.0, best_value, out=best_value)  # background: 1 - (GM + WM + CSF)
        for value, probability in ((1, gm[slab]), (2, wm[slab]), (3, csf[slab])):  # 1 GM, 2 WM, 3 CSF: DSEG_VALUES
            # strictly greater: the first maximum wins, as numpy's argmax
            np.copyto(best[slab], np.uint8(value), where=probability > best_value)
            np.maximum(best_value, probability, out=best_value)
    return best


def brain_mask_from_dseg(dseg: np.ndarray) -> np.ndarray:
    """The brain (intracranial) mask: voxels whose most probable class is a tissue, not background."""
    return dseg > 0
