"""Studies: families of experiments, each a config plus overrides with a parent, run to completion.

A study file (YAML)::

    name: seed_cifar10
    description: ...
    overrides: {train.precision: auto}        # optional, applied to every experiment
    families:
      - name: mobilenet
        title: MobileNet v1 from scratch
        architecture: "MobileNet v1 ... head GlobalMaxPool -> Dense(512) -> Dense(10)"
        experiments:
          - id: I
            config: ../experiments/mobilenet/I.yaml   # relative to the study file
            change: baseline
            seed_accuracy: 64.18                      # the seed study's test accuracy, in %
          - id: II.1
            parent: I
            config: ../experiments/mobilenet/II.1.yaml
            overrides: {model.head.dropout: 0.4}
            change: + L2 1e-2, Dropout 0.4
            seed_accuracy: 64.38
            seed_best_accuracy: 64.73                 # the keep-best checkpoint's, when the study had one

Each experiment's run directory is ``OUT/<study name>/<family>-<id>/``. :func:`run_study` skips
finished experiments, resumes interrupted ones (:func:`cnnlab.api.resume`) and starts the rest,
so a killed study continues where it stopped. An experiment whose config file does not exist is
skipped with a warning (it may be written later).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from cnnlab.errors import ConfigError

DEFAULT_OUT = "studies/out"
_STUDY_KEYS = {"name", "description", "overrides", "families"}
_FAMILY_KEYS = {"name", "title", "architecture", "experiments"}
_EXPERIMENT_KEYS = {"id", "config", "parent", "change", "overrides", "seed_accuracy", "seed_best_accuracy",
                    "seed_note"}


@dataclass
class Experiment:
    family: str
    id: str
    config: Path
    parent: str | None = None
    change: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    seed_accuracy: float | None = None
    seed_best_accuracy: float | None = None
    seed_note: str = ""

    @property
    def key(self) -> str:
        """The experiment's run-directory name: ``<family>-<id>``."""
        return f"{self.family}-{self.id}"

    @property
    def available(self) -> bool:
        return self.config.is_file()


@dataclass
class Family:
    name: str
    title: str
    architecture: str
    experiments: list[Experiment]


@dataclass
class Study:
    path: Path
    name: str
    description: str
    overrides: dict[str, Any]
    families: list[Family]

    @property
    def experiments(self) -> list[Experiment]:
        return [e for f in self.families for e in f.experiments]

    def out_dir(self, out: str | Path | None = None) -> Path:
        return Path(out if out is not None else DEFAULT_OUT) / self.name

    def run_dir(self, exp: Experiment, out: str | Path | None = None) -> Path:
        return self.out_dir(out) / exp.key


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted keys to values, got {value!r}")
    return dict(value)


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number (accuracy in %), got {value!r}")
    return float(value)


def _experiment(raw: Any, family: str, base: Path, where: str) -> Experiment:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with id and config, got {raw!r}")
    _check_keys(raw, _EXPERIMENT_KEYS, where)
    for key in ("id", "config"):
        if not raw.get(key):
            raise ConfigError(f"{where}: missing {key!r}")
    parent = raw.get("parent")
    return Experiment(
        family=family, id=str(raw["id"]), config=(base / str(raw["config"])),
        parent=str(parent) if parent is not None else None, change=str(raw.get("change") or ""),
        overrides=_mapping(raw.get("overrides"), f"{where}.overrides"),
        seed_accuracy=_number(raw.get("seed_accuracy"), f"{where}.seed_accuracy"),
        seed_best_accuracy=_number(raw.get("seed_best_accuracy"), f"{where}.seed_best_accuracy"),
        seed_note=str(raw.get("seed_note") or ""),
    )


def _check_parents(fam: Family, where: str) -> None:
    ids = [e.id for e in fam.experiments]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"{where}: experiment id {dup[0]!r} appears twice in family {fam.name!r}")
    parents = {e.id: e.parent for e in fam.experiments}
    for e in fam.experiments:
        if e.parent is not None and e.parent not in parents:
            raise ConfigError(f"{where}: experiment {e.id!r} has parent {e.parent!r}, which is not an experiment "
                              f"of family {fam.name!r} ({', '.join(ids)})")
        seen, node = {e.id}, e.parent
        while node is not None:
            if node in seen:
                raise ConfigError(f"{where}: the parents of experiment {e.id!r} form a loop")
            seen.add(node)
            node = parents[node]


