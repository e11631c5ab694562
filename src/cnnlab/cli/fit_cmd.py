"""cnnlab fit: the best model this machine can train from a data source within a time budget."""

from __future__ import annotations

import argparse
import time

from cnnlab.cli.common import add_json_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="auto-fit: the best model for the data within a time limit",
                       description="Plan (measure this machine's speed for each candidate), train the chosen "
                                   "candidates, ensemble them when it helps, and write a fit folder: plan.json, "
                                   "leaderboard.csv, report.md, fit.json and the models. Ends within the time "
                                   "limit x 1.05.")
    p.add_argument("--data", help="data source: cifar10, a folder, an archive or a CSV file")
    p.add_argument("--time-limit", metavar="DURATION", help="the whole fit's budget, e.g. 90s, 10m, 1.5h")
    p.add_argument("--quality", "--presets", dest="preset", default=None, metavar="QUALITY",
                   help="medium_quality, high_quality or best_quality (default: medium_quality below 20 minutes, "
                        "high_quality from 20 minutes; see cnnlab/autofit/presets.py; --presets, AutoGluon's "
                        "spelling, is the same flag). `cnnlab train --preset` names a recipe's config instead")
    p.add_argument("--backbone", metavar="ARCH",
                   help="the timm backbone of the pretrained candidates (default efficientnet_lite0)")
    p.add_argument("--backbone-weights", metavar="SOURCE",
                   help="its weights: offline, hub or a local .safetensors/.pth file (default: offline where a "
                        "package ships them, else hub)")
    p.add_argument("--resume", metavar="FIT_DIR",
                   help="continue a fit that was stopped (even killed): its plan and finished models are kept, "
                        "the running model continues from its last epoch, and the time limit counts the time "
                        "already spent (--data only when the fit was given a DataFrame or the data moved)")
    p.add_argument("--out", help="the fit folder, new or empty (default: runs/fit-<time>)")
    p.add_argument("--tuning-data", help="a validation source (default: held out from --data)")
    p.add_argument("--label-column", default="label", help="CSV source: the label column (default: label, else detected)")
    p.add_argument("--image-column", help="CSV source: the image-path column (default: auto-detected)")
    # default None: not given (a resumed fit keeps its own and refuses a flag that differs from it)
    p.add_argument("--drop-leaks", action="store_true", default=None,
                   help="remove training images that duplicate (exactly or nearly) a validation or test image")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false", default=None,
                   help="fit no temperature on the validation split after training (default: fitted, Guo et al. "
                        "2017); the model cards then record temperature 1.0 and calibration off")
    add_json_flag(p, "the fit summary (fit.json)")
    from cnnlab.cli.launch import add_flags

    add_flags(p, "data-parallel fit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started_at = time.monotonic()  # the limit counts from the command's start (under torchrun: rank 0's)
    from cnnlab.cli.launch import relaunch, wants_launch
    from cnnlab.training.distributed import session

    _check_args(args)
    if wants_launch(args):  # --nproc-per-node N: the same command again, as a torchrun job
        from cnnlab.autofit.fit import time_limit_seconds
        from cnnlab.autofit.presets import get_preset

        if args.resume:
            from cnnlab.errors import ConfigError

            raise ConfigError("--resume: a data-parallel fit is resumed in one process (without --nproc-per-node)")
        time_limit_seconds(args.time_limit)  # refused before any process starts
        get_preset(args.preset)
        return relaunch(args, args.raw_argv, resumable=False)
    with session():  # under torchrun (WORLD_SIZE > 1): this rank joins the job; else a no-op
        return _run(args, started_at)


def _check_args(args: argparse.Namespace) -> None:
    from cnnlab.errors import ConfigError

    if args.resume:
        if args.out:
            raise ConfigError("--resume FIT_DIR writes into FIT_DIR; --out goes with a new fit")
        return
    for flag, value in (("--data", args.data), ("--time-limit", args.time_limit)):
        if value is None:
            raise ConfigError(f"{flag} is required (or --resume FIT_DIR to continue a stopped fit)")


def _run(args: argparse.Namespace, started_at: float) -> int:
    from cnnlab.autofit.fit import time_limit_seconds
    from cnnlab.autofit.leaderboard import text
    from cnnlab.autofit.presets import get_preset
    from cnnlab.cli.common import log_to_stderr, print_json
    from cnnlab.predictor import ImagePredictor
    from cnnlab.utils.distributed import current

    log = log_to_stderr if args.json else print
    limit = time_limit_seconds(args.time_limit) if args.time_limit is not None else None  # refused before
    get_preset(args.preset)  # anything is loaded or written
    pred = ImagePredictor(label=args.label_column, path=args.resume or args.out, image_column=args.image_column)
    pred = pred.fit(args.data, args.tuning_data, time_limit=limit, presets=args.preset, log=log,  # the API's fit
                    started_at=started_at, drop_leaks=args.drop_leaks, calibrate=args.calibrate,
                    resume=bool(args.resume), backbone=args.backbone, backbone_weights=args.backbone_weights)
    if not current().is_main:
        return 0  # DDP: rank 0 wrote the fit folder and prints its summary
    info = pred.fit_summary()
    if args.json:
        print_json(info)
        return 0
    if info.get("selection"):
        print(info["selection"])
    print("leaderboard:")
    for line in text(info["leaderboard"]):
        print("  " + line)
    for kind, cv in (info.get("cross_validation") or {}).items():
        print(f"{kind}: {cv['method']} cross-validation accuracy {cv['accuracy']:.4f} (95% CI {cv['ci95'][0]:.3f}-"
              f"{cv['ci95'][1]:.3f}; folds {cv['fold_mean']:.3f} +- {cv['fold_std']:.3f})")
    if info.get("test_accuracy") is not None:
        print(f"test accuracy: {info['test_accuracy']:.4f} ({info['best']})")
    else:
        print(f"validation accuracy: {info['val_accuracy']:.4f} ({info['best']}; the source has no test split)")
    if info.get("test_balanced_accuracy") is not None:
        worst = info.get("test_worst_class")
        print(f"test balanced accuracy: {info['test_balanced_accuracy']:.4f}"
              + (f"; worst class {worst['class']} (recall {worst['recall']:.4f})" if worst else ""))
    print(f"elapsed: {info['elapsed_seconds']:.1f}s of {info['time_limit']:.0f}s ({info['overrun']:+.1%})"
          + (f"; {info['budget']['note']}" if info.get("budget") else ""))
    print(f"fit folder: {info['folder']}")
    return 0
