"""One process per run directory / fit folder, race-free new names, tune never deletes a folder it did not make."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cnnlab import api
from cnnlab.cli.main import main
from cnnlab.config import config_from_dict
from cnnlab.errors import ConfigError
from cnnlab.training.rundir import RunDir
from cnnlab.utils.locks import folder_lock, new_folder

SRC = str(Path(__file__).resolve().parents[2] / "src")
TINY = {"model": {"arch": "cifar_fastnet", "kwargs": {"widths": [8, 8, 8], "depth": 1}},
        "train": {"epochs": 1, "batch_size": 16, "precision": "fp32"}}


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path / 'run'`` (until the test ends)."""
    folder = tmp_path / "run"
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from cnnlab.utils.locks import folder_lock\n"
            "with folder_lock(sys.argv[2]):\n print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, SRC, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc.pid
    proc.kill()
    proc.wait()


def test_a_second_training_into_a_held_run_directory_is_refused_naming_the_pid(holder, tiny_tree, capsys):
    folder, pid = holder
    assert main(["train", "--data", str(tiny_tree), "--run-dir", str(folder), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {pid}" in err[0] and "in use" in err[0]
    assert not (folder / "config.yaml").exists()  # nothing written into the held folder


def test_resume_of_a_held_run_is_refused(holder, tiny_tree):
    folder, pid = holder
    cfg = config_from_dict({**TINY, "data": {"source": str(tiny_tree)}})
    RunDir(folder).write_config(cfg)
    with pytest.raises(ConfigError, match=f"pid {pid}"):
        api.resume(folder, progress=False, log=lambda s: None)


def test_the_lock_is_released_after_the_holder_is_done(tmp_path):
    with folder_lock(tmp_path / "f"):
        with pytest.raises(ConfigError, match="in use"):
            with folder_lock(tmp_path / "f"):
                pass
    with folder_lock(tmp_path / "f"):  # free again
        pass


def test_fit_folder_is_held_for_the_fit(holder, tiny_tree):
    folder, pid = holder
    with pytest.raises(ConfigError, match=rf"fit folder .* \(pid {pid}\)"):
        api.ImagePredictor(path=folder).fit(str(tiny_tree), time_limit=30)


def test_new_names_are_claimed_atomically(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")  # every run starts "in the same second"
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(RunDir.new("x", tmp_path).path)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 8 and all(p.is_dir() for p in paths)
    assert new_folder(tmp_path / "y") != new_folder(tmp_path / "y")


def test_resume_on_other_data_is_refused(tmp_path, make_tree):
    a, b = make_tree(tmp_path / "a", per_class=4), make_tree(tmp_path / "b", per_class=4)
    cfg = config_from_dict({**TINY, "data": {"source": str(a)}})
    RunDir(tmp_path / "run").write_config(cfg)
    with pytest.raises(ConfigError, match="was trained on"):
        api.resume(tmp_path / "run", data=str(b), progress=False, log=lambda s: None)


def test_tune_never_deletes_a_final_folder_it_did_not_make(tmp_path):
    import optuna

    from cnnlab.tuning.final import final_fit

    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    mine = tmp_path / "out" / "final" / "my_thesis.tex"
    mine.parent.mkdir(parents=True)
    mine.write_text("irreplaceable")
    info = final_fit(study, {**TINY, "data": {"source": str(tmp_path / "nowhere")}}, "train", tmp_path / "out",
                     log=lambda s: None)
    assert info["status"] == "skipped" and "not made by cnnlab" in info["reason"]
    assert mine.read_text() == "irreplaceable"
