"""One trial: the base config plus the trial's parameters, trained with cnnlab's own trainer.

The trial reports the objective (validation accuracy by default) after every epoch, so the
pruner can stop a hopeless trial early; its value is the best epoch's, as KerasTuner scores a
trial. Failures are recorded with their reason and do not stop the search.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import optuna

from cnnlab.config import apply_overrides, config_from_dict
from cnnlab.errors import ConfigError
from cnnlab.tuning import storage as st
from cnnlab.tuning.budget import EpochGuard
from cnnlab.tuning.space import SearchSettings


class SurplusTrial(Exception):
    """Raised (and recorded) when a racing worker started a trial beyond the budget."""


def trial_dir(trials_dir: str | Path, number: int) -> Path:
    return Path(trials_dir) / f"trial-{number:04d}"


def _short(exc: BaseException, limit: int = 500) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(params: dict[str, Any]) -> str:
    parts = []
    for k, v in params.items():
        name = k.rsplit(".", 1)[-1]
        parts.append(f"{name}={v:.3g}" if isinstance(v, float) else f"{name}={v}")
    return ", ".join(parts)


class Objective:
    """Callable Optuna objective over a fixed dataset (loaded once per worker)."""

    def __init__(self, base: dict[str, Any], settings: SearchSettings, data: Any, trials_dir: str | Path,
                 log: Callable[[str], None] = print, epoch_log: bool = True, *, deadline: float | None = None,
                 clock: Callable[[], float] = time.time, started: float | None = None):
        self.base = base
        self.deadline = deadline  # clock() by which a trial's training must end (the study's time limit)
        self.clock = clock
        self.started = started  # clock() at the study's start (recorded per trial)
        self.first_epoch_seconds = 0.0  # the longest first epoch (set-up included) of this worker's trials
        self.settings = settings
        self.data = data
        self.trials_dir = Path(trials_dir)
        self.log = log
        self.epoch_log = epoch_log
        self.identity = st.worker_identity()
        self.nproc_per_trial = 1  # > 1: each trial trains as a torchrun job of that many processes

    def __call__(self, trial: optuna.Trial) -> float:
        for key, value in self.identity.items():
            trial.set_user_attr(key, value)
        study = trial.study
        slot = int(trial.user_attrs.get("slot", trial.number))
        if st.slot_rank(study, slot) >= self.settings.trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number} is beyond the {self.settings.trials} requested")
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            reason = "interrupted: the worker was stopped during the trial"
            trial.set_user_attr("fail_reason", reason)
            st.retry_trial(study, study._storage.get_trial(trial._trial_id), reason)
            raise
        except Exception as exc:  # noqa: BLE001 - recorded; the search goes on
            trial.set_user_attr("fail_reason", _short(exc))
            self.log(f"trial {trial.number} failed: {_short(exc, 300)}")
            _free_accelerator_memory()
            raise

    def _run(self, trial: optuna.Trial) -> float:
        from cnnlab.training import orchestrate

        s = self.settings
        params = {p.key: p.suggest(trial) for p in s.params}
        cfg = config_from_dict(apply_overrides(self.base, params))
        cfg.name = f"{cfg.name}-trial-{trial.number:04d}"
        run_dir = trial_dir(self.trials_dir, trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        attempt = trial.user_attrs.get("attempt", 1)
        retry = f" (attempt {attempt}, retrying trial {trial.user_attrs['retry_of']})" if attempt > 1 else ""
        self.log(f"trial {trial.number}{retry}: {_fmt(params)}")
        t0 = time.perf_counter()
        if self.started is not None:
            trial.set_user_attr("started_after_seconds", round(self.clock() - self.started, 3))
        guard = EpochGuard(self.deadline, self.clock, f"trial {trial.number}") if self.deadline is not None else None

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            if s.objective not in logs:
                raise ConfigError(f"search.objective {s.objective!r} is not in the epoch logs "
                                  f"({', '.join(sorted(logs))}); is there a validation split?")
            value = float(logs[s.objective])
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{s.objective} {value:.4f} after epoch {epoch + 1}")
            if guard is not None:
                try:
                    guard(epoch, logs)  # StopTraining when the next epoch would end after the time limit
                finally:
                    self.first_epoch_seconds = max(self.first_epoch_seconds, guard.first_epoch or 0.0)

        def log(line: str) -> None:
            if self.epoch_log and line.startswith("Epoch"):
                self.log(f"  trial {trial.number}: {line}")

        try:
            if self.nproc_per_trial > 1:  # a data-parallel job of N processes (tuning/ddp_trial.py)
                from cnnlab.tuning.ddp_trial import train_trial

                history = train_trial(cfg, run_dir, self.nproc_per_trial, on_epoch, log)
            else:
                result = orchestrate.train(cfg, data=self.data, run_dir=run_dir, progress=False,
                                           epoch_callback=on_epoch, log=log)
                history = result.fit.history if result.fit else []
        except optuna.TrialPruned as exc:
            self.log(f"trial {trial.number} pruned: {exc} ({time.perf_counter() - t0:.0f} s)")
            raise
        values = [float(h[s.objective]) for h in history if s.objective in h and not math.isnan(h[s.objective])]
        if not values:
            raise ConfigError(f"trial {trial.number}: no {s.objective} was logged")
        pick = max if s.direction == "maximize" else min
        value = pick(values)
        trial.set_user_attr("epochs_run", len(history))
        if guard is not None and guard.stopped:
            trial.set_user_attr("stopped_by_time_limit", True)
            self.log(f"trial {trial.number}: {result.fit.stop_reason}")
        trial.set_user_attr("best_epoch", values.index(value) + 1)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        self.log(f"trial {trial.number} done: {s.objective} {value:.4f} (epoch {values.index(value) + 1} "
                 f"of {len(history)}, {time.perf_counter() - t0:.0f} s)")
        return value


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort after an out-of-memory error
        pass
