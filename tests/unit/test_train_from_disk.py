"""Training from pixels decoded to disk (issue 23): both recipes read memory-mapped batches and
end with exactly the weights of the in-memory path; splits are index views, not copies; mapped
pages are released while reading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

from cnnlab import api  # noqa: E402
from cnnlab.data import rows  # noqa: E402
from cnnlab.data.sources import load_source  # noqa: E402
from cnnlab.data.split import split_train_val  # noqa: E402
from cnnlab.evaluation import predict as predict_mod  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

STANDARD = {"name": "t", "seed": 0, "data": {"validation_split": 0.25},
            "model": {"arch": "test_resnet"},
            "train": {"epochs": 2, "batch_size": 8, "precision": "fp32", "optimizer": {"name": "adam", "lr": 3e-3}}}
FAST = {"name": "f", "seed": 0, "data": {"validation_split": 0.25},
        "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
                  "kwargs": {"widths": [8, 16, 16]}},
        "train": {"recipe": "fast", "epochs": 2, "batch_size": 8, "precision": "fp32",
                  "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
                  "augment": {"crop_padding": 2, "flip": True}, "recipe_options": {"workers": 1}}}


def _in_memory(monkeypatch):
    """Today's path: subsets copy and as_nchw wraps the whole array as one tensor."""
    monkeypatch.setattr(rows, "is_disk_backed", lambda x: False)
    monkeypatch.setattr(predict_mod, "is_disk_backed", lambda x: False)


@pytest.mark.parametrize("cfg", [STANDARD, FAST], ids=["standard", "fast"])
def test_training_from_disk_gives_the_in_memory_weights(cfg, tiny_tree, tmp_path, monkeypatch):
    reads = []
    real = rows.take_rows
    monkeypatch.setattr(predict_mod, "take_rows", lambda x, idx: reads.append(len(idx)) or real(x, idx))
    disk = api.train(cfg, data=str(tiny_tree), run_dir=tmp_path / "disk", progress=False, log=lambda s: None,
                     evaluate_test=False)
    # batches and validation slices; the fast recipe also reads its whitening sample (bounded) once
    assert len(reads) > 10 and sum(r > 24 for r in reads) <= (cfg is FAST)
    with monkeypatch.context() as m:
        _in_memory(m)
        mem = api.train(cfg, data=str(tiny_tree), run_dir=tmp_path / "mem", progress=False, log=lambda s: None,
                        evaluate_test=False)
    a, b = disk.fit.model.state_dict(), mem.fit.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss"] for h in disk.fit.history] == [h["loss"] for h in mem.fit.history]


def test_a_split_of_decoded_pixels_is_an_index_view(make_tree, tmp_path):
    b = load_source(make_tree(tmp_path / "t", per_class=10))
    tr, va = split_train_val(b.train, 0.3)
    assert isinstance(tr.x, rows.RowView) and tr.x.base is b.train.x
    assert np.array_equal(np.asarray(tr.x), np.asarray(b.train.x)[tr.x.index])
    head = b.train.subset(np.arange(5))  # a run of rows is a plain slice of the map
    assert isinstance(head.x, np.memmap) and np.shares_memory(head.x, b.train.x)
    idx = np.array([4, 0, 2])
    assert np.array_equal(rows.take_rows(tr.x, idx), np.asarray(tr.x)[idx])
    batch = predict_mod.as_nchw(tr.x)[torch.tensor([3, 1])]
    assert tuple(batch.shape) == (2, 3, 16, 16)
    assert torch.equal(batch, torch.from_numpy(np.asarray(tr.x)[[3, 1]]).permute(0, 3, 1, 2))


def _rss_file_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssFile:"))


def test_batches_are_read_without_mapping_the_file(tmp_path):
    """Random batches of a 48 MB map leave (almost) nothing resident: rows are pread, not faulted in
    (a fault maps 64 kB around each row; reading the same rows through the map would keep ~48 MB)."""
    path = tmp_path / "x.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(4096, 64, 64, 3))
    big[:] = np.arange(4096, dtype=np.uint8)[:, None, None, None]
    del big
    x = np.load(path, mmap_mode="c")[16:]  # a view that does not start at the file's first row
    xs = predict_mod.as_nchw(rows.RowView(x, np.arange(len(x))[::-1]))
    before = _rss_file_kb()
    perm = torch.randperm(len(xs), generator=torch.Generator().manual_seed(0))
    for i in range(0, len(xs), 256):
        batch = xs[perm[i : i + 256]]
        want = (np.arange(16, 4096)[::-1][perm[i : i + 256].numpy()] % 256).astype(np.uint8)
        assert torch.equal(batch[:, 0, 0, 0], torch.from_numpy(want))
    assert _rss_file_kb() - before < 8 * 1024
    whole = xs[10:20].to("cpu")  # a slice, read in one go
    assert torch.equal(whole[:, 1, 5, 5], torch.from_numpy((np.arange(16, 4096)[::-1][10:20] % 256).astype(np.uint8)))
    assert rows.file_location(x) == (str(path), 128 + 16 * 64 * 64 * 3)
    rows.release_pages(x)  # pages read through the map are dropped; the array reads the same afterwards
    assert int(x[3, 0, 0, 0]) == 19


def test_rows_of_a_deleted_scratch_file_still_read(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(8 * 2 * 2 * 3, dtype=np.uint8).reshape(8, 2, 2, 3))
    x = np.load(path, mmap_mode="c")
    want = np.array(x)
    path.unlink()  # what a scratch folder does once its maps are open
    assert np.array_equal(rows.take_rows(x, np.array([5, 1, 6])), want[[5, 1, 6]])
    assert np.array_equal(rows.read_all(x[2:4]), want[2:4])
