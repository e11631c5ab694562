"""`cnnlab predict FOLDER` streams (issue 23): the first prediction comes before the last image is
decoded, and the printed output is what the all-at-once path printed. ImagePredictor.predict /
predict_proba on a DataFrame or a list of paths decode a chunk at a time too, with exactly the
probabilities of decoding everything first; an array goes through the model in micro-batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

from cnnlab import api  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.data import decode as decode_mod  # noqa: E402
from conftest import train_tiny_run  # noqa: E402

@pytest.fixture(scope="module")
def run_and_folder(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("stream"), per_class=6)


def test_the_first_prediction_comes_before_the_last_image_is_decoded(run_and_folder, monkeypatch):
    run, tree = run_and_folder
    decoded = []
    real = decode_mod.decode_image
    monkeypatch.setattr("cnnlab.data.inputs.decode_image", lambda p, s=None, **k: decoded.append(p) or real(p, s, **k))
    stream = api.iter_predict(run, [tree], chunk=4)
    first = next(stream)
    assert len(decoded) == 4  # one chunk decoded, 14 images still on disk
    rest = list(stream)
    assert len(decoded) == 18 and 1 + len(rest) == 18
    whole = api.predict(run, [tree])  # one batch: the same labels, probabilities to float rounding
    for a, b in zip([first, *rest], whole):
        assert a["image"] == b["image"] and [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-5)


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_the_streamed_output_is_the_one_printed_before(fmt, run_and_folder, capsys):
    from cnnlab.cli.common import print_csv, print_json, print_table
    from cnnlab.cli.predict_cmd import _row

    run, tree = run_and_folder
    assert main(["predict", str(run), str(tree), "--format", fmt]) == 0
    streamed = capsys.readouterr().out
    results = api.predict(run, [tree])
    capsys.readouterr()
    if fmt == "json":
        print_json(results)
    else:
        (print_csv if fmt == "csv" else print_table)([_row(r) for r in results])
    assert streamed == capsys.readouterr().out
    if fmt == "json":
        assert len(json.loads(streamed)) == 18


def _frame(tree):
    import pandas as pd

    files = sorted(str(p) for p in tree.rglob("*.png"))
    return pd.DataFrame({"image": files}, index=[f"row{i}" for i in range(len(files))])


def test_a_dataframe_of_paths_is_decoded_a_chunk_at_a_time(run_and_folder, monkeypatch):
    from cnnlab import ImagePredictor
    from cnnlab.data.inputs import decode_paths

    run, tree = run_and_folder
    df = _frame(tree)
    pred = ImagePredictor.load(run, batch_size=4)  # micro-batches of 4 images
    decoded = []
    real = decode_mod.decode_image
    monkeypatch.setattr("cnnlab.data.inputs.decode_image", lambda p, s=None, **k: decoded.append(p) or real(p, s, **k))
    stream = pred.iter_proba(df)  # the iterator API takes a DataFrame too: one micro-batch per chunk
    probs, names = next(stream)
    assert len(decoded) == 4 and names == list(df["image"][:4])  # 14 of 18 images not decoded yet
    rest = list(stream)
    assert len(decoded) == 18 and sum(len(n) for _, n in rest) == 14
    # predict_proba streams as well: each chunk is decoded just before it is predicted
    monkeypatch.setattr("cnnlab.predictor.STREAM_CHUNK", 8)
    seen = []
    real_logits = pred.logits
    monkeypatch.setattr(pred, "logits", lambda x, **k: seen.append((len(x), len(decoded))) or real_logits(x, **k))
    decoded.clear()
    streamed = pred.predict_proba(df)
    assert seen == [(8, 8), (8, 16), (2, 18)]
    # exactly the probabilities of decoding every image first (chunks are whole micro-batches)
    whole = pred.inference.proba(decode_paths([Path(p) for p in df["image"]], pred.decode_size))
    assert list(streamed.index) == list(df.index) and list(streamed.columns) == pred.class_names
    assert np.array_equal(streamed.to_numpy(), whole)
    assert np.array_equal(np.concatenate([probs] + [p for p, _ in rest]), whole)
    labels = pred.predict(df)
    assert list(labels.index) == list(df.index)
    assert list(labels) == [pred.class_names[i] for i in whole.argmax(1)]
    listed = pred.predict_proba(list(df["image"]))  # a list of paths streams the same way
    assert np.array_equal(listed.to_numpy(), whole) and list(listed.index) == list(df["image"])


def test_an_array_goes_through_the_model_in_float_micro_batches(run_and_folder):
    from cnnlab import ImagePredictor
    from cnnlab.evaluation.predict import as_nchw

    run, tree = run_and_folder
    pred = ImagePredictor.load(run, batch_size=4)
    x = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    assert np.shares_memory(as_nchw(x).numpy(), x)  # the whole array is only wrapped, never converted
    batches = []
    hook = pred.model.register_forward_pre_hook(lambda m, a: batches.append((a[0].shape[0], a[0].dtype)))
    try:
        out = pred.predict_proba(x)
    finally:
        hook.remove()
    assert [n for n, _ in batches] == [4, 4, 2] and all(d == torch.float32 for _, d in batches)
    assert out.shape == (10, len(pred.class_names))
