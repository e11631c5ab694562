"""Auto-fit's decisions without training: planner (fake speeds and a fake clock), presets,
leaderboard, ensemble weights and the epoch deadline."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.autofit import planner
from cnnlab.autofit.candidates import KINDS, build_config, ema_decay
from cnnlab.autofit.ensemble import blend, caruana_weights
from cnnlab.autofit.leaderboard import rank
from cnnlab.autofit.presets import PRESETS, get_preset
from cnnlab.autofit.priors import predicted_accuracy
from cnnlab.autofit.profile import DataProfile
from cnnlab.autofit.runner import deadline_callback
from cnnlab.errors import ConfigError
from cnnlab.training.callbacks import StopTraining


def profile(count: int, classes: int, side: int, val: int = 0, test: int = 0, mixed: bool = False) -> DataProfile:
    return DataProfile(count=count, val_count=val, test_count=test, num_classes=classes,
                       class_names=[f"c{i}" for i in range(classes)], per_class_min=count // classes,
                       image_size=side, mixed_sizes=mixed, file_sizes={"min": side, "median": side, "max": side},
                       validation="10% held out")


CIFAR = profile(45_000, 10, 32, val=5_000, test=10_000)
PHOTOS = profile(240, 3, 224, val=60, test=0, mixed=True)
ZEN3 = {"fastnet": (700.0, True), "frozen": (33.0, True), "finetune_last": (30.0, True), "finetune": (50.0, True)}


def chosen(cands: list[planner.CandidatePlan]) -> list[str]:
    return [c.kind for c in cands if c.chosen]


def test_cifar10_in_ten_minutes_gets_the_fast_net_and_no_frozen_features():
    cands = planner.choose(CIFAR, get_preset("medium_quality"), ZEN3, available=560)
    assert chosen(cands) == ["fastnet"]
    fast, frozen = cands
    assert fast.share_seconds == pytest.approx(560)
    # 45,000 + 5,000 + 10,000 images at 33 img/s is 30 minutes of features: it cannot fit
    assert not frozen.feasible and "needs" in frozen.why
    assert 6 <= fast.epochs <= 8  # the fast recipe reached 8.2 epochs of this width in 10 minutes here


def test_a_few_hundred_photos_get_pretrained_transfer_learning():
    cands = planner.choose(PHOTOS, get_preset("medium_quality"), ZEN3, available=110)
    assert chosen(cands) == ["frozen"]
    frozen = next(c for c in cands if c.kind == "frozen")
    fast = next(c for c in cands if c.kind == "fastnet")
    assert frozen.predicted_val_accuracy > fast.predicted_val_accuracy
    # a fixed-cost candidate is given its own time, not the whole budget
    assert frozen.share_seconds == pytest.approx(frozen.predicted_seconds) and frozen.share_seconds < 110


def test_high_quality_adds_a_second_model_only_when_it_fits_beside_the_main_one():
    data = profile(3_000, 10, 32, val=600, test=1_000)
    roomy = planner.choose(data, get_preset("high_quality"), ZEN3, available=900)
    assert sorted(chosen(roomy)) == ["finetune_last", "frozen"]
    assert planner.run_order(roomy) == ["frozen", "finetune_last"]  # the stretchable one last
    assert sum(c.share_seconds for c in roomy if c.chosen) == pytest.approx(900)
    assert "at most 2" in next(c for c in roomy if c.kind == "fastnet").why
    tight = planner.choose(data, get_preset("high_quality"), ZEN3, available=100)
    assert chosen(tight) == ["fastnet"]  # features of 4,600 images (142 s) and an epoch at 30 img/s do not fit
    medium = planner.choose(data, get_preset("medium_quality"), ZEN3, available=900)
    assert len(chosen(medium)) == 1  # the preset trains one model


def test_nothing_fits_falls_back_to_the_fast_net():
    cands = planner.choose(CIFAR, get_preset("medium_quality"), {"fastnet": (300.0, True), "frozen": (1.0, True)},
                           available=30)
    assert chosen(cands) == ["fastnet"] and "nothing fits" in cands[0].why
    assert 0 < cands[0].epochs < 1 and cands[0].predicted_val_accuracy > 0.1  # a partial epoch is predicted too


def test_make_plan_measures_within_five_percent_of_the_budget():
    now = [0.0]
    measured = []

    def measure(kind: str) -> float:
        measured.append(kind)
        now[0] += planner.PROBE_COST_S[kind]
        return ZEN3[kind][0] / 2  # this machine runs at half the reference speed

    plan = planner.make_plan(PHOTOS, get_preset("best_quality"), time_limit=120, elapsed=lambda: now[0],
                             measure=measure, precision="fp32", device="cpu", machine="test", log=lambda s: None)
    assert plan.probe_seconds <= 0.05 * 120
    assert measured and len(measured) < 4  # 6 s of probing buys two or three candidates, not four
    assert "frozen" in measured  # the cheap probe of a pretrained base is never crowded out
    assert "fastnet" not in measured  # at 224 px its probe costs 49 times CIFAR's: more than the share
    unmeasured = [c for c in plan.candidates if not c.measured]
    area = (PHOTOS.image_size / 32) ** 2  # the fast net's reference speed is for 32-px images
    assert unmeasured and all(c.images_per_second == pytest.approx(
        planner.REFERENCE_IPS[c.kind] / (area if c.kind == "fastnet" else 1) / 2) for c in unmeasured)
    assert plan.available_seconds == pytest.approx(120 - plan.probe_seconds - plan.reserve_seconds, abs=0.1)
    big = planner.make_plan(PHOTOS, get_preset("best_quality"), time_limit=1800, elapsed=lambda: now[0],
                            measure=measure, precision="fp32", device="cpu", machine="test", log=lambda s: None)
    assert all(c.measured for c in big.candidates)


def test_a_budget_too_small_to_measure_uses_the_reference_speeds():
    plan = planner.make_plan(PHOTOS, get_preset("medium_quality"), time_limit=19, elapsed=lambda: 0.0,
                             measure=lambda k: pytest.fail("measured"), precision="fp32", device="cpu",
                             machine="test", log=lambda s: None)
    assert not any(c.measured for c in plan.candidates)
    assert plan.probe_seconds == 0


def test_priors_follow_the_data_size_and_the_classes():
    few = predicted_accuracy("fastnet", per_class=20, epochs=16, num_classes=10, image_side=32)
    many = predicted_accuracy("fastnet", per_class=4500, epochs=16, num_classes=10, image_side=32)
    assert many == pytest.approx(0.87) and few < 0.6
    assert predicted_accuracy("frozen", per_class=20, epochs=1, num_classes=10, image_side=32) > few
    assert predicted_accuracy("frozen", per_class=80, epochs=1, num_classes=2, image_side=224) > \
        predicted_accuracy("frozen", per_class=80, epochs=1, num_classes=10, image_side=224)


def test_presets_are_documented_and_unknown_ones_refused():
    assert set(PRESETS) == {"medium_quality", "high_quality", "best_quality"}
    for p in PRESETS.values():
        assert set(p.kinds) <= set(KINDS) and p.max_models >= 1
    assert [PRESETS[n].max_models for n in ("medium_quality", "high_quality", "best_quality")] == [1, 2, 3]
    assert get_preset(None).name == "medium_quality"
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        get_preset("fast")


def test_candidate_configs():
    fast = build_config("fastnet", seconds=90, epochs=1)
    assert fast.train.recipe == "fast" and fast.train.recipe_options["time_limit_minutes"] == pytest.approx(1.5)
    assert fast.train.recipe_options["size"] == "auto"
    frozen = build_config("frozen", seconds=90, epochs=30)
    assert frozen.model.freeze_base and frozen.model.pretrained == "offline" and frozen.train.cache_features == "on"
    last = build_config("finetune_last", seconds=90, epochs=3, tta="flip")
    assert last.model.unfreeze_last == 2 and not last.model.freeze_base and last.train.tta == "flip"
    assert build_config("finetune", seconds=90, epochs=2).model.input_size == 96
    assert build_config("finetune", seconds=90, epochs=2, ema=0.99).train.ema == 0.99
    assert build_config("finetune", seconds=90, epochs=3, soup_top_k=3).train.checkpoint.save_top_k == 3
    assert ema_decay(50) is None and ema_decay(1000) == 0.99 and ema_decay(10**6) == 0.999


def test_leaderboard_ranks_by_validation_then_speed():
    rows = rank([{"model": "a", "val_accuracy": 0.8, "fit_seconds": 10},
                 {"model": "b", "val_accuracy": 0.9, "fit_seconds": 50},
                 {"model": "c", "val_accuracy": 0.8, "fit_seconds": 5}])
    assert [r["model"] for r in rows] == ["b", "c", "a"] and [r["rank"] for r in rows] == [1, 2, 3]


def test_caruana_weights_favour_the_member_that_lowers_validation_loss():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    good = np.full((200, 3), 0.1)
    good[np.arange(200), y] = 0.8
    noise = rng.dirichlet(np.ones(3), 200)
    w = caruana_weights([noise, good], y)
    assert w.sum() == pytest.approx(1.0) and w[1] > 0.9
    same = caruana_weights([good, good.copy()], y)
    assert same[0] == 1.0  # ties go to the earlier (better-ranked) member
    mixed = blend([good, noise], [0.75, 0.25])
    assert np.allclose(mixed.sum(1), 1.0, atol=1e-5)
    assert np.allclose(mixed, 0.75 * good + 0.25 * noise, atol=1e-6)


def test_deadline_callback_stops_when_the_next_epoch_would_not_fit():
    now = [100.0]
    cb = deadline_callback(end=130.0, eval_seconds=5.0, clock=lambda: now[0], log=lambda s: None)
    cb(0, {"seconds": 10.0})  # 100 + 11 + 5 <= 130: go on
    now[0] = 115.0
    with pytest.raises(StopTraining, match="share of the budget"):
        cb(1, {"seconds": 10.0})  # 115 + 11 + 5 > 130
