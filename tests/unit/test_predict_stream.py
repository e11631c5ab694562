"""`cnnlab predict FOLDER` streams (issue 23): the first prediction comes before the last image is
decoded, and the printed output is what the all-at-once path printed."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("timm")

from cnnlab import api  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.data import decode as decode_mod  # noqa: E402
from conftest import _write_tree  # noqa: E402

CFG = {"name": "t", "seed": 0, "model": {"arch": "test_resnet"},
       "train": {"epochs": 1, "batch_size": 8, "precision": "fp32", "optimizer": {"name": "adam", "lr": 3e-3}}}


@pytest.fixture(scope="module")
def run_and_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    tree = _write_tree(root / "tree", per_class=6)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(root / "home"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            api.train(CFG, data=str(tree), run_dir=root / "run", progress=False, log=lambda s: None,
                      evaluate_test=False)
        finally:
            torch.set_num_threads(threads)
    return root / "run", tree


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
