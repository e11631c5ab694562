"""The duplicate search reads pixels decoded to disk a block at a time (issue 23): data/rows.py
row_blocks gives every chosen row once, in file order, a dense run of rows in one ``pread``; the
hashes and the pairs are those of the images held in memory."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from cnnlab.data import duplicates as dup
from cnnlab.data import rows
from cnnlab.data.dataset import ImageArrays
from cnnlab.data.rows import RowView, join_rows, row_blocks, subset


def _memmap(path, x: np.ndarray) -> np.ndarray:
    np.save(path, x)
    return np.load(path, mmap_mode="r")


def _count_preads(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.preadv
    monkeypatch.setattr(rows.os, "preadv", lambda fd, bufs, off: calls.append(sum(len(b) for b in bufs))
                        or real(fd, bufs, off))
    return calls


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1000, 4, 4, 3), dtype=np.uint8)
    return x, _memmap(tmp_path / "x.npy", x)


def test_row_blocks_give_every_row_once_in_bounded_blocks(cache) -> None:
    x, mm = cache
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(x))
    cases = {"array": (x, None), "memmap": (mm, None), "dense view": (subset(mm, perm[:900]), None),
             "sparse view": (subset(mm, perm[:60]), None), "joined": (join_rows([mm[:300], mm[300:]]), None),
             "memmap, index": (mm, perm[:500]), "view, index": (subset(mm, perm[:900]), rng.permutation(900)[:400])}
    for name, (arr, index) in cases.items():
        want = np.asarray(arr)[index if index is not None else slice(None)]
        got = np.zeros_like(want)
        seen = []
        for pos, block in row_blocks(arr, 64, index):
            assert len(block) <= 64 and block.flags.c_contiguous, name
            got[pos] = block
            seen += pos.tolist()
        assert sorted(seen) == list(range(len(want))), name  # each position exactly once
        assert np.array_equal(got, want), name


def test_a_split_of_a_decoded_file_is_read_in_a_few_large_reads(cache, monkeypatch) -> None:
    x, mm = cache
    view = subset(mm, np.sort(np.random.default_rng(2).permutation(len(x))[:900]))  # a 90% training split
    assert isinstance(view, RowView)
    calls = _count_preads(monkeypatch)
    digests = dup.sha1_digests(view)
    assert digests == [hashlib.sha1(np.ascontiguousarray(img).tobytes()).digest() for img in x[view.index]]
    row = 4 * 4 * 3
    # one pread per block of 1,024 rows (here the whole split, a run of at most 1,000 rows), not one per row
    assert len(calls) == 1 and calls[0] <= len(x) * row
    calls.clear()
    monkeypatch.setattr(dup, "BLOCK_BYTES", 100 * row)  # blocks of 100 rows
    assert dup.sha1_digests(view) == digests
    assert len(calls) == 9 and max(calls) <= rows.DENSE_RUN * 100 * row


def _planted(tmp_path):
    """300 images at 32 px in a decoded-file layout: train and val index views of one file, a test
    file; 5 test images are exact copies of training images, 5 lightly noised copies."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (270, 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    test[:5] = base[[10, 20, 30, 40, 50]]
    noise = rng.integers(-2, 3, (5, 32, 32, 3))
    test[5:10] = np.clip(base[[60, 70, 80, 90, 100]].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    order = rng.permutation(270)
    tr, va = np.sort(order[:240]), np.sort(order[240:])
    names = ["a", "b"]
    mm, tm = _memmap(tmp_path / "train.npy", base), _memmap(tmp_path / "test.npy", test)
    paths = [f"img{i}" for i in range(270)]
    on_disk = {"train": ImageArrays(subset(mm, tr), np.zeros(240, np.int64), names, [paths[i] for i in tr]),
               "val": ImageArrays(subset(mm, va), np.zeros(30, np.int64), names, [paths[i] for i in va]),
               "test": ImageArrays(tm, np.zeros(30, np.int64), names, [f"test{i}" for i in range(30)])}
    in_memory = {k: ImageArrays(np.asarray(v.x).copy(), v.y, names, v.paths) for k, v in on_disk.items()}
    return on_disk, in_memory


def test_pairs_from_disk_are_those_of_the_images_in_memory(tmp_path, monkeypatch) -> None:
    on_disk, in_memory = _planted(tmp_path)
    ref = dup.find_duplicates(in_memory)
    assert {frozenset((p["a"], p["b"])) for p in ref.exact} == {
        frozenset((f"img{i}", f"test{k}")) for k, i in enumerate((10, 20, 30, 40, 50))}
    assert {frozenset((f"img{i}", f"test{5 + k}")) for k, i in enumerate((60, 70, 80, 90, 100))} <= {
        frozenset((p["a"], p["b"])) for p in ref.near}
    monkeypatch.setattr(dup, "BLOCK_BYTES", 7 * 32 * 32 * 3)  # blocks of 7 images: many blocks, a short last one
    calls = _count_preads(monkeypatch)
    got = dup.find_duplicates(on_disk)
    assert got.to_dict() == ref.to_dict() and got.train_leaks == ref.train_leaks
    assert got.exact == ref.exact and got.near == ref.near  # the same pairs, in the same order
    assert 0 < len(calls) < 300 / 2  # block reads, not one per image


def test_phashes_of_rows_on_disk_are_imagehash_bit_for_bit(tmp_path, monkeypatch) -> None:
    imagehash = pytest.importorskip("imagehash")
    from PIL import Image

    on_disk, _ = _planted(tmp_path)
    view = on_disk["train"].x
    index = np.random.default_rng(4).permutation(len(view))[:40]  # any order: the results keep it
    monkeypatch.setattr(dup, "BLOCK_BYTES", 6 * 32 * 32 * 3)
    ours = dup.phashes(view, index=index)
    ref = [int(str(imagehash.phash(Image.fromarray(np.asarray(view[int(i)])))), 16) for i in index]
    assert [int(v) for v in ours] == ref
