"""Structure-name matching between sclimbic.ctab and sclimbic.volstats.csv.

Older colour tables spell two structures differently from the population statistics
(Left-Nucleas-Accumbens vs Left-Nucleus-Accumbens, Left-MammilliaryBody vs
Left-MammillaryBody). A plain dictionary lookup silently drops those z-scores, so names
are compared in a canonical form: case, punctuation and the known misspellings ignored.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional, TypeVar

T = TypeVar("T")

# misspelling -> spelling, applied to lower-case names with punctuation removed
KNOWN_SPELLINGS = {
    "nucleas": "nucleus",
    "mammilliary": "mammillary",
    "mamillary": "mammillary",
}


def canonical_name(name: str) -> str:
    """'Left-Nucleas-Accumbens' -> 'leftnucleusaccumbens'."""
    text = name.strip().lower()
    for wrong, right in KNOWN_SPELLINGS.items():
        text = text.replace(wrong, right)
    return re.sub(r"[^a-z0-9]", "", text)


def match_name(name: str, candidates: Mapping[str, T]) -> Optional[T]:
    """The value whose key is ``name`` (exactly, else in canonical form); None if none."""
    if name in candidates:
        return candidates[name]
    wanted = canonical_name(name)
    for key, value in candidates.items():
        if canonical_name(key) == wanted:
            return value
    return None


def match_names(names: Iterable[str], candidates: Mapping[str, T]) -> dict[str, T]:
    """{name: candidate value} for each name that has a match."""
    matched = {}
    for name in names:
        value = match_name(name, candidates)
        if value is not None:
            matched[name] = value
    return matched
