"""--json on every command that prints a result, and --resume refusing the flags it would drop."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("timm")

from cnnlab.cli.main import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _json(capsys) -> object:
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import numpy as np
    import torch
    from PIL import Image

    root = tmp_path_factory.mktemp("cli-json")
    data = root / "data"
    rng = np.random.default_rng(0)
    for name, colour in {"blue": (30, 40, 210), "green": (35, 200, 45), "red": (215, 35, 30)}.items():
        (data / name).mkdir(parents=True)
        for i in range(8):
            px = np.clip(np.array(colour) + rng.integers(-20, 21, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(data / name / f"{i:03d}.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(root / "home"))
        mp.setenv("OMP_NUM_THREADS", "1")
        args = ["train", "--data", str(data), "--epochs", "1", "--run-dir", str(root / "runs" / "r"),
                "--set", "model.arch=test_resnet", "--set", "train.precision=fp32", "--set", "train.batch_size=16",
                "--no-progress", "--json"]
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(args) == 0
    torch.set_num_threads(threads)
    return {"root": root, "data": data, "run_dir": root / "runs" / "r", "train_out": out.getvalue()}


def test_train_json_is_only_json_on_stdout(run):
    result = json.loads(run["train_out"])  # epoch log lines went to stderr
    assert result["run_dir"] == str(run["run_dir"])
    assert result["metrics"]["epochs_run"] == 1 and result["metrics"]["val"]["count"] == 6


def test_predict_report_embed_runs_and_models_print_json(run, capsys, tmp_path):
    rd, data = str(run["run_dir"]), run["data"]
    assert main(["predict", rd, str(data / "blue"), "--json", "--top-k", "2"]) == 0
    rows = _json(capsys)
    assert len(rows) == 8 and len(rows[0]["top"]) == 2
    assert main(["report", rd, "--out", str(tmp_path / "rep"), "--latency-runs", "2", "--json"]) == 0
    rep = _json(capsys)
    assert rep["html"].endswith("report.html") and rep["evaluation"]["count"] == 6
    assert main(["embed", rd, "--data", str(data), "--out", str(tmp_path / "f.npy"), "--json"]) == 0
    assert _json(capsys)["shape"][0] == 24
    assert main(["runs", "list", str(run["root"] / "runs"), "--json"]) == 0
    assert len(_json(capsys)) == 1
    assert main(["models", "list", "nasnet*", "--json"]) == 0
    assert {"name": "nasnet_mobile", "kind": "cnnlab"}.items() <= _json(capsys)[0].items()
    assert main(["models", "info", "test_resnet", "--json"]) == 0
    assert _json(capsys)["model_parameters"] > 0


@pytest.mark.parametrize("flag", [["--epochs", "3"], ["--set", "train.epochs=3"], ["--config", "x.yaml"],
                                  ["--run-dir", "elsewhere"]])
def test_resume_refuses_flags_it_would_drop(run, capsys, flag):
    assert main(["train", "--resume", str(run["run_dir"]), *flag]) == 2
    err = capsys.readouterr().err
    assert "would be ignored" in err and flag[0] in err
