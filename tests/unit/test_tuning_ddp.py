"""Tuning trials trained as 2-process data-parallel jobs (``cnnlab tune --nproc-per-trial 2``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("timm")

from test_tuning_support import load_trials, run_cli, tiny_config, write_color_tree, write_config  # noqa: E402

from cnnlab.config import config_from_dict  # noqa: E402
from cnnlab.tuning.ddp_trial import train_trial  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SRC = Path(__file__).resolve().parents[2] / "src"


def test_tune_with_two_process_trials(tmp_path):
    data = write_color_tree(tmp_path / "data")
    config = write_config(tmp_path / "tiny.yaml", tiny_config(trials=1))
    out = tmp_path / "out"
    proc = run_cli(["tune", "--config", str(config), "--data", str(data), "--nproc-per-trial", "2",
                    "--out", str(out), "--quiet", "--json"], tmp_path / "home", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    trials = load_trials(f"sqlite:///{out / 'study.db'}", "tiny")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]
    for t in trials:
        metrics = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert metrics["distributed"]["world_size"] == 2 and metrics["distributed"]["per_rank_batch"] == 8
        assert t.intermediate_values.keys() == {0, 1}  # both epochs reported to Optuna from history.csv
        assert t.value == max(t.intermediate_values.values())


class Prune(Exception):
    pass


def test_an_exception_from_the_epoch_callback_stops_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    data = write_color_tree(tmp_path / "data")
    cfg = tiny_config()
    cfg["data"]["source"] = str(data)
    cfg["train"]["epochs"] = 30
    seen: list[int] = []

    def on_epoch(epoch: int, logs: dict) -> None:
        seen.append(epoch)
        raise Prune(f"epoch {epoch + 1}")

    with pytest.raises(Prune):
        train_trial(config_from_dict(cfg), tmp_path / "trial", 2, on_epoch, log=lambda line: None)
    assert seen == [0]  # the first epoch's row stopped it
    assert not (tmp_path / "trial" / "model.safetensors").exists()  # the job did not run to its end
