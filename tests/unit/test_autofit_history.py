"""The auto-fit priors' history (cnnlab.autofit.history): what the planner learns from this project's
own results, bounded, switchable, safe to write from two fits at once. No training here: the
planner runs on fake speeds (test_autofit_plan.py's), the records are written by hand; a real fit
writing the history is in test_autofit_fit.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cnnlab.autofit import history, planner
from cnnlab.autofit.presets import get_preset
from cnnlab.autofit.priors import predicted_accuracy, skill
from cnnlab.autofit.profile import DataProfile

ZEN3 = {"fastnet": (700.0, True), "frozen": (33.0, True), "finetune_last": (30.0, True), "finetune": (50.0, True)}
#: 3,000 training images of 10 classes at 32 px: in 15 minutes the fine-tuned base is chosen, the
#: frozen features 0.04 behind it (test_autofit_plan.py's numbers)
DATA = DataProfile(count=3000, val_count=600, test_count=1000, num_classes=10, class_names=[f"c{i}" for i in range(10)],
                   per_class_min=300, image_size=32, mixed_sizes=False,
                   file_sizes={"min": 32, "median": 32, "max": 32}, validation="given")


def rec(kind: str, delta: float, *, per_class: int = 300, epochs: float = 3.0, side: int = 32,
        balanced: bool = False, width: int | None = None, classes: int = 10) -> dict:
    """A record of ``kind`` that reached ``delta`` more than today's prior for its own inputs."""
    prior = predicted_accuracy(kind, per_class=per_class, epochs=epochs, num_classes=classes, image_side=side,
                               width=width)
    return {"kind": kind, "run": kind, "width": width, "per_class": per_class, "epochs": epochs,
            "num_classes": classes, "image_side": side, "predicted_val_accuracy": 0.5, "prior_correction": 0.0,
            "actual_val_accuracy": round(prior + delta, 6), "balanced": balanced, "date": "2026-12-03T00:00:00+00:00",
            "cnnlab_version": "0.1.0"}


def chosen(cands: list[planner.CandidatePlan]) -> list[str]:
    return [c.kind for c in cands if c.chosen]


def by_kind(cands: list[planner.CandidatePlan]) -> dict[str, planner.CandidatePlan]:
    return {c.kind: c for c in cands}


def test_the_history_lives_under_the_cnnlab_home_and_is_switchable(isolated_home, monkeypatch, tmp_path):
    assert history.history_path() == isolated_home / "priors" / "history.jsonl"
    monkeypatch.setenv(history.HISTORY_ENV, "0")
    assert history.history_path() is None
    assert not history.append([rec("fastnet", 0.0)]) and not (isolated_home / "priors").exists()
    assert history.corrections_for(DATA, balanced=False).by_kind == {}
    monkeypatch.setenv(history.HISTORY_ENV, str(tmp_path / "mine.jsonl"))
    assert history.history_path() == tmp_path / "mine.jsonl"


def test_a_kind_that_under_delivers_loses_the_planners_choice(monkeypatch):
    preset = get_preset("medium_quality")
    before = by_kind(planner.choose(DATA, preset, ZEN3, available=900))
    assert chosen(list(before.values())) == ["finetune"]
    # the fine-tuned base reached 0.15 less than its prior predicted, 20 times, on data like this;
    # records of other data (per-class decade, photos, imbalanced) and of other kinds do not count
    history.append([rec("finetune", -0.15) for _ in range(20)]
                   + [rec("finetune", +0.1, per_class=4500), rec("finetune", +0.1, side=224),
                      rec("finetune", +0.1, balanced=True), rec("fastnet", 0.0, per_class=4500, width=48)])
    corr = history.corrections_for(DATA, balanced=False)
    assert corr.records_read == 24 and set(corr.by_kind) == {"finetune"}
    residual = skill(0.5 - 0.15, 10) - skill(0.5, 10)  # -0.15 accuracy on 10 classes: -0.1667 skill
    assert corr.by_kind["finetune"]["mean_residual"] == pytest.approx(residual, abs=1e-4)
    assert corr.shift("finetune") == pytest.approx(20 / 25 * residual, abs=1e-4)  # shrunk: n / (n + 5)
    after = by_kind(planner.choose(DATA, preset, ZEN3, available=900, corrections=corr))
    assert chosen(list(after.values())) == ["frozen"]  # the choice moved
    drop = before["finetune"].predicted_val_accuracy - after["finetune"].predicted_val_accuracy
    assert drop == pytest.approx(0.9 * 0.8 * 0.1667, abs=2e-3)  # 80% of the 0.15 it under-delivered
    assert after["frozen"].predicted_val_accuracy == pytest.approx(before["frozen"].predicted_val_accuracy)
    assert (after["finetune"].prior_records, after["frozen"].prior_records) == (20, 0)
    assert after["finetune"].prior_correction == pytest.approx(corr.shift("finetune"))
    # the same history, turned off: the bundled priors' choice
    monkeypatch.setenv(history.HISTORY_ENV, "off")
    off = planner.choose(DATA, preset, ZEN3, available=900, corrections=history.corrections_for(DATA, balanced=False))
    assert chosen(off) == ["finetune"]


