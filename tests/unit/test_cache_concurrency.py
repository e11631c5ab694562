"""The decoded-pixel cache (data/cache.py) under two processes at once and under SIGKILL at a
random moment: every load returns the right pixels, and a later load still trusts only complete
entries (issue 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

LOAD = """
import sys, numpy as np
from cnnlab.data.sources import load_source
b = load_source(sys.argv[1])
np.save(sys.argv[2], b.train.x)
print(b.info.get("cache"))
"""


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, CNNLAB_HOME=str(home), PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CNNLAB_NO_CACHE", None)
    return env


def _reference(tree: Path) -> np.ndarray:
    from cnnlab.data.folder import load_tree

    return load_tree(tree).train.x


@pytest.fixture
def tree(make_tree, tmp_path) -> Path:
    return make_tree(tmp_path / "tree", per_class=120, size=(24, 24))


def test_two_processes_building_the_same_cache_at_once(tree, tmp_path):
    home = tmp_path / "home"
    want = _reference(tree)
    for round_ in range(2):
        procs = [subprocess.Popen([sys.executable, "-c", LOAD, str(tree), str(tmp_path / f"x{round_}{k}.npy")],
                                  env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for k in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        for k in range(2):
            assert np.array_equal(np.load(tmp_path / f"x{round_}{k}.npy"), want)
    out = subprocess.run([sys.executable, "-c", LOAD, str(tree), str(tmp_path / "again.npy")], env=_env(home),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "hit" and np.array_equal(np.load(tmp_path / "again.npy"), want)
    entries = [p for p in (home / "decoded").iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary folder left behind


def test_sigkill_while_building_leaves_no_entry_a_later_load_trusts(tree, tmp_path):
    home = tmp_path / "home"
    want = _reference(tree)
    rng = np.random.default_rng(0)
    for k, delay in enumerate(rng.uniform(0.3, 1.5, size=4)):
        p = subprocess.Popen([sys.executable, "-c", LOAD, str(tree), str(tmp_path / f"k{k}.npy")], env=_env(home),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(delay))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        out = subprocess.run([sys.executable, "-c", LOAD, str(tree), str(tmp_path / f"after{k}.npy")],
                             env=_env(home), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert np.array_equal(np.load(tmp_path / f"after{k}.npy"), want), f"kill after {delay:.2f}s"
