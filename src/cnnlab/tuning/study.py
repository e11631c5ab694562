"""``tune``: run a config's search as an Optuna study, then retrain the winner and report.

    import cnnlab.tuning as tuning
    result = tuning.tune("experiments/mobilenet/II.5.yaml", trials=20, workers=2)
    print(result.best_value, result.best_params, result.out_dir / "summary.md")

Running the same call again resumes the study (finished trials are kept, interrupted ones are
retried); calls on other machines with the same storage URL and study name join it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from cnnlab.data.dataset import DatasetBundle
from cnnlab.errors import ConfigError
from cnnlab.tuning import storage as st
from cnnlab.tuning.budget import StudyBudget, parse_time_limit
from cnnlab.utils.durations import parse_optional_duration
from cnnlab.tuning.space import SearchSettings, parse_search
from cnnlab.tuning.worker import WorkerSpec, quiet_optuna, run_worker, worker_process_main



@dataclass
class TuneResult:
    study_name: str
    storage: str  # without the password
    out_dir: Path
    summary: dict[str, Any]

    @property
    def best_value(self) -> float | None:
        return self.summary["best"]["value"] if self.summary["best"] else None

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.summary["best"]["params"]) if self.summary["best"] else {}


def _first_end(timeout_end: float | None, budget: StudyBudget | None) -> float | None:
    ends = [e for e in (timeout_end, budget.trials_end if budget else None) if e is not None]
    return min(ends) if ends else None


def open_study(url: str, name: str, settings: SearchSettings, heartbeat: int | None = st.HEARTBEAT_SECONDS,
               grace: int | None = st.GRACE_SECONDS) -> optuna.Study:
    """Create the study, or load it and check it searches the same space."""
    quiet_optuna()
    storage = st.open_storage(url, heartbeat, grace)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=settings.direction,
                                    load_if_exists=True)
    except ValueError as exc:  # e.g. a stored study with another direction
        raise ConfigError(f"study {name!r} in {st.mask_url(url)}: {exc}") from None
    want = settings.space_dict()
    have = study.user_attrs.get("cnnlab_space")
    if have is None:
        study.set_user_attr("cnnlab_space", want)
    elif have != want:
        raise ConfigError(
            f"study {name!r} in {st.mask_url(url)} searches another space or objective than this config "
            f"(stored: {sorted(have.get('params', {}))}, {have.get('objective')}); "
            "give another --study-name or --out")
    return study


def _visible_device(k: int) -> str:
    """The k-th device this process may use, as CUDA_VISIBLE_DEVICES names it."""
    import os

    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[k] if k < len(visible) else str(k)


def _run_processes(spec: WorkerSpec, workers: int, data: Any, log: Callable[[str], None]) -> None:
    import torch

    from cnnlab.utils.cores import threads_per_process

    ctx = multiprocessing.get_context("spawn")
    threads = threads_per_process(workers)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    procs = []
    for i in range(workers):
        extra = dict(spec.extra, cuda_device=_visible_device(i % gpus)) if gpus > 1 else spec.extra
        wspec = dataclasses.replace(spec, index=i, threads=threads, extra=extra)
        p = ctx.Process(target=worker_process_main, args=(wspec, data), name=f"cnnlab-tune-worker-{i}")
        p.start()
        procs.append(p)
    log(f"{workers} worker processes ({threads} thread{'s' * (threads > 1)} each): "
        f"{', '.join(str(p.pid) for p in procs)}")
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker records its trial as interrupted and queues it again
        for p in procs:
            p.join(timeout=60)
        raise
    bad = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != 0]
    for i, code in bad:
        log(f"worker {i} exited with status {code}")


def tune(
    config: Any,
    *,
    data: Any = None,
    overrides: dict[str, Any] | list[str] | None = None,
    trials: int | None = None,
    timeout: str | float | None = None,
    time_limit: str | float | None = None,
    sampler: str | None = None,
    initial_random: int | None = None,
    pruner: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    final_fit: str | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    epoch_log: bool = True,
    nproc_per_trial: int = 1,
    heartbeat: int | None = st.HEARTBEAT_SECONDS,
    grace: int | None = st.GRACE_SECONDS,
    log: Callable[[str], None] = print,
    clock: Callable[[], float] = time.time,
    started_at: float | None = None,
) -> TuneResult:
    """Search the config's ``search:`` space; keyword arguments override the section's values.

    ``data``: a source string or a loaded DatasetBundle (else ``config.data.source``).
    ``storage``: an SQLAlchemy URL (default: SQLite in ``out``); ``out`` defaults to
    ``runs/tune/<study name>``; ``workers``: worker processes on this machine.
    ``timeout``: start no trial after this long. ``time_limit`` ("20m", "90s" or seconds): the
    whole call (data, trials, final fit, summary) ends within it; a running trial is stopped
    after an epoch (see budget.py). ``clock``: time.time (a fake one in tests; one worker only).
    ``started_at``: the clock() the limit counts from (default: now; the CLI: the process's start).
    """
    from cnnlab.training.orchestrate import resolve_config
    from cnnlab.tuning import figures
    from cnnlab.tuning.final import final_fit as run_final_fit
    from cnnlab.tuning.report import build_summary, write_summary
    from cnnlab.utils.hardware import machine_summary
    from cnnlab.utils.io import atomic_write_text

    t0 = clock() if started_at is None else min(started_at, clock())
    limit = parse_time_limit(time_limit)  # refused before anything is loaded or written
    cfg = resolve_config(config, overrides)
    if isinstance(data, (str, Path)):
        cfg.data.source, data = str(data), None
    elif data is not None and not isinstance(data, DatasetBundle):  # a DataFrame: decode it once
        from cnnlab.training.orchestrate import load_data

        data = load_data(data, cfg)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if nproc_per_trial < 1:
        raise ConfigError(f"--nproc-per-trial must be at least 1, got {nproc_per_trial}")
    if nproc_per_trial > 1 and limit is not None:  # the time limit stops a trial from inside its training
        raise ConfigError("--nproc-per-trial does not combine with --time-limit yet (use --timeout: no new "
                          "trial after that long)")
    if nproc_per_trial > 1 and data is not None:
        raise ConfigError("--nproc-per-trial: each trial's processes load the data themselves, so give the data "
                          "as a source (a path or cifar10), not a DataFrame or a loaded bundle")
    settings = parse_search(cfg, trials=trials, sampler=sampler, initial_random=initial_random, pruner=pruner,
                            final_fit=final_fit)
    seconds = parse_optional_duration(timeout, "--timeout")
    budget = StudyBudget.plan(t0, limit, settings.final_fit != "none") if limit is not None else None
    if budget is not None and workers > 1 and clock is not time.time:
        raise ConfigError("a fake clock works with one worker only")
    name = study_name or cfg.name
    out_dir = Path(out) if out else Path("runs") / "tune" / name
    url = storage or st.default_storage_url(out_dir)
    study = open_study(url, name, settings, heartbeat, grace)
    atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
    before = st.budget(study)
    log(f"study {name}: {settings.trials} trials of up to {cfg.train.epochs} epochs "
        f"({before.used} already started), sampler {settings.sampler}, pruner {settings.pruner}; "
        f"storage {st.mask_url(url)}; output {out_dir}")
    base = cfg.to_dict()
    spec = WorkerSpec(base=base, settings=settings, storage_url=url, study_name=name, out_dir=str(out_dir),
                      epochs=cfg.train.epochs, deadline=_first_end(t0 + seconds if seconds else None, budget),
                      trial_deadline=budget.trials_end if budget else None, started=t0,
                      seed=cfg.seed if seed is None else seed, heartbeat=heartbeat, grace=grace,
                      epoch_log=epoch_log, extra={"nproc_per_trial": nproc_per_trial})
    if budget is not None:
        log(f"time limit {limit:.0f} s: trials until {budget.trials_end - t0:.0f} s"
            + (f", final fit training until {budget.final_end - t0:.0f} s" if settings.final_fit != "none" else "")
            + ", then the summary")
    if workers == 1:
        run_worker(spec, data, log, clock=clock)
    else:
        _run_processes(spec, workers, data, log)

    study = optuna.load_study(study_name=name, storage=st.open_storage(url, None, None))
    left = st.budget(study)
    if left.running or left.waiting:
        final = {"mode": settings.final_fit, "status": "pending",
                 "reason": f"{left.running} trials still running and {left.waiting} queued by other workers; "
                           "run the same command again when they are done"}
        log(f"final fit {final['status']}: {final['reason']}")
    else:
        final = run_final_fit(study, base, settings.final_fit, out_dir, data, log,
                              deadline=budget.final_end if budget else None, clock=clock)
    figs = figures.draw(study, out_dir / "figures", settings.objective, until=budget.end if budget else None,
                        clock=clock)
    summary = build_summary(study, settings, url, cfg.train.epochs, final, figs,
                            {"wall_seconds": round(clock() - t0, 1), "machine": machine_summary(),
                             "out_dir": str(out_dir), **({"time_budget": budget.describe()} if budget else {})})
    write_summary(summary, out_dir)
    return TuneResult(name, st.mask_url(url), out_dir, summary)
