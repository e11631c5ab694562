"""The ``search:`` section of a config: what to tune, how, and for how long.

    search:
      objective: val_accuracy        # any metric of the epoch logs; val_loss is minimised
      trials: 20
      sampler: tpe                   # tpe | gp | random
      initial_random: 5              # random trials before the sampler models the results
      pruner: median                 # median | hyperband | none
      final_fit: train+val           # train+val | train | none
      params:
        model.head.units: {type: int, low: 256, high: 896, step: 128}
        model.head.l2: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
        train.batch_size: [32, 64, 128]          # a list is a categorical parameter

Every parameter is a dotted config key; the section is checked up front (unknown keys, bounds,
types, values the config would refuse) so a typo fails before the first trial, not after it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from cnnlab.config import ExperimentConfig, apply_overrides, config_from_dict
from cnnlab.errors import ConfigError

SAMPLERS = ("tpe", "gp", "random")
PRUNERS = ("median", "hyperband", "none")
FINAL_FITS = ("train+val", "train", "none")
OBJECTIVES = ("val_accuracy", "val_loss", "accuracy", "loss")  # metrics of the trainer's epoch logs
PARAM_TYPES = ("int", "float", "categorical")
_PARAM_KEYS = {"type", "low", "high", "step", "log", "choices"}
# Keys fixed when a worker loads its data once: searching them would need a reload per trial.
_UNSEARCHABLE = ("data.source", "data.image_size", "data.skip_bad", "data.image_column", "data.label_column",
                 "name", "description")


@dataclass(frozen=True)
class Param:
    """One searched config key and its range (or choices)."""

    key: str
    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> str:
        if self.type == "categorical":
            return f"one of {list(self.choices)}"
        text = f"{self.type} {self.low:g}..{self.high:g}"
        if self.step:
            text += f" step {self.step:g}"
        return text + (" (log)" if self.log else "")

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


@dataclass
class SearchSettings:
    """A validated ``search:`` section (command-line flags override its values)."""

    params: list[Param]
    objective: str = "val_accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"
    trials: int = 20
    sampler: str = "tpe"
    initial_random: int = 5
    pruner: str = "median"
    pruner_startup_trials: int = 2  # finished trials before the median pruner may stop any
    pruner_warmup_epochs: int = 1  # epochs every trial runs before it may be pruned
    final_fit: str = "train+val"

    def space_dict(self) -> dict[str, Any]:
        """The parameters and objective as plain data (stored with the study, compared on resume)."""
        return {"objective": self.objective, "direction": self.direction,
                "params": {p.key: p.to_dict() for p in self.params}}


def default_direction(objective: str) -> str:
    return "minimize" if "loss" in objective or "error" in objective else "maximize"


# ------------------------------------------------------------------------------- parsing


def parse_search(cfg: ExperimentConfig, **overrides: Any) -> SearchSettings:
    """Validate ``cfg.search`` (with ``overrides`` for its top-level keys, None = keep) and return it."""
    if not cfg.search:
        raise ConfigError("the config has no 'search:' section; add one with 'params:' (see docs/tuning.md)")
    section = dict(cfg.search)
    for key, value in overrides.items():
        if value is not None:
            section[key] = value
    known = {f.name for f in dataclasses.fields(SearchSettings)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"unknown key search.{unknown[0]}; allowed keys: {', '.join(sorted(known))}")
    raw_params = section.pop("params", None)
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError("search.params must map config keys to ranges, e.g. "
                          "'train.optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}'")
    base = cfg.to_dict()
    params = [_parse_param(k, v, base) for k, v in _flatten(raw_params).items()]
    objective = _choice("search.objective", section.get("objective", "val_accuracy"), OBJECTIVES)
    direction = section.get("direction") or default_direction(objective)
    _choice("search.direction", direction, ("maximize", "minimize"))
    return SearchSettings(
        params=params,
        objective=objective,
        direction=direction,
        trials=_positive(section, "trials", 20),
        sampler=_choice("search.sampler", section.get("sampler", "tpe"), SAMPLERS),
        initial_random=_non_negative(section, "initial_random", 5),
        pruner=_choice("search.pruner", section.get("pruner", "median"), PRUNERS),
        pruner_startup_trials=_non_negative(section, "pruner_startup_trials", 2),
        pruner_warmup_epochs=_non_negative(section, "pruner_warmup_epochs", 1),
        final_fit=_choice("search.final_fit", section.get("final_fit", "train+val"), FINAL_FITS),
    )


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections (``model: {head: {units: ...}}``, or what ``--set search.params.a.b=...``
    builds) become dotted keys; a mapping with range options is a parameter."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not set(v) & _PARAM_KEYS:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _expect(section: dict[str, Any], key: str, tp: type, default: Any) -> Any:
    value = section.get(key, default)
    if not isinstance(value, tp) or isinstance(value, bool):
        what = {"int": "an integer", "str": "a string"}.get(tp.__name__, tp.__name__)
        raise ConfigError(f"search.{key}: expected {what}, got {value!r}")
    return value


def _positive(section: dict[str, Any], key: str, default: int) -> int:
    value = _expect(section, key, int, default)
    if value < 1:
        raise ConfigError(f"search.{key}: must be at least 1, got {value}")
    return value


def _non_negative(section: dict[str, Any], key: str, default: int) -> int:
    value = _expect(section, key, int, default)
    if value < 0:
        raise ConfigError(f"search.{key}: must be 0 or more, got {value}")
    return value


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _number(key: str, name: str, value: Any) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"search.params.{key}.{name}: expected a number, got {value!r}")
    return value


def _parse_param(key: str, spec: Any, base: dict[str, Any]) -> Param:
    where = f"search.params.{key}"
    if key.startswith("search.") or key == "search" or key in _UNSEARCHABLE:
        raise ConfigError(f"{where}: {key} cannot be searched (it is fixed for the whole study)")
    field_type = config_field_type(key)
    if isinstance(spec, (list, tuple)):
        spec = {"type": "categorical", "choices": list(spec)}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: float, low: 0.1, high: 0.5}} "
                          f"or a list of choices, got {spec!r}")
    unknown = sorted(set(spec) - _PARAM_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown option {unknown[0]!r}; allowed: {', '.join(sorted(_PARAM_KEYS))}")
    kind = spec.get("type")
    if kind is None:
        kind = "categorical" if "choices" in spec else ("float" if any(
            isinstance(spec.get(b), float) for b in ("low", "high", "step")) else "int")
    _choice(f"{where}.type", kind, PARAM_TYPES)
    if kind == "categorical":
        param = _categorical(key, spec)
    else:
        param = _numeric(key, kind, spec)
        _check_numeric_field(key, kind, field_type)
    # Let the config itself judge every value a trial can produce at the ends of the range.
    samples = param.choices if kind == "categorical" else (param.low, param.high)
    for value in samples:
        try:
            config_from_dict(apply_overrides(base, {key: value}))
        except ConfigError as exc:
            raise ConfigError(f"{where}: the value {value!r} is not valid for the config ({exc})") from None
    return param


def _categorical(key: str, spec: dict[str, Any]) -> Param:
    where = f"search.params.{key}"
    extra = sorted(set(spec) - {"type", "choices"})
    if extra:
        raise ConfigError(f"{where}: {extra[0]!r} does not apply to a categorical parameter (give 'choices')")
    choices = spec.get("choices")
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
    for c in choices:
        if c is not None and not isinstance(c, (bool, int, float, str)):
            raise ConfigError(f"{where}.choices: {c!r} is not a number, string, boolean or null")
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{where}.choices: {list(choices)} has duplicates")
    return Param(key, "categorical", choices=tuple(choices))


def _numeric(key: str, kind: str, spec: dict[str, Any]) -> Param:
    where = f"search.params.{key}"
    if "choices" in spec:
        raise ConfigError(f"{where}: 'choices' needs type categorical, not {kind}")
    for name in ("low", "high"):
        if name not in spec:
            raise ConfigError(f"{where}: '{name}' is required for a {kind} parameter")
    low, high = _number(key, "low", spec["low"]), _number(key, "high", spec["high"])
    step = _number(key, "step", spec["step"]) if spec.get("step") is not None else None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if kind == "int":
        for name, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and int(v) != v:
                raise ConfigError(f"{where}.{name}: an int parameter needs whole numbers, got {v!r}")
    if low > high:
        raise ConfigError(f"{where}: low ({low:g}) is greater than high ({high:g})")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}.step: must be positive, got {step:g}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-scale range needs low > 0, got {low:g}")
    if log and step is not None and not (kind == "int" and step == 1):
        raise ConfigError(f"{where}: 'step' and 'log: true' cannot be combined")
    if step is not None:
        n = (high - low) / step
        if abs(n - round(n)) > 1e-6:
            raise ConfigError(f"{where}: high - low ({high - low:g}) is not a multiple of step ({step:g})")
    if kind == "int":
        return Param(key, "int", int(low), int(high), int(step) if step is not None else None, log)
    return Param(key, "float", float(low), float(high), float(step) if step is not None else None, log)


# ------------------------------------------------------------------------- config keys


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def config_field_type(dotted: str) -> Any:
    """The annotated type of a dotted config key; a ConfigError names the first unknown part."""
    tp: Any = ExperimentConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        tp = _strip_optional(tp)
        if tp is Any or tp is dict or typing.get_origin(tp) is dict:
            return Any  # free-form mappings (model.kwargs) take any key
        where = ".".join(parts[:i]) or "the top level"
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"search.params.{dotted}: {where} is a value, not a section")
        hints = typing.get_type_hints(tp)
        if part not in hints:
            raise ConfigError(f"search.params.{dotted}: unknown config key {part!r} in {where}; "
                              f"allowed: {', '.join(sorted(hints))}")
        tp = hints[part]
    if dataclasses.is_dataclass(_strip_optional(tp)):
        raise ConfigError(f"search.params.{dotted}: is a section; search one of its keys instead")
    return tp


def _check_numeric_field(key: str, kind: str, tp: Any) -> None:
    if tp is Any:
        return
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    options = tuple(o for o in options if o is not type(None))
    ok = float in options or (kind == "int" and int in options)
    if not ok:
        names = " | ".join(getattr(o, "__name__", str(o)) for o in options)
        hint = "use a categorical parameter" if typing.get_origin(tp) is Literal or tp in (bool, str) else (
            "use type int" if int in options else "check the key")
        raise ConfigError(f"search.params.{key}: a {kind} parameter cannot set this {names} config key ({hint})")
