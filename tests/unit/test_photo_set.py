"""A small real-photo set (benchmarks/make_photo_set.py on scikit-learn's two sample photos), built on the fly.

Real photographs cropped at several scales and aspect ratios and saved as RGB/grayscale JPEG,
grayscale/RGBA/palette PNG: the set must hold mixed sizes and modes, keep train and test in
disjoint regions of each photo, and load without flags.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")


def _builder():
    from conftest import photo_set_builder

    return photo_set_builder()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    mod = _builder()
    root = tmp_path_factory.mktemp("photos")
    counts = mod.build_photo_set(root, {"flower": ["sklearn:flower"], "temple": ["sklearn:china"]},
                                 train_per_source=14, test_per_source=5, seed=3, max_side=(40, 160))
    return root, counts, mod


def _manifest(root):
    return list(csv.DictReader((root / "manifest.csv").open()))


def test_the_set_has_mixed_sizes_and_modes_and_a_region_split(photos):
    root, counts, mod = photos
    assert counts == {"train": 28, "test": 10}
    rows = _manifest(root)
    assert len(rows) == 38
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "manifest.csv")
    assert files == sorted(r["file"] for r in rows)
    modes = set()
    sizes = set()
    for r in rows:
        with Image.open(root / r["file"]) as im:
            modes.add(im.mode)
            sizes.add(im.size)
            assert im.mode == r["mode"] and im.size == (int(r["width"]), int(r["height"]))
    assert {"RGB", "L"} <= modes and len(modes & {"RGBA", "P"}) >= 1, modes
    assert len(sizes) >= 20  # nearly every crop has its own size
    aspects = [int(r["width"]) / int(r["height"]) for r in rows]
    assert min(aspects) < 0.85 and max(aspects) > 1.2  # portrait and landscape crops
    for r in rows:  # no test pixel comes from the training part of its photo
        with Image.open(mod.sklearn_photo(Path(r["source"]).stem)) as src:
            w = src.width
        left, _, right, _ = map(int, r["box"].split())
        if r["split"] == "train":
            assert right <= int(mod.TRAIN_PART[1] * w)
        else:
            assert left >= int(mod.TEST_PART[0] * w)


def test_every_size_and_mode_decodes_to_the_models_size(photos):
    from cnnlab import api

    root, _, _ = photos
    bundle = api.load_data(str(root), image_size=96)
    assert bundle.train.x.shape == (28, 96, 96, 3) and bundle.test.x.shape == (10, 96, 96, 3)
    assert bundle.train.x.dtype == np.uint8 and bundle.class_names == ["flower", "temple"]
    assert bundle.train.class_counts() == {"flower": 14, "temple": 14}
    # grayscale files become three equal channels; colour files do not
    gray = {r["file"] for r in _manifest(root) if r["mode"] == "L" and r["split"] == "train"}
    idx = [i for i, p in enumerate(bundle.train.paths) if any(p.endswith(Path(g).name) for g in gray)]
    assert idx and all(np.array_equal(bundle.train.x[i][..., 0], bundle.train.x[i][..., 2]) for i in idx)


def test_mixed_sizes_load_without_flags(photos):
    from cnnlab.autofit import profile

    root, _, _ = photos
    bundle, mixed = profile.load_bundle(str(root), log=lambda s: None)
    assert mixed is True
    assert bundle.train.x.shape[0] == 28 and bundle.train.x.shape[1] == bundle.train.x.shape[2]
    assert bundle.test.x.shape[1:] == bundle.train.x.shape[1:]
