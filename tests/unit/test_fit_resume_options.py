"""A resumed fit keeps the ``drop_leaks`` and ``calibrate`` it was started with (state.json): a value
given explicitly that differs is refused with one line naming the option and the saved value (the
CLI: exit 2, no traceback); not giving them (the CLI's flags absent, the API's None) never is.

No fit runs: state.json names a DataFrame, so a resume that gets past these checks stops at the
next one ("pass the same data again")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab.cli.main import main
from cnnlab.errors import ConfigError
from cnnlab.predictor import ImagePredictor

PAST_THE_CHECKS = "was given a DataFrame; pass the same data again"


def _stopped_fit(folder: Path, **args) -> Path:
    from cnnlab.autofit.state import FORMAT

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps({
        "format": FORMAT, "time_limit": 60.0, "preset": "medium_quality", "seed": 0, "data_source": "<DataFrame>",
        "tuning_source": None, "label": "label", "image_column": None, "elapsed_seconds": 12.0, "running": None,
        **args}))
    return folder


@pytest.mark.parametrize("saved, given, message", [
    ({"drop_leaks": False, "calibrate": True}, {"drop_leaks": True},
     "drop_leaks: the fit in {f} was started with drop_leaks=False; a resumed fit keeps it (got drop_leaks=True)"),
    ({"drop_leaks": True, "calibrate": True}, {"drop_leaks": False}, "was started with drop_leaks=True"),
    ({"drop_leaks": False, "calibrate": True}, {"calibrate": False},
     "calibrate: the fit in {f} was started with calibrate=True; a resumed fit keeps it (got calibrate=False)"),
    ({"drop_leaks": False, "calibrate": False}, {"calibrate": True}, "was started with calibrate=False"),
    ({}, {"calibrate": False}, "was started with calibrate=True"),  # a state.json from before they were saved
])
def test_api_resume_refuses_a_different_option(saved, given, message, tmp_path: Path) -> None:
    fit = _stopped_fit(tmp_path / "fit", **saved)
    with pytest.raises(ConfigError) as err:
        ImagePredictor(path=fit).fit(None, resume=True, **given)
    assert message.format(f=fit) in str(err.value)


@pytest.mark.parametrize("saved, given", [
    ({"drop_leaks": True, "calibrate": False}, {}),  # not given: the fit's own are kept
    ({"drop_leaks": True, "calibrate": False}, {"drop_leaks": None, "calibrate": None}),
    ({"drop_leaks": True, "calibrate": False}, {"drop_leaks": True, "calibrate": False}),  # the same: accepted
    ({"drop_leaks": False, "calibrate": True}, {"drop_leaks": False, "calibrate": True}),
])
def test_api_resume_accepts_the_same_or_nothing(saved, given, tmp_path: Path) -> None:
    fit = _stopped_fit(tmp_path / "fit", **saved)
    with pytest.raises(ConfigError, match=PAST_THE_CHECKS):
        ImagePredictor(path=fit).fit(None, resume=True, **given)


@pytest.mark.parametrize("saved, flag, needle", [
    ({"drop_leaks": False, "calibrate": True}, "--drop-leaks", "drop_leaks: the fit in {f} was started with "
                                                               "drop_leaks=False"),
    ({"drop_leaks": False, "calibrate": True}, "--no-calibrate", "calibrate: the fit in {f} was started with "
                                                                 "calibrate=True"),
    ({"drop_leaks": True, "calibrate": False}, None, PAST_THE_CHECKS),  # no flag: the saved True / False kept
    ({"drop_leaks": True, "calibrate": False}, "--drop-leaks", PAST_THE_CHECKS),
    ({"drop_leaks": True, "calibrate": False}, "--no-calibrate", PAST_THE_CHECKS),
])
def test_cli_resume_with_a_different_flag_is_one_line_and_exit_2(saved, flag, needle, tmp_path, capsys) -> None:
    fit = _stopped_fit(tmp_path / "fit", **saved)
    assert main(["fit", "--resume", str(fit), *([flag] if flag else [])]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cnnlab: error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert needle.format(f=fit) in lines[0]
