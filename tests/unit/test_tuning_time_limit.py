"""`cnnlab tune --time-limit`: trials, the final fit and the summary inside one budget.

The studies run on a fake clock that advances 10 s per finished epoch (the trainer's "Epoch i/n"
log line), so which trial starts, which is stopped and after how many epochs is decided by the
budget arithmetic alone, not by how fast this machine is.
"""

from __future__ import annotations

import re

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("torch")

from optuna.trial import TrialState  # noqa: E402
from test_tuning_support import ROOT, color_bundle, tiny_config, write_config  # noqa: E402

from cnnlab.errors import ConfigError  # noqa: E402
from cnnlab.training.callbacks import StopTraining  # noqa: E402
from cnnlab.tuning import tune  # noqa: E402
from cnnlab.tuning.budget import EpochGuard, StudyBudget, parse_time_limit  # noqa: E402
from cnnlab.tuning.storage import default_storage_url  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCH = re.compile(r"^\s*(trial \d+: )?Epoch \d+/\d+")
START = 1000.0


class EpochClock:
    """time.time's stand-in: START, plus 10 s for every epoch line logged."""

    def __init__(self) -> None:
        self.t = START
        self.lines: list[str] = []

    def __call__(self) -> float:
        return self.t

    def log(self, line: str) -> None:
        self.lines.append(line)
        if EPOCH.match(line):
            self.t += 10.0


@pytest.fixture(autouse=True)
def _home(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))


def _trials(out):
    return optuna.load_study(study_name="tiny", storage=default_storage_url(out)).get_trials()


def test_durations_parse_and_bad_ones_are_refused():
    assert parse_time_limit("90s") == 90.0
    assert parse_time_limit("20m") == 1200.0
    assert parse_time_limit(45) == 45.0 and parse_time_limit(None) is None
    with pytest.raises(ConfigError, match=r"--time-limit: 'abc' is not a duration"):
        parse_time_limit("abc")
    with pytest.raises(ConfigError, match="--time-limit"):
        parse_time_limit(0)


def test_budget_plan_reserves_the_final_fit_and_the_summary():
    b = StudyBudget.plan(0.0, 1200.0, final_fit=True)
    assert b.final_end == pytest.approx(1200 - 2 * 60)  # 5% of 20 min, twice: after the final fit, the summary
    assert b.trials_end == pytest.approx(1200 - 2 * 60 - 240)  # 20% for the final fit's training
    b = StudyBudget.plan(0.0, 2400.0, final_fit=True)
    assert b.final_end == pytest.approx(2400 - 2 * 60)  # at most 60 s each
    b = StudyBudget.plan(0.0, 100.0, final_fit=False)
    assert b.trials_end == b.final_end == pytest.approx(90.0)  # at least 10 s
    assert b.end == 100.0


