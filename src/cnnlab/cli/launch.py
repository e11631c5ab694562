"""`cnnlab train|fit ... --nproc-per-node N`: a thin launcher over PyTorch's torch.distributed.run.

The command is started again through torchrun's Python API, without the launcher flags, as N
processes on this machine (``-m cnnlab train ...``; training/launch.py starts the job).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cnnlab.errors import ConfigError

#: The launcher's flags (stripped from the command the ranks run) and whether each takes a value.
FLAGS = {"--nproc-per-node": True, "--nnodes": True, "--node-rank": True, "--rdzv-endpoint": True}


def add_flags(p: argparse.ArgumentParser, title: str = "data-parallel training") -> None:
    g = p.add_argument_group(f"{title} (torchrun; see docs/distributed.md)")
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


def relaunch(args: argparse.Namespace, argv: Sequence[str] | None, *, resumable: bool = True) -> int:
    """``cnnlab train ... --nproc-per-node N`` -> torchrun ``-m cnnlab train ...`` (same flags, minus the
    launcher's). ``resumable``: a failure names the run directory to resume (train; a fit is not resumed)."""
    from cnnlab.training.launch import launch

    program = ["cnnlab", *strip_flags(list(sys.argv[1:] if argv is None else argv))]
    return launch(program, nproc_per_node=args.nproc_per_node, nnodes=args.nnodes or 1, node_rank=args.node_rank,
                  rdzv_endpoint=args.rdzv_endpoint, resume_hint=getattr(args, "resume", None) or "",
                  resumable=resumable)