def test_plan_json_records_the_correction_and_where_it_came_from(tmp_path):
    history.append([rec("finetune", -0.15) for _ in range(5)])
    lines: list[str] = []
    plan = planner.make_plan(DATA, get_preset("medium_quality"), time_limit=950, elapsed=lambda: 0.0,
                             measure=lambda k: ZEN3[k][0], precision="fp32", device="cpu", machine="test",
                             log=lines.append, corrections=history.corrections_for(DATA, balanced=False))
    plan.write(tmp_path / "plan.json")
    saved = json.loads((tmp_path / "plan.json").read_text())
    tuned = next(c for c in saved["candidates"] if c["kind"] == "finetune")
    assert tuned["prior_records"] == 5 and tuned["prior_correction"] == pytest.approx(0.5 * -0.1667, abs=1e-3)
    assert saved["priors"]["history"] == str(history.history_path()) and saved["priors"]["shrinkage_k"] == 5
    assert any(line.startswith("priors: corrected from") and "finetune -0.083 (5 records)" in line for line in lines)
    assert planner.FitPlan.from_dict(saved).candidate("finetune").prior_records == 5  # a resumed fit keeps it


def test_the_correction_is_shrunk_bounded_and_never_feeds_on_itself():
    one = history.corrections([rec("fastnet", -0.09)], per_class=300, image_side=32, balanced=False)
    # -0.09 accuracy on 10 classes is -0.1 skill; one record moves it by a sixth of that
    assert one.shift("fastnet") == pytest.approx(-0.1 / 6, abs=1e-4) and one.records("fastnet") == 1
    assert one.shift("fastnet_seed2") == one.shift("fastnet")  # a seed run shares its kind's correction
    wild = history.corrections([rec("fastnet", -0.6)] * 200, per_class=300, image_side=32, balanced=False)
    assert wild.shift("fastnet") == -history.MAX_SHIFT
    # the residual is against today's prior for the record's own inputs, not the plan's (corrected)
    # prediction: a record that met the prior corrects nothing, whatever the plan had predicted
    met = rec("fastnet", 0.0, epochs=4.0)
    met["predicted_val_accuracy"], met["prior_correction"] = 0.9, 0.2
    assert history.corrections([met] * 10, per_class=300, image_side=32, balanced=False).shift("fastnet") == 0.0


def test_the_history_keeps_the_last_records_and_skips_bad_lines(monkeypatch):
    monkeypatch.setattr(history, "MAX_RECORDS", 5)
    path = history.history_path()
    assert history.append([rec("frozen", i / 100) for i in range(8)])
    kept = history.load(path)
    assert len(kept) == 5 and [r["actual_val_accuracy"] for r in kept] == \
        [rec("frozen", i / 100)["actual_val_accuracy"] for i in range(3, 8)]
    with path.open("a", encoding="utf-8") as fh:  # a hand edit, a line cut short, a wrong type
        fh.write("not json\n" + json.dumps(rec("frozen", 0.0))[:40] + "\n"
                 + json.dumps({**rec("frozen", 0.0), "epochs": "three"}) + "\n")
    warnings: list[str] = []
    assert len(history.load(path, log=warnings.append)) == 5
    assert len(warnings) == 1 and "3 unreadable line(s) skipped (line 6, 7, 8)" in warnings[0]
    assert history.append([rec("frozen", 0.2)], log=warnings.append)  # the next write drops them
    assert len(path.read_text().splitlines()) == 5 and len(history.load(path, log=pytest.fail)) == 5


def test_two_fits_writing_at_once_lose_nothing():
    def writer(i: int) -> None:
        for j in range(10):
            assert history.append([rec("fastnet", (i * 10 + j) / 1000)])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = history.history_path().read_text().splitlines()
    assert len(lines) == 40 and len({json.loads(line)["actual_val_accuracy"] for line in lines}) == 40


def test_a_history_that_cannot_be_written_costs_a_warning_not_the_fit(monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv(history.HISTORY_ENV, str(tmp_path / "afile" / "history.jsonl"))  # its folder is a file
    warnings: list[str] = []
    assert not history.append([rec("frozen", 0.0)], log=warnings.append)
    assert len(warnings) == 1 and "not written" in warnings[0]
    assert history.corrections_for(DATA, balanced=False, log=warnings.append).by_kind == {}


def test_a_finished_fast_net_is_recorded_with_the_width_it_trained(tmp_path):
    run = tmp_path / "models" / "fastnet_seed2"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"plan": {"widths": [48, 192, 192], "epochs": 9.5}, "epochs_run": 10}))
    plan = planner.FitPlan(time_limit=600, preset="high_quality", precision="bf16", device="cpu", machine="test",
                           profile=DATA.to_dict(), probe_seconds=1, available_seconds=580, reserve_seconds=15)
    cand = planner.CandidatePlan("fastnet_seed2", 700.0, True, chosen=True, epochs=9.5, predicted_val_accuracy=0.62,
                                 prior_correction=-0.05, prior_records=7, status="done", actual_epochs=10,
                                 actual_val_accuracy=0.6)
    assert history.record(plan, cand, run, balanced=True)
    (r,) = history.load()
    assert (r["kind"], r["run"], r["width"], r["epochs"], r["per_class"], r["image_side"]) == \
        ("fastnet", "fastnet_seed2", 48, 10, 300, 32)
    assert (r["predicted_val_accuracy"], r["prior_correction"], r["actual_val_accuracy"], r["balanced"]) == \
        (0.62, -0.05, 0.6, True)
    unfinished = planner.CandidatePlan("frozen", 30.0, True, status="skipped")
    assert not history.record(plan, unfinished, tmp_path, balanced=False) and len(history.load()) == 1
