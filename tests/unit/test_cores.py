"""Processes sharing the cores (utils/cores.py): each takes its share, dead ones stop counting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from cnnlab.utils import cores


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(cores.SHARE_ENV, raising=False)
    monkeypatch.setattr(cores.hardware, "physical_cores", lambda: 4)


def test_each_registered_process_takes_its_share(four_cores, tmp_path):
    with cores.CoreShare(tmp_path) as a:
        assert a.threads() == 4
        with cores.CoreShare(tmp_path) as b:
            assert cores.live_processes(tmp_path) == 2
            assert a.threads() == 2 and b.threads() == 2
            with cores.CoreShare(tmp_path) as c:
                assert c.threads() == 1  # 4 // 3
        assert a.threads() == 4  # the others ended
    assert list(tmp_path.glob("*.lock")) == []


def test_a_killed_process_stops_counting(four_cores, tmp_path):
    code = ("import sys, time; from pathlib import Path; from cnnlab.utils.cores import CoreShare\n"
            "s = CoreShare(Path(sys.argv[1])).__enter__(); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with cores.CoreShare(tmp_path) as me:
            assert me.threads() == 2
            os.kill(proc.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops its lock
            proc.wait(timeout=10)
            assert me.threads() == 4
        assert list(tmp_path.glob("*.lock")) == []  # the stale file was removed
    finally:
        if proc.poll() is None:
            proc.kill()


def test_omp_num_threads_and_the_switch_win(four_cores, tmp_path, monkeypatch):
    with cores.CoreShare(tmp_path) as a, cores.CoreShare(tmp_path):
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert a.threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert a.threads() == 2
    monkeypatch.setenv(cores.SHARE_ENV, "0")
    with cores.CoreShare(tmp_path) as a, cores.CoreShare(tmp_path):
        assert a.threads() == 4 and list(tmp_path.glob("*.lock")) == []  # nothing registered


def test_compute_threads_restores_the_callers_setting(four_cores, tmp_path, monkeypatch):
    monkeypatch.setattr(cores, "register_dir", lambda: tmp_path)
    before = torch.get_num_threads()
    with cores.compute_threads():
        assert torch.get_num_threads() == 4
        assert cores.share_now() == 4
    assert torch.get_num_threads() == before
    assert cores.share_now() is None


def test_nested_compute_threads_keep_the_one_registration(four_cores, tmp_path, monkeypatch):
    # inference inside a training (the fit's evaluation, the per-epoch validation) must not count
    # its own process twice: that halved the evaluation's threads
    monkeypatch.setattr(cores, "register_dir", lambda: tmp_path)
    with cores.compute_threads():
        with cores.compute_threads():
            assert torch.get_num_threads() == 4 and cores.live_processes(tmp_path) == 1
            with cores.compute_threads(3):
                assert torch.get_num_threads() == 3
            assert torch.get_num_threads() == 4
        assert cores.share_now() == 4 and len(list(tmp_path.glob("*.lock"))) == 1
    assert list(tmp_path.glob("*.lock")) == []


def test_training_restores_the_thread_count(tiny_tree, tmp_path, monkeypatch):
    from cnnlab import api

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores, "register_dir", lambda: tmp_path / "reg")
    monkeypatch.setattr(cores.hardware, "physical_cores", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        api.train({"model": {"arch": "resnet18"}, "train": {"epochs": 1, "batch_size": 16},
                   "data": {"validation_split": 0.25}},
                  data=str(tiny_tree), run_dir=tmp_path / "run", progress=False, log=lambda s: None,
                  evaluate_test=False)
        assert torch.get_num_threads() == 1  # the trainer took 2 while it ran, then gave them back
    finally:
        torch.set_num_threads(before)
