"""The CLI on bad input: exit status 2, one ``cnnlab: error:`` line naming the file, field or value
at fault, and no traceback. Most cases run ``main()`` in-process; one runs a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from cnnlab.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``cnnlab ARGS`` in-process; return (exit status, stdout, stderr)."""
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")  # main() sets it; keep it from leaking

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def assert_user_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cnnlab: error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- data


def test_nonexistent_data_path(cli, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-data"
    rc, out, err = cli("data", "inspect", missing, "--out", tmp_path / "o")
    assert_user_error(rc, err, str(missing), "no such file or folder")
    assert out == "" and not (tmp_path / "o").exists()


def test_train_on_a_nonexistent_data_path(cli, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    rc, _, err = cli("train", "--data", missing, "--run-dir", tmp_path / "run", "--epochs", "1", "--no-progress")
    assert_user_error(rc, err, str(missing), "no such file or folder")


def test_corrupt_image_suggests_skip_bad(cli, tiny_tree: Path, tmp_path: Path) -> None:
    bad = tiny_tree / "red" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this jpeg stops here")
    rc, _, err = cli("data", "inspect", tiny_tree, "--out", tmp_path / "o")
    assert_user_error(rc, err, str(bad), "--skip-bad")
    assert not (tmp_path / "o").exists()


def test_train_with_a_corrupt_image_suggests_skip_bad(cli, tiny_tree: Path, tmp_path: Path) -> None:
    bad = tiny_tree / "blue" / "empty.png"
    bad.write_bytes(b"")
    rc, _, err = cli("train", "--data", tiny_tree, "--run-dir", tmp_path / "run", "--epochs", "1", "--no-progress")
    assert_user_error(rc, err, str(bad), "empty file", "--skip-bad")


def test_csv_missing_column(cli, tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"picture": ["a.png"], "label": ["cat"]}).to_csv(csv, index=False)
    rc, _, err = cli("data", "inspect", csv, "--out", tmp_path / "o")
    assert_user_error(rc, err, str(csv), "image path column", "['picture', 'label']")


def test_csv_missing_image_file(cli, tiny_tree: Path, tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    rows = [(f"tiny/red/{i:03d}.png", "red") for i in range(3)] + [("tiny/blue/404.png", "blue")]
    pd.DataFrame(rows, columns=["image", "label"]).to_csv(csv, index=False)
    rc, _, err = cli("data", "inspect", csv, "--out", tmp_path / "o")
    assert_user_error(rc, err, "row 4", str(tmp_path / "tiny" / "blue" / "404.png"))


def test_single_class_folder(cli, make_tree, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "one", classes=["cat"], per_class=2)
    rc, _, err = cli("data", "inspect", root, "--out", tmp_path / "o")
    assert_user_error(rc, err, "need at least two classes", "'cat'")


# --------------------------------------------------------------------------- models and configs


def test_unknown_model_suggests_close_names(cli) -> None:
    rc, _, err = cli("models", "info", "resnet5O")
    line = assert_user_error(rc, err, "unknown model 'resnet5O'", "did you mean")
    assert "resnet50" in line


def test_unknown_config_key_is_named(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: exp\ntrain:\n  epochz: 3\n")
    rc, _, err = cli("train", "--config", cfg, "--run-dir", tmp_path / "run")
    line = assert_user_error(rc, err, "unknown config key train.epochz")
    assert "epochs" in line  # the allowed keys are listed
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_unknown_top_level_config_key(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("modle:\n  arch: resnet18\n")
    rc, _, err = cli("train", "-c", cfg, "--run-dir", tmp_path / "run")
    assert_user_error(rc, err, "unknown config key modle")


def test_missing_config_file(cli, tmp_path: Path) -> None:
    rc, _, err = cli("train", "-c", tmp_path / "nope.yaml", "--run-dir", tmp_path / "run")
    assert_user_error(rc, err, "config file not found", "nope.yaml")


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("train.epochs", ("'train.epochs'", "key=value")),
        ("=5", ("'=5'", "empty key")),
        ("train.epochs=many", ("train.epochs", "expected an integer", "'many'")),
        ("train.optimizer.name=lion", ("train.optimizer.name", "'lion'")),
        ("train.wobble=1", ("unknown config key train.wobble",)),
    ],
)
def test_bad_set_override(cli, tmp_path: Path, override: str, needles: tuple[str, ...]) -> None:
    rc, _, err = cli("train", "--set", override, "--run-dir", tmp_path / "run")
    assert_user_error(rc, err, *needles)


def test_bad_argument_type_is_an_argparse_error(cli, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "three"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid int value: 'three'" in err and "Traceback" not in err


# --------------------------------------------------------------------------- run directories


def test_evaluate_on_a_folder_that_is_not_a_run(cli, tiny_tree: Path) -> None:
    rc, _, err = cli("evaluate", tiny_tree)
    assert_user_error(rc, err, str(tiny_tree), "is this a cnnlab run directory?")


def test_evaluate_on_a_missing_folder(cli, tmp_path: Path) -> None:
    rc, _, err = cli("evaluate", tmp_path / "runs" / "gone")
    assert_user_error(rc, err, str(tmp_path / "runs" / "gone"))


def test_predict_with_a_folder_that_is_not_a_run(cli, tiny_tree: Path) -> None:
    rc, _, err = cli("predict", tiny_tree, tiny_tree / "red" / "000.png")
    assert_user_error(rc, err, str(tiny_tree), "is this a cnnlab run directory?")


# --------------------------------------------------------------------------- a real process


def test_subprocess_exit_code_and_no_traceback(tiny_tree: Path, tmp_path: Path) -> None:
    """The installed entry point's behaviour: a real interpreter, a real exit status."""
    bad = tiny_tree / "green" / "half.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")  # a PNG cut off in its header
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab", "data", "inspect", str(tiny_tree), "--out", str(tmp_path / "o")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"cnnlab: error: {bad}" in proc.stderr and "--skip-bad" in proc.stderr
    assert proc.stdout == ""
