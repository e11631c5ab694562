"""Named recipes shipped with cnnlab (`cnnlab train --preset NAME`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cnnlab.errors import ConfigError


def available() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    path = Path(str(resources.files(__name__).joinpath(f"{name}.yaml")))
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(available()) or 'none'}")
    return path
