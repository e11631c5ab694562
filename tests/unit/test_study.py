"""Studies: the study file, the resumable runner (killed with SIGKILL, then rerun), the study report
with its tree diagrams, and `cnnlab runs list`.

The tiny study trains resnet10t for one epoch on 3 colour classes of 16x16 images; family "fam" has
Model I -> Model II.1 and a Model II.2 whose config does not exist; family "other" has one model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cnnlab.errors import ConfigError
from cnnlab.reports.study import load_study, quick_overrides, run_study, study_status
from cnnlab.reports.tree import TreeNode, draw_tree, layout

SRC = Path(__file__).resolve().parents[2] / "src"


def make_folder(root: Path, n_train: int = 20, n_test: int = 6, size: int = 16) -> Path:
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("test", n_test)):
        for name, colour in {"blue": (40, 40, 200), "green": (40, 200, 40), "red": (200, 40, 40)}.items():
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                im = np.clip(rng.normal(colour, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(im).save(d / f"{i}.png")
    return root


STUDY = {
    "name": "tiny",
    "description": "a study small enough for a unit test",
    "families": [
        {"name": "fam", "title": "Tiny family", "architecture": "resnet10t at 16x16",
         "experiments": [
             {"id": "I", "config": "configs/a.yaml", "change": "baseline", "seed_accuracy": 50.0},
             {"id": "II.1", "parent": "I", "config": "configs/b.yaml", "change": "lr 3e-3",
              "seed_accuracy": 99.9, "seed_best_accuracy": 99.95},
             {"id": "II.2", "parent": "I", "config": "configs/missing.yaml", "change": "written later",
              "seed_accuracy": 70.0},
         ]},
        {"name": "other", "title": "Other family", "architecture": "the same, one epoch",
         "experiments": [{"id": "I", "config": "configs/a.yaml", "overrides": {"seed": 1}, "change": "seed 1"}]},
    ],
}


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    data = make_folder(base / "data")
    (base / "configs").mkdir()
    (base / "configs" / "a.yaml").write_text(yaml.safe_dump({
        "name": "tiny-a", "data": {"source": str(data)}, "model": {"arch": "resnet10t"},
        "train": {"epochs": 1, "batch_size": 16, "precision": "fp32"}}))
    (base / "configs" / "b.yaml").write_text("extends: a.yaml\nname: tiny-b\ntrain: {optimizer: {lr: 0.003}}\n")
    path = base / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNLAB_HOME", str(base / "home"))
    yield path
    mp.undo()


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "cnnlab.cli.main", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _finished(run_dir: Path) -> bool:
    """Every file of a finished run is there and the resume state is gone (the last step of a run)."""
    names = ("metrics.json", "model.safetensors", "model.json")
    return all((run_dir / n).is_file() for n in names) and not (run_dir / "state").exists()


@pytest.fixture(scope="module")
def killed_then_rerun(study_file, tmp_path_factory):
    """`cnnlab study run`, SIGKILLed once the first experiment has finished, then run again."""
    out = tmp_path_factory.mktemp("out")
    first = out / "tiny" / "fam-I"
    proc = _cli(["study", "run", str(study_file), "--out", str(out)])
    deadline = time.monotonic() + 600
    while not _finished(first) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _finished(first), f"the first experiment did not finish:\n{proc.communicate(timeout=60)[0]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_code = proc.returncode
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}
    rerun = _cli(["study", "run", str(study_file), "--out", str(out)])
    log = rerun.communicate(timeout=600)[0]
    return {"out": out, "first": first, "killed_code": killed_code, "stamps": stamps, "log": log,
            "code": rerun.returncode}


# ----------------------------------------------------------------------------- the study file


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _one(**exp) -> dict:
    return {"name": "s", "families": [{"name": "f", "experiments": [{"id": "I", "config": "c.yaml", **exp}]}]}


def test_load_study_resolves_paths_and_keeps_missing_configs(study_file):
    s = load_study(study_file)
    assert s.name == "tiny" and [f.name for f in s.families] == ["fam", "other"]
    keys = [e.key for e in s.experiments]
    assert keys == ["fam-I", "fam-II.1", "fam-II.2", "other-I"]
    exp = {e.key: e for e in s.experiments}
    assert exp["fam-II.1"].config == study_file.parent / "configs" / "b.yaml" and exp["fam-II.1"].available
    assert exp["fam-II.2"].available is False
    assert exp["fam-II.1"].seed_best_accuracy == 99.95 and exp["other-I"].overrides == {"seed": 1}
    assert s.run_dir(exp["fam-II.1"], "o") == Path("o") / "tiny" / "fam-II.1"


@pytest.mark.parametrize("data, message", [
    (_one(parnt="x"), "experiments\\[0\\]: unknown key 'parnt'"),
    (_one(parent="II.9"), "parent 'II.9', which is not an experiment of family 'f'"),
    (_one(seed_accuracy="high"), "seed_accuracy: expected a number"),
    ({"name": "s", "families": []}, "'families' must be a non-empty list"),
    ({"name": "s", "families": [{"name": "f", "experiments": [{"id": "I"}]}]}, "missing 'config'"),
    ({"name": "s", "families": [{"name": "f", "experiments": [
        {"id": "I", "config": "c", "parent": "II"}, {"id": "II", "config": "c", "parent": "I"}]}]}, "form a loop"),
    ({"name": "s", "families": [{"name": "f", "experiments": [
        {"id": "I", "config": "c"}, {"id": "I", "config": "d"}]}]}, "'I' appears twice"),
])
def test_bad_study_files_name_the_field(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        load_study(_write(tmp_path, data))


def test_missing_study_file_is_a_user_error(tmp_path):
    with pytest.raises(ConfigError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")


def test_quick_overrides():
    assert quick_overrides(200, 1) == {"data.max_train_samples": 200, "train.epochs": 1}
    assert quick_overrides() == {}


# ----------------------------------------------------------------------------- tree diagrams


def test_tree_layout_centres_parents_over_children():
    nodes = [TreeNode("I", None, "I"), TreeNode("II.1", "I", ""), TreeNode("II.2", "II.1", ""),
             TreeNode("II.3", "II.1", ""), TreeNode("II.4", "II.1", "")]
    pos = layout(nodes)
    assert [pos[k] for k in ("II.2", "II.3", "II.4")] == [(0, 3), (1, 3), (2, 3)]
    assert pos["II.1"] == (1.0, 2) and pos["I"] == (1.0, 1) and pos[None] == (1.0, 0)


def test_draw_tree_writes_png_and_svg_with_text(tmp_path):
    nodes = [TreeNode("I", None, "Model I\nbaseline", "finished"), TreeNode("II", "I", "Model II", "not run")]
    png, svg = draw_tree("Architecture box", nodes, tmp_path / "t.png", tmp_path / "t.svg", title="T")
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = svg.read_text()
    assert "Architecture box" in text and "Model II" in text and "baseline" in text


# ----------------------------------------------------------------------------- running a study


class Interrupt(Exception):
    pass


def test_interrupted_experiment_is_resumed_not_restarted(study_file, tmp_path):
    def stop_after_first_epoch(epoch, logs):
        raise Interrupt

    with pytest.raises(Interrupt):
        run_study(study_file, out=tmp_path, epochs=2, only=["II.1"], epoch_callback=stop_after_first_epoch,
                  log=lambda s: None)
    run_dir = tmp_path / "tiny" / "fam-II.1"
    assert (run_dir / "state" / "train_state.json").is_file() and not _finished(run_dir)
    first_epoch = (run_dir / "history.csv").read_text().splitlines()[1]
    assert [r["state"] for r in study_status(load_study(study_file), tmp_path)] == [
        "pending", "partial", "missing config", "pending"]

    logs: list[str] = []
    rows = run_study(study_file, out=tmp_path, epochs=2, only=["II.1"], log=logs.append)
    assert {r["key"]: r["status"] for r in rows} == {
        "fam-I": "not selected", "fam-II.1": "resumed", "fam-II.2": "not selected", "other-I": "not selected"}
    joined = "\n".join(logs)
    assert "fam-II.1: resuming" in joined and "after epoch 1 of 2" in joined
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 3 and history[1] == first_epoch  # epoch 1 kept, epoch 2 added
    assert _finished(run_dir)

    # Asking for another config in the same folder is refused, naming the key.
    with pytest.raises(ConfigError, match="train.epochs: 2 there, 3 now"):
        run_study(study_file, out=tmp_path, epochs=3, only=["II.1"], log=lambda s: None)
    with pytest.raises(ConfigError, match="no experiment 'II.7'"):
        run_study(study_file, out=tmp_path, only=["II.7"], log=lambda s: None)


def test_sigkilled_study_continues_without_rerunning_finished_experiments(killed_then_rerun):
    r = killed_then_rerun
    assert r["killed_code"] == -signal.SIGKILL
    assert r["code"] == 0, r["log"]
    assert "fam-I: already done" in r["log"]
    assert "fam-II.2: config" in r["log"] and "does not exist; skipped" in r["log"]
    # The finished experiment's files were not touched by the second run.
    assert {p.name: p.stat().st_mtime_ns for p in r["first"].iterdir() if p.is_file()} == r["stamps"]
    for key in ("fam-I", "fam-II.1", "other-I"):
        assert _finished(r["out"] / "tiny" / key), key
    assert not (r["out"] / "tiny" / "fam-II.2").exists()
    other = yaml.safe_load((r["out"] / "tiny" / "other-I" / "config.yaml").read_text())
    assert other["seed"] == 1  # the experiment's own override


# ----------------------------------------------------------------------------- the study report


def test_study_report_tables_curves_and_trees(study_file, killed_then_rerun):
    from cnnlab.cli.main import main

    out = killed_then_rerun["out"]
    assert main(["study", "report", str(study_file), "--out", str(out)]) == 0
    rep = out / "tiny" / "report"
    for name in ("report.html", "comparison.md", "comparison.csv", "summary.json", "curves-fam.png",
                 "curves-other.png", "tree-fam.png", "tree-fam.svg", "tree-other.png", "tree-other.svg"):
        assert (rep / name).is_file(), name
    summary = {e["key"]: e for e in json.loads((rep / "summary.json").read_text())["experiments"]}
    metrics = json.loads((out / "tiny" / "fam-I" / "metrics.json").read_text())
    assert summary["fam-I"]["accuracy"] == round(100 * metrics["test"]["accuracy"], 2)
    assert summary["fam-I"]["delta_vs_seed"] == round(summary["fam-I"]["accuracy"] - 50.0, 2)
    assert summary["fam-I"]["epochs_run"] == 1 and summary["fam-I"]["parameters"] > 0
    assert summary["fam-II.2"]["state"] == "missing config" and summary["fam-II.2"].get("accuracy") is None
    md = (rep / "comparison.md").read_text()
    assert md.count("\n| fam |") == 3 and md.count("\n| other |") == 1
    assert f"| {summary['fam-I']['accuracy']:.2f} |" in md and "| 99.90 |" in md
    svg = (rep / "tree-fam.svg").read_text()
    assert "Model II.1" in svg and "seed 99.90% (best 99.95%)" in svg and "resnet10t at 16x16" in svg
    assert f"cnnlab {summary['fam-I']['accuracy']:.2f}%" in svg and "cnnlab: no config yet" in svg
    html = (rep / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 4  # 2 trees + 2 curve figures
    assert 'alt="tree-fam"' in html and 'alt="tree-other"' in html


# ----------------------------------------------------------------------------- runs list


def _fake_run(root: Path, name: str, mtime: float, acc: float | None, arch: str = "resnet10t") -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "model": {"arch": arch},
                                                   "train": {"epochs": 5, "batch_size": 32,
                                                             "optimizer": {"lr": 0.01}}}))
    if acc is not None:
        (d / "metrics.json").write_text(json.dumps({"epochs_run": 4, "train_seconds": 12.5,
                                                    "test": {"accuracy": acc}}))
        (d / "model.safetensors").write_bytes(b"x")
        (d / "model.json").write_text("{}")
    os.utime(d / "config.yaml", (mtime, mtime))


def test_list_runs_sorted_by_time_with_settings_and_metrics(tmp_path, capsys):
    from cnnlab.cli.main import main
    from cnnlab.reports import list_runs

    _fake_run(tmp_path, "b-late", 2_000_000_000, 0.5)
    _fake_run(tmp_path, "a-early", 1_000_000_000, 0.75, arch="mobilenetv1_100")
    _fake_run(tmp_path / "nested", "c-partial", 1_500_000_000, None)
    (tmp_path / "b-late" / "state").mkdir()
    (tmp_path / "b-late" / "state" / "config.yaml").write_text("not: a run\n")  # ignored
    rows = list_runs(tmp_path)
    assert [r["run"] for r in rows] == ["a-early", os.path.join("nested", "c-partial"), "b-late"]
    a = rows[0]
    assert (a["arch"], a["epochs"], a["epochs_run"], a["batch"], a["lr"], a["accuracy"], a["train_seconds"],
            a["state"]) == ("mobilenetv1_100", 5, 4, 32, 0.01, 0.75, 12.5, "finished")
    assert rows[1]["state"] == "partial" and rows[1]["accuracy"] is None
    assert [r["run"] for r in list_runs(tmp_path, newest_first=True)][0] == "b-late"
    assert main(["runs", "list", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "mobilenetv1_100" in printed and printed.index("a-early") < printed.index("b-late")
    with pytest.raises(ConfigError, match="no such folder"):
        list_runs(tmp_path / "missing")


def test_list_runs_finds_the_study_runs(killed_then_rerun):
    from cnnlab.reports import list_runs

    rows = list_runs(killed_then_rerun["out"])
    assert sorted(r["run"] for r in rows) == sorted(os.path.join("tiny", k) for k in ("fam-I", "fam-II.1", "other-I"))
    assert all(r["state"] == "finished" and r["accuracy"] is not None for r in rows)
