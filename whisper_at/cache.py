"""Where whisper-at keeps what it converts and fetches: weights, registry packages, corpus parts."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$WHISPER_AT_CACHE, else $XDG_CACHE_HOME/whisper_at, else ~/.cache/whisper_at."""
    if root := os.environ.get("WHISPER_AT_CACHE"):
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "whisper_at"
