"""Value ranges checked up front (validation.py), unknown keys with a "did you mean", YAML syntax
errors as one line, and property-based tests of config parsing (hypothesis)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.config import config_from_dict, load_config, read_run_config
from cnnlab.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("train.optimizer.lr=-0.01", ("train.optimizer.lr", "> 0", "-0.01")),
        ("train.optimizer.lr=.nan", ("train.optimizer.lr", "finite", "nan")),
        ("train.optimizer.lr=.inf", ("train.optimizer.lr", "finite", "inf")),
        ("train.optimizer.lr=0", ("train.optimizer.lr", "> 0", "got 0")),
        ("train.batch_size=0", ("train.batch_size", ">= 1", "got 0", "--batch-size")),
        ("train.batch_size=-4", ("train.batch_size", "got -4")),
        ("train.epochs=0", ("train.epochs", ">= 1", "--epochs")),
        ("train.epochs=-1", ("train.epochs", "got -1")),
        ("model.head.dropout=1.5", ("model.head.dropout", "[0, 1)", "1.5")),
        ("model.head.dropout=1", ("model.head.dropout", "[0, 1)")),
        ("model.drop_rate=-0.1", ("model.drop_rate", "[0, 1)")),
        ("data.image_size=0", ("data.image_size", ">= 8", "--image-size")),
        ("data.image_size=4", ("data.image_size", ">= 8", "got 4")),
        ("data.validation_split=1.0", ("data.validation_split", "[0, 1)")),
        ("data.validation_split=-0.2", ("data.validation_split", "-0.2")),
        ("data.max_train_samples=0", ("data.max_train_samples", ">= 1", "--max-train-samples")),
        ("train.label_smoothing=1", ("train.label_smoothing",)),
        ("train.optimizer.momentum=1.5", ("train.optimizer.momentum",)),
        ("train.optimizer.weight_decay=-1", ("train.optimizer.weight_decay", ">= 0")),
        ("train.optimizer.base_lr=0", ("train.optimizer.base_lr", "or null")),
        ("train.eval_batch_size=0", ("train.eval_batch_size",)),
        ("train.target_accuracy=1.5", ("train.target_accuracy", "[0, 1]")),
        ("train.finetune.epochs=0", ("train.finetune.epochs", ">= 1")),
        ("train.finetune.lr=-1", ("train.finetune.lr", "> 0")),
        ("train.early_stopping.patience=-1", ("train.early_stopping.patience", ">= 0")),
        ("train.schedule.warmup_epochs=-1", ("train.schedule.warmup_epochs",)),
        ("seed=-3", ("seed", ">= 0", "--seed")),
    ],
)
def test_out_of_range_values_are_refused(override: str, needles: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("override", ["data.validation_split=0", "data.validation_split=0.0",
                                      "train.target_accuracy=0", "model.head.dropout=0.5",
                                      "train.optimizer.lr=1e-3", "data.image_size=8"])
def test_edge_values_that_are_allowed(override: str) -> None:
    load_config(None, [override])  # validation_split 0 means "no validation split"


def test_every_shipped_config_passes() -> None:
    root = Path(__file__).resolve().parents[2]
    files = sorted(root.glob("experiments/*/*.yaml")) + sorted((root / "src/cnnlab/presets").glob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


@pytest.mark.parametrize(("data", "needle"), [
    ({"train": {"epochz": 3}}, "unknown config key train.epochz; did you mean 'epochs'?"),
    ({"modle": {}}, "did you mean 'model'?"),
    ({"train": {"optimizer": {"momentun": 1}}}, "did you mean 'momentum'?"),
    ({"train": {"zzzz": 1}}, "allowed keys here:"),
])
def test_unknown_keys_suggest_a_close_one(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    assert needle in str(exc.value)
    if "did you mean" in needle:
        assert "allowed keys" not in str(exc.value)


def test_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\ntrain:\n  epochs: [3\n  lr: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    msg = str(exc.value)
    assert msg.startswith(f"{cfg}:4:5: not valid YAML")
    assert "\n" not in msg and "<unicode string>" not in msg


def test_run_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        read_run_config(tmp_path / "gone" / "config.yaml")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError) as exc:
        read_run_config(tmp_path / "run" / "config.yaml")
    assert str(exc.value).startswith(str(tmp_path / "run" / "config.yaml")) and "train.epochs" in str(exc.value)


# --------------------------------------------------------------------------- properties

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
_keys = st.sampled_from(["train.epochs", "train.batch_size", "train.optimizer.lr", "model.head.dropout",
                         "data.image_size", "data.validation_split", "seed", "train.label_smoothing",
                         "train.optimizer.name", "model.head.pooling", "train.augment.flip", "train.bogus"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _scalars, max_size=4))
def test_any_override_gives_a_config_or_a_config_error(overrides: dict) -> None:
    """Never another exception; and what is accepted is in range."""
    try:
        cfg = load_config(None, overrides)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert cfg.train.epochs >= 1 and cfg.train.batch_size >= 1
    assert math.isfinite(cfg.train.optimizer.lr) and cfg.train.optimizer.lr > 0
    assert 0 <= cfg.model.head.dropout < 1
    assert cfg.data.image_size is None or cfg.data.image_size >= 8


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_any_yaml_text_gives_a_config_or_a_config_error(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 1000), st.integers(1, 4096), st.floats(1e-6, 10.0))
def test_valid_values_round_trip_through_yaml(epochs: int, batch: int, lr: float) -> None:
    cfg = load_config(None, {"train.epochs": epochs, "train.batch_size": batch, "train.optimizer.lr": lr})
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
