"""cnnlab report: one self-contained HTML report of a trained run."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_json_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write an HTML report of a trained run",
                       description="Config, data summary and example images, model summary (layers, "
                                   "parameters, FLOPs), learning curves with overfitting warning, confusion "
                                   "matrix and per-class P/R/F1, the error analysis (errors.png: the images with "
                                   "the lowest probability for their true class, errors.csv beside it), a CSV of "
                                   "likely label errors, calibration, and speed: one HTML file (figures "
                                   "embedded, opens offline) with the PNGs beside it.")
    p.add_argument("run_dir", help="a run directory written by `cnnlab train`")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    p.add_argument("--worst", type=int, default=20, metavar="N",
                   help="images in the error analysis, errors.png and errors.csv (default 20, a 4x5 grid)")
    p.add_argument("--label-error-confidence", type=float, default=0.9, metavar="P",
                   help="list wrong predictions at least this confident as likely label errors (default 0.9)")
    p.add_argument("--data", help="data source (default: the one the run trained on)")
    p.add_argument("--weights", default="final", choices=["final", "best"], help="final or best checkpoint")
    p.add_argument("--latency-runs", type=int, default=30, metavar="N",
                   help="single-image predictions timed for the batch-1 latency (default 30)")
    add_json_flag(p, "the report's paths and evaluation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from cnnlab.cli.common import log_to_stderr, print_json
    from cnnlab.reports import write_run_report

    path = write_run_report(args.run_dir, args.out, n_worst=args.worst, data=args.data, weights=args.weights,
                            label_error_confidence=args.label_error_confidence, latency_runs=args.latency_runs,
                            log=log_to_stderr if args.json else print)
    if args.json:
        rep = json.loads((path.parent / "report.json").read_text())
        print_json({"html": str(path), "json": str(path.parent / "report.json"),
                    "eval_split": rep.get("eval_split"),
                    "evaluation": {k: rep["evaluation"].get(k) for k in (
                        "count", "loss", "accuracy", "balanced_accuracy", "macro_f1", "worst_class", "top5_accuracy",
                        "ece")},
                    "label_errors": rep.get("label_errors", {}).get("count"), "figures": rep.get("figures")})
        return 0
    print(path)
    return 0
