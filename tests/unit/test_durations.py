"""Durations on the command line (utils/durations.py)."""

from __future__ import annotations

import pytest

from cnnlab.errors import ConfigError
from cnnlab.utils.durations import parse_duration


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400),
                                          (" 2 min ", 120), (".5m", 30)])
def test_parses(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "-5m", "0", "0s", "1e400"])
def test_refuses_with_the_flag_named(text):
    with pytest.raises(ConfigError, match="--time-limit"):
        parse_duration(text, "--time-limit")
