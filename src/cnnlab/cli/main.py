"""The ``cnnlab`` command: parse arguments, call the Python API, print. No logic of its own.

Every subcommand lives in a small module under cnnlab/cli/ that adds its parser and its
``run(args)``; user errors (CnnlabError) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cnnlab import __version__
from cnnlab.errors import CnnlabError

COMMANDS = ("train", "fit", "evaluate", "predict", "embed", "data", "models", "report", "study", "runs", "tune",
            "export", "serve", "explain", "cache")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="Train, evaluate and explain image classifiers on CIFAR-10 or your own images.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"cnnlab.cli.{name}_cmd").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    # One line at a time, also into a file or a pipe (`cnnlab train ... | tee log`).
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.raw_argv = list(argv) if argv is not None else None  # the launcher (cli/launch.py) re-runs it
    try:
        return int(args.func(args) or 0)
    except CnnlabError as exc:
        print(f"cnnlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except MemoryError:  # e.g. a data source or a model larger than this machine's memory
        print("cnnlab: error: out of memory (a data source, image size or model too large for this "
              "machine's memory)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
