"""Durations as people write them on a command line: the one parser of every duration flag.

``90`` (seconds), ``90s``, ``2.5m``, ``10min``, ``1.5h``, ``1h30m``, ``1h 30m 15s``, ``1d``; a
number (int or float) is seconds. Every flag and argument that takes a duration (``--time-limit``
of fit, train and tune, ``--timeout`` of tune, ``time_limit=`` of the Python API) goes through
:func:`parse_duration`, so what one accepts all accept.
"""

from __future__ import annotations

import math
import re

from cnnlab.errors import ConfigError

_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "m": 60.0, "min": 60.0, "mins": 60.0,
          "h": 3600.0, "hr": 3600.0, "d": 86400.0}
_PART = re.compile(r"([0-9]*\.?[0-9]+)(secs|sec|s|mins|min|m|hr|h|d)?")


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """Seconds in ``text``: a number, or parts like ``1h30m`` / ``2.5m`` / ``90s`` (no unit: seconds).

    Raises :class:`ConfigError` naming ``what`` (the flag) for anything else, zero or negative."""
    if isinstance(text, bool):
        raise ConfigError(f"{what}: {text!r} is not a duration; write e.g. 90s, 10m, 2.5m or 1h30m")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = re.sub(r"\s+", "", str(text).lower())
        parts = _PART.findall(s)
        if not s or "".join(n + u for n, u in parts) != s or (len(parts) > 1 and any(not u for _, u in parts)):
            raise ConfigError(f"{what}: {text!r} is not a duration; write e.g. 90s, 10m, 2.5m or 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{what}: must be more than 0, got {text!r}")
    return seconds


def parse_optional_duration(text: str | float | int | None, what: str = "duration") -> float | None:
    """:func:`parse_duration`, with None kept as None (no limit)."""
    return None if text is None else parse_duration(text, what)
