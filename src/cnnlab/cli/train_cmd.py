"""cnnlab train: train a model from a config (or resume an interrupted run)."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_json_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a config file",
                       description="Train a model from a config file and evaluate it on the test split. "
                                   "Writes a run directory (config, history, weights, model card, figures).")
    p.add_argument("--config", "-c", help="experiment config (YAML); default: built-in defaults")
    p.add_argument("--preset", help="a named recipe instead of --config (e.g. 'fast')")
    p.add_argument("--data", help="data source: cifar10, a folder, an archive or a CSV file")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="batch size")
    p.add_argument("--max-train-samples", type=int, help="train on a class-balanced subset of this size")
    p.add_argument("--image-size", type=int, help="resize images to N x N when loading")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--target-accuracy", type=float, help="stop once validation accuracy reaches this")
    p.add_argument("--time-limit", metavar="DURATION",
                   help="the whole run's time budget, e.g. 10m, 90s, 1.5h (fast recipe: sized to fit it)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of failing")
    p.add_argument("--run-dir", help="where to write the run (default: runs/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run from its last finished epoch")
    p.add_argument("--discard-state", action="store_true",
                   help="with --resume: drop the run's saved state (stale or corrupt) and train it again from epoch 1")
    p.add_argument("--image-column", help="CSV source: the image-path column (default: auto-detected)")
    p.add_argument("--label-column", help="CSV source: the label column (default: auto-detected)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.optimizer.lr=0.01 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="fit no temperature on the validation split after training (train.calibrate: false); "
                        "the model card then records temperature 1.0 and calibration off")
    add_json_flag(p, "the run's metrics and run directory")
    from cnnlab.cli.launch import add_flags

    add_flags(p)
    p.set_defaults(func=run)


#: Flags that choose what to train: a resumed run trains what its config.yaml says, so they are refused.
_NOT_WITH_RESUME = ("config", "preset", "epochs", "batch_size", "max_train_samples", "image_size", "seed",
                    "target_accuracy", "skip_bad", "run_dir", "overrides", "time_limit", "no_calibrate")


def run(args: argparse.Namespace) -> int:
    from cnnlab.cli.launch import relaunch, wants_launch
    from cnnlab.training.distributed import session

    if wants_launch(args):  # --nproc-per-node N: the same command again, as a torchrun job
        return relaunch(args, args.raw_argv)
    with session():  # under torchrun (WORLD_SIZE > 1): this rank joins the job; else a no-op
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.utils.distributed import current
    from cnnlab.cli.common import log_to_stderr, print_json
    from cnnlab.errors import ConfigError

    log = log_to_stderr if args.json else print
    if args.discard_state and not args.resume:
        raise ConfigError("--discard-state goes with --resume RUN_DIR")
    if args.resume:
        given = [f"--{name.replace('_', '-')}" if name != "overrides" else "--set"
                 for name in _NOT_WITH_RESUME if getattr(args, name) not in (None, False, [])]
        if given:
            raise ConfigError(f"--resume continues {args.resume} as its config.yaml says; {', '.join(given)} "
                              "would be ignored: drop it (or start a new run)")
        if args.discard_state:
            _discard_state(args.resume, log)
        run = api.resume(args.resume, data=args.data, progress=not args.no_progress, log=log)
        if args.json and current().is_main:
            print_json({"run_dir": str(run.run_dir), "metrics": run.metrics})
        return 0
    if args.config and args.preset:
        raise ConfigError("give either --config or --preset, not both")
    if args.run_dir:
        _check_run_dir(args.run_dir)
    overrides: dict[str, object] = {}
    for flag, key in (("data", "data.source"), ("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
                      ("max_train_samples", "data.max_train_samples"), ("image_size", "data.image_size"),
                      ("seed", "seed"), ("target_accuracy", "train.target_accuracy"),
                      ("image_column", "data.image_column"), ("label_column", "data.label_column")):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.skip_bad:
        overrides["data.skip_bad"] = True
    if args.time_limit is not None:
        from cnnlab.utils.durations import parse_duration

        overrides["train.recipe_options.time_limit_minutes"] = parse_duration(args.time_limit, "--time-limit") / 60
        overrides["train.recipe_options.max_train_minutes"] = 0  # the whole run's budget replaces the preset's
    from cnnlab.config import parse_override

    overrides.update(dict(parse_override(o) for o in args.overrides))
    config = args.config
    if args.preset:
        from cnnlab.presets import preset_path

        config = preset_path(args.preset)
    overrides.update(explicit_wins(config, overrides, log))
    run = api.train(config, overrides=overrides, run_dir=args.run_dir, progress=not args.no_progress, log=log,
                    calibrate=not args.no_calibrate)
    if args.json and current().is_main:
        print_json({"run_dir": str(run.run_dir), "metrics": run.metrics})
    return 0


def explicit_wins(config: object, overrides: dict[str, object], log) -> dict[str, object]:  # noqa: ANN001
    """What the user set wins over a planner: ``--epochs`` or ``--batch-size`` with the fast recipe's
    ``size: auto`` (which would choose its own epochs and batch) turns the planner off, with a line."""
    from cnnlab.training.orchestrate import resolve_config

    given = [k for k in ("train.epochs", "train.batch_size") if k in overrides]
    if not given:
        return {}
    cfg = resolve_config(config, overrides)  # type: ignore[arg-type]
    if cfg.train.recipe != "fast" or cfg.train.recipe_options.get("size") != "auto":
        return {}
    flags = ", ".join("--" + k.split(".")[1].replace("_", "-") for k in given)
    log(f"{flags} given: the fast recipe's size planner is off (size: fixed); the preset's widths, with "
        f"{', '.join(f'{k.split(chr(46))[1]} {overrides[k]}' for k in given)} as given")
    return {"train.recipe_options.size": "fixed"}


def _discard_state(run_dir: str, log) -> None:  # noqa: ANN001
    from pathlib import Path

    from cnnlab.config import read_run_config
    from cnnlab.training.rundir import RunDir
    from cnnlab.training.state import discard_state

    read_run_config(Path(run_dir) / "config.yaml")  # a run directory, with a readable config
    if RunDir(run_dir).is_finished():
        log(f"--discard-state: {run_dir} is finished; nothing to drop")
        return
    dropped = discard_state(Path(run_dir) / "state")
    log(f"--discard-state: dropped {dropped}; training again from epoch 1" if dropped
        else f"--discard-state: {run_dir} has no saved state; training from epoch 1")


def _check_run_dir(run_dir: str) -> None:
    """--run-dir must be a folder or a path where one can be made (not a file, not under a file)."""
    from cnnlab.training.rundir import check_run_dir

    check_run_dir(run_dir, "--run-dir")
