"""Standard terminology (SNOMED CT codes) for FreeSurfer labels, in 3D Slicer's entry format.

The table lives in ``data/FreeSurferTerminology.tsv``; it lists only labels for which Slicer's
DICOM master lists hold a code that means the same structure. A Slicer terminology entry is one
string: ``context~category~type~typeModifier~regionContext~region~regionModifier`` where every
coded part is ``scheme^value^meaning`` (``^^`` when empty). This module needs no Slicer.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Optional


@dataclass(frozen=True)
class Code:
    scheme: str
    value: str
    meaning: str

    def __bool__(self) -> bool:
        return bool(self.scheme or self.value or self.meaning)


@dataclass(frozen=True)
class TerminologyEntry:
    """A parsed Slicer terminology entry string."""

    context: str
    category: Code
    type: Code
    type_modifier: Code
    region_context: str = ""
    region: Code = Code("", "", "")
    region_modifier: Code = Code("", "", "")

    def to_string(self) -> str:
        def coded(code: Code) -> str:
            return f"{code.scheme}^{code.value}^{code.meaning}"

        return "~".join([self.context, coded(self.category), coded(self.type), coded(self.type_modifier),
                         self.region_context, coded(self.region), coded(self.region_modifier)])

    @classmethod
    def parse(cls, text: str) -> "TerminologyEntry":
        parts = text.split("~")
        if len(parts) != 7:
            raise ValueError(f"a terminology entry has 7 '~'-separated parts, got {len(parts)}: {text!r}")

        def code(part: str) -> Code:
            fields = part.split("^")
            if len(fields) != 3:
                raise ValueError(f"a coded part is 'scheme^value^meaning', got {part!r}")
            return Code(*fields)

        return cls(parts[0], code(parts[1]), code(parts[2]), code(parts[3]), parts[4], code(parts[5]), code(parts[6]))


def normalize_name(name: str) -> str:
    """Case, spaces, dashes and underscores do not matter when matching label names."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict[str, str], dict[int, tuple[str, str]]]:
    text = resources.files(__package__).joinpath("data/FreeSurferTerminology.tsv").read_text(encoding="utf-8")
    by_name: dict[str, str] = {}
    by_value: dict[int, tuple[str, str]] = {}
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for line in lines[1:]:
        value, name, entry, aliases = (line.split("\t") + [""])[:4]
        TerminologyEntry.parse(entry)  # a malformed row fails loudly here, not inside Slicer
        by_value[int(value)] = (name, entry)
        for alias in [name] + [a for a in aliases.split(",") if a]:
            by_name[normalize_name(alias)] = entry
    return by_name, by_value


def terminology_for(name: str, value: Optional[int] = None) -> Optional[str]:
    """The Slicer terminology entry string for a label, or None where no standard code exists.

    Matching is by name (FreeSurfer names and known spellings); the value alone is never enough,
    because models such as sc_epi reuse small values for other structures.
    """
    by_name, _ = _table()
    return by_name.get(normalize_name(name))


def terminology_table() -> dict[int, tuple[str, str]]:
    """FreeSurfer value -> (canonical name, terminology entry string), as shipped."""
    return dict(_table()[1])
