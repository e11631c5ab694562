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


@pytest.mark.parametrize("text,seconds", [("1h30m", 5400), ("2.5m", 150), ("1h 30m 15s", 5415), ("1d", 86400),
                                          (90, 90), (2.5, 2.5)])
def test_compound_and_numbers(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1h30", "m", "1.5.5m", True, float("nan"), -3])
def test_refuses_malformed(text):
    with pytest.raises(ConfigError, match="time_limit"):
        parse_duration(text, "time_limit")


def test_every_duration_flag_takes_1h30m():
    """fit, train and tune (--time-limit and --timeout) share the one parser."""
    from cnnlab.autofit.fit import time_limit_seconds
    from cnnlab.tuning.budget import parse_time_limit
    from cnnlab.utils.durations import parse_optional_duration

    assert time_limit_seconds("1h30m") == parse_time_limit("1h30m") == parse_optional_duration("1h30m") == 5400
    assert parse_optional_duration(None) is None


def test_explicit_epochs_win_over_the_fast_planner():
    """`cnnlab train --preset fast --epochs 3` trains 3 epochs: size: auto would replace them."""
    from cnnlab.cli.train_cmd import explicit_wins
    from cnnlab.presets import preset_path
    from cnnlab.training.orchestrate import resolve_config

    said: list[str] = []
    overrides = {"train.epochs": 3, "data.max_train_samples": 2000}
    extra = explicit_wins(preset_path("fast"), overrides, said.append)
    assert extra == {"train.recipe_options.size": "fixed"} and "--epochs given" in said[0]
    cfg = resolve_config(preset_path("fast"), {**overrides, **extra})
    assert cfg.train.epochs == 3 and cfg.train.recipe_options["size"] == "fixed"
    assert explicit_wins(preset_path("fast"), {"data.max_train_samples": 2000}, said.append) == {}
