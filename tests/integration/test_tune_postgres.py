"""Workers on "different machines" join one study through PostgreSQL.

Needs a PostgreSQL server: set CNNLAB_TEST_POSTGRES_URL (an SQLAlchemy URL, e.g.
postgresql+psycopg2://user:password@127.0.0.1:5432/db). `.ci/postgres.sh` starts a private one
and exports it. Two `cnnlab tune` processes with separate output folders (as on two machines)
share the study; the trials must add up to exactly the number requested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

URL_ENV = "CNNLAB_TEST_POSTGRES_URL"
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))  # the tuning tests' data helpers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _postgres_url() -> str:
    url = os.environ.get(URL_ENV)
    if not url:
        pytest.skip(f"{URL_ENV} is not set (source .ci/postgres.sh to start a throw-away PostgreSQL)")
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url, pool_pre_ping=True)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except ImportError as exc:
        pytest.skip(f"the PostgreSQL driver is missing ({exc}); pip install psycopg2-binary")
    except Exception as exc:  # noqa: BLE001 - any connection failure means: not reachable
        pytest.skip(f"{URL_ENV} is set but PostgreSQL is not reachable: {str(exc).splitlines()[0]}")
    return url


def test_two_cnnlab_tune_processes_share_a_postgres_study(tmp_path):
    url = _postgres_url()
    from optuna.trial import TrialState
    from test_tuning_support import cli_env, cnnlab_cmd, tiny_config, write_color_tree, write_config

    name = f"cnnlab-test-{uuid.uuid4().hex[:10]}"
    data = write_color_tree(tmp_path / "data")
    cfg = tiny_config(trials=6)
    cfg["train"].update(epochs=3, batch_size=8)
    config = write_config(tmp_path / "tiny.yaml", cfg)
    procs = []
    for machine in ("a", "b"):
        args = ["tune", "--config", str(config), "--data", str(data), "--storage", url, "--study-name", name,
                "--out", str(tmp_path / f"machine-{machine}"), "--quiet"]
        procs.append(subprocess.Popen(cnnlab_cmd(*args), env=cli_env(tmp_path / f"home-{machine}"),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT))
    try:
        outputs = [p.communicate(timeout=480)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    try:
        trials = optuna.load_study(study_name=name, storage=url).get_trials()
        counted = [t for t in trials if not t.user_attrs.get("surplus")]
        assert len(counted) == 6
        assert all(t.state == TrialState.COMPLETE for t in counted)
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        pids = {t.user_attrs["pid"] for t in counted}
        assert len(pids) == 2  # both "machines" ran trials
        assert sorted({t.number for t in counted}) == sorted(t.number for t in counted)
        summaries = [json.loads((tmp_path / f"machine-{m}" / "summary.json").read_text()) for m in "ab"]
        last = max(summaries, key=lambda s: s["counts"]["completed"])
        assert last["counts"]["slots"] == 6 and last["counts"]["completed"] == 6
        assert "***" in last["storage"] and url.split("@")[0].split(":")[-1] not in last["storage"]
    finally:
        optuna.delete_study(study_name=name, storage=url)


def test_two_workers_whose_trials_are_data_parallel_jobs_share_a_postgres_study(tmp_path):
    """As on two machines, each worker training its trials as 2-process torchrun jobs (gloo)."""
    url = _postgres_url()
    from optuna.trial import TrialState
    from test_tuning_support import cli_env, cnnlab_cmd, tiny_config, write_color_tree, write_config

    name = f"cnnlab-test-ddp-{uuid.uuid4().hex[:10]}"
    data = write_color_tree(tmp_path / "data")
    cfg = tiny_config(trials=2)
    config = write_config(tmp_path / "tiny.yaml", cfg)
    procs = []
    for machine in ("a", "b"):
        args = ["tune", "--config", str(config), "--data", str(data), "--storage", url, "--study-name", name,
                "--out", str(tmp_path / f"machine-{machine}"), "--quiet", "--nproc-per-trial", "2"]
        procs.append(subprocess.Popen(cnnlab_cmd(*args), env=cli_env(tmp_path / f"home-{machine}"),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT))
    try:
        outputs = [p.communicate(timeout=480)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    try:
        trials = optuna.load_study(study_name=name, storage=url).get_trials()
        counted = [t for t in trials if not t.user_attrs.get("surplus")]
        assert len(counted) == 2 and all(t.state == TrialState.COMPLETE for t in counted)
        for t in counted:
            metrics = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
            assert metrics["distributed"]["world_size"] == 2
            assert sorted(t.intermediate_values) == [0, 1]
    finally:
        optuna.delete_study(study_name=name, storage=url)
