"""cnnlab runs list: the run directories under a folder, with settings and results."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list training runs")
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    rsub.required = True
    q = rsub.add_parser("list", help="a table of the runs under a folder (default runs/), oldest first",
                        description="Every folder with a config.yaml under DIR: architecture, epochs, batch "
                                    "size, learning rate, test accuracy and training time, sorted by start time.")
    q.add_argument("dir", nargs="?", default="runs", help="folder to search (default: runs)")
    q.add_argument("--newest-first", action="store_true", help="newest run first")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--json", action="store_true", help="the same as --format json")
    q.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    from cnnlab.cli.common import print_csv, print_json, print_table
    from cnnlab.reports import list_runs
    from cnnlab.reports.runs import COLUMNS

    rows = list_runs(args.dir, newest_first=args.newest_first)
    if args.format == "json" or args.json:
        print_json(rows)
    elif args.format == "csv":
        print_csv(rows, COLUMNS + ["path"])
    else:
        print_table(rows, COLUMNS)
    return 0
