"""What an engine module shows about its model: description, licence and citations, from the model
registry (segsuite/models/registry.json), for the options chosen. No Slicer or Qt here; the
registry needs only what Slicer bundles."""

from __future__ import annotations

from functools import lru_cache
from html import escape
from typing import Optional

# Which registry models a run of each engine reads, given its engine options (segsuite's engines
# name the same ids when they call the model manager).
NO_MODEL_NOTE = {"samseg-filter": "This module runs no trained model: it filters a SAMSEG segmentation by rules."}


def model_ids_for(engine: str, options: dict) -> list[str]:
    if engine == "synthseg":
        ids = ["synthseg-robust-2.0" if options.get("robust") else "synthseg-2.0"]
        if options.get("parc"):
            ids.append("synthseg-parc-2.0")
        if options.get("qc"):
            ids.append("synthseg-qc-2.0")
        return ids
    if engine == "sclimbic":
        return ["sclimbic"] + (["mni-icbm152-2009a"] if options.get("etiv") == "register" else [])
    if engine == "scepi":
        return ["sc-epi"]
    return []


def model_info_html(engine: str, options: dict, explicit_model: str = "", registry=None) -> str:
    """Rich text for the module's model box: one paragraph per model the run will read."""
    registry = registry if registry is not None else _registry()
    parts = []
    if explicit_model:
        parts.append(f"<p><i>Model file or folder chosen under Advanced: {escape(explicit_model)}. "
                     "The entries below describe the registry's model it replaces.</i></p>")
    ids = model_ids_for(engine, options)
    if not ids:
        parts.append(f"<p>{escape(NO_MODEL_NOTE.get(engine, 'No model information for this engine.'))}</p>")
    for model_id in ids:
        spec = registry.models.get(model_id)
        if spec is None:
            parts.append(f"<p><b>{escape(model_id)}</b>: not in the model registry.</p>")
            continue
        licence = spec.licence or {}
        name = escape(licence.get("name", "unknown licence"))
        url: Optional[str] = licence.get("url")
        licence_html = f'<a href="{escape(url)}">{name}</a>' if url else name
        lines = [f"<b>{escape(spec.title)}</b> ({escape(spec.id)}, version {escape(spec.version or '?')})",
                 f"Licence: {licence_html}"]
        if licence.get("note"):
            lines.append(escape(licence["note"]))
        lines += [f"Cite: {escape(citation)}" for citation in spec.citations]
        parts.append("<p>" + "<br>".join(lines) + "</p>")
    return "".join(parts)


@lru_cache(maxsize=1)
def _registry():
    """The installed registry, read once per session (the GUI asks on every option change)."""
    from segsuite.models.registry import Registry

    return Registry.load()
