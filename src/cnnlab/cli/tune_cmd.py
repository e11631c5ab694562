"""cnnlab tune: search a config's `search:` space with Optuna, then retrain and test the best."""

from __future__ import annotations

import argparse
import os

_EPILOG = """\
examples:
  cnnlab tune --config experiments/mobilenet/II.5.yaml --epochs 10 --trials 20
  cnnlab tune -c experiments/mobilenet/II.5.yaml --workers 2 --timeout 2h
  cnnlab tune -c experiments/mobilenet/II.5.yaml --time-limit 20m
  CNNLAB_STORAGE=postgresql+psycopg2://user:pw@db-host/cnnlab cnnlab tune -c II.5.yaml --study-name ii5

Run the same command again to resume after a crash or kill; run it on other machines with the
same --storage and --study-name to add workers (see docs/tuning.md).
"""


#: The study storage's URL from the environment: a password in it stays off the command line.
STORAGE_ENV = "CNNLAB_STORAGE"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyperparameter search over a config's search: section (Optuna)",
                       description="Search the config's `search:` space with Optuna: each trial trains with the "
                                   "config plus the trial's values and reports validation accuracy per epoch, so "
                                   "hopeless trials are pruned. Then the best setting is retrained and tested; "
                                   "summary.json, summary.md and figures go to the output folder.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", required=True, help="experiment config (YAML) with a search: section")
    p.add_argument("--trials", type=int, help="number of trials in the study (default: search.trials)")
    p.add_argument("--timeout", help="start no new trial after this long, e.g. 600, 45m, 2h, 1h30m")
    p.add_argument("--time-limit", metavar="DURATION",
                   help="end the whole search (trials, final fit, summary) within this, e.g. 90s, 20m, 1.5h: "
                        "a running trial is stopped after an epoch and still counts")
    p.add_argument("--sampler", choices=("tpe", "gp", "random"), help="tpe (default), gp or random")
    p.add_argument("--initial-random", type=int, metavar="N", help="random trials before the sampler's model")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), help="early stopping of trials")
    p.add_argument("--final-fit", choices=("train+val", "train", "none"),
                   help="retrain the best setting on train+val (default), on train, or not at all")
    p.add_argument("--storage", metavar="URL", default=None,
                   help="SQLAlchemy URL of the study storage (default: $CNNLAB_STORAGE, else sqlite:///OUT/study.db); "
                        "a URL with a password belongs in CNNLAB_STORAGE, where other users' `ps` cannot see it")
    p.add_argument("--study-name", help="name of the study in the storage (default: the config's name)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--nproc-per-trial", type=int, default=1, metavar="N",
                   help="train each trial as a data-parallel torchrun job of N processes on this machine "
                        "(default 1; see docs/distributed.md)")
    p.add_argument("--data", help="data source: cifar10, a folder, an archive or a CSV file")
    p.add_argument("--epochs", type=int, help="epochs per trial (the upper bound; pruning stops trials earlier)")
    p.add_argument("--max-train-samples", type=int, help="train every trial on a class-balanced subset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.batch_size=64 (repeatable)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the config's seed)")
    p.add_argument("--out", help="output folder (default: runs/tune/<study name>)")
    p.add_argument("--quiet", action="store_true", help="one line per trial, no epoch lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab import tuning
    from cnnlab.tuning.budget import process_start_time
    from cnnlab.cli.common import print_json, print_table
    from cnnlab.config import parse_override

    overrides: dict[str, object] = {}
    for flag, key in (("epochs", "train.epochs"), ("max_train_samples", "data.max_train_samples")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    overrides.update(dict(parse_override(o) for o in args.overrides))
    result = tuning.tune(args.config, data=args.data, overrides=overrides, trials=args.trials, timeout=args.timeout,
                         time_limit=args.time_limit, started_at=process_start_time() if args.time_limit else None,
                         sampler=args.sampler, initial_random=args.initial_random, pruner=args.pruner,
                         storage=args.storage or os.environ.get(STORAGE_ENV) or None, study_name=args.study_name, workers=args.workers,
                         final_fit=args.final_fit, out=args.out, seed=args.seed, epoch_log=not args.quiet,
                         nproc_per_trial=args.nproc_per_trial)
    s = result.summary
    if args.json:
        print_json({k: v for k, v in s.items() if k != "trials"})
        return _status(s)
    c = s["counts"]
    print(f"\nstudy {s['study_name']}: {c['completed']} completed, {c['pruned']} pruned, {c['failed']} failed, "
          f"{c['running'] + c['waiting']} unfinished of {s['trials_requested']}; {s['epochs_spent']} epochs "
          f"(without pruning: {s['epochs_without_pruning']})")
    if s["best"]:
        b = s["best"]
        print(f"best: trial {b['trial']}, {s['objective']} {b['value']:.4f}")
        print_table([{"parameter": k, "value": v} for k, v in b["params"].items()])
    f = s["final_fit"] or {}
    if f.get("test"):
        print(f"final fit ({f['mode']}): test accuracy {f['test']['accuracy']:.4f} ({f['run_dir']})")
    elif f:
        print(f"final fit ({f.get('mode')}): {f.get('status')} {f.get('reason', '')}".rstrip())
    print(f"summary: {result.out_dir / 'summary.md'}")
    return _status(s)


def _status(summary: dict) -> int:
    """0 when a best setting was found (and its final fit, if any, did not fail)."""
    failed_final = (summary.get("final_fit") or {}).get("status") == "failed"
    return 0 if summary["best"] and not failed_final else 1
