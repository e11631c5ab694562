"""Library calls leave the caller's process as they found it: backend, threads, config objects."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

from cnnlab import api  # noqa: E402
from cnnlab.config import config_from_dict  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


def test_figures_never_touch_pyplot_or_the_backend(tmp_path):
    """A notebook's backend (here 'template') survives importing cnnlab.figures and drawing."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import matplotlib
        from cnnlab import figures
        from cnnlab.reports import tree
        out = {str(tmp_path)!r}
        figures.learning_curves([{{"epoch": 1, "loss": 1.0, "val_loss": 1.2, "accuracy": 0.5}},
                                 {{"epoch": 2, "loss": 0.5, "val_loss": 0.9, "accuracy": 0.7}}], out + "/c.png")
        figures.confusion_heatmap(np.eye(2, dtype=int), ["a", "b"], out + "/m.png")
        tree.draw_tree("root", [tree.TreeNode("x", None, "x")], out + "/t.png")
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        print(matplotlib.get_backend())
    """)
    env = {**os.environ, "MPLBACKEND": "template", "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "template"
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("c.png", "m.png", "t.png"))


def _config() -> dict:
    return {"name": "side-effects", "seed": 0, "data": {"validation_split": 0.25},
            "model": {"arch": "test_resnet", "head": {"pooling": "avg"}},
            "train": {"epochs": 1, "batch_size": 16, "precision": "fp32", "optimizer": {"name": "adam", "lr": 1e-3}}}


def test_train_leaves_the_callers_config_and_thread_count_alone(make_tree, tmp_path, monkeypatch):
    from cnnlab.utils import hardware

    data = make_tree(tmp_path / "data", per_class=8)
    cfg = config_from_dict(_config())
    before = cfg.to_dict()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "physical_cores", lambda: 1)  # the trainer's own choice: 1 thread
    threads_in_training = []
    old = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's choice
    try:
        api.train(cfg, data=str(data), run_dir=tmp_path / "run", progress=False, log=lambda s: None,
                  epoch_callback=lambda e, logs: threads_in_training.append(torch.get_num_threads()))
        after_train = torch.get_num_threads()
    finally:
        torch.set_num_threads(old)
    assert threads_in_training == [1]
    assert after_train == 2
    assert cfg.to_dict() == before  # data= did not write the source into the caller's object
    dict_cfg = _config()
    api.train(dict_cfg, data=str(data), run_dir=tmp_path / "run2", progress=False, log=lambda s: None)
    assert dict_cfg == _config()


def test_train_and_fit_leave_the_callers_random_generators_alone(make_tree, tmp_path):
    """cnnlab.train and ImagePredictor.fit seed their own training; the caller's global RNG goes on
    as if nothing had run (it used to be reseeded with the config's seed)."""
    import random

    import numpy as np

    from cnnlab.predictor import ImagePredictor

    data = make_tree(tmp_path / "data", per_class=8)
    for i, train in enumerate((
        lambda: api.train(_config(), data=str(data), run_dir=tmp_path / "r1", progress=False, log=lambda s: None),
        lambda: ImagePredictor(path=tmp_path / "r2").fit(str(data), config=_config(), log=lambda s: None),
    )):
        torch.manual_seed(1234 + i)
        np.random.seed(99)
        random.seed(7)
        expected = torch.rand(3)
        torch.manual_seed(1234 + i)
        train()
        assert torch.equal(torch.rand(3), expected)
        assert np.random.randint(0, 10**9) == np.random.RandomState(99).randint(0, 10**9)
        assert random.random() == random.Random(7).random()
