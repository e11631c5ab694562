"""`cnnlab train ... --nproc-per-node N`: a thin launcher over PyTorch's torch.distributed.run.

The command is started again through torchrun's Python API, without the launcher flags, as N
processes on this machine (``-m cnnlab train ...``); torchrun's agent does the rendezvous,
watches the ranks and stops the job when one dies. On a CPU each process gets cores / N
threads (``OMP_NUM_THREADS``, unless it is set). This module only builds torchrun's
arguments and turns its failure report into one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from cnnlab.errors import ConfigError, TrainingError

#: The launcher's flags (stripped from the command the ranks run) and whether each takes a value.
FLAGS = {"--nproc-per-node": True, "--nnodes": True, "--node-rank": True, "--rdzv-endpoint": True}


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data-parallel training (torchrun; see docs/distributed.md)")
    g.add_argument("--nproc-per-node", type=int, metavar="N",
                   help="train with N processes on this machine (one per GPU; on a CPU each gets cores/N threads)")
    g.add_argument("--nnodes", type=int, metavar="M", help="with --nproc-per-node: the number of machines (default 1)")
    g.add_argument("--node-rank", type=int, metavar="R", help="with --nnodes: this machine's rank, 0 .. M-1")
    g.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                   help="with --nnodes: the address of node 0, which every machine can reach")


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def wants_launch(args: argparse.Namespace) -> bool:
    """True when the flags ask for a launch; refuses inconsistent flags."""
    given = [f for f in ("nnodes", "node_rank", "rdzv_endpoint") if getattr(args, f, None) is not None]
    if args.nproc_per_node is None:
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} goes with --nproc-per-node N")
        return False
    if under_torchrun():
        raise ConfigError("--nproc-per-node: this process already runs under torchrun; drop the launcher flags")
    if args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node {args.nproc_per_node}: expected at least 1")
    nnodes = args.nnodes or 1
    if nnodes < 1:
        raise ConfigError(f"--nnodes {nnodes}: expected at least 1")
    if nnodes > 1 and (args.node_rank is None or not args.rdzv_endpoint):
        raise ConfigError("--nnodes > 1 needs --node-rank R and --rdzv-endpoint HOST:PORT (node 0's address)")
    if args.node_rank is not None and not 0 <= args.node_rank < nnodes:
        raise ConfigError(f"--node-rank {args.node_rank}: expected 0 .. {nnodes - 1}")
    if args.rdzv_endpoint and ":" not in args.rdzv_endpoint:
        raise ConfigError(f"--rdzv-endpoint {args.rdzv_endpoint!r}: expected HOST:PORT")
    return True


def strip_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` without the launcher's flags (``--flag V`` and ``--flag=V`` forms)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in FLAGS:
            skip = "=" not in a and FLAGS[name]
            continue
        out.append(a)
    return out


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
           rdzv_endpoint: str | None = None, module: bool = True, resume_hint: str = "") -> int:
    """Run ``program`` as a torchrun job; returns 0, or raises TrainingError with one line naming
    the failed rank and how it ended (and what to resume) when any rank fails."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from cnnlab.training.distributed import RUN_DIR_FILE_ENV
    from cnnlab.utils.hardware import physical_cores

    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, physical_cores() // nproc_per_node))
    with tempfile.TemporaryDirectory(prefix="cnnlab-launch-") as tmp:
        run_dir_file = Path(tmp) / "run_dir"
        argv = torchrun_args(program, nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                             rdzv_endpoint=rdzv_endpoint, module=module)
        try:
            with _env(OMP_NUM_THREADS=threads, **{RUN_DIR_FILE_ENV: str(run_dir_file)}):
                run(parse_args(argv))
        except ChildFailedError as exc:
            run_dir = run_dir_file.read_text() if run_dir_file.is_file() else ""
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


def relaunch(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """``cnnlab train ... --nproc-per-node N`` -> torchrun ``-m cnnlab train ...`` (same flags, minus the launcher's)."""
    program = ["cnnlab", *strip_flags(list(sys.argv[1:] if argv is None else argv))]
    return launch(program, nproc_per_node=args.nproc_per_node, nnodes=args.nnodes or 1, node_rank=args.node_rank,
                  rdzv_endpoint=args.rdzv_endpoint, resume_hint=getattr(args, "resume", None) or "")
