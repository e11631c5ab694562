"""Embeddings and explanations of image files stream as predictions do (issue 23): files are
decoded a bounded chunk at a time (cnnlab.data.inputs.decoded_chunks), each chunk embedded or
explained before the next is decoded, with exactly the values of decoding every file first; a
bad file is one line naming it, as for `cnnlab predict`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("timm")
pytest.importorskip("captum")

from cnnlab.cli.main import main  # noqa: E402
from cnnlab.errors import ConfigError, DataError  # noqa: E402
from conftest import train_tiny_run  # noqa: E402

@pytest.fixture(scope="module")
def run_and_folder(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("stream_embed"), per_class=6)  # 18 images; a/000.png, b/000.png ...: stems repeat


def _files(tree: Path) -> list[Path]:
    return sorted(tree.rglob("*.png"))


def _count_decodes(monkeypatch) -> list[int]:
    """The number of files each decode call was asked for (decoded_chunks decodes through decode_paths)."""
    import cnnlab.data.inputs as inputs

    sizes: list[int] = []
    real = inputs.decode_paths
    monkeypatch.setattr(inputs, "decode_paths", lambda paths, size: sizes.append(len(paths)) or real(paths, size))
    return sizes


def test_embeddings_of_files_are_decoded_and_embedded_a_chunk_at_a_time(run_and_folder, monkeypatch):
    import pandas as pd

    from cnnlab import ImagePredictor
    from cnnlab.data.inputs import decode_paths

    run, tree = run_and_folder
    files = _files(tree)
    pred = ImagePredictor.load(run, batch_size=4)
    whole = pred.extract_embedding(decode_paths(files, pred.decode_size))  # an array: embedded as it is
    monkeypatch.setattr("cnnlab.predictor.STREAM_CHUNK", 8)  # two micro-batches of 4 per chunk
    sizes = _count_decodes(monkeypatch)
    seen = []
    real_embed = pred.inference.embed
    monkeypatch.setattr(pred.inference, "embed", lambda x, **k: seen.append((len(x), sum(sizes))) or real_embed(x, **k))
    df = pd.DataFrame({"image": [str(p) for p in files]})
    streamed = pred.extract_embedding(df)
    assert sizes == [8, 8, 2]  # never more than a chunk decoded at once
    assert seen == [(8, 8), (8, 16), (2, 18)]  # each chunk embedded before the next is decoded
    assert streamed.dtype == np.float32 and np.array_equal(streamed, whole)  # exactly, in the DataFrame's order
    sizes.clear()
    assert np.array_equal(pred.extract_embedding([tree]), whole) and sizes == [8, 8, 2]  # a folder: sorted files


def test_explanations_of_files_are_decoded_and_explained_a_chunk_at_a_time(run_and_folder, monkeypatch):
    from cnnlab import ImagePredictor
    from cnnlab.data.inputs import decode_paths

    run, tree = run_and_folder
    files = _files(tree)
    pred = ImagePredictor.load(run, batch_size=4)
    x = decode_paths(files, pred.decode_size)
    targets = [pred.class_names[i % len(pred.class_names)] for i in range(len(files))]
    whole = pred.explanation(x)
    whole_targets = pred.explanation(x, targets, method="occlusion")
    monkeypatch.setattr("cnnlab.predictor.STREAM_CHUNK", 8)  # rounded up to one explainer batch: 16 files
    sizes = _count_decodes(monkeypatch)
    streamed = pred.explanation(files)
    assert sizes == [16, 2]
    assert streamed.names == [str(p) for p in files] and np.array_equal(streamed.images, x)
    assert np.array_equal(streamed.heatmaps, whole.heatmaps) and streamed.layer == whole.layer
    assert (streamed.labels, streamed.probabilities, streamed.predicted) == (
        whole.labels, whole.probabilities, whole.predicted)
    # one target per image is split with the files: the second chunk explains targets 16 and 17
    sizes.clear()
    chunks = list(pred.iter_explanation([tree], targets, method="occlusion"))
    assert [len(c.names) for c in chunks] == [16, 2] and sizes == [16, 2]
    assert [t for c in chunks for t in c.labels] == targets
    assert np.array_equal(np.concatenate([c.heatmaps for c in chunks]), whole_targets.heatmaps)
    with pytest.raises(ConfigError, match="target has 17 entries for 18 images"):
        next(pred.iter_explanation([tree], targets[:17]))
    assert np.array_equal(pred.explain(files), whole.heatmaps)


def test_cli_explain_writes_what_one_call_wrote(run_and_folder, tmp_path, monkeypatch, capsys):
    from cnnlab import ImagePredictor
    from cnnlab.evaluation.overlay import write_overlays

    run, tree = run_and_folder
    pred = ImagePredictor.load(run)
    one_call = write_overlays(pred.explanation([tree]), tmp_path / "one", pred.decode_size)
    # the CLI's predictor has the run's micro-batch (more than 18 images): chunks of one explainer batch
    monkeypatch.setattr(ImagePredictor, "_chunk_step", lambda self, multiple=1: 16)
    sizes = _count_decodes(monkeypatch)
    assert main(["explain", str(run), str(tree), "--out", str(tmp_path / "cli"), "--json"]) == 0
    assert sizes == [16, 2]
    import json

    rows = json.loads(capsys.readouterr().out)
    # the same overlay names (repeated stems numbered by their place in the whole set), peaks and labels
    assert [{**r, "heatmap_png": Path(r["heatmap_png"]).name} for r in rows] == [
        {**r, "heatmap_png": Path(r["heatmap_png"]).name} for r in one_call]
    assert len({r["heatmap_png"] for r in rows}) == 18
    for a, b in zip(rows, one_call):
        assert Path(a["heatmap_png"]).read_bytes() == Path(b["heatmap_png"]).read_bytes()


def test_a_bad_file_is_one_line_naming_it_as_for_predict(run_and_folder, tmp_path, monkeypatch, capsys):
    import shutil

    from cnnlab import ImagePredictor

    run, tree = run_and_folder
    folder = tmp_path / "imgs"
    shutil.copytree(tree, folder)
    bad = folder / "zz" / "broken.png"  # sorted last: found when its chunk is decoded
    bad.parent.mkdir()
    bad.write_bytes(b"not an image")
    monkeypatch.setattr("cnnlab.predictor.STREAM_CHUNK", 4)
    pred = ImagePredictor.load(run, batch_size=4)
    with pytest.raises(DataError, match="broken.png") as embed_error:
        pred.extract_embedding([folder])
    with pytest.raises(DataError) as predict_error:
        pred.predict([folder])
    assert str(embed_error.value) == str(predict_error.value)
    errors = []
    for cmd in ("predict", "explain"):
        assert main([cmd, str(run), str(folder)] + (["--out", str(tmp_path / "o")] if cmd == "explain" else [])) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err
        errors.append(err)
    assert errors[0] == errors[1]


def test_cli_embed_reads_the_decoded_pixels_from_disk(run_and_folder, tmp_path, monkeypatch):
    """`cnnlab embed --data FOLDER` decodes to the disk cache and embeds from the memory-mapped
    pixels a batch at a time (never a full in-memory copy); the features are those of the files."""
    from cnnlab import ImagePredictor
    from cnnlab.data.rows import is_disk_backed
    from cnnlab.inference import InferenceModel

    run, tree = run_and_folder
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    given = []
    real = InferenceModel.embed
    monkeypatch.setattr(InferenceModel, "embed", lambda self, x, **k: given.append(is_disk_backed(x)) or real(self, x, **k))
    out = tmp_path / "f.npy"
    assert main(["embed", str(run), "--data", str(tree), "--out", str(out)]) == 0
    assert given == [True]
    feats = np.load(out)
    import pandas as pd

    paths = pd.read_csv(out.with_suffix(".labels.csv"))["path"].tolist()
    direct = ImagePredictor.load(run, batch_size=64).extract_embedding(paths)
    assert feats.shape == direct.shape and np.allclose(feats, direct, atol=1e-5)
