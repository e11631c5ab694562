"""The search section: the study's II.5 space, parameter sampling, and errors that name the fault."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from cnnlab.config import config_from_dict, load_config  # noqa: E402
from cnnlab.errors import ConfigError  # noqa: E402
from cnnlab.tuning.space import parse_search  # noqa: E402
from cnnlab.utils.durations import parse_optional_duration as parse_duration  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
II5 = ROOT / "experiments" / "mobilenet" / "II.5.yaml"

BASE = {
    "name": "t",
    "model": {"arch": "test_efficientnet"},
    "search": {"params": {"train.optimizer.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}},
}


def settings_for(params=None, **section):
    data = copy.deepcopy(BASE)
    if params is not None:
        data["search"]["params"] = params
    data["search"].update(section)
    return parse_search(config_from_dict(data))


def test_ii5_declares_the_study_space_and_protocol():
    cfg = load_config(II5)
    s = parse_search(cfg)
    space = {p.key: p for p in s.params}
    assert set(space) == {"model.head.units", "model.head.dropout", "model.head.l2", "train.optimizer.lr",
                          "train.schedule.decay_steps", "train.schedule.decay_rate"}
    u = space["model.head.units"]
    assert (u.type, u.low, u.high, u.step, u.log) == ("int", 256, 896, 128, False)
    d = space["model.head.dropout"]
    assert (d.type, d.low, d.high, d.step) == ("float", 0.2, 0.5, 0.1)
    l2 = space["model.head.l2"]
    assert (l2.type, l2.low, l2.high, l2.step, l2.log) == ("float", 1e-5, 1e-2, None, True)
    lr = space["train.optimizer.lr"]
    assert (lr.type, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    ds = space["train.schedule.decay_steps"]
    assert (ds.type, ds.low, ds.high, ds.step) == ("int", 3000, 10000, 1000)
    dr = space["train.schedule.decay_rate"]
    assert (dr.type, dr.low, dr.high, dr.step) == ("float", 0.6, 0.96, 0.03)
    # KerasTuner BayesianOptimization(max_trials=20, num_initial_points=5), objective val_accuracy.
    assert (s.trials, s.initial_random, s.sampler, s.objective, s.direction) == (20, 5, "gp", "val_accuracy",
                                                                                  "maximize")
    # 80/20 split seeded with 42; EarlyStopping(val_loss, patience 3, restore best) in every trial.
    assert (cfg.data.validation_split, cfg.data.split_method, cfg.seed) == (0.2, "stratified", 42)
    es = cfg.train.early_stopping
    assert (es.monitor, es.patience, es.restore_best_weights, es.start_from_epoch) == ("val_loss", 3, True, 0)
    assert cfg.train.schedule.name == "exponential" and cfg.train.schedule.decay_steps_fraction is None
    # The network is Model II.1's: MobileNet v1 from scratch, max pooling, Dense head, checkpoint.
    assert (cfg.model.arch, cfg.model.head.pooling, cfg.model.pretrained) == ("mobilenetv1_100", "max", None)
    assert cfg.train.epochs == 30 and cfg.train.batch_size == 128


def test_ii5_trials_draw_values_on_the_study_grid():
    s = parse_search(load_config(II5))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(60):
        trial = study.ask()
        values = {p.key: p.suggest(trial) for p in s.params}
        study.tell(trial, 0.5)
        seen.append(values)
    units = {v["model.head.units"] for v in seen}
    assert units <= {256, 384, 512, 640, 768, 896} and len(units) > 3
    assert {round(v["model.head.dropout"], 6) for v in seen} <= {0.2, 0.3, 0.4, 0.5}
    assert {v["train.schedule.decay_steps"] for v in seen} <= set(range(3000, 10001, 1000))
    grid = {round(0.6 + 0.03 * k, 6) for k in range(13)}
    assert {round(v["train.schedule.decay_rate"], 6) for v in seen} <= grid
    for v in seen:
        assert 1e-5 <= v["model.head.l2"] <= 1e-2 and 1e-4 <= v["train.optimizer.lr"] <= 1e-2
    # log scale: about half the learning rates fall below the geometric middle (1e-3)
    below = sum(v["train.optimizer.lr"] < 1e-3 for v in seen)
    assert 15 <= below <= 45


def test_a_list_is_a_categorical_parameter_and_types_are_inferred():
    s = settings_for({"train.batch_size": [16, 32], "model.head.pooling": ["max", "avg"],
                      "model.head.units": {"low": 8, "high": 64, "step": 8},
                      "model.head.dropout": {"low": 0.0, "high": 0.5}})
    kinds = {p.key: (p.type, p.choices) for p in s.params}
    assert kinds["train.batch_size"] == ("categorical", (16, 32))
    assert kinds["model.head.pooling"] == ("categorical", ("max", "avg"))
    assert kinds["model.head.units"][0] == "int" and kinds["model.head.dropout"][0] == "float"
    assert (s.trials, s.sampler, s.pruner, s.final_fit) == (20, "tpe", "median", "train+val")


def test_nested_sections_and_set_overrides_become_dotted_keys():
    cfg = load_config(II5, ["search.params.train.batch_size=[32, 64]",
                            "search.params.model.head.units={type: int, low: 128, high: 256, step: 64}"])
    space = {p.key: p for p in parse_search(cfg).params}
    assert space["train.batch_size"].choices == (32, 64)
    assert (space["model.head.units"].low, space["model.head.units"].high) == (128, 256)
    assert len(space) == 7
    s = settings_for({"model": {"head": {"dropout": [0.1, 0.3]}}})
    assert [p.key for p in s.params] == ["model.head.dropout"]


def test_val_loss_objective_is_minimised_and_overrides_win():
    s = settings_for(objective="val_loss")
    assert s.direction == "minimize"
    data = copy.deepcopy(BASE)
    s2 = parse_search(config_from_dict(data), trials=7, sampler="random", pruner="none", final_fit="none")
    assert (s2.trials, s2.sampler, s2.pruner, s2.final_fit) == (7, "random", "none", "none")


@pytest.mark.parametrize("params, fragment", [
    ({"model.head.unitz": {"type": "int", "low": 1, "high": 2}}, "unknown config key 'unitz' in model.head"),
    ({"modle.head.units": {"type": "int", "low": 1, "high": 2}}, "unknown config key 'modle'"),
    ({"model.head": {"type": "int", "low": 1, "high": 2}}, "model.head: is a section"),
    ({"model.head.units.x": {"type": "int", "low": 1, "high": 2}}, "model.head.units is a value"),
    ({"model.head.units": {"type": "int", "low": 64, "high": 8}}, "low (64) is greater than high (8)"),
    ({"model.head.dropout": {"type": "float", "low": 0.5, "high": 0.1}}, "low (0.5) is greater than high (0.1)"),
    ({"train.batch_size": {"type": "float", "low": 8, "high": 64}},
     "a float parameter cannot set this int config key (use type int)"),
    ({"model.head.units": {"type": "int", "low": 8.5, "high": 64}}, "needs whole numbers"),
    ({"model.head.l2": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "log-scale range needs low > 0"),
    ({"model.head.l2": {"type": "float", "low": 1e-4, "high": 0.1, "log": True, "step": 0.01}},
     "'step' and 'log: true' cannot be combined"),
    ({"model.head.dropout": {"type": "float", "low": 0.1, "high": 0.5, "step": 0.3}}, "not a multiple of step"),
    ({"model.head.dropout": {"type": "float", "low": 0.1, "high": 0.5, "stepp": 0.1}}, "unknown option 'stepp'"),
    ({"model.head.dropout": {"type": "decimal", "low": 0.1, "high": 0.5}}, "'decimal' is not one of"),
    ({"model.head.dropout": {"type": "float", "low": "a lot", "high": 0.5}}, "low: expected a number"),
    ({"model.head.dropout": {"type": "float", "high": 0.5}}, "'low' is required"),
    ({"train.optimizer.name": ["adam", "lamb"]}, "the value 'lamb' is not valid"),
    ({"model.head.pooling": {"type": "int", "low": 0, "high": 1}}, "use a categorical parameter"),
    ({"train.batch_size": []}, "expected a non-empty list"),
    ({"train.batch_size": [16, 16]}, "has duplicates"),
    ({"train.optimizer.betas": [[0.9, 0.99]]}, "is not a number, string, boolean or null"),
    ({"data.source": ["cifar10", "other"]}, "data.source cannot be searched"),
    ({"search.trials": [1, 2]}, "cannot be searched"),
    ({"model.head.units": "big"}, "expected a mapping"),
    ({}, "search.params must map config keys"),
])
def test_bad_params_raise_config_errors_naming_the_fault(params, fragment):
    with pytest.raises(ConfigError) as err:
        settings_for(params)
    assert fragment in str(err.value)
    if params:
        assert next(iter(params)).split(".")[0] in str(err.value)


@pytest.mark.parametrize("section, fragment", [
    ({"sampler": "bayes"}, "search.sampler: 'bayes' is not one of tpe, gp, random"),
    ({"pruner": "asha"}, "search.pruner: 'asha'"),
    ({"trials": 0}, "search.trials: must be at least 1"),
    ({"trials": "many"}, "search.trials: expected an integer"),
    ({"objective": "val_f1"}, "search.objective: 'val_f1'"),
    ({"final_fit": "all"}, "search.final_fit: 'all'"),
    ({"max_trials": 20}, "unknown key search.max_trials"),
])
def test_bad_section_values_raise_config_errors(section, fragment):
    with pytest.raises(ConfigError) as err:
        settings_for(**section)
    assert fragment in str(err.value)


def test_a_config_without_search_section_is_refused():
    with pytest.raises(ConfigError, match="no 'search:' section"):
        parse_search(config_from_dict({"name": "x"}))


def test_durations():
    assert parse_duration("90") == 90
    assert parse_duration("45m") == 2700
    assert parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400
    assert parse_duration(12.5) == 12.5
    assert parse_duration(None) is None
    for bad in ("soon", "2x", "-5", "0"):
        with pytest.raises(ConfigError, match="--timeout"):
            parse_duration(bad, "--timeout")
