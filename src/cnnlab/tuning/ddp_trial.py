"""A tuning trial trained as a data-parallel job (``cnnlab tune --nproc-per-trial N``).

The tuning worker stays one process that talks to Optuna; each trial's training is a torchrun
job of N processes on this machine, started through cnnlab's launcher (training/launch.py) in a child
process. The worker follows the trial's ``history.csv`` (rank 0 writes a row after each epoch),
reports each epoch's objective to Optuna and, when the pruner says so, stops the job (SIGTERM to
the launcher, whose torchrun agent stops the ranks). Run as a module, this file is also the
job's entry point: under torchrun it trains the trial's config in the process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnlab.errors import TrainingError

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 60


def train_trial(cfg: Any, run_dir: Path, nproc: int, on_epoch: Callable[[int, dict[str, float]], None],
                log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train ``cfg`` into ``run_dir`` with ``nproc`` processes; ``on_epoch`` sees each epoch's row
    as it appears (an exception from it, e.g. optuna.TrialPruned, stops the job and is raised).
    Returns the run's history."""
    from cnnlab.training.rundir import RunDir

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="trial-", dir=run_dir.parent, delete=False) as fh:
        fh.write(cfg.to_yaml())
    cfg_path = Path(fh.name)
    cmd = [sys.executable, "-m", "cnnlab.tuning.ddp_trial", "--nproc", str(nproc), str(cfg_path), str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []

    def forward() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            line = line.rstrip("\n")
            tail[:] = (tail + [line])[-20:]
            log(line)

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    seen = 0
    try:
        while True:
            done = proc.poll() is not None
            rows = RunDir(run_dir).read_history() if (run_dir / "history.csv").is_file() else []
            for k in range(seen, len(rows)):
                on_epoch(k, rows[k])
            seen = len(rows)
            if done:
                break
            time.sleep(POLL_SECONDS)
    except BaseException:
        _stop(proc)
        raise
    finally:
        reader.join(timeout=5)
        cfg_path.unlink(missing_ok=True)
    if proc.returncode:
        errors = [line for line in tail if line.startswith("cnnlab: error:")]
        raise TrainingError((errors[0] if errors else (tail[-1] if tail else ""))
                            or f"the trial's data-parallel job exited with status {proc.returncode}")
    return RunDir(run_dir).read_history()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # torchrun's agent stops the ranks on SIGTERM
    try:
        proc.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str]) -> int:
    """``python -m cnnlab.tuning.ddp_trial [--nproc N] CONFIG RUN_DIR``: launch (outside torchrun)
    or train (inside it)."""
    from cnnlab.errors import CnnlabError

    nproc = 1
    if argv[:1] == ["--nproc"]:
        nproc, argv = int(argv[1]), argv[2:]
    cfg_path, run_dir = argv
    try:
        if "LOCAL_RANK" not in os.environ:
            from cnnlab.training.launch import launch

            return launch(["cnnlab.tuning.ddp_trial", cfg_path, run_dir], nproc_per_node=nproc)
        from cnnlab.training import orchestrate
        from cnnlab.training.distributed import session

        with session():
            orchestrate.train(cfg_path, run_dir=run_dir, progress=False)
        return 0
    except CnnlabError as exc:
        print(f"cnnlab: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
