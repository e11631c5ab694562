"""Decoding to disk (data/decode_store.py, issue 23): splits are memory maps of the cache entry,
worker processes write the same pixels, sizes come from headers, large JPEGs decode reduced,
--skip-bad still counts, and a full disk is one line with no entry left behind."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import decode_store
from cnnlab.data.sources import load_source
from cnnlab.errors import DataError


def test_a_loaded_split_is_a_memory_map_of_the_cache_entry(tiny_tree, isolated_home):
    b = load_source(tiny_tree)
    x = b.train.x
    assert isinstance(x, np.memmap)
    entry = next(p for p in (isolated_home / "decoded").iterdir() if not p.name.startswith("."))
    assert Path(x.filename).resolve() == (entry / "train_x.npy").resolve()
    again = load_source(tiny_tree)
    assert again.info["cache"] == "hit" and isinstance(again.train.x, np.memmap)
    assert np.array_equal(np.asarray(again.train.x), np.asarray(x))


def test_worker_processes_write_the_same_pixels(make_tree, tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "t", per_class=40)
    monkeypatch.setenv("CNNLAB_NO_CACHE", "1")
    monkeypatch.setenv("CNNLAB_DECODE_WORKERS", "0")
    one = load_source(tree)
    monkeypatch.setenv("CNNLAB_DECODE_WORKERS", "2")
    monkeypatch.setattr(decode_store, "CHUNK", 16)  # several chunks per worker
    two = load_source(tree)
    assert np.array_equal(np.asarray(one.train.x), np.asarray(two.train.x))
    assert np.array_equal(one.train.y, two.train.y) and one.train.paths == two.train.paths


def test_skip_bad_counts_and_keeps_the_good_rows_in_order(make_tree, tmp_path):
    tree = make_tree(tmp_path / "t", per_class=12)
    clean = load_source(tree, skip_bad=True)
    (tree / "red" / "zz_bad.png").write_bytes(b"not an image")
    (tree / "blue" / "aa_bad.png").write_bytes(b"")
    b = load_source(tree, skip_bad=True)
    assert b.info["skipped"] == 2 and len(b.train) == len(clean.train)
    # the same images, each with its own label and pixels (the order of the rows may differ)
    by_path = {p: (y, bytes(np.asarray(x))) for p, y, x in zip(clean.train.paths, clean.train.y, clean.train.x)}
    for p, y, x in zip(b.train.paths, b.train.y, b.train.x):
        assert by_path[p] == (y, bytes(np.asarray(x)))


def test_mixed_sizes_are_refused_naming_the_odd_file(make_tree, tmp_path):
    tree = make_tree(tmp_path / "t", per_class=5)
    Image.new("RGB", (20, 30)).save(tree / "red" / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png: images have different sizes.*--image-size"):
        load_source(tree)


def test_header_size_applies_exif_rotation():
    img = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: decoded as 20 wide, 40 high
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert decode_store.header_size(buf.getvalue()) == (40, 20)
    assert decode_store.header_size(b"garbage") is None


def test_a_large_jpeg_is_decoded_at_reduced_scale(monkeypatch):
    from cnnlab.data.decode import decode_image

    buf = io.BytesIO()
    Image.new("RGB", (2400, 1600), (200, 10, 10)).save(buf, "JPEG")
    loaded = []
    real_load = Image.Image.load

    def spy(self):  # the size libjpeg decodes at
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    arr = decode_image(buf.getvalue(), 64)
    assert arr.shape == (64, 64, 3)
    assert loaded[0] == (300, 200)  # 1/8 scale: the shorter side 200 >= 2 * 64


def test_disk_full_while_decoding_is_one_line_and_leaves_no_entry(tiny_tree, isolated_home, monkeypatch):
    real = os.pwrite
    calls = {"n": 0}

    def full(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(decode_store.os, "pwrite", full)
    with pytest.raises(DataError) as exc:
        load_source(tiny_tree)
    msg = str(exc.value)
    assert "\n" not in msg and str(isolated_home / "decoded") in msg and "GB needed" in msg
    assert [p.name for p in (isolated_home / "decoded").iterdir()] == []  # no entry, no temporary folder
    monkeypatch.setattr(decode_store.os, "pwrite", real)
    assert load_source(tiny_tree).info["cache"] == "miss"


def test_two_processes_loading_a_new_source_decode_it_once(make_tree, tmp_path):
    import subprocess
    import sys

    tree = make_tree(tmp_path / "t", per_class=60)
    src = Path(__file__).resolve().parents[2] / "src"
    env = dict(os.environ, CNNLAB_HOME=str(tmp_path / "home"), PYTHONPATH=str(src))
    env.pop("CNNLAB_NO_CACHE", None)
    code = "import sys; from cnnlab.data.sources import load_source; print(load_source(sys.argv[1]).info['cache'])"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tree)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(o.strip() for o, _ in outs) == ["hit", "miss"]  # the second waited, then read the entry
