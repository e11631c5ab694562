"""Joined splits are views, not copies (issue 23): every image of a source (all_images), a tuning
final fit's training + validation and a few-shot fit's images read the memory-mapped splits a batch
at a time and hold the pixels the old concatenation held."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.data import rows
from cnnlab.data.dataset import DatasetBundle, ImageArrays, join_splits
from cnnlab.data.sources import load_source
from cnnlab.evaluation.predict import as_nchw


@pytest.fixture
def two_splits(make_tree, tmp_path):
    """A folder with train/ and val/ (no test/): decoded to disk, one memory map per split."""
    root = tmp_path / "src"
    make_tree(root / "train", per_class=5, seed=1)
    make_tree(root / "val", per_class=3, seed=2)
    b = load_source(root)
    assert b.test is None and isinstance(b.train.x, np.memmap) and isinstance(b.val.x, np.memmap)
    return b


def _old_concatenation(b: DatasetBundle) -> tuple[np.ndarray, np.ndarray, list[str]]:
    parts = list(b.splits().values())
    return (np.concatenate([np.asarray(p.x) for p in parts]), np.concatenate([p.y for p in parts]),
            [q for p in parts for q in p.paths])


def test_all_images_is_a_view_of_the_memory_mapped_splits(two_splits):
    b = two_splits
    every = b.all_images()
    x, y, paths = _old_concatenation(b)
    assert isinstance(every.x, rows.JoinedRows)
    assert every.x.parts[0] is b.train.x and every.x.parts[1] is b.val.x  # the maps themselves, no copy
    assert np.shares_memory(every.x[:3], b.train.x) and np.shares_memory(every.x[len(b.train):], b.val.x)
    assert every.x.shape == x.shape and every.x.dtype == np.uint8 and len(every) == 24 and len(b.train) == 15
    assert np.array_equal(np.asarray(every.x), x) and np.array_equal(every.y, y) and every.paths == paths
    idx = np.array([19, 0, 14, 15, 3, -1])  # rows on both sides of the join, negative too
    assert np.array_equal(every.x[idx], x[idx])
    assert np.array_equal(every.x[15], x[15]) and np.array_equal(every.x[-24], x[0])
    across = every.x[12:18]  # a slice across the join stays a view
    assert isinstance(across, rows.JoinedRows) and np.array_equal(np.asarray(across), x[12:18])
    assert np.array_equal(np.asarray(every.x[::3]), x[::3])
    sub = every.subset(np.array([17, 2, 11]))  # a subset of the join is an index view over it
    assert isinstance(sub.x, rows.RowView) and np.array_equal(np.asarray(sub.x), x[[17, 2, 11]])
    batch = as_nchw(every.x)[torch.tensor([16, 1])]  # what the trainers and inference read
    assert torch.equal(batch, torch.from_numpy(x[[16, 1]]).permute(0, 3, 1, 2))
    assert [len(c) for c in rows.chunks(every.x, 7)] == [7, 7, 7, 3]


def test_one_split_is_returned_as_it_is(make_tree, tmp_path):
    b = load_source(make_tree(tmp_path / "t", per_class=4))
    assert b.all_images() is b.train


def test_joining_refuses_different_image_sizes():
    a = ImageArrays(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2), ["a", "b"])
    c = ImageArrays(np.zeros((2, 5, 5, 3), np.uint8), np.zeros(2), ["a", "b"])
    with pytest.raises(Exception, match="different image sizes"):
        join_splits([a, c])


def test_the_tuning_final_fit_joins_training_and_validation_without_copying(two_splits):
    from cnnlab.tuning.final import _merge_val

    b = two_splits
    merged = _merge_val(b)
    x, y, paths = _old_concatenation(b)
    assert merged.val is None and merged.test is None
    assert isinstance(merged.train.x, rows.JoinedRows)
    assert merged.train.x.parts[0] is b.train.x and merged.train.x.parts[1] is b.val.x
    assert np.array_equal(np.asarray(merged.train.x), x) and np.array_equal(merged.train.y, y)
    assert merged.train.paths == paths


def test_a_join_of_index_views_reads_the_right_rows(two_splits):
    b = two_splits
    tr, va = b.train.subset(np.array([9, 0, 4])), b.val.subset(np.array([5, 1]))
    j = join_splits([tr, va])
    want = np.concatenate([np.asarray(b.train.x)[[9, 0, 4]], np.asarray(b.val.x)[[5, 1]]])
    assert np.array_equal(np.asarray(j.x), want)
    assert np.array_equal(j.x[np.array([4, 0, 3])], want[[4, 0, 3]])
    rows.release_pages(j.x)  # through every part; the pixels read the same afterwards
    assert np.array_equal(np.asarray(j.x), want)


@pytest.mark.usefixtures("one_thread")
def test_training_on_the_joined_view_gives_the_weights_of_the_concatenation(two_splits, tmp_path):
    pytest.importorskip("timm")
    from cnnlab import api

    cfg = {"name": "j", "seed": 0, "data": {"validation_split": 0.0}, "model": {"arch": "test_resnet"},
           "train": {"epochs": 1, "batch_size": 8, "precision": "fp32", "optimizer": {"name": "adam", "lr": 3e-3}}}
    b = two_splits
    joined = DatasetBundle("j", b.all_images())
    x, y, paths = _old_concatenation(b)
    copied = DatasetBundle("j", ImageArrays(x, y, list(b.class_names), paths))
    runs = [api.train(cfg, data=d, run_dir=tmp_path / name, progress=False, log=lambda s: None,
                      evaluate_test=False) for name, d in (("joined", joined), ("copied", copied))]
    a, c = runs[0].fit.model.state_dict(), runs[1].fit.model.state_dict()
    for k in a:
        assert torch.equal(a[k], c[k]), k
