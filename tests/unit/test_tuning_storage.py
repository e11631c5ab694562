"""Crash bookkeeping without training: dead workers' trials, retries, slots, surplus, heartbeats."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from cnnlab.tuning import storage as st  # noqa: E402


def _study(tmp_path, heartbeat=None, grace=None):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = st.open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat, grace)
    return optuna.create_study(storage=storage, study_name="s", direction="maximize", load_if_exists=True)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _running(study, x, **attrs):
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0) if x is None else trial.suggest_float("x", x, x)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    return trial


def test_dead_local_trials_are_failed_and_retried_in_their_slot(tmp_path):
    study = _study(tmp_path)
    t0 = study.ask()
    t0.suggest_float("x", 0.0, 1.0)
    study.tell(t0, 0.5)
    dead = _running(study, None, host=socket.gethostname(), pid=_dead_pid(), pid_start=None)
    me = st.worker_identity()
    alive = _running(study, None, **me)
    remote = _running(study, None, host="some-other-machine", pid=1, pid_start=None)
    lines = []
    recovered = st.recover_dead_local_trials(study, lines.append)
    assert recovered == [dead.number]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[dead.number].state == TrialState.FAIL
    assert "interrupted" in trials[dead.number].user_attrs["fail_reason"]
    assert trials[alive.number].state == TrialState.RUNNING  # a live process keeps its trial
    assert trials[remote.number].state == TrialState.RUNNING  # left to the heartbeat
    waiting = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert len(waiting) == 1
    retry = waiting[0]
    assert retry.user_attrs["retry_of"] == dead.number and retry.user_attrs["slot"] == dead.number
    assert retry.user_attrs["attempt"] == 2
    # The retry does not take a new slot: 4 slots (0 done, the dead one, the live, the remote).
    b = st.budget(study)
    assert (b.used, b.waiting, b.running) == (4, 1, 2)
    # Recovering again changes nothing.
    assert st.recover_dead_local_trials(study, lines.append) == []
    assert len(study.get_trials()) == 5
    # The retry, when asked for, carries the same parameter value.
    nxt = study.ask()
    assert nxt.number == retry.number
    assert nxt.suggest_float("x", 0.0, 1.0) == pytest.approx(trials[dead.number].params["x"])


def test_retries_stop_after_the_attempt_limit(tmp_path):
    study = _study(tmp_path)
    t = _running(study, 0.3, host=socket.gethostname(), pid=_dead_pid(), attempt=st.MAX_ATTEMPTS, slot=0)
    assert st.recover_dead_local_trials(study, lambda s: None) == [t.number]
    assert not [x for x in study.get_trials() if x.state == TrialState.WAITING]


def test_slot_rank_marks_a_racing_trial_beyond_the_budget(tmp_path):
    study = _study(tmp_path)
    for _ in range(2):
        t = study.ask()
        study.tell(t, 0.1)
    a = study.ask()  # two workers ask for the third of three trials at once
    b = study.ask()
    assert st.slot_rank(study, a.number) == 2  # within a budget of 3
    assert st.slot_rank(study, b.number) == 3  # surplus for a budget of 3
    b.set_user_attr("surplus", True)
    study.tell(b, state=TrialState.FAIL)
    assert st.budget(study).used == 3


def test_a_retry_keeps_its_original_slot_rank(tmp_path):
    study = _study(tmp_path)
    first = _running(study, 0.2, host=socket.gethostname(), pid=_dead_pid())
    for _ in range(2):
        t = study.ask()
        study.tell(t, 0.1)
    st.recover_dead_local_trials(study, lambda s: None)
    retry = study.ask()
    assert retry.user_attrs["slot"] == first.number
    assert st.slot_rank(study, retry.user_attrs["slot"]) == 0  # still within a budget of 3
    assert st.budget(study).used == 3


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trial_whose_heartbeat_stops_is_failed_and_retried(tmp_path):
    study = _study(tmp_path, heartbeat=1, grace=1)
    t = _running(study, 0.7, host="another-machine", pid=123)
    study._storage.record_heartbeat(t._trial_id)
    time.sleep(2.5)  # longer than the grace period: the worker counts as gone
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert len(trials) == 2 and trials[1].state == TrialState.WAITING
    assert trials[1].user_attrs["retry_of"] == t.number
    assert "heartbeats" in trials[1].user_attrs["retry_reason"]


def test_storage_errors_name_the_url_without_its_password():
    from cnnlab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        st.open_storage("postgresql+psycopg2://user:s3cret@127.0.0.1:1/nodb")
    assert "s3cret" not in str(err.value) and "127.0.0.1:1/nodb" in str(err.value)
    assert st.mask_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_a_dead_pid_in_another_container_of_the_same_host_is_left_to_the_heartbeat(tmp_path):
    study = _study(tmp_path)
    t = _running(study, 0.4, host=socket.gethostname(), pid=_dead_pid(), pid_ns="pid:[1]")
    assert st.recover_dead_local_trials(study, lambda s: None) == []
    assert study.get_trials()[t.number].state == TrialState.RUNNING


def test_opening_a_new_database_another_worker_is_creating_is_retried(tmp_path, monkeypatch):
    """Optuna stamps a new schema without a lock: the loser of that race must try again, not exit."""
    real = optuna.storages.RDBStorage
    calls = []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num")
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage = st.open_storage(f"sqlite:///{tmp_path / 'study.db'}", None, None)
    assert len(calls) == 2 and isinstance(storage, real)


def test_other_storage_errors_are_not_retried(tmp_path, monkeypatch):
    from cnnlab.errors import ConfigError

    calls = []

    def broken(url, **kwargs):
        calls.append(url)
        raise RuntimeError("disk I/O error")

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(ConfigError, match="disk I/O error"):
        st.open_storage(f"sqlite:///{tmp_path / 'study.db'}", None, None)
    assert len(calls) == 1


def test_workers_opening_one_new_database_together_all_succeed(tmp_path):
    """Four processes open the same brand-new SQLite study at once; none fails on the schema."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    code = ("import sys, optuna; from cnnlab.tuning.storage import open_storage; "
            "optuna.logging.set_verbosity(optuna.logging.ERROR); "
            "s = open_storage(sys.argv[1], None, None); "
            "optuna.create_study(storage=s, study_name='s', load_if_exists=True)")
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
