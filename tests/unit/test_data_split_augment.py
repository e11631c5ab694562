"""split.py (stratified and Keras-style validation splits, class-balanced subsets) and
augment.py (batched random crop, flip and cutout on tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.augment import augment_batch, cutout, random_crop, random_flip
from cnnlab.data.dataset import ImageArrays
from cnnlab.data.split import limit_samples, split_train_val
from cnnlab.errors import DataError


def make_arrays(counts: list[int], shuffle_seed: int | None = 0) -> ImageArrays:
    """Images whose first pixel holds their index (so subsets can be traced back)."""
    y = np.repeat(np.arange(len(counts)), counts)
    if shuffle_seed is not None:
        y = np.random.default_rng(shuffle_seed).permutation(y)
    n = len(y)
    x = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 0, 1] = np.arange(n) // 256
    return ImageArrays(x, y, [f"c{i}" for i in range(len(counts))], [f"img{i}.png" for i in range(n)])


def ids(a: ImageArrays) -> np.ndarray:
    return a.x[:, 0, 0, 0].astype(int) + 256 * a.x[:, 0, 0, 1].astype(int)


# --------------------------------------------------------------------------- validation splits


def test_stratified_split_keeps_class_shares() -> None:
    data = make_arrays([50, 30, 20])
    train, val = split_train_val(data, 0.2, "stratified", seed=3)
    assert val.class_counts() == {"c0": 10, "c1": 6, "c2": 4}
    assert train.class_counts() == {"c0": 40, "c1": 24, "c2": 16}


def test_stratified_split_is_disjoint_covering_and_consistent() -> None:
    data = make_arrays([50, 30, 20])
    train, val = split_train_val(data, 0.25, seed=1)
    t, v = ids(train), ids(val)
    assert len(set(t) & set(v)) == 0
    assert sorted(np.concatenate([t, v]).tolist()) == list(range(100))
    # images keep their labels and paths
    np.testing.assert_array_equal(train.y, data.y[t])
    np.testing.assert_array_equal(val.y, data.y[v])
    assert val.paths == [f"img{i}.png" for i in v]


def test_stratified_split_is_deterministic_per_seed() -> None:
    data = make_arrays([40, 40])
    a = ids(split_train_val(data, 0.3, seed=7)[1])
    b = ids(split_train_val(data, 0.3, seed=7)[1])
    c = ids(split_train_val(data, 0.3, seed=8)[1])
    np.testing.assert_array_equal(a, b)
    assert set(a.tolist()) != set(c.tolist())


def test_stratified_split_keeps_small_classes_on_both_sides() -> None:
    data = make_arrays([40, 2, 1])
    train, val = split_train_val(data, 0.1, seed=0)
    assert val.class_counts() == {"c0": 4, "c1": 1, "c2": 0}
    assert train.class_counts() == {"c0": 36, "c1": 1, "c2": 1}


def test_keras_split_takes_exactly_the_last_fraction() -> None:
    data = make_arrays([30, 20], shuffle_seed=4)
    train, val = split_train_val(data, 0.2, "keras")
    assert ids(val).tolist() == list(range(40, 50))
    assert ids(train).tolist() == list(range(40))
    np.testing.assert_array_equal(val.y, data.y[40:])
    # Keras: split_at = int(n * (1 - fraction)); 13 * 0.7 = 9.1 -> the last 4 images
    train, val = split_train_val(make_arrays([7, 6], shuffle_seed=None), 0.3, "keras")
    assert ids(val).tolist() == [9, 10, 11, 12] and len(train) == 9


def test_split_fraction_zero_and_bad_arguments() -> None:
    data = make_arrays([5, 5])
    train, val = split_train_val(data, 0.0)
    assert val is None and train is data
    with pytest.raises(DataError, match=r"validation_split must be in \[0, 1\), got 1\.0"):
        split_train_val(data, 1.0)
    with pytest.raises(DataError, match=r"split_method must be 'stratified' or 'keras', got 'random'"):
        split_train_val(data, 0.2, "random")


# --------------------------------------------------------------------------- limit_samples


def test_limit_samples_is_class_balanced() -> None:
    sub = limit_samples(make_arrays([60, 25, 15]), 30, seed=0)
    assert len(sub) == 30
    assert sub.class_counts() == {"c0": 10, "c1": 10, "c2": 10}
    data = make_arrays([60, 25, 5])
    sub = limit_samples(data, 40, seed=0)  # c2 runs out at 5: the others share the rest
    counts = sub.class_counts()
    assert counts["c2"] == 5 and counts["c0"] + counts["c1"] == 35 and abs(counts["c0"] - counts["c1"]) <= 1
    assert len(set(ids(sub).tolist())) == 40
    np.testing.assert_array_equal(sub.y, data.y[ids(sub)])


def test_limit_samples_is_seeded_and_bounded() -> None:
    data = make_arrays([30, 30])
    np.testing.assert_array_equal(ids(limit_samples(data, 10, 1)), ids(limit_samples(data, 10, 1)))
    assert set(ids(limit_samples(data, 10, 1)).tolist()) != set(ids(limit_samples(data, 10, 2)).tolist())
    assert limit_samples(data, None) is data and limit_samples(data, 60) is data
    with pytest.raises(DataError, match=r"max_train_samples must be positive, got 0"):
        limit_samples(data, 0)


# --------------------------------------------------------------------------- augmentation


def batch(n: int = 16, c: int = 3, h: int = 9, w: int = 11, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


def test_random_crop_is_a_window_of_the_reflect_padded_image() -> None:
    x = batch(n=24)
    pad = 3
    out = random_crop(x, pad, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x.float(), (pad,) * 4, mode="reflect").to(torch.uint8)
    offsets = []
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(padded[i, :, dy : dy + 9, dx : dx + 11], out[i])
        ]
        # exactly one window matches (random pixels make it unambiguous)
        assert len(found) == 1, f"image {i} is not a window of its padded input"
        offsets.append(found[0])
    # offsets vary across the batch, vertically and horizontally
    assert len({dy for dy, _ in offsets}) >= 3 and len({dx for _, dx in offsets}) >= 3


def test_random_crop_float_input_and_no_padding() -> None:
    x = batch().float() / 255
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == x.shape
    padded = F.pad(x, (2,) * 4, mode="reflect")
    assert any(
        torch.equal(padded[0, :, dy : dy + 9, dx : dx + 11], out[0]) for dy in range(5) for dx in range(5)
    )
    assert random_crop(x, 0, torch.Generator()) is x


def test_random_flip_flips_about_half_and_keeps_content() -> None:
    x = batch(n=200, h=4, w=6)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = 0
    for i in range(len(x)):
        same, mirrored = torch.equal(out[i], x[i]), torch.equal(out[i], x[i].flip(2))
        assert same or mirrored
        flipped += int(mirrored and not same)
    assert 70 <= flipped <= 130


def test_cutout_zeroes_a_square_of_the_right_size() -> None:
    size = 4
    x = torch.full((300, 2, 12, 12), 7, dtype=torch.uint8)
    out = cutout(x, size, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    full = 0
    for i in range(len(x)):
        zero = out[i, 0] == 0
        assert torch.equal(zero, out[i, 1] == 0)  # the same square in every channel
        assert ((out[i] == 7) | (out[i] == 0)).all()  # nothing else changes
        rows = torch.nonzero(zero.any(1)).flatten()
        cols = torch.nonzero(zero.any(0)).flatten()
        assert 1 <= len(rows) <= size and 1 <= len(cols) <= size
        # the zeroed pixels form one solid rectangle (a square clipped at the borders)
        assert int(zero.sum()) == len(rows) * len(cols)
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
        if len(rows) == size and len(cols) == size:
            full += 1
            assert int(zero.sum()) == size * size
        else:  # clipped: it touches a border
            assert rows.min() == 0 or rows.max() == 11 or cols.min() == 0 or cols.max() == 11
    assert full > 150  # centres 2..9 of 0..11 in both axes: (8/12)^2 of the time fully inside


def test_augment_batch_keeps_dtype_shape_and_is_seeded() -> None:
    x = batch(n=32)
    kw = dict(crop_padding=2, flip=True, cutout_size=3)
    a = augment_batch(x, torch.Generator().manual_seed(5), **kw)
    b = augment_batch(x, torch.Generator().manual_seed(5), **kw)
    c = augment_batch(x, torch.Generator().manual_seed(6), **kw)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(5)), x)  # nothing on: unchanged
