"""Experiment configs: the study's YAML chain, dotted overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.config import (
    ExperimentConfig,
    config_from_dict,
    load_config,
    parse_override,
    read_yaml_dict,
)
from cnnlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MOBILENET = ROOT / "experiments" / "mobilenet"
STUDY_CONFIGS = ("I", "II.1", "II.2", "II.3", "II.4")


# ------------------------------------------------------------------ the study's configs


def test_ii3_resolves_through_its_extends_chain():
    cfg = load_config(MOBILENET / "II.3.yaml")
    t, m = cfg.train, cfg.model
    assert cfg.name == "mobilenet-II.3"
    # from II.3 itself
    assert t.optimizer.lr == pytest.approx(1e-2)
    assert t.schedule.name == "exponential"
    assert t.schedule.decay_steps_fraction == pytest.approx(0.55)
    assert t.schedule.decay_rate == pytest.approx(0.9)
    assert t.schedule.decay_steps is None
    # from II.1
    assert m.head.l2 == pytest.approx(1e-2)
    assert m.head.dropout == pytest.approx(0.4)
    assert t.checkpoint is not None and t.checkpoint.monitor == "val_accuracy"
    # from I, kept through two levels of deep merging
    assert m.arch == "mobilenetv1_100"
    assert m.preprocessing == "keras_tf"
    assert (m.head.pooling, m.head.units, m.head.activation) == ("max", 512, "relu")
    assert (t.batch_size, t.epochs) == (128, 30)
    assert t.optimizer.name == "adam"
    es = t.early_stopping
    assert es is not None
    assert (es.monitor, es.patience, es.start_from_epoch) == ("val_loss", 5, 20)
    assert es.min_delta == pytest.approx(1e-4)
    assert (cfg.data.source, cfg.data.split_method) == ("cifar10", "keras")
    assert cfg.data.validation_split == pytest.approx(0.2)


@pytest.mark.parametrize("name", STUDY_CONFIGS)
def test_every_mobilenet_config_loads(name):
    cfg = load_config(MOBILENET / f"{name}.yaml")
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == f"mobilenet-{name}"
    assert cfg.model.arch == "mobilenetv1_100"
    assert cfg.train.early_stopping is not None and cfg.train.early_stopping.start_from_epoch == 20
    # The resolved config survives its own YAML round trip (what a run directory stores).
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").rglob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_experiment_file_loads(path):
    cfg = load_config(path)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_study_configs_differ_exactly_as_the_study_says():
    c = {n: load_config(MOBILENET / f"{n}.yaml") for n in STUDY_CONFIGS}
    assert c["I"].model.head.l2 == 0.0 and c["I"].model.head.dropout == 0.0
    assert c["I"].train.checkpoint is None
    assert c["II.1"].train.optimizer.lr == pytest.approx(1e-3)
    assert c["II.2"].train.optimizer.lr == pytest.approx(1e-2)
    assert c["II.2"].train.schedule.name == "constant"
    assert c["II.4"].train.batch_size == 32
    assert c["II.4"].train.optimizer.lr == pytest.approx(1e-3)
    for n in ("II.1", "II.2", "II.3", "II.4"):
        assert c[n].model.head.l2 == pytest.approx(1e-2)
        assert c[n].model.head.dropout == pytest.approx(0.4)


# ------------------------------------------------------------------ extends, overrides


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_is_relative_to_the_file_and_merges_deeply(tmp_path):
    _write(tmp_path / "base" / "a.yaml", "train:\n  epochs: 7\n  optimizer:\n    name: sgd\n    lr: 0.5\n")
    child = _write(tmp_path / "b.yaml", "extends: base/a.yaml\ntrain:\n  optimizer:\n    lr: 0.25\n")
    cfg = load_config(child)
    assert cfg.train.epochs == 7
    assert cfg.train.optimizer.name == "sgd"  # sibling key of an overridden one survives
    assert cfg.train.optimizer.lr == 0.25
    assert cfg.name == "b"  # no name given: the file's stem
    assert "extends" not in read_yaml_dict(child)


def test_extends_loop_is_an_error(tmp_path):
    _write(tmp_path / "a.yaml", "extends: b.yaml\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_extends_missing_parent_names_it(tmp_path):
    _write(tmp_path / "a.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(tmp_path / "a.yaml")


def test_dotted_overrides_as_strings_and_dict():
    cfg = load_config(MOBILENET / "II.3.yaml", [
        "train.epochs=3", "train.optimizer.lr=5e-4", "model.head.dropout=0.1",
        "train.early_stopping=null", "data.image_size=16", "train.augment.flip=true",
    ])
    assert cfg.train.epochs == 3
    assert cfg.train.optimizer.lr == pytest.approx(5e-4)
    assert cfg.model.head.dropout == pytest.approx(0.1)
    assert cfg.train.early_stopping is None
    assert cfg.data.image_size == 16
    assert cfg.train.augment.flip is True
    # untouched keys keep the file's values
    assert cfg.train.schedule.decay_steps_fraction == pytest.approx(0.55)
    assert cfg.model.head.l2 == pytest.approx(1e-2)

    cfg2 = load_config(MOBILENET / "I.yaml", {"train.batch_size": 16, "train.checkpoint.monitor": "val_loss"})
    assert cfg2.train.batch_size == 16
    assert cfg2.train.checkpoint is not None and cfg2.train.checkpoint.monitor == "val_loss"


def test_overrides_on_defaults_and_bad_override_syntax():
    cfg = load_config(None, ["train.optimizer.betas=[0.8, 0.99]", "name=x"])
    assert cfg.train.optimizer.betas == (0.8, 0.99)
    assert cfg.name == "x"
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override(" a = null") == ("a", None)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=x=y") == ("a", "x=y")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs.x=1"])


def test_yaml_scientific_notation_strings_become_floats(tmp_path):
    # PyYAML reads "1e-3" (no dot) as a string; a float field must still accept it.
    cfg = load_config(_write(tmp_path / "c.yaml", "train:\n  optimizer:\n    lr: 1e-3\n"))
    assert cfg.train.optimizer.lr == pytest.approx(1e-3)


# ------------------------------------------------------------------ errors name the key


@pytest.mark.parametrize("overrides, key", [
    (["train.epoch=3"], "train.epoch"),
    (["train.optimizer.learning_rate=0.1"], "train.optimizer.learning_rate"),
    (["model.head.unit=512"], "model.head.unit"),
    (["colour=red"], "colour"),
])
def test_unknown_key_is_named(overrides, key):
    with pytest.raises(ConfigError, match=rf"unknown config key {key.replace('.', r'[.]')}\b"):
        load_config(MOBILENET / "I.yaml", overrides)


@pytest.mark.parametrize("overrides, key", [
    (["train.epochs=many"], "train.epochs"),
    (["train.batch_size=1.5"], "train.batch_size"),
    (["train.batch_size=true"], "train.batch_size"),
    (["train.optimizer.lr=fast"], "train.optimizer.lr"),
    (["model.head.pooling=median"], "model.head.pooling"),
    (["train.optimizer.name=rmsprop"], "train.optimizer.name"),
    (["train.optimizer.betas=[0.9]"], "train.optimizer.betas"),
    (["train.channels_last=1"], "train.channels_last"),
    (["train.early_stopping.patience=soon"], "train.early_stopping.patience"),
    (["train.early_stopping=5"], "train.early_stopping"),
    (["data.image_size=big"], "data.image_size"),
])
def test_wrong_type_is_named(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(MOBILENET / "II.3.yaml", overrides)
    assert key in str(info.value)


def test_wrong_type_in_a_file_is_named(tmp_path):
    (tmp_path / "I.yaml").write_text((MOBILENET / "I.yaml").read_text())  # extends: relative paths only
    path = _write(tmp_path / "bad.yaml", "extends: I.yaml\ntrain:\n  epochs: [1, 2]\n")
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(path)


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(_write(tmp_path / "broken.yaml", "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))
