"""cnnlab study run / report / status: a whole study (families of experiments) in one command."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_json_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run a study of experiments, or report on it")
    ssub = p.add_subparsers(dest="study_command", metavar="ACTION")
    ssub.required = True
    q = ssub.add_parser("run", help="run every experiment that is not finished (resumable)",
                        description="Run the study's experiments in order into OUT/<study>/<family>-<id>/. "
                                    "Finished experiments are skipped and interrupted ones resumed, so a "
                                    "killed study continues where it stopped.")
    q.add_argument("study", help="a study file (YAML), e.g. studies/seed_cifar10.yaml")
    _out(q)
    q.add_argument("--max-train-samples", type=int, help="quick version: train on this many images")
    q.add_argument("--epochs", type=int, help="quick version: this many epochs")
    q.add_argument("--data", help="data source for every experiment (default: each config's)")
    q.add_argument("--only", nargs="+", metavar="EXPERIMENT",
                   help="run only these experiments (ids like II.3 or keys like mobilenet-II.3)")
    q.add_argument("--report", action="store_true", help="write the study report afterwards")
    q.add_argument("--progress", action="store_true", help="show a progress bar per epoch")
    add_json_flag(q, "one row per experiment")
    q.set_defaults(func=run_run)
    q = ssub.add_parser("report", help="comparison table, overlaid curves and one tree diagram per family",
                        description="Write OUT/<study>/report/: comparison.md/.csv, report.html, "
                                    "curves-<family>.png and tree-<family>.png/.svg, with the seed study's "
                                    "accuracy beside cnnlab's.")
    q.add_argument("study", help="a study file (YAML)")
    _out(q)
    add_json_flag(q, "the report's path")
    q.set_defaults(func=run_report)
    q = ssub.add_parser("status", help="which experiments are finished, partial or pending")
    q.add_argument("study", help="a study file (YAML)")
    _out(q)
    add_json_flag(q, "one row per experiment")
    q.set_defaults(func=run_status)


def _out(q: argparse.ArgumentParser) -> None:
    q.add_argument("--out", default="studies/out",
                   help="folder for the study's run directories (default: studies/out)")


def run_run(args: argparse.Namespace) -> int:
    from cnnlab.cli.common import log_to_stderr, print_json, print_table
    from cnnlab.reports import run_study, study_report

    rows = run_study(args.study, out=args.out, max_train_samples=args.max_train_samples, epochs=args.epochs,
                     data=args.data, only=args.only, progress=args.progress,
                     log=log_to_stderr if args.json else print)
    report = str(study_report(args.study, out=args.out)) if args.report else None
    if args.json:
        print_json({"experiments": rows, "report": report})
        return 0
    print_table(rows, ["key", "status", "run_dir"])
    if report:
        print(report)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from cnnlab.cli.common import print_json
    from cnnlab.reports import study_report

    path = study_report(args.study, out=args.out)
    if args.json:
        print_json({"report": str(path)})
        return 0
    print(path)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from cnnlab.cli.common import print_json, print_table
    from cnnlab.reports import load_study, study_status

    rows = study_status(load_study(args.study), args.out)
    if args.json:
        print_json(rows)
        return 0
    print_table(rows, ["key", "state", "run_dir"])
    return 0
