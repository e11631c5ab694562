"""A whole study in-process on tiny data: trials, pruning, failures, final fit, summary, figures."""

from __future__ import annotations

import json

import pytest

optuna = pytest.importorskip("optuna")
torch = pytest.importorskip("torch")

from optuna.trial import TrialState  # noqa: E402
from test_tuning_support import color_bundle, tiny_config  # noqa: E402

from cnnlab.config import config_from_dict  # noqa: E402
from cnnlab.tuning import tune  # noqa: E402
from cnnlab.tuning.space import parse_search  # noqa: E402
from cnnlab.tuning.storage import default_storage_url  # noqa: E402
from cnnlab.tuning.study import open_study  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))


def _enqueue(out, cfg, params_list):
    """Pre-set the first trials' values (the test then knows which trial is good or bad)."""
    settings = parse_search(config_from_dict(cfg))
    study = open_study(default_storage_url(out), cfg["name"], settings)
    for params in params_list:
        study.enqueue_trial(params)


def test_study_runs_trials_prunes_records_failures_and_retrains_the_best(tmp_path):
    out = tmp_path / "study"
    cfg = tiny_config(trials=4, pruner="median", pruner_startup_trials=1, pruner_warmup_epochs=0,
                      final_fit="train+val",
                      params={"train.optimizer.lr": {"type": "float", "low": 1e-6, "high": 3e-2, "log": True},
                              "model.arch": ["test_efficientnet", "no_such_net"]})
    cfg["train"]["epochs"] = 3
    _enqueue(out, cfg, [
        {"train.optimizer.lr": 1e-2, "model.arch": "test_efficientnet"},  # learns within an epoch
        {"train.optimizer.lr": 1e-6, "model.arch": "test_efficientnet"},  # stays at chance: pruned
        {"train.optimizer.lr": 1e-2, "model.arch": "no_such_net"},  # fails: unknown model
        {"train.optimizer.lr": 1.2e-2, "model.arch": "test_efficientnet"},  # learns as well as the first
    ])
    lines = []
    result = tune(cfg, data=color_bundle(), out=out, log=lines.append)

    trials = optuna.load_study(study_name="tiny", storage=default_storage_url(out)).get_trials()
    assert len(trials) == 4
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].value == pytest.approx(1.0)
    assert len(trials[1].intermediate_values) < 3  # stopped before its last epoch
    assert "ModelError" in trials[2].user_attrs["fail_reason"]
    assert "no_such_net" in trials[2].user_attrs["fail_reason"]

    s = json.loads((out / "summary.json").read_text())
    c = s["counts"]
    assert (c["slots"], c["completed"], c["pruned"], c["failed"], c["running"], c["waiting"]) == (4, 2, 1, 1, 0, 0)
    assert s["epochs_spent"] == sum(len(t.intermediate_values) for t in trials)
    assert s["epochs_spent"] < s["epochs_without_pruning"] == 12
    assert s["best"]["value"] == pytest.approx(1.0)
    assert s["best"]["params"]["model.arch"] == "test_efficientnet"
    assert result.best_value == pytest.approx(1.0)
    failed = [r for r in s["trials"] if r["state"] == "fail"]
    assert all(r["fail_reason"] for r in failed)

    # The final fit trained on train + validation (96 images) and was tested on the test split.
    f = s["final_fit"]
    assert f["status"] == "done" and f["mode"] == "train+val"
    assert f["train_samples"] == 96 and f["test"]["count"] == 30
    assert 0.0 <= f["test"]["accuracy"] <= 1.0
    assert (out / "final" / "model.safetensors").is_file()
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, s["figures"]
    md = (out / "summary.md").read_text()
    assert "## Best trial" in md and "ModelError" in md and "pruned" in md
    assert any("pruned" in line for line in lines) and any("failed" in line for line in lines)


def test_rerunning_a_finished_study_adds_nothing_and_reuses_the_final_fit(tmp_path):
    out = tmp_path / "study"
    cfg = tiny_config(trials=2, final_fit="train")
    tune(cfg, data=color_bundle(), out=out, log=lambda s: None)
    first = json.loads((out / "summary.json").read_text())
    assert first["final_fit"]["status"] == "done"
    assert first["final_fit"]["train_samples"] == 72  # the trials' split: 75% of 96
    lines = []
    tune(cfg, data=color_bundle(), out=out, log=lines.append)
    again = json.loads((out / "summary.json").read_text())
    assert len(optuna.load_study(study_name="tiny", storage=default_storage_url(out)).trials) == 2
    assert again["counts"]["completed"] == 2
    assert again["final_fit"]["status"] == "done (earlier run)"
    assert not any(line.startswith("trial ") for line in lines)


def test_figures_are_skipped_with_a_reason_when_too_few_trials_complete(tmp_path):
    out = tmp_path / "study"
    cfg = tiny_config(trials=1)
    tune(cfg, data=color_bundle(), out=out, log=lambda s: None)
    s = json.loads((out / "summary.json").read_text())
    assert s["figures"]["param_importances"].startswith("skipped: needs at least 2 completed trials")
    assert (out / "figures" / "optimization_history.png").is_file()
    assert s["final_fit"]["status"] == "done" and s["final_fit"]["mode"] == "none"
    assert s["final_fit"]["test"]["count"] == 30


def test_a_study_with_another_space_is_not_silently_mixed(tmp_path):
    out = tmp_path / "study"
    tune(tiny_config(trials=1), data=color_bundle(), out=out, log=lambda s: None)
    other = tiny_config(trials=1, params={"model.head.dropout": [0.0, 0.5]})
    from cnnlab.errors import ConfigError

    with pytest.raises(ConfigError, match="searches another space"):
        tune(other, data=color_bundle(), out=out, log=lambda s: None)


def test_a_validation_objective_without_validation_split_is_refused(tmp_path):
    from cnnlab.errors import ConfigError

    cfg = tiny_config(trials=1)
    cfg["data"]["validation_split"] = 0.0
    with pytest.raises(ConfigError, match="needs a validation split"):
        tune(cfg, data=color_bundle(), out=tmp_path / "s", log=lambda s: None)
