"""Where a study lives, and how it survives crashes and shares out its trials.

Storage is any SQLAlchemy URL (SQLite in the study folder by default, PostgreSQL or MySQL for
workers on many machines). Three rules keep the trial count right whatever happens:

* **Worker identity.** Each trial records the host, process id and process start time of the
  worker running it. On start, a worker fails the RUNNING trials of dead processes on its own
  host (a SIGKILLed ``cnnlab tune``) and retries them; trials of workers on other machines are
  failed by Optuna's heartbeat once they stop beating, and retried the same way.
* **Slots.** ``--trials N`` means N slots. A retry takes the slot of the trial it replaces
  (user attr ``slot``), so an interrupted trial is not counted twice.
* **Surplus.** Two workers can both start the N-th trial at once; the one with the higher
  number sees its slot rank is N or more, marks itself ``surplus`` and stops without training.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

MAX_ATTEMPTS = 3  # an interrupted trial is retried at most twice
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 300  # a trial whose worker has not beaten for this long is failed and retried


def default_storage_url(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def mask_url(url: str) -> str:
    """The URL without its password, for logs and summaries."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is shown as given
        return url


def open_storage(url: str, heartbeat: int | None = HEARTBEAT_SECONDS,
                 grace: int | None = GRACE_SECONDS) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeats; stale trials are retried (see :func:`retry_trial`)."""
    from cnnlab.errors import ConfigError

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 120}  # concurrent local workers wait for the lock
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        return _create_storage(url, engine_kwargs, heartbeat, grace)
    except ImportError as exc:
        raise ConfigError(f"--storage {mask_url(url)}: the database driver is missing ({exc}); for "
                          "PostgreSQL: pip install psycopg2-binary") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors name the real cause
        raise ConfigError(f"--storage {mask_url(url)}: cannot open the study storage: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def _schema_race(exc: Exception) -> bool:
    """True for the errors of two processes creating a fresh database's tables at the same moment."""
    text = str(exc).lower()
    return ("alembic_version" in text and "unique" in text) or "already exists" in text


def _create_storage(url: str, engine_kwargs: dict[str, Any], heartbeat: int | None,
                    grace: int | None, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage, retried when another worker is creating the same new database.

    Optuna creates the tables and stamps the schema version on first use without a lock, so two
    workers (or a worker and a dashboard) opening a brand-new database together can collide; the
    loser's second attempt finds the schema in place.
    """
    for attempt in range(attempts - 1):
        try:
            return _rdb_storage(url, engine_kwargs, heartbeat, grace)
        except Exception as exc:  # noqa: BLE001 - only the schema race is retried
            if not _schema_race(exc):
                raise
            time.sleep(0.2 * (attempt + 1))
    return _rdb_storage(url, engine_kwargs, heartbeat, grace)


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], heartbeat: int | None,
                 grace: int | None) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
            grace_period=grace if heartbeat else None,
            heartbeat_stale_trial_callback=_stale_callback if heartbeat else None,
        )


def _stale_callback(study: optuna.Study, trial: FrozenTrial) -> None:
    retry_trial(study, trial, "its worker stopped sending heartbeats")


# ------------------------------------------------------------------------ worker identity


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), to tell a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str | None:
    """Containers sharing a host name can still have separate process-id spaces."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def worker_identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _start_time(pid), "pid_ns": _pid_namespace()}


def process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    return start is None or now is None or now == start


# ----------------------------------------------------------------------- slots and retries


def slot_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get("slot", trial.number))


def is_surplus_marked(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("surplus"))


@dataclass
class Budget:
    used: int  # slots taken (finished, running or waiting)
    waiting: int  # enqueued retries not started yet
    running: int


def budget(study: optuna.Study) -> Budget:
    trials = [t for t in study.get_trials(deepcopy=False) if not is_surplus_marked(t)]
    return Budget(used=len({slot_of(t) for t in trials}),
                  waiting=sum(t.state == TrialState.WAITING for t in trials),
                  running=sum(t.state == TrialState.RUNNING for t in trials))


def slot_rank(study: optuna.Study, slot: int) -> int:
    """How many slots come before ``slot`` (a trial is within budget when this is < N)."""
    return len({slot_of(t) for t in study.get_trials(deepcopy=False)
                if not is_surplus_marked(t) and slot_of(t) < slot})


def retry_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Enqueue a new attempt with ``trial``'s parameters in the same slot (up to MAX_ATTEMPTS)."""
    attempt = int(trial.user_attrs.get("attempt", 1))
    if attempt >= MAX_ATTEMPTS:
        return False
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return False  # another worker retried it already
    study.enqueue_trial(dict(trial.params), user_attrs={
        "slot": slot_of(trial), "retry_of": trial.number, "attempt": attempt + 1, "retry_reason": reason})
    return True


def recover_dead_local_trials(study: optuna.Study, log: Any = print) -> list[int]:
    """Fail and retry RUNNING trials whose worker process on this host is gone; their numbers."""
    here, ns = socket.gethostname(), _pid_namespace()
    storage = study._storage  # the trial-state API Optuna's own fail_stale_trials uses
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if host != here or pid is None or t.user_attrs.get("pid_ns", ns) != ns:
            continue  # another machine's (or container's) worker: the heartbeat decides
        if process_alive(int(pid), t.user_attrs.get("pid_start")):
            continue
        reason = f"interrupted: worker process {pid} on {host} died during the trial"
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except Exception:  # noqa: BLE001 - another worker finished or failed it first
            continue
        retried = retry_trial(study, study._storage.get_trial(t._trial_id), reason)
        log(f"trial {t.number}: {reason}; " + ("queued again" if retried else
                                                 f"not retried (already tried {MAX_ATTEMPTS} times)"))
        recovered.append(t.number)
    return recovered
