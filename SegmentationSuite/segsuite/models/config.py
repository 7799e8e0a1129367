"""Where models are cached and how they are downloaded: environment, then config file, then defaults.

Cache folder: $SEGSUITE_HOME, else "home" in the config file, else the platform's user data folder.
Mirror: $SEGSUITE_MIRROR, else "mirror" in the config file. The config file is JSON at
$SEGSUITE_CONFIG, else <user config folder>/segsuite/config.json, e.g.::

    {"home": "/data/segsuite", "mirror": "https://models.example.org/segsuite",
     "download": {"retries": 3, "backoff": 0.5, "timeout": 60}}
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from ..errors import SegSuiteError

APP_NAME = "segsuite"


@dataclass(frozen=True)
class DownloadSettings:
    retries: int = 3             # extra attempts per URL after a connection error, 5xx or short body
    backoff: float = 0.5         # seconds before the first retry, doubled each time
    backoff_max: float = 30.0
    timeout: float = 60.0        # seconds to connect and between bytes
    chunk_size: int = 1 << 20
    min_free_bytes: int = 50 << 20   # keep this much disk free beyond the download


def user_folder(kind: str) -> Path:
    """The platform's per-user ``data`` or ``config`` folder for segsuite, as platformdirs names it
    (``user_data_dir``/``user_config_dir`` with appauthor=False), without needing platformdirs:
    listing models must work with only what Slicer bundles. Tested equal to platformdirs."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Application Support")
    else:
        variable, default = ("XDG_CONFIG_HOME", "~/.config") if kind == "config" else ("XDG_DATA_HOME", "~/.local/share")
        base = os.environ.get(variable, "").strip() or os.path.expanduser(default)
    return Path(base) / APP_NAME


def config_path() -> Path:
    if os.environ.get("SEGSUITE_CONFIG"):
        return Path(os.environ["SEGSUITE_CONFIG"]).expanduser()
    return user_folder("config") / "config.json"


def read_config(path: Optional[Path] = None) -> dict:
    path = path or config_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SegSuiteError(f"cannot read the settings file {path}: {error}; fix or delete it") from None
    if not isinstance(data, dict):
        raise SegSuiteError(f"the settings file {path} must hold a JSON object")
    return data


def model_home(config: Optional[dict] = None) -> Path:
    if os.environ.get("SEGSUITE_HOME"):
        return Path(os.environ["SEGSUITE_HOME"]).expanduser()
    config = read_config() if config is None else config
    if config.get("home"):
        return Path(config["home"]).expanduser()
    return user_folder("data")


def mirror_url(config: Optional[dict] = None) -> Optional[str]:
    if os.environ.get("SEGSUITE_MIRROR"):
        return os.environ["SEGSUITE_MIRROR"]
    config = read_config() if config is None else config
    return config.get("mirror") or None


def download_settings(config: Optional[dict] = None) -> DownloadSettings:
    config = read_config() if config is None else config
    given = config.get("download", {}) or {}
    known = {f.name: f.type for f in fields(DownloadSettings)}
    unknown = set(given) - set(known)
    if unknown:
        raise SegSuiteError(f"unknown download settings {sorted(unknown)} in {config_path()}; "
                            f"known: {sorted(known)}")
    try:
        values = {name: (int if known[name] == "int" else float)(value) for name, value in given.items()}
    except (TypeError, ValueError) as error:
        raise SegSuiteError(f"bad download setting in {config_path()}: {error}") from None
    return DownloadSettings(**values)
