"""The study's error analysis: the k lowest-p(true) images as errors.png (a 4 x 5 grid) and errors.csv."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from cnnlab.errors import DataError
from cnnlab.evaluation.error_analysis import error_figure, write_error_analysis

CLASSES = ["cat", "dog", "frog"]


def _probs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, len(CLASSES))) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, rng.integers(0, len(CLASSES), size=n)


def _read(path):
    return list(csv.DictReader(open(path)))


def test_the_k_rows_are_exactly_the_k_lowest_p_true(tmp_path):
    probs, y = _probs(50)
    images = np.random.default_rng(1).integers(0, 256, size=(50, 12, 10, 3), dtype=np.uint8)
    out = write_error_analysis(probs, y, images, CLASSES, tmp_path, k=20)
    p_true = probs[np.arange(50), y]
    expected = np.argsort(p_true)[:20]
    assert [r["index"] for r in out["rows"]] == expected.tolist()
    assert max(r["p_true"] for r in out["rows"]) < np.sort(p_true)[20]  # every other image has a higher p_true
    rows = _read(out["csv"])
    assert list(rows[0]) == ["rank", "index", "path", "true", "predicted", "p_true", "p_pred"]
    assert [int(r["index"]) for r in rows] == expected.tolist()
    for r in rows:
        i = int(r["index"])
        assert r["true"] == CLASSES[y[i]] and r["predicted"] == CLASSES[probs[i].argmax()]
        assert float(r["p_true"]) == pytest.approx(p_true[i], abs=1e-6)
        assert float(r["p_pred"]) == pytest.approx(probs[i].max(), abs=1e-6)
    assert out["png"] == tmp_path / "errors.png" and out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(out["png"]).size == (1000, 920)  # 5 x 4 panels of 2 x 2.3 inches at 100 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.csv", "errors.png"]  # no temporary file left


def test_the_figure_has_20_panels_titled_with_true_predicted_and_confidence():
    probs, y = _probs(30)
    images = np.zeros((30, 8, 8, 3), np.uint8)
    from cnnlab.evaluation.error_analysis import error_rows

    rows = error_rows(probs, y, CLASSES, None, 20)
    fig = error_figure(images, rows)
    assert len(fig.axes) == 20
    lefts = sorted({round(ax.get_position().x0, 3) for ax in fig.axes})
    bottoms = sorted({round(ax.get_position().y0, 3) for ax in fig.axes})
    assert len(lefts) == 5 and len(bottoms) == 4  # a 4 x 5 grid
    first = fig.axes[0]
    assert first.get_position().x0 == min(lefts) and round(first.get_position().y0, 3) == max(bottoms)  # top left
    title = first.texts[0].get_text()
    r = rows[0]
    assert title == f"true: {r['true']}\npred: {r['predicted']} ({r['p_pred']:.2f})"
    assert first.texts[0].get_color() == ("red" if r["true"] != r["predicted"] else "black")
    assert all(len(ax.images) == 1 for ax in fig.axes)
    boxes = [ax.get_position() for ax in fig.axes]  # panels do not overlap
    assert all(a.x1 <= b.x0 + 1e-9 or b.x1 <= a.x0 + 1e-9 or a.y1 <= b.y0 + 1e-9 or b.y1 <= a.y0 + 1e-9
               for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_k_larger_than_n_lists_every_image(tmp_path):
    probs, y = _probs(7)
    out = write_error_analysis(probs, y, np.zeros((7, 5, 5, 3), np.uint8), CLASSES, tmp_path, k=20)
    assert len(out["rows"]) == 7 and len(_read(out["csv"])) == 7
    assert sorted(r["index"] for r in out["rows"]) == list(range(7))
    fig = error_figure(np.zeros((7, 5, 5, 3), np.uint8), out["rows"])
    assert len(fig.axes) == 7 and len({round(ax.get_position().y0, 3) for ax in fig.axes}) == 2  # rows of 5 and 2
    assert Image.open(out["png"]).size == (1000, 460)


@pytest.mark.parametrize("shape", [(20, 9, 9), (20, 9, 9, 1)])
def test_grayscale_images(tmp_path, shape):
    probs, y = _probs(20)
    images = np.full(shape, 128, np.uint8)
    out = write_error_analysis(probs, y, images, CLASSES, tmp_path, k=5)
    assert len(out["rows"]) == 5 and out["png"].is_file()


def test_path_inputs_fill_the_path_column(tmp_path):
    paths = []
    for i, mode in enumerate(["RGB", "L", "RGBA", "P", "RGB", "L"]):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.new(mode, (20 + i, 15)).save(p)
        paths.append(p)
    probs, y = _probs(6)
    out = write_error_analysis(probs, y, paths, CLASSES, tmp_path / "out", k=4, split="val")
    rows = _read(out["csv"])
    assert [r["path"] for r in rows] == [str(paths[r["index"]]) for r in out["rows"]]
    assert out["split"] == "val" and out["png"].is_file()


def test_bad_input_is_one_clear_error(tmp_path):
    probs, y = _probs(5)
    with pytest.raises(DataError, match="4 images for 5 labels"):
        write_error_analysis(probs, y, np.zeros((4, 5, 5, 3), np.uint8), CLASSES, tmp_path)
    with pytest.raises(DataError, match="3 probability columns but 2 class names"):
        write_error_analysis(probs, y, np.zeros((5, 5, 5, 3), np.uint8), CLASSES[:2], tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        write_error_analysis(probs[:1], np.array([0]), [tmp_path / "broken.png"], CLASSES, tmp_path)
