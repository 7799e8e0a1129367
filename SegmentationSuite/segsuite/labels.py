"""Label tables: FreeSurfer label values with their names and colours, in one place.

Every engine reports FreeSurfer label values; names and colours come from here (the
FreeSurfer colour table shipped in ``data/``) or from a model's own ``.ctab``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Label:
    value: int
    name: str
    color: tuple[int, int, int]


class LabelTable:
    """An ordered set of labels, looked up by value or by name."""

    def __init__(self, labels: Iterable[Label]):
        self._labels: dict[int, Label] = {}
        for label in labels:
            if label.value in self._labels:
                raise ValueError(f"label value {label.value} appears twice")
            self._labels[int(label.value)] = label
        self._by_name = {label.name: label for label in self._labels.values()}

    def __len__(self) -> int:
        return len(self._labels)

    def __iter__(self) -> Iterator[Label]:
        return iter(self._labels.values())

    def __contains__(self, value: object) -> bool:
        return value in self._labels

    def __getitem__(self, value: int) -> Label:
        try:
            return self._labels[int(value)]
        except KeyError:
            raise KeyError(f"label {value} is not in this label table") from None

    @property
    def values(self) -> list[int]:
        return list(self._labels)

    def name(self, value: int) -> str:
        return self[value].name

    def color(self, value: int) -> tuple[int, int, int]:
        return self[value].color

    def by_name(self, name: str) -> Label:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no label named {name!r} in this label table") from None

    def get(self, value: int, default: Optional[Label] = None) -> Optional[Label]:
        return self._labels.get(int(value), default)

    def subset(self, values: Sequence[int], fallback: Optional["LabelTable"] = None) -> "LabelTable":
        """The labels with these values, in this order; unknown values get a generic name."""
        chosen = []
        for value in values:
            label = self.get(value) or (fallback.get(value) if fallback is not None else None)
            chosen.append(label or Label(int(value), f"Label-{int(value)}", fallback_color(int(value))))
        return LabelTable(chosen)

    @classmethod
    def from_ctab(cls, path: str | os.PathLike) -> "LabelTable":
        """Read a FreeSurfer colour table (``value name R G B [A] ...`` per line, ``#`` comments)."""
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError as error:
            raise InputError(f"cannot read the colour table {path}: {error.strerror}") from error
        return cls(_parse_ctab_lines(lines, source=str(path)))

    def write_ctab(self, path: str | os.PathLike) -> None:
        """Write a FreeSurfer colour table that Freeview and Slicer read."""
        width = max([len(label.name) for label in self] + [10]) + 2
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("#No. Label Name:" + " " * max(width - 12, 1) + "R   G   B   A\n")
            for label in self:
                red, green, blue = label.color
                handle.write(f"{label.value:<5d}{label.name:<{width}s}{red:<4d}{green:<4d}{blue:<4d}0\n")


def _parse_ctab_lines(lines: Iterable[str], source: str) -> list[Label]:
    labels = []
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            value = int(fields[0])
            red, green, blue = (int(float(field)) for field in fields[2:5])
        except (ValueError, IndexError):
            raise InputError(f"{source}, line {number}: expected 'value name R G B', got {line.strip()!r}") from None
        labels.append(Label(value, fields[1], (red, green, blue)))
    return labels


def fallback_color(value: int) -> tuple[int, int, int]:
    # Deterministic, well-spread colours for labels no table names.
    return ((value * 97) % 200 + 55, (value * 57) % 200 + 55, (value * 151) % 200 + 55)


@functools.lru_cache(maxsize=1)
def freesurfer_lut() -> LabelTable:
    """The FreeSurfer colour look-up table (FreeSurferColorLUT.txt), as shipped in data/."""
    text = resources.files(__package__).joinpath("data/FreeSurferColorLUT.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    return LabelTable(Label(int(v), name, (int(r), int(g), int(b))) for v, name, r, g, b in rows)


def check_label_map(data: np.ndarray, name: str, give: str) -> np.ndarray:
    """``data`` as int32 labels, or InputError when it is no label map: a binary mask, non-integer or
    non-finite values, negative or huge values, or an intensity image (a T1 given by mistake), which
    uses most values of its range where a label map uses few. ``give`` names what to give instead."""
    if data.dtype == bool:
        raise InputError(f"{name} is a binary mask, not a segmentation: give {give} (label values)")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{name} has data type {data.dtype}; a segmentation has integer label values")
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise InputError(f"{name} contains NaN or infinite values: it is not a label map")
        fractional = data != np.round(data)
        if fractional.any():
            example = float(data[fractional].flat[0])
            raise InputError(
                f"{name} has non-integer (float) values such as {example:g}: it is not a label map. "
                f"Give the segmentation ({give}), not an intensity image, posterior or probability map")
    values = np.unique(data)
    if values.size and values[0] < 0:
        raise InputError(f"{name} contains negative values (down to {values[0]:g}): label values are >= 0")
    if values.size and values[-1] > np.iinfo(np.int32).max:
        raise InputError(f"{name} has values up to {values[-1]:g}, too large for label values")
    span = float(values[-1]) - float(values[0]) + 1.0 if values.size else 1.0
    if values.size > 64 and values.size / span > 0.25:
        raise InputError(
            f"{name} looks like an intensity image, not a segmentation ({values.size} distinct values "
            f"densely covering {values[0]:g}..{values[-1]:g}); give {give}, not the T1")
    return data.astype(np.int32, copy=False)
