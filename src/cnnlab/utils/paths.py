"""Where cnnlab keeps downloads and caches."""

from __future__ import annotations

import os
from pathlib import Path


def cnnlab_home() -> Path:
    """``$CNNLAB_HOME`` or ``~/.cache/cnnlab``: downloads, decoded-pixel and feature caches."""
    env = os.environ.get("CNNLAB_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cnnlab"
