"""Auto-fit end to end on tiny folders: ImagePredictor.fit(time_limit=...) on a folder, a CSV and
a DataFrame, the fit folder's save / load / predict, photos of mixed sizes, and cnnlab fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnnlab.autofit.profile import MIXED_DECODE_SIZE
from cnnlab.cli.main import main
from cnnlab.errors import ConfigError
from cnnlab.predictor import ImagePredictor

LIMIT = 20  # seconds: only the fast net is measured (planner.PROBE_COST_S); the rest are estimated


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImagePredictor, Path]:
    import os

    from conftest import _write_tree

    root = tmp_path_factory.mktemp("af")
    home = root / "home"
    from cnnlab.autofit import fewshot

    old = os.environ.get("CNNLAB_HOME")
    os.environ["CNNLAB_HOME"] = str(home)
    few, fewshot.FEW_SHOT_MAX = fewshot.FEW_SHOT_MAX, 0  # the planner's path, not the few-shot one
    try:
        data = _write_tree(root / "tiny", per_class=16)
        pred = ImagePredictor(label="label", path=root / "fit").fit(str(data), time_limit=LIMIT,
                                                                    log=lambda s: None)
    finally:
        fewshot.FEW_SHOT_MAX = few
        if old is None:
            os.environ.pop("CNNLAB_HOME", None)
        else:
            os.environ["CNNLAB_HOME"] = old
    return pred, data


def test_fit_on_a_folder_writes_plan_leaderboard_report(fitted):
    pred, data = fitted
    info = pred.fit_summary()
    folder = Path(info["folder"])
    assert folder == pred._fit_path and info["best"] == "frozen"  # 16 images a class: pretrained features, the planner's choice
    board = pred.leaderboard()
    assert list(board["model"]) == ["frozen"] and board["val_accuracy"][0] == pytest.approx(info["val_accuracy"])
    plan = json.loads((folder / "plan.json").read_text())
    frozen = next(c for c in plan["candidates"] if c["kind"] == "frozen")
    assert frozen["chosen"] and frozen["status"] == "done"
    assert frozen["actual_seconds"] > 0 and frozen["actual_val_accuracy"] == pytest.approx(info["val_accuracy"])
    assert plan["actual"]["elapsed_seconds"] == pytest.approx(info["elapsed_seconds"], abs=5)
    assert info["profile"]["count"] + info["profile"]["val_count"] == 48
    assert info["profile"]["val_count"] == 9  # 20% of a small data set, 3 of each class
    report = (folder / "report.md").read_text()
    assert "Plan against what happened" in report and "| frozen |" in report
    assert (folder / "leaderboard.csv").read_text().startswith("rank,model,kind,val_accuracy")
    # colour classes: the frozen features separate them
    assert info["val_accuracy"] >= 0.66
    assert list(pred.predict([str(data / "red" / "000.png"), str(data / "blue" / "001.png")])) == ["red", "blue"]


def test_fit_folder_save_and_load_predict_the_same(fitted, tmp_path):
    pred, data = fitted
    images = [str(p) for p in sorted(data.glob("*/00*.png"))]
    before = pred.predict_proba(images).to_numpy()
    loaded = ImagePredictor.load(pred._fit_path)
    assert np.allclose(loaded.predict_proba(images).to_numpy(), before, atol=1e-5)
    assert loaded.leaderboard()["model"].tolist() == pred.leaderboard()["model"].tolist()
    copy = pred.save(tmp_path / "copy")
    again = ImagePredictor.load(copy)
    assert np.allclose(again.predict_proba(images).to_numpy(), before, atol=1e-5)
    assert not list(copy.rglob("*.pkl")) and (copy / "models" / "frozen" / "model.safetensors").is_file()
    assert again.evaluate(str(data))["accuracy"] >= 0.66


def test_ensemble_predictor_averages_its_members(fitted):
    from cnnlab.autofit.folder import attach

    pred, data = fitted
    member = ImagePredictor.load(pred._fit_path / "models" / "frozen")
    ens = attach(ImagePredictor(), pred._fit_path, pred.fit_summary(), [(member, 0.5), (member, 0.5)])
    images = [str(data / "green" / "002.png")]
    assert np.allclose(ens.predict_proba(images).to_numpy(), member.predict_proba(images).to_numpy(), atol=1e-5)


def test_fit_on_a_csv_and_a_dataframe(make_tree, tmp_path):
    root = make_tree(tmp_path / "imgs", per_class=10)
    paths = sorted(root.glob("*/*.png"))
    frame = pd.DataFrame({"image": [str(p) for p in paths], "label": [p.parent.name for p in paths]})
    frame.to_csv(tmp_path / "data.csv", index=False)
    by_csv = ImagePredictor(label="label", path=tmp_path / "fit-csv").fit(str(tmp_path / "data.csv"),
                                                                         time_limit=LIMIT, log=lambda s: None)
    by_frame = ImagePredictor(label="label", path=tmp_path / "fit-df").fit(frame, time_limit=LIMIT,
                                                                          log=lambda s: None)
    for pred in (by_csv, by_frame):
        assert pred.class_names == ["blue", "green", "red"]
        assert pred.fit_summary()["profile"]["count"] == 30  # 10 a class: few-shot, all cross-validated
        assert pred.predict(frame.iloc[:3])[0] in pred.class_names
    assert by_frame.fit_summary()["data_source"] == "<DataFrame>"


def test_photos_of_mixed_sizes_need_no_image_size(make_tree, tmp_path):
    root = tmp_path / "photos"
    make_tree(root, classes=("blue",), per_class=8, size=(40, 30))
    make_tree(root, classes=("red",), per_class=8, size=(64, 48), colours=[(215, 35, 30)], seed=1)
    pred = ImagePredictor(label="label", path=tmp_path / "fit").fit(str(root), time_limit=LIMIT, log=lambda s: None)
    prof = pred.fit_summary()["profile"]
    assert prof["mixed_sizes"] and prof["image_size"] == MIXED_DECODE_SIZE
    assert prof["file_sizes"]["min"] == 30 and prof["file_sizes"]["max"] == 48
    assert pred.fit_summary()["best"] == "fewshot"  # 8 photos a class: pretrained embeddings, cross-validated
    assert list(pred.predict([str(root / "red" / "003.png")])) == ["red"]


def test_fit_refuses_bad_arguments(tiny_tree, tmp_path):
    with pytest.raises(ConfigError, match="time_limit: must be more than 0"):
        ImagePredictor(path=tmp_path / "a").fit(str(tiny_tree), time_limit=0)
    with pytest.raises(ConfigError, match="unknown preset 'fastest'"):
        ImagePredictor(path=tmp_path / "b").fit(str(tiny_tree), time_limit=20, presets="fastest")
    with pytest.raises(ConfigError, match="either config"):
        ImagePredictor(path=tmp_path / "c").fit(str(tiny_tree), config={"train": {"epochs": 1}}, time_limit=20)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        ImagePredictor(path=tmp_path / "full").fit(str(tiny_tree), time_limit=20)
    with pytest.raises(Exception, match="fit_summary: this predictor was not auto-fitted"):
        ImagePredictor().fit_summary()


@pytest.mark.parametrize("argv, message", [
    (["fit", "--data", "DATA", "--time-limit", "soon"], "time_limit: 'soon' is not a duration"),
    (["fit", "--data", "DATA", "--time-limit", "20s", "--quality", "fast"], "unknown preset 'fast'"),
    (["fit", "--data", "nowhere/", "--time-limit", "20s"], "data source 'nowhere/': no such file or folder"),
])
def test_cli_fit_errors_are_one_line_and_exit_2(argv, message, tiny_tree, capsys, tmp_path):
    argv = [str(tiny_tree) if a == "DATA" else a for a in argv] + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("cnnlab: error:")


def test_cli_fit_prints_plan_leaderboard_and_folder(tiny_tree, capsys, tmp_path):
    out = tmp_path / "fit"
    assert main(["fit", "--data", str(tiny_tree), "--time-limit", "30s", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "plan (medium_quality" in text and "leaderboard:" in text and f"fit folder: {out}" in text
    assert "validation accuracy:" in text and "s of the fit left" in text  # no test split here: validation
    info = json.loads((out / "fit.json").read_text())
    assert info["format"] == "cnnlab-fit/1" and info["best"] == "frozen"
    assert f"elapsed: {info['elapsed_seconds']:.1f}s of 30s" in text


def test_the_readme_autofit_example_runs(tmp_path, monkeypatch, capsys):
    import re

    from conftest import _write_tree

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Auto-fit within a time budget"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    _write_tree(tmp_path / "my_images" / "train", classes=("cat", "dog"), per_class=10)
    _write_tree(tmp_path / "my_images" / "test", classes=("cat", "dog"), per_class=4, seed=1)
    _write_tree(tmp_path / "one", classes=("x",), per_class=1)
    (tmp_path / "one" / "x" / "000.png").rename(tmp_path / "cat.jpg")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    pred = namespace["predictor"]
    assert pred.class_names == ["cat", "dog"] and (tmp_path / "fits" / "quick" / "fit.json").is_file()
    assert pred.fit_summary()["test_accuracy"] is not None
    assert "val_accuracy" in capsys.readouterr().out


def test_soup_step_applies_a_soup_that_scores_higher(fitted, tmp_path, monkeypatch):
    """soup_step with a stand-in for cnnlab.training.soup (built on another branch): the souped
    weights replace model.safetensors only when they beat the final weights on validation."""
    import shutil
    import sys
    import types
    from dataclasses import dataclass

    from safetensors.torch import save_file

    from cnnlab.autofit.soup_step import soup_run

    pred, data = fitted
    run = tmp_path / "run"
    shutil.copytree(pred._fit_path / "models" / "frozen", run)
    model = ImagePredictor.load(run).model
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    (run / "checkpoints").mkdir()
    entries = []
    for e in (3, 5):
        save_file(state, str(run / "checkpoints" / f"epoch-{e:03d}.safetensors"))
        entries.append({"epoch": e, "path": f"checkpoints/epoch-{e:03d}.safetensors", "monitor": "val_accuracy",
                        "value": 0.5})
    (run / "checkpoints" / "index.json").write_text(json.dumps(entries))
    bias = next(k for k in state if k.endswith("head.fc.bias") or (k.startswith("head") and k.endswith("bias")))
    souped = dict(state)
    souped[bias] = state[bias] + 1.0  # a visible change

    @dataclass
    class SoupResult:
        state_dict: dict
        used: list
        score: float
        individual: list

    calls = []

    def greedy_soup(model, candidates, score, *, log=print):
        calls.append([str(p) for p, _ in candidates])
        return SoupResult(souped, [p for p, _ in candidates], 0.99, [0.5, 0.5])

    monkeypatch.setitem(sys.modules, "cnnlab.training.soup", types.SimpleNamespace(greedy_soup=greedy_soup))
    x = np.stack([np.zeros((16, 16, 3), np.uint8)] * 3)
    out = soup_run(run, x, np.array([0, 1, 2]), final_accuracy=0.9, log=lambda s: None)
    assert out["applied"] and calls and calls[0][0].endswith("epoch-003.safetensors")
    again = ImagePredictor.load(run).model.state_dict()[bias]
    assert np.allclose(again.numpy(), souped[bias].numpy())
    worse = soup_run(run, x, np.array([0, 1, 2]), final_accuracy=0.995, log=lambda s: None)
    assert worse is not None and not worse["applied"]  # not better than the final weights: kept


def test_error_analysis_is_handed_the_best_models_probabilities(tmp_path, monkeypatch):
    import sys
    import types

    from cnnlab.autofit.report import error_analysis

    seen = {}

    def write_error_analysis(probs, y, images, class_names, out_dir, *, k=20, split="test", paths=None):
        seen.update(shape=probs.shape, k=k, split=split, n=len(images))
        return {"png": out_dir / "errors.png", "csv": out_dir / "errors.csv", "rows": []}

    monkeypatch.setitem(sys.modules, "cnnlab.evaluation.error_analysis",
                        types.SimpleNamespace(write_error_analysis=write_error_analysis))
    probs = np.full((5, 2), 0.5, np.float32)
    out = error_analysis(probs, np.zeros(5, int), ["a"] * 5, ["x", "y"], tmp_path, "val", log=lambda s: None)
    assert seen == {"shape": (5, 2), "k": 20, "split": "val", "n": 5} and out["png"].name == "errors.png"


def test_high_quality_trains_two_models_and_weighs_an_ensemble(make_tree, tmp_path, monkeypatch):
    from cnnlab.autofit import planner

    from cnnlab.autofit import fewshot

    monkeypatch.setattr(planner, "ENSEMBLE_GAP", 1.0)  # any second model is worth it here
    monkeypatch.setattr(fewshot, "FEW_SHOT_MAX", 0)  # 12 a class: the planner's candidates, not the few-shot path
    monkeypatch.setattr(planner, "FINETUNE_MIN_STEPS", 1)  # 36 images: fine-tuning planned all the same
    monkeypatch.setattr(planner, "PROBE_SHARE", 0.0)  # the reference speeds: the same plan on busy cores
    from cnnlab.autofit import budget

    monkeypatch.setattr(budget, "FILL_MIN_S", 1e9)  # no leftover seed: the ensemble's time is kept (busy cores)
    from cnnlab.autofit import candidates

    monkeypatch.setattr(candidates, "FROZEN_SIZE", 64)  # cheaper pretrained candidates (shared, busy cores)
    monkeypatch.setattr(candidates, "LAST_SIZE", 64)
    root = tmp_path / "data"
    make_tree(root / "train", per_class=12)
    make_tree(root / "test", per_class=4, seed=3)
    lines: list[str] = []
    pred = ImagePredictor(label="label", path=tmp_path / "fit").fit(str(root), time_limit=40,
                                                                   presets="high_quality", log=lines.append)
    info = pred.fit_summary()
    trained = [r["model"] for r in info["leaderboard"] if r["model"] != "ensemble"]
    assert sorted(trained) == ["finetune_last", "frozen"]
    assert any(line.startswith("ensemble (") for line in lines)  # Caruana's weights were computed
    assert sum(m["weight"] for m in info["members"]) == pytest.approx(1.0)
    assert info["test_accuracy"] is not None and info["best"] == info["leaderboard"][0]["model"]
    loaded = ImagePredictor.load(tmp_path / "fit")
    images = [str(root / "test" / "red" / "000.png")]
    assert np.allclose(loaded.predict_proba(images).to_numpy(), pred.predict_proba(images).to_numpy(), atol=1e-5)


def test_a_fit_records_its_candidates_and_the_next_plan_reads_them(fitted, monkeypatch):
    import cnnlab
    from cnnlab.autofit import history, planner
    from cnnlab.autofit.presets import get_preset
    from cnnlab.autofit.profile import DataProfile

    pred, _ = fitted
    folder = Path(pred.fit_summary()["folder"])
    monkeypatch.setenv("CNNLAB_HOME", str(folder.parent / "home"))  # the fit's own home (the fixture's)
    plan = json.loads((folder / "plan.json").read_text())
    frozen = next(c for c in plan["candidates"] if c["kind"] == "frozen")
    assert plan["priors"]["records_read"] == 0 and frozen["prior_records"] == 0  # the first fit: nothing learnt yet
    records = [json.loads(line) for line in history.history_path().read_text().splitlines()]
    assert [r["kind"] for r in records] == ["frozen"]  # one record per finished candidate
    r = records[0]
    assert r["actual_val_accuracy"] == pytest.approx(frozen["actual_val_accuracy"], abs=1e-4)
    assert r["predicted_val_accuracy"] == pytest.approx(frozen["predicted_val_accuracy"], abs=1e-4)
    assert (r["per_class"], r["num_classes"], r["epochs"]) == (plan["profile"]["per_class_min"], 3, frozen["actual_epochs"])
    assert r["width"] is None and r["balanced"] is False and r["cnnlab_version"] == cnnlab.__version__
    # the next plan on the same data reads it: the frozen base's prior moves by a sixth of its error
    profile = DataProfile(**plan["profile"])
    again = planner.make_plan(profile, get_preset("medium_quality"), time_limit=LIMIT, elapsed=lambda: 0.0,
                              measure=lambda k: 100.0, precision="fp32", device="cpu", machine="test",
                              log=lambda s: None, corrections=history.corrections_for(profile, balanced=False))
    assert again.candidate("frozen").prior_records == 1 and again.priors["history"] == str(history.history_path())
    assert again.candidate("frozen").prior_correction == pytest.approx(history.residual(r) / 6, abs=1e-4) != 0
