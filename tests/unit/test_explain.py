"""Class-activation heatmaps (cnnlab.evaluation.explain, ImagePredictor.explain, `cnnlab explain`).

The synthetic set: noise images whose class is decided only by a small bright square in one of
the four quadrants. A model trained on it (about 8 s on 2 cores) must be explained by heatmaps
that peak in the square's quadrant; the same checks are run on uniform and upside-down heatmaps
to show they would fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from cnnlab import ImagePredictor
from cnnlab.cli.main import main
from cnnlab.config import ModelConfig
from cnnlab.data.dataset import DatasetBundle, ImageArrays
from cnnlab.data.decode import to_original_xy
from cnnlab.errors import ConfigError, ModelError
from cnnlab.evaluation.explain import find_layer, heatmaps
from cnnlab.models.classifier import ImageClassifier, ModelSpec
from cnnlab.models.registry import create_model

SIZE, SQUARE = 32, 6
CLASSES = ["tl", "tr", "bl", "br"]  # the square's quadrant: top-left, top-right, bottom-left, bottom-right
CFG = {
    "name": "quadrants", "seed": 0, "data": {"validation_split": 0.2},
    # whiten_kernel 1 keeps 32 px: the last feature map is 4 x 4, its cells split by the quadrant lines.
    "model": {"arch": "cifar_fastnet", "kwargs": {"widths": [16, 16, 16], "depth": 1, "whiten_kernel": 1},
              "head": {"pooling": "max"}},
    "train": {"epochs": 8, "batch_size": 32, "precision": "fp32", "optimizer": {"name": "adam", "lr": 1e-2}},
}


def quadrant_set(n: int, seed: int, size: int = SIZE, square: int = SQUARE) -> tuple[ImageArrays, np.ndarray]:
    """Noise images with a white square somewhere inside one quadrant; (arrays, square's (x, y) corner)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 160, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % 4
    corners = np.zeros((n, 2), dtype=int)
    half = size // 2
    for i in range(n):
        qy, qx = divmod(int(y[i]), 2)
        oy = qy * half + int(rng.integers(1, half - square - 1))
        ox = qx * half + int(rng.integers(1, half - square - 1))
        x[i, oy : oy + square, ox : ox + square] = 255
        corners[i] = (ox, oy)
    return ImageArrays(x, y, list(CLASSES)), corners


def quadrant_of(points: np.ndarray, size: int) -> np.ndarray:
    """Class index of (x, y) points: 2 * (bottom half) + (right half)."""
    points = np.asarray(points)
    return (points[:, 1] >= size // 2) * 2 + (points[:, 0] >= size // 2)


def peaks(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(len(maps), -1).argmax(1)
    return np.stack([flat % maps.shape[2], flat // maps.shape[2]], 1)


def square_contrast(maps: np.ndarray, corners: np.ndarray) -> float:
    """Mean heat inside the squares over mean heat outside them (1.0 for a uniform map)."""
    inside = np.zeros(maps.shape, dtype=bool)
    for i, (x0, y0) in enumerate(corners):
        inside[i, y0 : y0 + SQUARE, x0 : x0 + SQUARE] = True
    return float(maps[inside].mean() / max(maps[~inside].mean(), 1e-9))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImagePredictor, ImageArrays, np.ndarray]:
    root = tmp_path_factory.mktemp("explain")
    train, _ = quadrant_set(600, 0)
    test, corners = quadrant_set(100, 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(root / "home"))
        mp.setenv("OMP_NUM_THREADS", "1")
        pred = ImagePredictor(path=root / "run").fit(DatasetBundle("quadrants", train, test), config=CFG,
                                                     log=lambda s: None)
    return pred, test, corners


def test_gradcam_peaks_in_the_squares_quadrant(trained):
    pred, test, corners = trained
    assert pred.evaluate(test)["accuracy"] >= 0.9  # the model did learn the rule the maps must show
    maps = pred.explain(test.x)
    assert maps.shape == (100, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0 and np.allclose(maps.reshape(100, -1).max(1), 1.0)
    hits = quadrant_of(peaks(maps), SIZE) == test.y
    assert hits.mean() >= 0.9, f"peak in the square's quadrant for {hits.mean():.0%} of images"
    assert square_contrast(maps, corners) > 2.0


def test_the_checks_fail_for_uniform_or_upside_down_maps(trained):
    pred, test, corners = trained
    maps = pred.explain(test.x)
    flipped, uniform = maps[:, ::-1, :], np.ones_like(maps)
    for wrong in (flipped, uniform):
        assert (quadrant_of(peaks(wrong), SIZE) == test.y).mean() <= 0.5
        assert square_contrast(wrong, corners) < 1.5
    assert square_contrast(maps, corners) > 2 * square_contrast(flipped, corners)


def test_occlusion_is_gradient_free_and_finds_the_square(trained):
    pred, test, corners = trained
    e = pred.explanation(test.x[:20], method="occlusion")
    assert e.method == "occlusion" and e.layer is None and e.heatmaps.shape == (20, SIZE, SIZE)
    hits = quadrant_of(np.array(e.peaks()), SIZE) == test.y[:20]
    assert hits.mean() >= 0.9
    assert square_contrast(e.heatmaps, corners[:20]) > 2.0


def test_targets_labels_probabilities_and_layer_override(trained):
    pred, test, _ = trained
    x = test.x[:8]
    probs = pred.predict_proba(x).to_numpy()
    e = pred.explanation(x)
    assert e.layer == "backbone.blocks.2"  # the last feature map larger than 1x1 (4x4 here)
    assert e.labels == [CLASSES[i] for i in probs.argmax(1)] == e.predicted
    assert np.allclose(e.probabilities, probs.max(1), atol=1e-5)
    other = pred.explanation(x, target="br")
    assert other.labels == ["br"] * 8 and np.allclose(other.probabilities, probs[:, 3], atol=1e-5)
    # Explaining the square's class and another class give different maps.
    assert np.abs(other.heatmaps[:2] - e.heatmaps[:2]).mean() > 0.05  # images 0, 1: classes tl, tr
    assert pred.explanation(x, layer="blocks.1").layer == "backbone.blocks.1"
    with pytest.raises(ConfigError, match="target 'cat' is not a class"):
        pred.explain(x, target="cat")
    with pytest.raises(ConfigError, match="method must be one of gradcam, occlusion"):
        pred.explain(x, method="lime")
    with pytest.raises(ModelError, match="no layer named 'nope'"):
        pred.explain(x, layer="nope")


@pytest.mark.parametrize("arch,size,kwargs,layer", [
    ("resnet18", 32, {}, "backbone.layer3"),  # layer4 is 1x1 at 32 px
    ("resnet18", 64, {}, "backbone.layer4"),
    ("mobilenetv1_100", 32, {}, "backbone.blocks.3"),
    ("efficientnet_lite0", 32, {}, "backbone.blocks.4"),  # a whole block, not the expansion inside blocks.5
    ("efficientnet_lite0", 224, {}, "backbone.bn2"),
    ("nasnet_mobile", 32, {}, "backbone.cells.10"),
    ("cifar_fastnet", 32, {"widths": [8, 16, 16], "depth": 1}, "backbone.blocks.2"),
])
def test_the_layer_is_found_for_every_arch(arch, size, kwargs, layer):
    model = create_model(ModelConfig(arch=arch, pretrained=None, kwargs=kwargs), ["a", "b"]).eval()
    probe = torch.randint(0, 256, (1, 3, size, size)).float()
    assert find_layer(model, probe)[0] == layer


def test_a_model_without_a_feature_map_is_refused():
    class Pooled(nn.Module):  # pools to 1x1 before its only convolution
        def __init__(self):
            super().__init__()
            self.pool, self.conv = nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 4, 1)

        def forward_features(self, x):
            return self.conv(self.pool(x))

    model = ImageClassifier(Pooled(), 4, ModelSpec(arch="pooled", num_classes=2, class_names=["a", "b"]))
    x = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(ModelError, match="pooled has no feature map larger than 1x1 at 16 px"):
        heatmaps(model, x, [0])
    maps, layer = heatmaps(model, x, [0], method="occlusion")  # occlusion needs no layer
    assert maps.shape == (1, 16, 16) and layer is None


def test_a_decoded_pixel_maps_back_to_the_original():
    # 64 x 48 decoded at 32: scaled by 2/3 to 43 x 32, then 5 columns cropped on the left.
    assert to_original_xy(0, 0, (64, 48), 32) == (8, 0)
    assert to_original_xy(31, 31, (64, 48), 32) == (54, 47)  # (31.5 + 5) * 64 / 43 - 0.5 = 54.3
    assert to_original_xy(15, 15, (32, 32), 32) == (15, 15)
    assert to_original_xy(7, 9, (640, 480), None) == (7, 9)


def test_cli_explain_writes_overlays_and_json(trained, tmp_path, capsys):
    pred, _, _ = trained
    arrays, corners = quadrant_set(8, 2, size=64, square=2 * SQUARE)  # files at twice the decode size
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(arrays.x):
        Image.fromarray(img).save(folder / f"{i}.png")
    out = tmp_path / "overlays"
    assert main(["explain", str(pred.path), str(folder), "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(folder / f"{i}.png") for i in range(8)]
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.gradcam.png" for i in range(8)]
    with Image.open(rows[0]["heatmap_png"]) as im:
        assert im.width > 2 * 64 and im.height > 64  # image | overlay side by side, enlarged, captioned
    # Peaks are in the files' own 64-px coordinates: in the square's quadrant of the original.
    hits = quadrant_of(np.array([r["peak"] for r in rows]), 64) == arrays.y
    assert hits.mean() >= 7 / 8 and max(max(r["peak"]) for r in rows) >= 32
    assert all(r["label"] in CLASSES and 0 < r["probability"] <= 1 for r in rows)


def test_cli_explain_bad_input_is_one_line(trained, tmp_path, capsys):
    pred, test, _ = trained
    img = tmp_path / "a.png"
    Image.fromarray(test.x[0]).save(img)
    for argv, message in ((["explain", str(pred.path), str(tmp_path / "missing.png")], "missing.png: no such file"),
                          (["explain", str(pred.path), str(img), "--target", "cat"], "target 'cat' is not a class"),
                          (["explain", str(pred.path), str(img), "--layer", "nope"], "no layer named 'nope'")):
        assert main(argv + ["--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
