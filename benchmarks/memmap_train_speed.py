"""CIFAR-10 training speed from memory-mapped pixels against in-memory pixels (issue 23).

The standard loop's epoch function (training/recipes/standard.py ``_train_epoch``) runs the same steps on the
same model twice per round: A = the pixels as one in-memory tensor (the path before issue 23),
B = the decoded-pixel cache's memory map, read batch by batch (``NCHWRows``). Rounds alternate
A B A B ..., and the ratio is taken per round, so a machine whose speed drifts (shared cores)
still gives a fair comparison. Model: the fast preset's net (cifar_fastnet, widths 64/256/256),
batch 512, the standard recipe's augmentation (crop padding 2, flip).

    CNNLAB_CIFAR10=/work/shared/datasets/cifar10-jpeg.tar.gz PYTHONPATH=src \\
        python benchmarks/memmap_train_speed.py [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args()
    from cnnlab.config import config_from_dict
    from cnnlab.data.rows import is_disk_backed
    from cnnlab.data.sources import load_source
    from cnnlab.evaluation.predict import as_nchw
    from cnnlab.models.registry import create_model
    from cnnlab.training.recipes.standard import _train_epoch
    from cnnlab.training.optim import build_optimizer

    cores = len(os.sched_getaffinity(0))
    threads = int(os.environ.get("OMP_NUM_THREADS") or cores)
    torch.set_num_threads(threads)
    print(f"machine: {platform.machine()}, {cores} cores (shared with other jobs), {threads} compute threads, "
          f"torch {torch.__version__}")
    b = load_source("cifar10")
    n = args.steps * args.batch
    x_map = b.train.x[:n]
    assert is_disk_backed(x_map)
    x_mem = np.array(x_map)  # a private in-memory copy
    y = torch.from_numpy(b.train.y[:n])
    cfg = config_from_dict({
        "name": "speed", "seed": 0,
        "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
                  "kwargs": {"widths": [64, 256, 256]}},
        "train": {"epochs": 1, "batch_size": args.batch, "precision": "fp32",
                  "augment": {"crop_padding": 2, "flip": True},
                  "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}})
    device = torch.device("cpu")
    rates: dict[str, list[float]] = {"memory": [], "memmap": []}
    for r in range(args.rounds + 1):  # round 0 warms up both
        for name, x in (("memory", as_nchw(x_mem)), ("memmap", as_nchw(x_map))):
            model = create_model(cfg.model, b.class_names).to(memory_format=torch.channels_last)
            opt = build_optimizer(model, cfg.train.optimizer)
            t0 = time.perf_counter()
            _train_epoch(model, opt, x, y, cfg, 0, 0, args.steps, device, None, False)
            rate = n / (time.perf_counter() - t0)
            if r:
                rates[name].append(rate)
                print(f"round {r}: {name:6s} {rate:7.0f} img/s", flush=True)
    ratios = [m / i for m, i in zip(rates["memmap"], rates["memory"])]
    print(f"memmap / in-memory training speed: median {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{q:.3f}' for q in ratios)}); in-memory median "
          f"{statistics.median(rates['memory']):.0f} img/s, memmap {statistics.median(rates['memmap']):.0f} img/s")


if __name__ == "__main__":
    main()
