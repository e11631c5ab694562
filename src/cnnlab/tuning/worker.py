"""A worker: load the data once, then run trials of a shared study until its budget is spent.

``cnnlab tune --workers N`` starts N of these as processes on one machine; ``cnnlab tune`` on
other machines with the same ``--storage`` and ``--study-name`` adds more. They coordinate only
through the storage (see storage.py), so any of them may die and be restarted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from cnnlab.data.dataset import DatasetBundle
from cnnlab.tuning import storage as st
from cnnlab.tuning.objective import Objective
from cnnlab.tuning.space import SearchSettings


@dataclass
class WorkerSpec:
    """Everything a worker process needs (picklable, sent to spawned processes)."""

    base: dict[str, Any]  # the resolved base config as a plain mapping
    settings: SearchSettings
    storage_url: str
    study_name: str
    out_dir: str
    epochs: int
    deadline: float | None = None  # time.time() after which no new trial starts
    trial_deadline: float | None = None  # time.time() by which a trial's training must end (--time-limit)
    started: float | None = None  # time.time() at the study's start
    seed: int = 0
    index: int = 0  # worker number on this machine
    threads: int | None = None  # torch threads (None: cnnlab's default, one per physical core)
    heartbeat: int | None = st.HEARTBEAT_SECONDS
    grace: int | None = st.GRACE_SECONDS
    epoch_log: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def quiet_optuna() -> None:
    """cnnlab prints its own line per trial (with the failure reason); Optuna's would repeat it."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("optuna").setLevel(logging.ERROR)


def make_sampler(settings: SearchSettings, seed: int) -> optuna.samplers.BaseSampler:
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=settings.initial_random)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.initial_random, multivariate=True,
                                      constant_liar=True)


def make_pruner(settings: SearchSettings, epochs: int) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials,
                                           n_warmup_steps=settings.pruner_warmup_epochs)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, settings.pruner_warmup_epochs),
                                              max_resource=max(1, epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


def worker_seed(seed: int, index: int, finished: int) -> int:
    """A sampler seed per (study seed, worker, progress): a restarted or parallel worker does not
    replay another one's random draws."""
    digest = hashlib.sha256(f"{seed}:{index}:{finished}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def load_study(spec: WorkerSpec, seed: int) -> optuna.Study:
    storage = st.open_storage(spec.storage_url, spec.heartbeat, spec.grace)
    return optuna.load_study(study_name=spec.study_name, storage=storage,
                             sampler=make_sampler(spec.settings, seed),
                             pruner=make_pruner(spec.settings, spec.epochs))


def _sigterm_as_interrupt() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def run_worker(spec: WorkerSpec, data: Any = None, log: Callable[[str], None] = print, *,
               clock: Callable[[], float] = time.time) -> int:
    """Run trials until the study has ``settings.trials`` slots filled (or the deadline); returns
    how many trials this worker ran. ``clock``: time.time, or a fake one in tests."""
    from cnnlab.training import orchestrate
    from cnnlab.config import config_from_dict

    quiet_optuna()
    _sigterm_as_interrupt()
    probe = load_study(spec, spec.seed)
    st.recover_dead_local_trials(probe, log)
    finished = len(probe.get_trials(deepcopy=False))
    study = load_study(spec, worker_seed(spec.seed, spec.index, finished))
    if not isinstance(data, DatasetBundle):  # load (and decode) once for all this worker's trials
        cfg = config_from_dict(spec.base)
        data = orchestrate.load_data(cfg.data.source if data is None else data, cfg)
    check_validation(spec, data)
    objective = Objective(spec.base, spec.settings, data, Path(spec.out_dir) / "trials", log, spec.epoch_log,
                          deadline=spec.trial_deadline, clock=clock, started=spec.started)
    objective.nproc_per_trial = int(spec.extra.get("nproc_per_trial", 1))  # docs/distributed.md
    ran = 0
    while True:
        if spec.deadline is not None and clock() >= spec.deadline:
            log(f"worker {spec.index}: time is up; no new trials")
            break
        if spec.trial_deadline is not None and clock() + objective.first_epoch_seconds >= spec.trial_deadline:
            log(f"worker {spec.index}: {max(spec.trial_deadline - clock(), 0):.0f} s left for trials, less than "
                f"a first epoch ({objective.first_epoch_seconds:.0f} s); no new trials")
            break
        if ran:
            st.recover_dead_local_trials(study, log)  # a sibling worker on this host may have died
        b = st.budget(study)
        if b.used >= spec.settings.trials and b.waiting == 0:
            break
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except optuna.exceptions.UpdateFinishedTrialError:
            log(f"worker {spec.index}: another worker closed this worker's trial (heartbeat lost?)")
        ran += 1
    return ran


def check_validation(spec: WorkerSpec, data: Any) -> None:
    """A validation objective needs a validation split: say so before any trial runs."""
    from cnnlab.errors import ConfigError

    has_val = getattr(data, "val", None) is not None or spec.base["data"].get("validation_split", 0) > 0
    if spec.settings.objective.startswith("val_") and not has_val:
        raise ConfigError(f"search.objective {spec.settings.objective!r} needs a validation split: set "
                          "data.validation_split above 0 (or use a source with a val/ folder)")


def worker_process_main(spec: WorkerSpec, data: Any = None) -> None:
    """Entry point of a spawned worker process (``--workers N``)."""
    _die_with_parent()
    if spec.extra.get("cuda_device") is not None:  # one GPU per worker on a multi-GPU machine
        os.environ["CUDA_VISIBLE_DEVICES"] = str(spec.extra["cuda_device"])
    if spec.threads:
        os.environ["OMP_NUM_THREADS"] = str(spec.threads)
        import torch

        torch.set_num_threads(spec.threads)

    def log(line: str) -> None:
        print(f"[worker {spec.index}] {line}", flush=True)

    try:
        run_worker(spec, data, log)
    except KeyboardInterrupt:
        sys.exit(130)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent ``cnnlab tune`` dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):
        pass
