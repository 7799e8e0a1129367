"""How numbers are written into our TSV tables: to the precision they mean, with one missing-value marker.

Volumes (mm3) to 0.01 mm3; every other number (scores, z-scores, image-quality metrics, slopes) to 6
significant digits (never coarser than 0.01, so a volume in a mixed table keeps its 0.01 mm3), so float32 noise such as 3.740999937057495 never reaches a table and identical
runs give identical text; a missing or non-finite value is BIDS's 'n/a'.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

MISSING = "n/a"
VOLUME_DECIMALS = 2
SIGNIFICANT_DIGITS = 6


def _missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value))


def volume_text(value) -> str:
    """A volume in mm3, to 0.01 mm3."""
    if _missing(value):
        return MISSING
    return f"{float(value):.{VOLUME_DECIMALS}f}"


def score_text(value) -> str:
    """A score or metric to 6 significant digits, positional (no exponent), trailing zeros dropped."""
    if _missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if value == 0.0:
            return "0"
        if abs(value) >= 10 ** (SIGNIFICANT_DIGITS - VOLUME_DECIMALS):  # large values (mm3): never coarser than 0.01
            return np.format_float_positional(round(value, VOLUME_DECIMALS), trim="-")
        return np.format_float_positional(value, precision=SIGNIFICANT_DIGITS, unique=False,
                                          fractional=False, trim="-")
    return str(value)


def cell_text(value, volume: bool = False) -> str:
    """One cell: volumes as volume_text, other numbers as score_text, text as it is ('' becomes 'n/a')."""
    if isinstance(value, str):
        return value if value != "" else MISSING
    if volume and isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return volume_text(value)
    return score_text(value)


def frame_text(frame, volume_columns: Iterable[str] = (), sep: str = "\t") -> str:
    """A pandas DataFrame as TSV text with every cell written by cell_text."""
    volume_columns = set(volume_columns)
    columns = [str(c) for c in frame.columns]
    lines = [sep.join(columns)]
    for row in frame.itertuples(index=False, name=None):
        lines.append(sep.join(cell_text(None if _is_na(value) else value, column in volume_columns)
                              for column, value in zip(columns, row)))
    return "\n".join(lines) + "\n"


def _is_na(value) -> bool:
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT or (not isinstance(value, str) and bool(pd.isna(value)))
    except (TypeError, ValueError):
        return False
