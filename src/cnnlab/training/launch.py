"""Start a program as a torchrun job through torch.distributed.run's Python API, and turn its
failure report into one line. Used by ``cnnlab train --nproc-per-node`` (cli/launch.py) and by
tuning trials trained as data-parallel jobs (tuning/ddp_trial.py).

On a CPU each of the N processes gets cores / N threads (``OMP_NUM_THREADS``, unless it is set).
torchrun's agent does the rendezvous, watches the ranks and stops the job when one dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from cnnlab.errors import TrainingError


def torchrun_args(program: Sequence[str], *, nproc_per_node: int, nnodes: int = 1, node_rank: int | None = None,
                  rdzv_endpoint: str | None = None, module: bool = True) -> list[str]:
    """torchrun's command line for ``program`` (a module and its arguments, or a script)."""
    out = [f"--nproc-per-node={nproc_per_node}", "--max-restarts=0"]
    if nnodes > 1:
        # torchrun's static rendezvous: node R of M, node 0's endpoint hosts the store.
        out += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--rdzv-endpoint={rdzv_endpoint}"]
    else:
        out.append("--standalone")  # one machine: a local store on a free port
    return out + (["-m"] if module else []) + list(program)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def launch(program: Sequence[str], *, nproc_per_node: int, nnodes: int = 1, node_rank: int | None = None,
           rdzv_endpoint: str | None = None, module: bool = True, resume_hint: str = "",
           resumable: bool = True) -> int:
    """Run ``program`` as a torchrun job; returns 0, or raises TrainingError with one line naming
    the failed rank and how it ended (and, when ``resumable``, what to resume) when any rank fails."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from cnnlab.training.distributed import RUN_DIR_FILE_ENV
    from cnnlab.utils.cores import threads_per_process

    threads = str(threads_per_process(nproc_per_node))
    with tempfile.TemporaryDirectory(prefix="cnnlab-launch-") as tmp:
        run_dir_file = Path(tmp) / "run_dir"
        argv = torchrun_args(program, nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                             rdzv_endpoint=rdzv_endpoint, module=module)
        try:
            with _env(OMP_NUM_THREADS=threads, **{RUN_DIR_FILE_ENV: str(run_dir_file)}):
                run(parse_args(argv))
        except ChildFailedError as exc:
            run_dir = run_dir_file.read_text() if run_dir_file.is_file() and resumable else ""
            resume_hint = resume_hint if resumable else ""
            raise TrainingError(failure_line(exc, run_dir, resume_hint, nproc_per_node)) from None
    return 0


def failure_line(exc: BaseException, run_dir: str, resume_hint: str, nproc: int) -> str:
    """One line from torchrun's ChildFailedError: the first failed rank, its pid and exit."""
    rank, failure = exc.get_first_failure()  # type: ignore[attr-defined]
    code = failure.exitcode
    how = f"exited with status {code}"
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    elif code == 2:  # a cnnlab error (bad input): the rank printed it; nothing to resume
        return f"data-parallel job failed: rank {rank} stopped with the error above (exit status 2)"
    where = run_dir or resume_hint
    tail = (f"; the run directory stays resumable: cnnlab train --resume {where} --nproc-per-node {nproc}"
            if where else "")
    return f"data-parallel job failed: rank {rank} (pid {failure.pid}) {how}, so torchrun stopped the others{tail}"
