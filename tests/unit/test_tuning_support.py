"""Shared helpers of the tuning tests (no tests here): tiny learnable data and configs.

Three colour classes of 16x16 noise images: a good learning rate separates them within an
epoch, a tiny one stays at chance, so pruning and best-trial choices are predictable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("red", "green", "blue")


def color_arrays(n: int, seed: int = 0):
    from cnnlab.data.dataset import ImageArrays

    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    x = (rng.random((n, 16, 16, 3)) * 90).astype(np.uint8)
    for c in range(len(CLASSES)):
        x[y == c, :, :, c] += 120
    return ImageArrays(x, y, list(CLASSES))


def color_bundle(n_train: int = 96, n_test: int = 30):
    from cnnlab.data.dataset import DatasetBundle

    return DatasetBundle("colors", color_arrays(n_train, 0), color_arrays(n_test, 1))


def write_color_tree(root: Path, n_train: int = 96, n_test: int = 30) -> Path:
    """The same data as an image-folder tree (train/<class>/*.png, test/<class>/*.png)."""
    from PIL import Image

    for split, arrays in (("train", color_arrays(n_train, 0)), ("test", color_arrays(n_test, 1))):
        for i, (img, label) in enumerate(zip(arrays.x, arrays.y)):
            d = root / split / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


def tiny_config(**search: object) -> dict:
    """A config whose trials take about a second each on one CPU thread."""
    section = {
        "trials": 3,
        "sampler": "random",
        "pruner": "none",
        "final_fit": "none",
        "params": {
            "train.optimizer.lr": {"type": "float", "low": 3.0e-3, "high": 3.0e-2, "log": True},
            "model.head.units": {"type": "int", "low": 8, "high": 32, "step": 8},
        },
    }
    section.update(search)
    return {
        "name": "tiny",
        "seed": 1,
        "data": {"validation_split": 0.25},
        "model": {"arch": "test_efficientnet", "head": {"units": 16}},
        "train": {"epochs": 2, "batch_size": 16, "optimizer": {"lr": 1.0e-2}},
        "search": section,
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli_env(home: Path) -> dict[str, str]:
    """Environment for `cnnlab` subprocesses: one thread (the machine is shared), a private cache."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "CNNLAB_HOME": str(home), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")})
    return env


def cnnlab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab.cli.main", *args]


def run_cli(args: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cnnlab_cmd(*args), env=cli_env(home), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def load_trials(storage_url: str, study_name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=study_name, storage=storage_url).get_trials(deepcopy=False)
