"""cnnlab train: train a model from a config (or resume an interrupted run)."""

from __future__ import annotations

import argparse


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.errors import ConfigError

    if args.discard_state and not args.resume:
        raise ConfigError("--discard-state goes with --resume RUN_DIR")
    if args.resume:
        if args.discard_state:
            from pathlib import Path

            from cnnlab.config import read_run_config
            from cnnlab.training.state import discard_state

            from cnnlab.training.rundir import RunDir

            read_run_config(Path(args.resume) / "config.yaml")  # a run directory, with a readable config
            if RunDir(args.resume).is_finished():
                print(f"--discard-state: {args.resume} is finished; nothing to drop")
            else:
                dropped = discard_state(Path(args.resume) / "state")
                print(f"--discard-state: dropped {dropped}; training again from epoch 1" if dropped
                      else f"--discard-state: {args.resume} has no saved state; training from epoch 1")
        api.resume(args.resume, progress=not args.no_progress)
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
    from cnnlab.config import parse_override

    overrides.update(dict(parse_override(o) for o in args.overrides))
    config = args.config
    if args.preset:
        from cnnlab.presets import preset_path

        config = preset_path(args.preset)
    api.train(config, overrides=overrides, run_dir=args.run_dir, progress=not args.no_progress)
    return 0


def _check_run_dir(run_dir: str) -> None:
    """--run-dir must be a folder or a path where one can be made (not a file, not under a file)."""
    from pathlib import Path

    from cnnlab.errors import ConfigError

    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--run-dir {path}: exists and is not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--run-dir {path}: {parent} is a file, not a folder")
            break
