"""Heatmaps in the reports: the worst-errors grid beside overlays, the per-class overlay gallery."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnlab.errors import ModelError
from cnnlab.evaluation.overlay import overlay
from cnnlab.evaluation.error_analysis import error_figure, write_error_analysis
from cnnlab.reports.explain_gallery import pick, write_gallery

CLASSES = ["a", "b", "c"]


def _data(n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), n)
    y = np.arange(n) % 3
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return probs, y, images


def _corner_maps(indices: np.ndarray) -> np.ndarray:
    maps = np.zeros((len(indices), 8, 8), np.float32)
    maps[:, :2, :2] = 1.0  # hot top-left corner
    return maps


def test_worst_errors_grid_shows_each_image_beside_its_overlay(tmp_path):
    probs, y, images = _data()
    asked = []

    def explain(idx):
        asked.append(list(idx))
        return _corner_maps(idx)

    out = write_error_analysis(probs, y, images, CLASSES, tmp_path, k=6, explain=explain)
    assert out["overlays"] and asked == [[r["index"] for r in out["rows"]]]  # the grid's images, worst first
    plain = write_error_analysis(probs, y, images, CLASSES, tmp_path / "plain", k=6)
    assert not plain["overlays"]
    with Image.open(out["png"]) as a, Image.open(plain["png"]) as b:
        assert a.width > 1.5 * b.width  # each panel holds two pictures
    # Each panel: the image, a white gap, then the image blended with its coloured heatmap.
    rows = out["rows"]
    fig = error_figure(images, rows, list(_corner_maps(np.arange(len(rows)))))
    shown = np.asarray(fig.axes[0].images[0].get_array())
    first = images[rows[0]["index"]]
    assert shown.shape == (8, 8 + 2 + 8, 3)
    assert (shown[:, :8] == first).all() and (shown[:, 8:10] == 255).all()
    assert (shown[:, 10:] == overlay(first, _corner_maps(np.arange(1))[0])).all()
    assert not (shown[:, 10:] == first).all()


def test_a_model_grad_cam_cannot_explain_leaves_the_plain_grid(tmp_path):
    probs, y, images = _data()

    def refuse(idx):
        raise ModelError("explain: no feature map larger than 1x1")

    out = write_error_analysis(probs, y, images, CLASSES, tmp_path, k=6, explain=refuse)
    assert not out["overlays"] and out["png"].is_file()
    assert write_gallery(images, probs, y, CLASSES, refuse, tmp_path / "g.png") is None


def test_gallery_picks_the_most_confident_correct_and_wrong_per_class(tmp_path):
    probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1],
                      [0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    rows = pick(probs, y, per_class=2)
    assert rows == [(0, 0, True), (0, 2, True), (0, 3, False), (1, 5, False), (1, 4, False), (2, 6, False)]
    assert pick(probs, y, per_class=1, max_classes=1) == [(0, 0, True), (0, 3, False)]
    images = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    info = write_gallery(images, probs, y, CLASSES, _corner_maps, tmp_path / "g.png", per_class=2)
    assert info["images"] == 6 and info["correct"] == 2 and info["wrong"] == 4 and info["classes"] == 3
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("k", [0])
def test_no_rows_no_explaining(tmp_path, k):
    probs, y, images = _data()
    out = write_error_analysis(probs, y, images, CLASSES, tmp_path, k=k, explain=lambda i: 1 / 0)
    assert not out["overlays"]
