"""Model weights: the registry, the local cache and the only code that downloads anything.

Engines call :func:`ensure`, which returns the installed folder of a model (its files under their
standard names), downloading and verifying it on first use::

    from segsuite.models import ensure
    folder = ensure("synthseg-2.0", progress=callback)    # folder / "synthseg_2.0.h5"

See docs/models.md for the cache location, mirrors, offline installs and licences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..progress import ProgressCallback
from .manager import ModelManager, ModelStatus
from .registry import FileSpec, ModelSpec, Registry, Source, annex_key, annex_url

__all__ = ["ensure", "manager", "ModelManager", "ModelStatus", "Registry", "ModelSpec", "FileSpec",
           "Source", "annex_key", "annex_url"]


def manager() -> ModelManager:
    """A manager configured from the environment and the settings file (read afresh each call)."""
    return ModelManager()


def ensure(model_id: str, progress: Optional[ProgressCallback] = None) -> Path:
    """The installed folder of ``model_id``; downloads and verifies it first if it is not there."""
    return manager().ensure(model_id, progress)
