"""cnnlab fit --resume / ImagePredictor.fit(resume=True): a fit killed with SIGKILL continues where
it was (plan kept, finished candidates kept, the running one from its last epoch, the time
already spent counted against the limit)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab.cli.main import main

LIMIT = 45  # seconds: frozen features + fine-tuning the last blocks (high_quality) on 36 tiny images, 64 px

DRIVER = """
import sys
from cnnlab.autofit import candidates, fewshot, planner
from cnnlab.predictor import ImagePredictor

fewshot.FEW_SHOT_MAX = 0  # 12 images a class: the planner's candidates, not the few-shot path
from cnnlab.autofit import budget

budget.FILL_MIN_S = 1e9  # no leftover seeds: the two planned models are the ones killed and resumed

planner.ENSEMBLE_GAP = 1.0  # a second model is always worth it: two candidates to kill in
planner.FINETUNE_MIN_STEPS = 1  # 30 images: one step an epoch; fine-tuning planned all the same
planner.PROBE_SHARE = 0.0  # the reference speeds: the same plan whatever the other jobs on the cores
candidates.FROZEN_SIZE = candidates.LAST_SIZE = 64  # cheaper pretrained candidates (shared, busy cores)
data, folder, limit, mode = sys.argv[1:]
pred = ImagePredictor(label="label", path=folder)
if mode == "resume":
    pred.fit(None, resume=True, log=lambda s: print(s, flush=True))
else:
    pred.fit(data, time_limit=float(limit), presets="high_quality", log=lambda s: print(s, flush=True))
print("FINISHED", flush=True)
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_fit_killed_three_times_finishes_within_its_budget(make_tree, tmp_path):
    data = tmp_path / "data"
    make_tree(data / "train", per_class=12)
    make_tree(data / "test", per_class=4, seed=3)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    fit = tmp_path / "fit"
    env = {**os.environ, "CNNLAB_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    logs: list[str] = []

    def run(mode: str, marker: str | None) -> None:
        log = tmp_path / f"log-{len(logs)}.txt"
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, str(driver), str(data), str(fit), str(LIMIT), mode], env=env,
                                    stdout=fh, stderr=subprocess.STDOUT)
            try:
                while marker is not None and not (fit / marker).exists():
                    assert proc.poll() is None, f"the fit ended before {marker}: {log.read_text()[-2000:]}"
                    time.sleep(0.02)
                if marker is not None:
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=300)
            finally:
                if proc.poll() is None:
                    proc.kill()
        logs.append(log.read_text())

    run("start", "plan.json")  # 1: killed once planned, before any model trained
    state = json.loads((fit / "state.json").read_text())
    assert state["preset"] == "high_quality" and state["time_limit"] == LIMIT
    plan_before = json.loads((fit / "plan.json").read_text())
    run("resume", "models/frozen/state/train_state.json")  # 2: killed after the first model's first epoch
    assert "plan kept" in logs[-1]
    run("resume", "models/finetune_last/state/train_state.json")  # 3: the first model done, the second running
    assert "frozen: continuing from its last finished epoch" in logs[-1]
    kept = {p.name: _digest(p) for p in (fit / "models" / "frozen").glob("*.*") if p.is_file()}
    assert "autofit.json" in kept and "model.safetensors" in kept
    spent = json.loads((fit / "state.json").read_text())["elapsed_seconds"]
    assert spent > 0
    run("resume", None)  # 4: to the end
    last = logs[-1]
    assert "FINISHED" in last, last[-2000:]
    assert "frozen: finished before the fit was stopped" in last
    assert "finetune_last: continuing from its last finished epoch" in last
    assert "resuming " + str(fit / "models" / "finetune_last") + " after epoch" in last
    # the finished candidate is untouched; the plan is the one made before the first kill
    assert {p.name: _digest(p) for p in (fit / "models" / "frozen").glob("*.*") if p.is_file()} == kept
    plan = json.loads((fit / "plan.json").read_text())
    assert plan["order"] == plan_before["order"] and plan["available_seconds"] == plan_before["available_seconds"]
    assert [c["status"] for c in plan["candidates"] if c["chosen"]] == ["done", "done"]
    info = json.loads((fit / "fit.json").read_text())
    assert info["elapsed_seconds"] >= spent  # the time before the kills is counted
    assert info["elapsed_seconds"] <= LIMIT * 1.05, info["elapsed_seconds"]
    assert sorted(r["model"] for r in info["leaderboard"] if r["model"] != "ensemble") == ["finetune_last", "frozen"]
    # resuming a finished fit changes nothing
    from cnnlab.predictor import ImagePredictor

    again = ImagePredictor(path=fit).fit(None, resume=True, log=lambda s: None)
    assert again.fit_summary()["elapsed_seconds"] == info["elapsed_seconds"]


@pytest.mark.parametrize("argv, message", [
    (["fit", "--time-limit", "1m"], "--data is required (or --resume FIT_DIR"),
    (["fit", "--data", "x"], "--time-limit is required"),
    (["fit", "--resume", "{tmp}", "--out", "{tmp}/b"], "--out goes with a new fit"),
    (["fit", "--resume", "{tmp}"], "state.json: not found"),
])
def test_cli_resume_errors_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_resumed_fit_keeps_its_time_limit_and_preset(tmp_path):
    from cnnlab.autofit.state import FORMAT
    from cnnlab.errors import ConfigError
    from cnnlab.predictor import ImagePredictor

    (tmp_path / "state.json").write_text(json.dumps({
        "format": FORMAT, "time_limit": 60.0, "preset": "medium_quality", "seed": 0, "data_source": "<DataFrame>",
        "tuning_source": None, "label": "label", "image_column": None, "elapsed_seconds": 12.0, "running": None}))
    with pytest.raises(ConfigError, match="time_limit: the fit in .* has 60s"):
        ImagePredictor(path=tmp_path).fit(None, resume=True, time_limit="2m")
    with pytest.raises(ConfigError, match="presets: the fit in .* is medium_quality"):
        ImagePredictor(path=tmp_path).fit(None, resume=True, presets="best_quality")
    with pytest.raises(ConfigError, match="was given a DataFrame; pass the same data again"):
        ImagePredictor(path=tmp_path).fit(None, resume=True)


def test_fit_state_counts_the_time_spent_before_a_kill(tmp_path):
    from cnnlab.autofit.state import FitState, read_state

    now = [100.0]
    state = FitState(tmp_path, {"time_limit": 60.0}, lambda: now[0], start=100.0 - 25.0)  # 25 s spent before
    now[0] += 5.0
    state.write(running={"kind": "fastnet", "elapsed_at_start": 27.0})
    saved = read_state(tmp_path)
    assert saved["elapsed_seconds"] == 30.0 and saved["running"]["kind"] == "fastnet"
