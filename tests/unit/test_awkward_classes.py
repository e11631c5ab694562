"""Class names and counts that break things (issue 20, item 5): a class of one image, 200 classes,
numeric labels, and classes that differ only in letter case: a clear message or a working fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnlab import api
from cnnlab.cli.main import main
from cnnlab.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
        "kwargs": {"widths": [8, 8, 8]}}


def _cfg(**train):
    return {"name": "t", "seed": 0, "data": {"validation_split": 0.25}, "model": TINY,
            "train": {"epochs": 1, "batch_size": 16, "precision": "fp32", "optimizer": {"name": "adam", "lr": 1e-3},
                      **train}}


def test_a_class_of_one_image_trains_and_is_reported(make_tree, tmp_path):
    data = make_tree(tmp_path / "d", classes=("blue", "green", "red"), per_class=8, size=(16, 16))
    for p in sorted((data / "red").glob("*.png"))[1:]:
        p.unlink()
    summary = api.inspect_data(str(data))
    assert summary["imbalance"]["smallest"] == "red" and summary["imbalance"]["ratio"] == 8.0
    lines: list[str] = []
    run = api.train(_cfg(class_balance="auto"), data=str(data), run_dir=tmp_path / "r", progress=False,
                    log=lines.append, evaluate_test=False)
    assert run.fit.epochs_run == 1
    # the one red image stays in training (a validation split cannot take a class's only image)
    assert any("logit-adjusted" in s and "largest / smallest class" in s for s in lines)


def test_two_hundred_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "many"
    for c in range(200):
        (root / f"class_{c:03d}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"class_{c:03d}" / f"{i}.png")
    run = api.train(_cfg(epochs=1, batch_size=64), data=str(root), run_dir=tmp_path / "r", progress=False,
                    log=lambda s: None)
    assert len(run.fit.model.spec.class_names) == 200
    m = run.metrics["val"]
    assert m["count"] == 200 and 0 <= m["balanced_accuracy"] <= 1 and m["worst_class"]["class"].startswith("class_")
    png = tmp_path / "r" / "figures" / "confusion_matrix.png"
    with Image.open(png) as im:
        assert max(im.size) < 3000  # a bounded figure, not 112 inches a side
    assert main(["data", "inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "200 classes" in out and "imbalance ratio 1.0" in out
    from cnnlab import figures

    x = np.zeros((400, 16, 16, 3), np.uint8)
    png = figures.example_images(x, np.repeat(np.arange(200), 2), [f"c{i}" for i in range(200)],
                                 tmp_path / "examples.png", dpi=50)  # data inspect --out's grid
    with Image.open(png) as im:
        assert max(im.size) < 2500  # the first 30 classes, not a 240-inch-wide grid


def test_numeric_labels_in_a_csv(make_tree, tmp_path):
    data = make_tree(tmp_path / "d", classes=("blue", "green", "red"), per_class=6, size=(16, 16))
    labels = {"blue": 1, "green": 2, "red": 10}
    rows = [{"image": str(p), "label": labels[p.parent.name]} for p in sorted(data.glob("*/*.png"))]
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    run = api.train(_cfg(), data=str(csv), run_dir=tmp_path / "r", progress=False, log=lambda s: None,
                    evaluate_test=False, class_weight={"10": 3.0})
    assert run.fit.model.spec.class_names == ["1", "2", "10"]  # numeric order, names as text
    # an int key is a Keras class index, unless that is ambiguous with a class's name
    with pytest.raises(ConfigError, match=r"class_weight: 2 is ambiguous: class index 2 is '10'"):
        api.train(_cfg(), data=str(csv), run_dir=tmp_path / "r2", progress=False, log=lambda s: None,
                  evaluate_test=False, class_weight={2: 3.0})
    # 10 is no index (3 classes): it can only be the class named "10"
    api.train(_cfg(), data=str(csv), run_dir=tmp_path / "r3", progress=False, log=lambda s: None,
              evaluate_test=False, class_weight={10: 3.0})


def test_classes_differing_only_in_case_are_refused(make_tree, tmp_path, capsys):
    data = make_tree(tmp_path / "d", classes=("Cat", "cat", "dog"), per_class=3, size=(16, 16))
    with pytest.raises(DataError, match="classes 'Cat' and 'cat' differ only in letter case"):
        api.inspect_data(str(data))
    assert main(["data", "inspect", str(data)]) == 2
    err = capsys.readouterr().err
    assert "'Cat' and 'cat'" in err and "Traceback" not in err
    rows = [{"image": str(p), "label": p.parent.name} for p in sorted(data.glob("*/*.png"))]
    with pytest.raises(DataError, match="differ only in letter case"):
        api.load_data(pd.DataFrame(rows))
