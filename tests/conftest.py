"""Shared pytest fixtures for cnnlab's tests.

Fixtures (names are stable; other test modules rely on them):

``isolated_home`` (autouse)
    Points ``CNNLAB_HOME`` (downloads, decoded-pixel cache, feature cache) at a fresh temporary
    folder for every test (integration tests share one for the session, so CIFAR-10 is decoded
    once) and removes ``CNNLAB_NO_CACHE``. It also removes ``CNNLAB_CIFAR10``
    so that nothing reads a real CIFAR-10 copy by accident; a test that needs it sets it with
    ``monkeypatch.setenv`` (which wins, as it runs after this fixture). Tests marked
    ``integration`` keep the caller's ``CNNLAB_CIFAR10``. The auto-fit priors' history
    (``<home>/priors/history.jsonl``, cnnlab.autofit.history) is therefore a test's own: a
    developer's ``CNNLAB_PRIORS_HISTORY`` is removed, and each integration test (which share a
    home) gets a history file of its own through it. Returns the home folder's path.

``make_tree``
    A factory ``make_tree(root, classes=..., per_class=..., size=..., seed=..., suffix=".png")``
    that writes ``root/<class>/<i><suffix>`` images whose pixels are the class's colour plus a
    little seeded noise (every image differs), and returns ``root``. ``size`` is (width, height).
    Class colours cycle through ``CLASS_COLOURS``; pass ``colours=[...]`` to choose them.

``tiny_tree``
    A learnable folder dataset built with ``make_tree``: ``tmp_path / "tiny"`` holding
    3 classes x 24 PNG images of 16 x 16, the classes named after their colours
    (``blue``, ``green``, ``red``, which is also their sorted label order 0, 1, 2).
    A model that looks at the mean colour separates them perfectly.

``image_bytes``
    ``image_bytes(pil_image, fmt="PNG", **save_kwargs) -> bytes``: encode a Pillow image.

``run_dir`` (session-scoped)
    A tiny saved model, built once for the session: an untrained ``cifar_fastnet`` (widths 8/16/16,
    depth 1, torch seed 0) over the classes ``TINY_CLASSES``, decoded at 16 px, written by
    ``cnnlab.models.io.save_model`` (model.safetensors + model.json; the card's ``data.source`` is
    ``SERVED_RUN_SOURCE``, a server path no response may show). The serving tests share it, so it is
    READ-ONLY: a test that writes into its run folder (the onnxruntime backend exports model.onnx
    there) works on a copy (``shutil.copytree(run_dir, tmp_path / "run")``).
"""

from __future__ import annotations

import io
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in one worker process per core (pytest-xdist). Each worker gets
    # one compute thread (before torch is imported), so the two never fight over the cores and
    # a test's numbers never depend on what the other worker computes at the time: in bf16 the
    # thread count moves results (README, "the same answer"), and cnnlab's core-sharing register
    # would otherwise give a worker 2 threads or 1 depending on its neighbour.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: Colours given to classes in order by ``make_tree`` (then cycled).
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (30, 40, 210),
    "green": (35, 200, 45),
    "red": (215, 35, 30),
    "yellow": (220, 210, 40),
}

#: The classes of ``tiny_tree``, in label order.
TINY_CLASSES = ("blue", "green", "red")
TINY_PER_CLASS = 24
TINY_SIZE = 16


@pytest.fixture(autouse=True)
def isolated_home(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    if request.node.get_closest_marker("integration") is not None:
        # One home for every integration test of the session: CIFAR-10's decoded-pixel cache is
        # built once (decoding the 60,000 JPEGs takes ~18 s on 2 cores), not once per module.
        # Under pytest-xdist each worker has its own base folder below one shared parent: the
        # workers share the home there (the cache's build lock makes one of them decode, the
        # other wait), so CIFAR-10 is still decoded once per session.
        base = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            base = base.parent
        home = base / "cnnlab_home_integration"
        home.mkdir(exist_ok=True)
    else:
        home = tmp_path_factory.mktemp("cnnlab_home")
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    monkeypatch.delenv("CNNLAB_PRIORS_HISTORY", raising=False)
    if request.node.get_closest_marker("integration") is not None:  # no fit plans from another test's results
        monkeypatch.setenv("CNNLAB_PRIORS_HISTORY", str(tmp_path_factory.mktemp("priors") / "history.jsonl"))
    monkeypatch.delenv("CNNLAB_NO_CACHE", raising=False)
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.delenv("CNNLAB_CIFAR10", raising=False)
    return home


def _write_tree(
    root: Path,
    classes: Sequence[str] = TINY_CLASSES,
    per_class: int = TINY_PER_CLASS,
    size: tuple[int, int] = (TINY_SIZE, TINY_SIZE),
    seed: int = 0,
    suffix: str = ".png",
    colours: Sequence[tuple[int, int, int]] | None = None,
) -> Path:
    rng = np.random.default_rng(seed)
    palette = list(colours) if colours is not None else list(CLASS_COLOURS.values())
    w, h = size
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array(palette[k % len(palette)], dtype=np.int16)
        for i in range(per_class):
            noise = rng.integers(-20, 21, size=(h, w, 3), dtype=np.int16)
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}{suffix}")
    return root

TINY_RUN_CFG = {"name": "t", "seed": 0, "model": {"arch": "test_resnet"},
                "train": {"epochs": 1, "batch_size": 8, "precision": "fp32", "optimizer": {"name": "adam", "lr": 3e-3}}}


def train_tiny_run(root: Path, per_class: int = 6) -> tuple[Path, Path]:
    """A 3-class PNG tree under ``root/tree`` and a one-epoch test_resnet trained on it in
    ``root/run`` (its own CNNLAB_HOME, one thread): (run folder, tree). For module fixtures."""
    import torch

    from cnnlab import api

    tree = _write_tree(root / "tree", per_class=per_class)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(root / "home"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            api.train(TINY_RUN_CFG, data=str(tree), run_dir=root / "run", progress=False, log=lambda s: None,
                      evaluate_test=False)
        finally:
            torch.set_num_threads(threads)
    return root / "run", tree



def photo_set_builder():
    """benchmarks/make_photo_set.py as a module (real photos from scikit-learn, cropped at mixed sizes
    and modes): ``photo_set_builder().build_photo_set(root, ...)``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_photo_set", Path(__file__).resolve().parents[1] / "benchmarks" / "make_photo_set.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def make_tree() -> Callable[..., Path]:
    return _write_tree


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    return _write_tree(tmp_path / "tiny")


@pytest.fixture
def image_bytes() -> Callable[..., bytes]:
    def encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kwargs)
        return buf.getvalue()

    return encode


#: The training source the ``run_dir`` fixture's card names: a server path no response may show.
SERVED_RUN_SOURCE = "/secret/server/path/train"


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from cnnlab.config import ModelConfig
    from cnnlab.models.io import save_model
    from cnnlab.models.registry import create_model

    with torch.random.fork_rng():  # seeded here without moving the global generator of the tests after it
        torch.manual_seed(0)
        model = create_model(ModelConfig(arch="cifar_fastnet", kwargs={"widths": [8, 16, 16], "depth": 1}),
                             list(TINY_CLASSES))
    return save_model(model.eval(), tmp_path_factory.mktemp("served") / "run",
                      {"data_image_size": TINY_SIZE, "data": {"source": SERVED_RUN_SOURCE}})


@pytest.fixture()
def one_thread(monkeypatch):
    """One compute thread, restored afterwards: the trainer would otherwise take every core
    (~10x slower on a busy 2-core machine), and exact results depend on the thread count."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
