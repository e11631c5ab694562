"""Pruned Bayesian search against plain random search, on the study's Model II.5 space.

Both searches tune MobileNet v1 (experiments/mobilenet/II.5.yaml: head units, dropout, L2,
learning rate, decay steps and rate) on the same fixed CIFAR-10 subset with the same epoch cap:

- tpe+median:  Optuna's TPE sampler, trials pruned by the median rule after each epoch;
- random:      random sampling, every trial trained to the end (no pruning).

Each runs --seeds times. The script prints, per search, the best validation accuracy reached
against the total training epochs spent, and whether the pruned search reached the random
search's best accuracy within a quarter of the random search's epochs.

    python benchmarks/tune_mobilenet.py [--train 1000] [--val 500] [--epochs 4] [--trials 8]
                                        [--seeds 3] [--results benchmarks/RESULTS.md]

The defaults take about 10 minutes on 2 idle CPU cores. Both searches use the same seeds, so their
first (random) trials are the same points: a paired comparison. Trials train with batch 32 (the
study's II.4) so that a small subset still gets a few dozen optimiser steps per epoch. The II.5
decay_steps range (3,000-10,000 steps, sized for 40,000 images and 30 epochs) is longer than a
whole trial here, so the two decay parameters barely matter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cnnlab.api import load_data  # noqa: E402
from cnnlab.config import load_config  # noqa: E402
from cnnlab.data.dataset import DatasetBundle  # noqa: E402
from cnnlab.data.split import limit_samples, split_train_val  # noqa: E402
from cnnlab.utils.hardware import machine_summary  # noqa: E402

CONFIG = ROOT / "experiments/mobilenet/II.5.yaml"
SEARCHES = {"tpe+median": {"sampler": "tpe", "pruner": "median"},
            "random": {"sampler": "random", "pruner": "none"}}


def subset(train_n: int, val_n: int) -> DatasetBundle:
    """A fixed, class-balanced subset of CIFAR-10's training images (no test images needed)."""
    cfg = load_config(CONFIG)
    bundle = load_data("cifar10", cfg)
    frac = val_n / (train_n + val_n)
    pool = limit_samples(bundle.train, train_n + val_n, seed=0)
    train, val = split_train_val(pool, frac, "stratified", seed=0)
    return DatasetBundle("cifar10-subset", train, val=val)


def run_search(name: str, seed: int, data: DatasetBundle, args: argparse.Namespace, root: Path) -> dict:
    import optuna

    from cnnlab.tuning import tune

    opts = SEARCHES[name]
    out = root / f"{name}-seed{seed}"
    t0 = time.perf_counter()

    def log(line: str) -> None:
        if args.verbose or line.startswith("trial") and (" done" in line or "pruned" in line or "failed" in line):
            print(f"  [{name} seed {seed}] {line}", flush=True)

    overrides = {"seed": seed, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
                 "search.initial_random": args.initial_random,
                 "search.pruner_startup_trials": args.pruner_startup, "search.pruner_warmup_epochs": args.warmup}
    tune(CONFIG, data=data, overrides=overrides, trials=args.trials, sampler=opts["sampler"],
         pruner=opts["pruner"], final_fit="none", out=out, seed=seed, epoch_log=False, log=log)
    study = optuna.load_study(study_name=load_config(CONFIG).name, storage=f"sqlite:///{out / 'study.db'}")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    curve, spent, best = [], 0, 0.0
    for t in trials:  # one worker: trials ran one after the other, epoch by epoch
        for _, value in sorted(t.intermediate_values.items()):
            spent += 1
            best = max(best, value)  # the best validation accuracy any epoch has reached so far
            curve.append((spent, best))
    states = [t.state.name.lower() for t in trials]
    return {"search": name, "seed": seed, "best": best, "epochs": spent, "curve": curve,
            "complete": states.count("complete"), "pruned": states.count("pruned"), "failed": states.count("fail"),
            "seconds": time.perf_counter() - t0}


def best_at(curve: list[tuple[int, float]], epochs: int) -> float:
    vals = [b for e, b in curve if e <= epochs]
    return vals[-1] if vals else float("nan")


def epochs_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    for e, b in curve:
        if b >= target - 1e-12:
            return e
    return None


