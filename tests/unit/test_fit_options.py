"""The fit options the CLI and the Python API share: ``drop_leaks`` (ImagePredictor.fit and
``cnnlab fit --drop-leaks``) and ``calibrate`` (ImagePredictor.fit, cnnlab.train, ``--no-calibrate``
on ``cnnlab fit`` and ``cnnlab train``), and the run report's reliability diagram before and after
the temperature, shown only when a temperature was fitted.

One tiny net (cifar_fastnet, widths 8/16/16, one epoch on 3 colour classes of 16 x 16 images) is
trained twice for the module: calibrated (the API's default) and with ``cnnlab train --no-calibrate``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cnnlab.cli.main import main
from cnnlab.errors import ConfigError
from cnnlab.predictor import ImagePredictor

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_NET = {"name": "tiny", "model": {"arch": "cifar_fastnet", "kwargs": {"widths": [8, 16, 16], "depth": 1}},
            "train": {"epochs": 1, "batch_size": 16, "precision": "fp32"}}


# ------------------------------------------------------------------ drop_leaks


class _Stop(Exception):
    pass


@pytest.fixture
def leaky(make_tree, tmp_path: Path) -> tuple[Path, Path]:
    """train/ and test/ class folders (distinct images), one test image copied into train/red, and a
    separate validation folder (so no training image is held out for validation)."""
    root = tmp_path / "data"
    make_tree(root / "train", per_class=16, seed=0)
    make_tree(root / "test", per_class=6, seed=1)
    shutil.copy(root / "test" / "red" / "003.png", root / "train" / "red" / "planted.png")
    return root, make_tree(tmp_path / "val", per_class=6, seed=2)


def _training_split(monkeypatch, root: Path, val: Path, out: Path, **kw) -> tuple[int, list[str]]:
    """ImagePredictor.fit(...) up to the moment the training split is final: (its size, the log)."""
    from cnnlab.autofit import ranks

    seen: dict[str, int] = {}

    def stop(train, val, test):  # called right after the duplicate check (autofit/fit.py)
        seen["train"] = len(train)
        raise _Stop

    monkeypatch.setattr(ranks, "check_same_data", stop)
    lines: list[str] = []
    with pytest.raises(_Stop):
        ImagePredictor(path=out).fit(str(root), str(val), time_limit=30, log=lines.append, **kw)
    return seen["train"], lines


def test_fit_drop_leaks_removes_the_planted_copy(monkeypatch, leaky, tmp_path: Path) -> None:
    root, val = leaky
    kept, lines = _training_split(monkeypatch, root, val, tmp_path / "a")
    assert kept == 3 * 16 + 1  # without drop_leaks the copy stays (a warning line names it)
    assert any(line.startswith("warning: duplicates:") and "1 training image" in line for line in lines)
    assert not any("removed" in line for line in lines)
    dropped, lines = _training_split(monkeypatch, root, val, tmp_path / "b", drop_leaks=True)
    assert dropped == 3 * 16
    assert "--drop-leaks: removed 1 training image that duplicates a validation or test image (48 left)" in lines


@pytest.mark.parametrize("calibrate", [True, False])
def test_fit_calibrate_reaches_the_candidates_config(calibrate, monkeypatch, leaky, tmp_path: Path) -> None:
    """The auto-fit trains its candidates with train.calibrate as given (stopped at the first one)."""
    from cnnlab.autofit import fewshot, runner

    root, val = leaky
    seen: list[bool] = []

    def stop(kind, cfg, *args, **kwargs):
        seen.append(cfg.train.calibrate)
        raise _Stop

    monkeypatch.setattr(fewshot, "FEW_SHOT_MAX", 0)  # the planner's candidates, not the few-shot one
    monkeypatch.setattr(runner, "run_candidate", stop)
    lines: list[str] = []
    with pytest.raises(_Stop):
        ImagePredictor(path=tmp_path / "fit").fit(str(root), str(val), time_limit=20, log=lines.append,
                                                  calibrate=calibrate)
    assert seen == [calibrate]
    assert any(line.startswith("calibration: off") for line in lines) == (not calibrate)
    state = json.loads((tmp_path / "fit" / "state.json").read_text())
    assert state["calibrate"] is calibrate  # a resumed fit keeps it


def test_drop_leaks_needs_an_auto_fit(tiny_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="drop_leaks goes with an auto-fit"):
        ImagePredictor(path=tmp_path / "r").fit(str(tiny_tree), config=TINY_NET, drop_leaks=True)


def test_cli_fit_is_the_apis_fit(monkeypatch, tmp_path: Path) -> None:
    """cnnlab fit hands its flags to ImagePredictor.fit, which hands them to the auto-fit."""
    from cnnlab.autofit import fit as fit_mod

    seen: dict = {}

    def fake(pred, data, tuning, **kw):
        seen.update(kw)
        raise _Stop

    original = ImagePredictor.fit

    def spy(self, *args, **kwargs):
        seen["api"] = True
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fit_mod, "auto_fit", fake)
    monkeypatch.setattr(ImagePredictor, "fit", spy)
    with pytest.raises(_Stop):
        main(["fit", "--data", str(tmp_path), "--time-limit", "20s", "--no-calibrate", "--drop-leaks",
              "--out", str(tmp_path / "f")])
    assert seen["api"] and seen["calibrate"] is False and seen["drop_leaks"] is True and seen["time_limit"] == 20
    seen.clear()
    with pytest.raises(_Stop):
        main(["fit", "--data", str(tmp_path), "--time-limit", "20s", "--out", str(tmp_path / "g")])
    assert seen["calibrate"] is None and seen["drop_leaks"] is None  # not given: the auto-fit's defaults (True, False)


# ------------------------------------------------------------------ calibrate on / off


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from conftest import _write_tree

    from cnnlab import api

    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("calibrate")
    mp.setenv("CNNLAB_HOME", str(base / "home"))
    try:
        data = _write_tree(base / "tiny")
        on = api.train({**TINY_NET, "data": {"source": str(data)}}, run_dir=base / "on", progress=False,
                       log=lambda s: None)
        cfg = base / "tiny.yaml"
        cfg.write_text(yaml.safe_dump({**TINY_NET, "data": {"source": str(data)}}))
        assert main(["train", "--config", str(cfg), "--run-dir", str(base / "off"), "--no-progress",
                     "--no-calibrate"]) == 0
    finally:
        mp.undo()
    return {"on": Path(on.run_dir), "off": base / "off", "data": data}


def _read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


def test_calibration_is_on_by_default_and_off_with_the_flag(runs) -> None:
    on_card, on_metrics = _read(runs["on"], "model.json"), _read(runs["on"], "metrics.json")
    cal = on_metrics["calibration"]
    assert on_card["temperature"] == pytest.approx(cal["temperature"]) and "calibration" not in on_card
    assert cal["count"] >= 2 and isinstance(cal["val_ece_before"], float)
    off_card, off_metrics = _read(runs["off"], "model.json"), _read(runs["off"], "metrics.json")
    assert off_card["temperature"] == 1.0 and off_card["calibration"] == "off"
    assert "calibration" not in off_metrics
    assert yaml.safe_load((runs["off"] / "config.yaml").read_text())["train"]["calibrate"] is False
    assert ImagePredictor.load(runs["off"]).temperature == 1.0
    from cnnlab.autofit.report import _calibration_off  # the fit's report.md says so per model

    assert _calibration_off(runs["off"]) and not _calibration_off(runs["on"])


def test_predictor_fit_calibrate_false_is_one_run_without_a_temperature(tiny_tree: Path, tmp_path: Path) -> None:
    pred = ImagePredictor(path=tmp_path / "run").fit(str(tiny_tree), config=TINY_NET, calibrate=False,
                                                     log=lambda s: None)
    assert pred.card["calibration"] == "off" and pred.temperature == 1.0
    assert _read(pred.path, "model.json")["calibration"] == "off"
    assert pred.config.train.calibrate is False


def test_cli_train_no_calibrate_is_refused_with_resume(runs, capsys) -> None:
    assert main(["train", "--resume", str(runs["off"]), "--no-calibrate"]) == 2
    assert "--no-calibrate would be ignored" in capsys.readouterr().err


def test_report_shows_the_reliability_before_and_after_only_with_a_temperature(runs, tmp_path: Path) -> None:
    from cnnlab.reports import write_run_report

    html = {}
    for kind in ("on", "off"):
        out = tmp_path / kind
        write_run_report(runs[kind], out, n_worst=0, latency_runs=1, log=lambda s: None)
        html[kind] = (out / "report.html").read_text()
        rep = json.loads((out / "report.json").read_text())
        assert ("reliability_temperature" in rep["figures"]) == (kind == "on")
        assert (out / "reliability_temperature.png").is_file() == (kind == "on")
    t = _read(runs["on"], "metrics.json")["calibration"]["temperature"]
    assert f"Reliability before and after the temperature T = {t:.3f}" in html["on"]
    assert "Calibration was off" not in html["on"]
    assert "Reliability before and after" not in html["off"]
    assert "Calibration was off for this run" in html["off"]
    assert "Reliability diagram." in html["off"]  # the diagram of the probabilities as they are stays
