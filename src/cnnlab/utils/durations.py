"""Durations as people write them on a command line: 90, 90s, 10m, 1.5h."""

from __future__ import annotations

import math
import re

from cnnlab.errors import ConfigError

_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in ``text`` (a number with an optional unit s, m or h; no unit means seconds)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h)?\s*", str(text).lower())
    if not m:
        raise ConfigError(f"{what}: {text!r} is not a duration; write e.g. 90s, 10m or 1.5h")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{what}: must be more than 0, got {text!r}")
    return seconds