def report(runs: list[dict], args: argparse.Namespace, wall: float, data: DatasetBundle) -> str:
    full = args.trials * args.epochs
    load = ", ".join(f"{x:.1f}" for x in args.load_before)
    lines = [f"machine: {machine_summary()}",
             f"load average before the run: {load} (1, 5, 15 min); after: "
             + ", ".join(f"{x:.1f}" for x in os.getloadavg()),
             f"data: {len(data.train):,} training / {len(data.val):,} validation CIFAR-10 images (fixed subset), "
             f"II.5 space, batch {args.batch_size}, up to {args.epochs} epochs x {args.trials} trials per search, "
             f"TPE's first {args.initial_random} trials random, median pruning after {args.pruner_startup} "
             f"finished trial(s) from epoch {args.warmup + 1}; seeds {', '.join(map(str, range(args.seeds)))}; "
             f"wall time {wall / 60:.1f} min",
             "",
             "| search | seed | best val accuracy | epochs spent | complete / pruned / failed | minutes |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['search']} | {r['seed']} | {r['best']:.4f} | {r['epochs']} | "
                     f"{r['complete']} / {r['pruned']} / {r['failed']} | {r['seconds'] / 60:.1f} |")
    marks = sorted({e for e in (args.epochs, full // 4, full // 2, 3 * full // 4, full) if e > 0})
    lines += ["", "Best validation accuracy reached (mean over seeds) against total training epochs spent:", "",
              "| search | " + " | ".join(f"<= {m} epochs" for m in marks) + " | mean epochs spent |",
              "|---|" + "---|" * (len(marks) + 1)]
    for name in SEARCHES:
        rs = [r for r in runs if r["search"] == name]
        cells = [statistics.fmean(best_at(r["curve"], m) for r in rs) for m in marks]
        lines.append(f"| {name} | " + " | ".join("-" if np.isnan(c) else f"{c:.4f}" for c in cells)
                     + f" | {statistics.fmean(r['epochs'] for r in rs):.1f} |")
    lines += ["", "Target: the pruned search reaches the random search's best validation accuracy (same seed) "
                  "within a quarter of the random search's epochs.", "",
              "| seed | random: best, epochs | a quarter of its epochs | pruned search: epochs to reach it | met |",
              "|---|---|---|---|---|"]
    met = []
    for seed in range(args.seeds):
        rnd = next(r for r in runs if r["search"] == "random" and r["seed"] == seed)
        tpe = next(r for r in runs if r["search"] == "tpe+median" and r["seed"] == seed)
        need = epochs_to_reach(tpe["curve"], rnd["best"])
        ok = need is not None and need <= rnd["epochs"] / 4
        met.append(ok)
        lines.append(f"| {seed} | {rnd['best']:.4f}, {rnd['epochs']} | {rnd['epochs'] / 4:g} | "
                     f"{need if need is not None else 'not reached (' + str(tpe['epochs']) + ' spent)'} | "
                     f"{'yes' if ok else 'no'} |")
    lines += ["", f"Target met in {sum(met)} of {len(met)} seeds."]
    return "\n".join(lines)


def append_results(path: Path, text: str, args: argparse.Namespace) -> None:
    from cnnlab.utils.io import atomic_write_text

    cmd = (f"python benchmarks/tune_mobilenet.py --train {args.train} --val {args.val} --epochs {args.epochs} "
           f"--trials {args.trials} --seeds {args.seeds} --batch-size {args.batch_size}")
    section = f"## Hyperparameter search\n\n`{cmd}`\n\n{text}\n"
    old = path.read_text() if path.is_file() else "# Benchmark results\n"
    atomic_write_text(path, old.rstrip("\n") + "\n\n" + section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=1000, help="training images (fixed subset)")
    p.add_argument("--val", type=int, default=500, help="validation images")
    p.add_argument("--epochs", type=int, default=4, help="epochs per trial (upper bound)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of every trial")
    p.add_argument("--trials", type=int, default=8, help="trials per search")
    p.add_argument("--seeds", type=int, default=3, help="runs per search (seeds 0..N-1)")
    p.add_argument("--initial-random", type=int, default=3, help="TPE's random trials before modelling")
    p.add_argument("--pruner-startup", type=int, default=1, help="finished trials before pruning starts")
    p.add_argument("--warmup", type=int, default=0,
                   help="epochs every trial runs before its first pruning check (0: checked after epoch 1)")
    p.add_argument("--results", type=Path, help="append the figures to this markdown file")
    p.add_argument("--out", type=Path, help="keep the studies here (default: a temporary folder)")
    p.add_argument("--verbose", action="store_true", help="print every log line")
    args = p.parse_args()
    args.load_before = os.getloadavg()

    t0 = time.perf_counter()
    data = subset(args.train, args.val)
    print(f"data ready: {len(data.train)} train / {len(data.val)} val ({time.perf_counter() - t0:.0f} s)", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="cnnlab-tune-bench-") as tmp:
        root = args.out or Path(tmp)
        for seed in range(args.seeds):
            for name in SEARCHES:  # interleaved, so drift in machine speed hits both alike
                r = run_search(name, seed, data, args, root)
                print(f"{name} seed {seed}: best {r['best']:.4f} after {r['epochs']} epochs "
                      f"({r['complete']} complete, {r['pruned']} pruned, {r['failed']} failed, "
                      f"{r['seconds']:.0f} s)", flush=True)
                runs.append(r)
    text = report(runs, args, time.perf_counter() - t0, data)
    print()
    print(text)
    if args.results:
        append_results(args.results, text, args)


if __name__ == "__main__":
    main()
