"""The review's low findings, one test each: mathtext class names, CSV paths and formulas, extends,
the core-share folder, the storage URL off argv, directory fsync."""

from __future__ import annotations

import argparse
import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli.main import main
from cnnlab.config import read_yaml_dict
from cnnlab.data.sources import load_source
from cnnlab.errors import ConfigError, DataError
from cnnlab.utils import cores


def test_dollar_class_names_are_not_mathtext(tmp_path, make_tree, capsys):
    tree = make_tree(tmp_path / "money", classes=["$5_to_$10", "under_$5"], per_class=4)
    assert main(["data", "inspect", str(tree), "--out", str(tmp_path / "insp")]) == 0
    assert any(p.suffix == ".png" for p in (tmp_path / "insp").iterdir())
    from cnnlab import figures

    out = figures.confusion_heatmap(np.array([[2, 0], [1, 1]]), ["$5_to_$10", "under_$5"], tmp_path / "cm.png")
    assert Path(out).is_file()


def _csv(tmp_path, rows):
    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    (folder / "data.csv").write_text("image,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    return folder / "data.csv"


@pytest.mark.parametrize("bad", ["/etc/hostname", "../outside.png"])
def test_csv_paths_must_stay_under_the_csv_folder(tmp_path, bad, monkeypatch):
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    csv = _csv(tmp_path, [("0.png", "a"), ("1.png", "a"), ("2.png", "b"), (bad, "b")])
    with pytest.raises(DataError, match="outside the CSV's folder"):
        load_source(csv)
    if bad.startswith(".."):  # the explicit opt-in
        monkeypatch.setenv("CNNLAB_CSV_ANY_PATH", "1")
        assert len(load_source(csv).train) == 4


def test_csv_inside_paths_still_load(tmp_path):
    csv = _csv(tmp_path, [("0.png", "a"), ("1.png", "a"), ("2.png", "b"), ("./3.png", "b")])
    assert len(load_source(csv).train) == 4


@pytest.mark.parametrize("value,needle", [("/etc/passwd", "relative path"), ("../../x.yaml", "outside"),
                                          ("5", None), ("[a, b]", "must be a file name"),
                                          ("{x: 1}", "must be a file name")])
def test_extends_is_a_relative_file_under_the_config_folder(tmp_path, value, needle):
    cfg = tmp_path / "c" / "x.yaml"
    cfg.parent.mkdir()
    cfg.write_text(f"extends: {value}\n")
    with pytest.raises(ConfigError, match=needle or "must be a file name"):
        read_yaml_dict(cfg)


def test_extends_may_name_a_preset(tmp_path):
    import cnnlab

    rel = os.path.relpath(Path(cnnlab.__file__).parent / "presets" / "fast.yaml", tmp_path)
    (tmp_path / "x.yaml").write_text(f"extends: {rel}\n")
    assert read_yaml_dict(tmp_path / "x.yaml")["model"]["arch"] == "cifar_fastnet"


def test_csv_outputs_escape_formulas(capsys, tmp_path):
    from cnnlab.cli.common import print_csv
    from cnnlab.reports.gallery import write_csv

    rows = [{"path": "=HYPERLINK(\"http://x\")", "label": "+1", "p": -0.5, "q": "@SUM(A1)", "ok": "cat"}]
    print_csv(rows)
    out = capsys.readouterr().out
    assert "'=HYPERLINK" in out and "'+1" in out and "'@SUM" in out and "-0.5" in out and ",cat" in out
    text = write_csv(rows, tmp_path / "g.csv", list(rows[0])).read_text()
    assert "\n'=HYPERLINK" in text or text.splitlines()[1].startswith("\"'=HYPERLINK")


def test_the_core_share_folder_is_private_and_owner_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(cores.SHARE_ENV, raising=False)
    fresh = tmp_path / "fresh"
    with cores.CoreShare(fresh) as share:
        assert share.fd is not None
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # what another user could have made of the predictable name
    with cores.CoreShare(shared) as share:
        assert share.fd is None and list(shared.iterdir()) == []
    link = tmp_path / "link"
    link.symlink_to(fresh)
    with cores.CoreShare(link) as share:
        assert share.fd is None


def test_tune_takes_the_storage_url_from_the_environment(monkeypatch):
    from cnnlab import tuning
    from cnnlab.cli import tune_cmd

    seen = {}

    class Stop(Exception):
        pass

    def fake_tune(*a, **k):
        seen.update(k)
        raise Stop

    monkeypatch.setattr(tuning, "tune", fake_tune)
    monkeypatch.setenv("CNNLAB_STORAGE", "postgresql://u:secret@db/x")
    parser = argparse.ArgumentParser()
    tune_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["tune", "-c", "x.yaml"])
    with pytest.raises(Stop):
        tune_cmd.run(args)
    assert seen["storage"] == "postgresql://u:secret@db/x"


def test_atomic_writes_fsync_the_folder(tmp_path, monkeypatch):
    from cnnlab.utils import io as uio

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)) or real(fd))
    uio.atomic_write_text(tmp_path / "a.txt", "x")
    assert synced == [False, True]  # the file, then its folder after the rename
