"""A two-stage run (frozen base, then ``train.finetune``): its history, resume and report."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("timm")

from cnnlab import api  # noqa: E402
from cnnlab.training.rundir import RunDir  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupt(Exception):
    pass


def _config() -> dict:
    return {
        "name": "two-stage", "seed": 0,
        "data": {"validation_split": 0.25},
        "model": {"arch": "resnet10t", "freeze_base": True, "head": {"pooling": "avg", "units": 8}},
        "train": {"epochs": 1, "batch_size": 12, "precision": "fp32", "optimizer": {"name": "adam", "lr": 1e-2},
                  "finetune": {"epochs": 2, "lr": 1e-4}},
    }


def test_read_history_keeps_text_columns_as_text(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_history([{"epoch": 1, "loss": 0.5, "val_loss": 0.7},
                      {"epoch": 2, "loss": 0.25, "stage": "finetune"}])
    rows = rd.read_history()
    assert rows[0]["epoch"] == 1 and rows[1]["epoch"] == 2 and isinstance(rows[0]["epoch"], int)
    assert rows[0]["loss"] == 0.5 and rows[1]["loss"] == 0.25
    assert rows[0]["stage"] == "" and rows[1]["stage"] == "finetune"
    assert math.isnan(rows[1]["val_loss"])
    rd.write_history(rows)  # a rewrite (resume) keeps the epoch column as integers
    assert (tmp_path / "history.csv").read_text().splitlines()[2].startswith("2,")


def test_two_stage_run_resumes_during_finetuning_and_reports(make_tree, tmp_path):
    """48 images: killed after the first fine-tuning epoch, resumed, then `cnnlab report`."""
    run_dir = tmp_path / "run"
    epochs_seen: list[tuple[int, str]] = []

    def stop_in_finetuning(epoch: int, logs: dict) -> None:
        epochs_seen.append((logs["epoch"], logs.get("stage", "")))
        if logs.get("stage") == "finetune":
            raise Interrupt

    data = str(make_tree(tmp_path / "data", per_class=16))
    with pytest.raises(Interrupt):
        api.train(_config(), data=data, run_dir=run_dir, progress=False, log=lambda s: None,
                  epoch_callback=stop_in_finetuning)
    assert epochs_seen == [(1, ""), (2, "finetune")]
    rows = RunDir(run_dir).read_history()
    assert [(r["epoch"], r["stage"]) for r in rows] == [(1, ""), (2, "finetune")]

    logs: list[str] = []
    run = api.resume(run_dir, progress=False, log=logs.append)
    assert any("resuming" in line and "after epoch 1 of 2" in line for line in logs), logs
    rows = RunDir(run_dir).read_history()
    assert [(r["epoch"], r["stage"]) for r in rows] == [(1, ""), (2, "finetune"), (3, "finetune")]
    assert run.metrics["epochs_run"] == 3
    assert all(p.requires_grad for p in run.fit.model.backbone.parameters())

    from cnnlab.cli.main import main

    assert main(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["training"]["epochs_run"] == 3
    assert [h["stage"] for h in rep["training"]["history"]] == ["", "finetune", "finetune"]
    assert rep["eval_split"] == "val" and rep["evaluation"]["count"] == 12  # 25% of 48 images


def test_fast_recipe_run_reports_what_training_measured(make_tree, tmp_path):
    """The report reloads the fast-recipe run and scores the same split as training did, identically."""
    cfg = {"name": "fast-report", "seed": 0, "data": {"validation_split": 0.25},
           "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
                     "kwargs": {"widths": [16, 32, 32]}},
           "train": {"recipe": "fast", "epochs": 2, "batch_size": 16, "precision": "fp32", "tta": "flip",
                     "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
                     "recipe_options": {"workers": 1}}}
    data = str(make_tree(tmp_path / "data", per_class=16))
    run = api.train(cfg, data=data, run_dir=tmp_path / "run", progress=False, log=lambda s: None)
    from cnnlab.reports import write_run_report

    html = write_run_report(tmp_path / "run", latency_runs=2, log=lambda s: None)
    rep = json.loads((html.parent / "report.json").read_text())
    assert rep["eval_split"] == "val" and rep["evaluation"]["count"] == run.metrics["val"]["count"] == 12
    assert rep["evaluation"]["tta"] == "flip"
    assert rep["evaluation"]["loss"] == pytest.approx(run.metrics["val"]["loss"], rel=1e-5)
    assert rep["evaluation"]["accuracy"] == run.metrics["val"]["accuracy"]
    assert [h["epoch"] for h in rep["training"]["history"]] == [1, 2]
