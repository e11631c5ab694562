"""The HTML run report: its numbers, its figures, its label-error list, and a real browser opening it.

One tiny model (resnet10t, 2 epochs on 3 colour classes of 16x16 images) is trained once for the
module. Two test images are planted in the wrong class folder (red images labelled "green") so the
likely-label-error list has something it must find.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.errors import CnnlabError, ModelError
from cnnlab.reports import gallery
from cnnlab.reports import html as h

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"blue": (40, 40, 200), "green": (40, 200, 40), "red": (200, 40, 40)}
PLANTED = 2


def make_folder(root: Path, n_train: int = 30, n_test: int = 10, size: int = 16) -> Path:
    """train/ and test/ class folders of noisy solid-colour PNGs, plus PLANTED red images under test/green."""
    rng = np.random.default_rng(0)

    def save(path: Path, colour: tuple[int, int, int]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        im = np.clip(rng.normal(colour, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(path)

    for split, n in (("train", n_train), ("test", n_test)):
        for name, colour in COLOURS.items():
            for i in range(n):
                save(root / split / name / f"{i}.png", colour)
    for i in range(PLANTED):
        save(root / "test" / "green" / f"planted_{i}.png", COLOURS["red"])
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cnnlab import api

    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("report")
    mp.setenv("CNNLAB_HOME", str(base / "home"))
    data = make_folder(base / "data")
    cfg = {"name": "tiny-report", "model": {"arch": "resnet10t"},
           "train": {"epochs": 2, "batch_size": 16, "precision": "fp32",
                     "checkpoint": {"monitor": "val_accuracy"}}}
    run = api.train(cfg, data=str(data), run_dir=base / "run", progress=False, log=lambda s: None)
    yield run.run_dir
    mp.undo()


@pytest.fixture(scope="module")
def report(trained):
    from cnnlab.reports import write_run_report

    path = write_run_report(trained, n_worst=8, label_error_confidence=0.5, latency_runs=3, log=lambda s: None)
    return path, json.loads((path.parent / "report.json").read_text())


# ----------------------------------------------------------------------------- pure helpers


def test_label_error_rows_keep_only_confident_wrong_predictions(tmp_path):
    probs = np.array([[0.05, 0.95], [0.2, 0.8], [0.97, 0.03], [0.5, 0.5]])
    y = np.array([0, 0, 0, 1])
    rows = gallery.label_error_rows(probs, y, ["a", "b"], ["i0", "i1", "i2", "i3"], min_confidence=0.8)
    assert [r["image"] for r in rows] == ["i0", "i1"]  # most confident first; i2 is right, i3 not confident
    assert rows[0] == {"index": 0, "image": "i0", "true_label": "a", "predicted_label": "b",
                       "confidence": 0.95, "p_true": 0.05}
    path = gallery.write_csv(rows, tmp_path / "e.csv", gallery.LABEL_ERROR_COLUMNS)
    back = list(csv.DictReader(path.open()))
    assert [r["image"] for r in back] == ["i0", "i1"] and list(back[0]) == list(gallery.LABEL_ERROR_COLUMNS)


def test_html_escapes_user_text_and_embeds_png(tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(png)
    out = h.table([{"name": "<b>x</b>", "n": 1234567, "p": 0.5}]) + h.figure(png, "a & b")
    assert "<b>x</b>" not in out and "&lt;b&gt;x&lt;/b&gt;" in out
    assert "1,234,567" in out and "0.5000" in out and "a &amp; b" in out
    b64 = re.search(r'src="data:image/png;base64,([^"]+)"', out).group(1)
    assert base64.b64decode(b64) == png.read_bytes()


# ----------------------------------------------------------------------------- the run report


def test_report_files_and_sections(report):
    path, rep = report
    out = path.parent
    assert path.name == "report.html" and out.name == "report"
    for name in ("example_images", "curves", "confusion_matrix", "per_class_recall", "reliability",
                 "reliability_temperature", "errors"):  # the run fitted a temperature: before / after it
        png = Path(rep["figures"][name])
        assert png.parent == out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    text = path.read_text()
    for anchor in ("overview", "data", "model", "training", "evaluation", "errors", "explanations", "calibration",
                   "speed"):
        assert f'<section id="{anchor}">' in text
    # Self-contained: eight embedded PNGs (one: the Grad-CAM overlays) and nothing fetched from elsewhere.
    assert Path(rep["explanations"]["png"]).parent == out and rep["error_analysis"]
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 8
    assert "balanced accuracy" in text and "worst class recall" in text and "Recall per class" in text
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)
    assert "Keep-best checkpoint" in text  # the run kept best.safetensors
    assert '<a href="errors.csv">errors.csv</a>' in text and (out / "errors.csv").is_file()


def test_report_numbers_match_the_data_and_model(report, trained):
    from cnnlab.models.io import load_model
    from cnnlab.models.summary import count_parameters

    _, rep = report
    n_test = 3 * 10 + PLANTED
    ev = rep["evaluation"]
    assert ev["count"] == n_test and np.array(ev["confusion_matrix"]).sum() == n_test
    assert rep["data"]["splits"]["test"]["class_counts"] == {"blue": 10, "green": 10 + PLANTED, "red": 10}
    assert rep["data"]["splits"]["train"]["images"] + rep["data"]["splits"]["val"]["images"] == 90
    params = count_parameters(load_model(trained))
    assert rep["model"]["parameters"]["total"] == params["total"]
    assert sum(r["parameters"] for r in rep["model"]["layers"]) == params["total"]
    assert rep["model"]["flops"] > 0 and rep["model"]["input_size"] == 16
    assert rep["training"]["epochs_run"] == 2 and len(rep["training"]["history"]) == 2
    s = rep["speed"]
    assert s["latency_runs"] == 3 and s["latency_batch1_median_ms"] > 0 and s["inference_images_per_second"] > 0
    assert s["train_images_per_second"] == json.loads((trained / "metrics.json").read_text())[
        "train_images_per_second"]


def test_worst_gallery_and_planted_label_errors(report):
    path, rep = report
    worst = rep["worst"]
    assert len(worst) == 8
    p_true = [w["p_true"] for w in worst]
    assert p_true == sorted(p_true)
    rows = list(csv.DictReader((path.parent / "label_errors.csv").open()))
    planted = [r for r in rows if "planted_" in r["image"]]
    assert len(planted) == PLANTED, rows
    assert all(r["true_label"] == "green" and r["predicted_label"] == "red" and float(r["confidence"]) >= 0.5
               for r in planted)
    # The planted images are among the worst: a red image labelled green is as wrong as it gets.
    assert {w["image"] for w in worst[:PLANTED]} == {r["image"] for r in planted}
    errors = list(csv.DictReader((path.parent / "errors.csv").open()))
    assert [r["path"] for r in errors] == [w["image"] for w in worst]
    assert [float(r["p_true"]) for r in errors] == pytest.approx(p_true, abs=1e-6)


def test_the_run_written_by_training_has_the_error_analysis(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    ea = metrics["error_analysis"]
    assert ea == {"png": "figures/errors.png", "csv": "figures/errors.csv", "split": "test"}
    assert (trained / ea["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((trained / ea["csv"]).open()))
    assert len(rows) == 20  # 32 test images, k = 20
    planted = {r["path"] for r in rows[:PLANTED]}
    assert all("planted_" in p for p in planted), rows[:PLANTED]


def test_overfitting_warning_appears_only_when_flagged(report):
    from cnnlab.reports.run_report_html import render

    path, rep = report
    rep = dict(rep, config_yaml="name: x\n")
    assert rep["training"]["overfitting_from_epoch"] is None
    assert "Overfitting:" not in render(rep)
    rep["training"] = dict(rep["training"], overfitting_from_epoch=1)
    assert "Overfitting: from epoch 1" in render(rep)


def test_overfitting_is_detected_in_the_history():
    from cnnlab.reports.run_report import _training_summary

    hist = [{"epoch": e, "loss": 1.0 - 0.1 * e, "val_loss": v} for e, v in
            zip(range(1, 7), [0.9, 0.8, 0.85, 0.9, 0.95, 1.0])]
    t = _training_summary(hist, {})
    assert t["overfitting_from_epoch"] == 2 and t["best_val_loss_epoch"] == 2


def test_report_cli_writes_to_out(trained, tmp_path, capsys):
    from cnnlab.cli.main import main

    out = tmp_path / "rep"
    assert main(["report", str(trained), "--out", str(out), "--worst", "4", "--latency-runs", "1",
                 "--weights", "best"]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    rep = json.loads((out / "report.json").read_text())
    assert rep["weights"] == "best" and len(rep["worst"]) == 4


def test_report_refuses_unfinished_run(tmp_path, trained):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(trained / "config.yaml", partial / "config.yaml")
    from cnnlab.reports import write_run_report

    with pytest.raises(ModelError, match="partial: no model.safetensors"):
        write_run_report(partial)
    with pytest.raises(CnnlabError, match="nothing-here: no such folder"):
        write_run_report(tmp_path / "nothing-here")


# ----------------------------------------------------------------------------- a real browser

CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && e.target.tagName) || e.type)); }, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.title = 'CHECK images=' + imgs.length + ' bad=' + bad.length + ' errors=' + window.__errors.length;
});
</script>"""


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p),
                None)


def _browser_check(html_text: str, folder: Path) -> str:
    """Open a copy of the page (with the check script) in headless Chromium; return the title it set."""
    page = folder / "check.html"
    page.write_text(html_text.replace("<head>", "<head>\n" + CHECK_SCRIPT, 1))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={folder / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
           page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    m = re.search(r"<title>([^<]*)</title>", done.stdout)
    assert m, done.stdout[:500]
    return m.group(1)


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_opens_in_a_browser_with_every_figure_shown(report, tmp_path):
    path, _ = report
    text = path.read_text()
    assert _browser_check(text, tmp_path) == "CHECK images=8 bad=0 errors=0"  # per-class recall, overlays, T
    # The check can fail: a broken embedded image is caught.
    broken = text.replace("</main>", '<img src="data:image/png;base64,AAAA" alt="broken"></main>')
    assert _browser_check(broken, tmp_path) == "CHECK images=9 bad=1 errors=1"
