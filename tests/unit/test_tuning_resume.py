"""`cnnlab tune` as a user runs it: SIGKILL mid-trial and rerun; several workers on one storage."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import time

import pytest

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402
from test_tuning_support import cli_env, cnnlab_cmd, load_trials, run_cli, tiny_config, write_color_tree, write_config  # noqa: E402,E501

pytestmark = pytest.mark.slow


def _schema_ready(url: str) -> bool:
    """Whether the worker has finished creating the SQLite study tables (read-only look).

    Opening the storage through Optuna before that would create the tables from the test process
    too, racing the worker under test.
    """
    path = url[len("sqlite:///"):]
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            return db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _wait_for_running_trial(url: str, name: str, proc: subprocess.Popen, min_number: int, timeout: float = 240):
    """Poll the storage until trial >= min_number is RUNNING with one epoch reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        if not _schema_ready(url):
            time.sleep(0.05)
            continue
        try:
            for t in load_trials(url, name):
                if t.state == TrialState.RUNNING and t.number >= min_number and t.intermediate_values:
                    return t
        except Exception:  # noqa: BLE001 - the study may not exist yet, or the file is being written
            pass
        time.sleep(0.05)
    raise AssertionError("no trial reached its second epoch in time")


def test_sigkill_mid_trial_then_rerun_resumes_the_study(tmp_path):
    data = write_color_tree(tmp_path / "data")
    cfg = tiny_config(trials=3)
    cfg["train"].update(epochs=6, batch_size=8)  # each trial lasts a few seconds: room to kill it mid-way
    config = write_config(tmp_path / "tiny.yaml", cfg)
    out = tmp_path / "study"
    url = f"sqlite:///{out / 'study.db'}"
    args = ["tune", "--config", str(config), "--data", str(data), "--out", str(out)]
    proc = subprocess.Popen(cnnlab_cmd(*args), env=cli_env(tmp_path / "home"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        victim = _wait_for_running_trial(url, "tiny", proc, min_number=1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = {t.number: t for t in load_trials(url, "tiny")}
    assert before[victim.number].state == TrialState.RUNNING  # left behind by the killed process
    done_before = {n for n, t in before.items() if t.state == TrialState.COMPLETE}
    assert 0 in done_before

    rerun = run_cli(args, tmp_path / "home")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = load_trials(url, "tiny")
    by_number = {t.number: t for t in after}
    # Finished trials were kept as they were, not run again.
    for n in done_before:
        assert by_number[n].state == TrialState.COMPLETE
        assert by_number[n].datetime_complete == before[n].datetime_complete
    # The interrupted trial is failed with its reason, and retried with the same parameters.
    killed = by_number[victim.number]
    assert killed.state == TrialState.FAIL
    assert "interrupted" in killed.user_attrs["fail_reason"]
    retries = [t for t in after if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1
    assert retries[0].state == TrialState.COMPLETE and retries[0].params == killed.params
    assert retries[0].user_attrs["slot"] == victim.number
    # Three slots, all complete: the interrupted attempt is not counted twice.
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(t.state == TrialState.COMPLETE for t in after) == 3
    summary = json.loads((out / "summary.json").read_text())
    c = summary["counts"]
    assert (c["slots"], c["completed"], c["pruned"], c["failed"]) == (3, 3, 0, 0)
    assert c["interrupted_and_retried"] == 1
    assert summary["epochs_spent"] == sum(len(t.intermediate_values) for t in after)
    assert "queued again" in rerun.stdout


def test_two_worker_processes_share_one_study(tmp_path):
    data = write_color_tree(tmp_path / "data")
    cfg = tiny_config(trials=5)
    cfg["train"].update(epochs=3, batch_size=8)
    config = write_config(tmp_path / "tiny.yaml", cfg)
    out = tmp_path / "study"
    res = run_cli(["tune", "--config", str(config), "--data", str(data), "--out", str(out), "--workers", "2",
                   "--quiet"], tmp_path / "home")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = [t for t in load_trials(f"sqlite:///{out / 'study.db'}", "tiny") if not t.user_attrs.get("surplus")]
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) == 2  # both workers ran trials
    assert "[worker 0]" in res.stdout and "[worker 1]" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["slots"] == 5 and summary["counts"]["completed"] == 5
    assert summary["trials_requested"] == 5


def test_sigterm_records_the_trial_as_interrupted_and_queues_it_again(tmp_path):
    data = write_color_tree(tmp_path / "data")
    cfg = tiny_config(trials=2)
    cfg["train"].update(epochs=6, batch_size=8)
    config = write_config(tmp_path / "tiny.yaml", cfg)
    out = tmp_path / "study"
    url = f"sqlite:///{out / 'study.db'}"
    proc = subprocess.Popen(cnnlab_cmd("tune", "--config", str(config), "--data", str(data), "--out", str(out)),
                            env=cli_env(tmp_path / "home"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        victim = _wait_for_running_trial(url, "tiny", proc, min_number=0)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output[-2000:]
    trials = load_trials(url, "tiny")
    stopped = trials[victim.number]
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["fail_reason"].startswith("interrupted")
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].user_attrs["retry_of"] == victim.number
    assert queued[0].user_attrs["slot"] == victim.number