def test_process_start_time_is_this_processes_start():
    import os
    import subprocess
    import sys
    import time

    from cnnlab.tuning.budget import process_start_time

    before = time.time()
    out = subprocess.run([sys.executable, "-c", "import time; from cnnlab.tuning.budget import process_start_time;"
                          "print(process_start_time(), time.time())"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    started, now = map(float, out.stdout.split())
    assert before - 1.0 <= started <= now  # /proc's start time is in clock ticks (1/100 s)
    assert process_start_time(max_age=0.0) is None  # this test process is older than that


def test_epoch_guard_stops_when_the_next_epoch_would_not_fit():
    clock = EpochClock()
    guard = EpochGuard(START + 35, clock, "x")
    for epoch in range(2):
        clock.t += 10
        guard(epoch, {})  # 10 s and 20 s: the next epoch ends at 30 s and 30 s, within 35 s
    clock.t += 10
    with pytest.raises(StopTraining, match=r"time limit: x stopped after epoch 3 \(5 s left, an epoch takes 10 s\)"):
        guard(2, {})
    assert guard.stopped and guard.first_epoch == 10.0


def test_no_trial_starts_after_the_limit_and_a_trial_in_flight_is_stopped_and_counts(tmp_path):
    out = tmp_path / "study"
    cfg = tiny_config(trials=5, final_fit="none")
    cfg["train"]["epochs"] = 4
    clock = EpochClock()
    # 110 s: trials until 100 s. Trials 0 and 1 take 40 s each; trial 2 starts at 80 s and is
    # stopped after its 2nd epoch (100 s: a 3rd would end at 110 s); then no first epoch fits.
    result = tune(cfg, data=color_bundle(), out=out, time_limit=110, log=clock.log, clock=clock)

    trials = _trials(out)
    assert len(trials) == 3  # of the 5 requested
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.user_attrs["started_after_seconds"] for t in trials] == [0.0, 40.0, 80.0]
    assert all(t.user_attrs["started_after_seconds"] < 110 for t in trials)
    assert [len(t.intermediate_values) for t in trials] == [4, 4, 2]
    stopped = trials[2]
    assert stopped.user_attrs.get("stopped_by_time_limit") is True and stopped.user_attrs["epochs_run"] == 2
    assert stopped.value == max(stopped.intermediate_values.values())  # its result counts
    assert "stopped_by_time_limit" not in trials[0].user_attrs
    assert clock.t - START <= 110
    s = result.summary
    assert s["counts"]["completed"] == 3 and s["time_budget"]["time_limit_seconds"] == 110
    assert any("no new trials" in line for line in clock.lines)


def test_the_final_fit_is_stopped_inside_the_limit(tmp_path):
    out = tmp_path / "study"
    cfg = tiny_config(trials=5, final_fit="train")
    cfg["train"]["epochs"] = 6
    clock = EpochClock()
    # 200 s: trials until 140 s, the final fit's training until 180 s. Trials 0 and 1 take 60 s;
    # trial 2 stops after 2 epochs (140 s); the final fit (6 epochs configured) stops after 4 (180 s).
    result = tune(cfg, data=color_bundle(), out=out, time_limit=200, log=clock.log, clock=clock)

    trials = _trials(out)
    assert [len(t.intermediate_values) for t in trials] == [6, 6, 2]
    final = result.summary["final_fit"]
    assert final["status"] == "done" and final["stopped_by_time_limit"] is True
    assert final["epochs"] == 4
    assert final["test"]["count"] == 30  # evaluated on the test split all the same
    assert clock.t - START == pytest.approx(180.0)
    assert result.summary["wall_seconds"] <= 200
    assert result.summary["figures"]["optimization_history"].endswith(".png")  # drawn: time was left


def test_figures_not_started_by_the_limit_are_skipped(tmp_path):
    from cnnlab.tuning import figures

    out = tmp_path / "study"
    tune(tiny_config(trials=1), data=color_bundle(), out=out, log=lambda s: None)
    study = optuna.load_study(study_name="tiny", storage=default_storage_url(out))
    drawn = figures.draw(study, tmp_path / "figs", until=START, clock=lambda: START + 1)
    assert set(drawn.values()) == {"skipped: the time limit is reached"}
    assert not (tmp_path / "figs").exists()


def test_cli_time_limit_flag(tmp_path, monkeypatch, capsys):
    from cnnlab.cli.main import main

    cfg = write_config(tmp_path / "c.yaml", tiny_config())
    seen = {}

    def fake_tune(config, **kwargs):
        seen["time_limit"] = parse_time_limit(kwargs["time_limit"])
        raise SystemExit(0)

    import cnnlab.tuning as tuning

    for text, seconds in (("90s", 90.0), ("20m", 1200.0)):
        monkeypatch.setattr(tuning, "tune", fake_tune)
        with pytest.raises(SystemExit):
            main(["tune", "-c", str(cfg), "--time-limit", text])
        assert seen["time_limit"] == seconds
        monkeypatch.undo()
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    capsys.readouterr()
    rc = main(["tune", "-c", str(cfg), "--time-limit", "abc", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cnnlab: error: ")]
    assert len(lines) == 1 and "--time-limit" in lines[0] and "'abc'" in lines[0], err
    assert not (tmp_path / "o").exists()  # refused before anything is written