def load_study(path: str | Path) -> Study:
    """Read and check a study file. Experiments whose config file is missing are kept (``available``
    is False): the runner skips them with a warning and the report draws them as not run."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    from cnnlab.config import parse_yaml_file

    data = parse_yaml_file(path)  # a syntax error: one line FILE:LINE:COL
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a study file must hold a mapping at the top level")
    _check_keys(data, _STUDY_KEYS, str(path))
    fams_raw = data.get("families")
    if not isinstance(fams_raw, list) or not fams_raw:
        raise ConfigError(f"{path}: 'families' must be a non-empty list")
    families, names = [], set()
    for i, fr in enumerate(fams_raw):
        where = f"{path}: families[{i}]"
        if not isinstance(fr, dict):
            raise ConfigError(f"{where}: expected a mapping with name and experiments")
        _check_keys(fr, _FAMILY_KEYS, where)
        name = str(fr.get("name") or "")
        if not name or "/" in name:
            raise ConfigError(f"{where}: 'name' must be a non-empty folder-safe name, got {name!r}")
        if name in names:
            raise ConfigError(f"{where}: family name {name!r} appears twice")
        names.add(name)
        exps_raw = fr.get("experiments")
        if not isinstance(exps_raw, list) or not exps_raw:
            raise ConfigError(f"{where}: 'experiments' must be a non-empty list")
        exps = [_experiment(er, name, path.parent, f"{where}.experiments[{j}]") for j, er in enumerate(exps_raw)]
        fam = Family(name, str(fr.get("title") or name), str(fr.get("architecture") or ""), exps)
        _check_parents(fam, where)
        families.append(fam)
    study = Study(path, str(data.get("name") or path.stem), str(data.get("description") or ""),
                  _mapping(data.get("overrides"), f"{path}: overrides"), families)
    return study


def quick_overrides(max_train_samples: int | None = None, epochs: int | None = None,
                    data: str | None = None) -> dict[str, Any]:
    """The overrides a quick version of a study uses (fewer images, fewer epochs, another source)."""
    out: dict[str, Any] = {}
    if max_train_samples is not None:
        out["data.max_train_samples"] = int(max_train_samples)
    if epochs is not None:
        out["train.epochs"] = int(epochs)
    if data is not None:
        out["data.source"] = str(data)
    return out


def experiment_config(study: Study, exp: Experiment, extra: dict[str, Any] | None = None) -> Any:
    """The resolved config of an experiment: its file, then the study's, its own and ``extra`` overrides."""
    from cnnlab.config import load_config

    return load_config(exp.config, {**study.overrides, **exp.overrides, **(extra or {})})


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: {b!r} there, {a!r} now"]


def run_study(
    path: str | Path,
    *,
    out: str | Path | None = None,
    max_train_samples: int | None = None,
    epochs: int | None = None,
    data: str | None = None,
    only: list[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    epoch_callback: Any = None,
) -> list[dict[str, Any]]:
    """Run every experiment of a study that is not finished yet, in file order.

    Finished experiments are skipped, interrupted ones resumed from their last finished epoch.
    ``only``: experiment keys (``mobilenet-II.3``) or ids (``II.3``) to restrict the run to.
    Returns one row per experiment: key, status ("done", "skipped", "resumed", "trained", "missing")
    and run_dir. A run directory holding another config (say a quick run, then the full study)
    is an error that names the differing keys, rather than being silently reused.
    """
    from cnnlab import api
    from cnnlab.training.rundir import RunDir

    study = load_study(path)
    extra = quick_overrides(max_train_samples, epochs, data)
    wanted = set(only or [])
    unknown = wanted - {e.key for e in study.experiments} - {e.id for e in study.experiments}
    if unknown:
        raise ConfigError(f"{study.path}: no experiment {sorted(unknown)[0]!r}; experiments: "
                          f"{', '.join(e.key for e in study.experiments)}")
    rows = []
    for exp in study.experiments:
        rd = RunDir(study.run_dir(exp, out))
        row = {"key": exp.key, "run_dir": str(rd.path)}
        if wanted and exp.key not in wanted and exp.id not in wanted:
            rows.append({**row, "status": "not selected"})
            continue
        if not exp.available:
            log(f"study {study.name}: {exp.key}: config {exp.config} does not exist; skipped")
            rows.append({**row, "status": "missing"})
            continue
        cfg = experiment_config(study, exp, extra)
        if (rd.path / "config.yaml").is_file():
            diff = _diff(cfg.to_dict(), rd.read_config().to_dict())
            if diff:
                raise ConfigError(f"{rd.path} was run with another config ({'; '.join(diff[:3])}); "
                                  "give another --out or remove that folder")
            if rd.is_finished():
                log(f"study {study.name}: {exp.key}: already done ({rd.path})")
                rows.append({**row, "status": "done"})
                continue
            log(f"study {study.name}: {exp.key}: resuming {rd.path}")
            api.resume(rd.path, progress=progress, log=log, epoch_callback=epoch_callback)
            rows.append({**row, "status": "resumed"})
            continue
        log(f"study {study.name}: {exp.key}: training -> {rd.path}")
        api.train(cfg, run_dir=rd.path, progress=progress, log=log, epoch_callback=epoch_callback)
        rows.append({**row, "status": "trained"})
    return rows


def study_status(study: Study, out: str | Path | None = None) -> list[dict[str, Any]]:
    """Per experiment: its run directory and state (finished, partial, pending or missing config)."""
    from cnnlab.training.rundir import RunDir

    rows = []
    for exp in study.experiments:
        rd = RunDir(study.run_dir(exp, out))
        if rd.is_finished():
            state = "finished"
        elif (rd.path / "config.yaml").is_file():
            state = "partial"
        else:
            state = "pending" if exp.available else "missing config"
        rows.append({"family": exp.family, "id": exp.id, "key": exp.key, "state": state, "run_dir": str(rd.path)})
    return rows
