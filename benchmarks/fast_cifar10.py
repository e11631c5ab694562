"""Benchmark of the fast recipe on CIFAR-10: accuracy, training time and hardware use.

    CNNLAB_CIFAR10=/path/cifar10-jpeg.tar.gz python benchmarks/fast_cifar10.py            # preset, 3 seeds
    python benchmarks/fast_cifar10.py --config experiments/fast/speed.yaml --seeds 3
    python benchmarks/fast_cifar10.py --seeds 1 --epochs 1 --max-train-samples 5000     # smoke check
    python benchmarks/fast_cifar10.py --seeds 1 --time-to 0.909                         # time to 90.9%

For each seed it trains the recipe on the 50,000 training images and reports the test accuracy
without and with flip/translate test-time augmentation, the training wall time (evaluation
excluded, as published fast-CIFAR-10 times are), images/s and the achieved GFLOP/s: training
FLOPs as executed (forward + backward, counted by PyTorch's FLOP counter) over the training
time. The share of the machine is that figure over the bf16 (or fp32) matrix-product peak this
script measures first with 4096 x 4096 products on all cores. ``--time-to ACC`` also evaluates
the test accuracy with TTA after every epoch (time not counted) and reports when it first
reached ACC. Mean and spread (sample standard deviation) over the seeds close the output;
``--json`` writes everything to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cnnlab import api  # noqa: E402
from cnnlab.config import load_config  # noqa: E402
from cnnlab.evaluation.metrics import accuracy  # noqa: E402
from cnnlab.models.registry import create_model  # noqa: E402
from cnnlab.presets import preset_path  # noqa: E402
from cnnlab.training.recipes.fast import Workers, fit, options, predict_parallel  # noqa: E402
from cnnlab.training.rundir import RunDir  # noqa: E402
from cnnlab.utils.hardware import machine_summary, physical_cores, resolve_precision, setup_threads  # noqa: E402

MATMUL_SIZE = 4096


def matmul_peak(dtype: torch.dtype, repeats: int = 5) -> float:
    """Best GFLOP/s of a 4096 x 4096 matrix product in ``dtype`` on all cores."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * MATMUL_SIZE**3 / best / 1e9


def one_seed(cfg_path: Path, seed: int, args: argparse.Namespace, bundle, out_dir: Path) -> dict:
    overrides = {"seed": seed}
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.max_train_samples is not None:
        overrides["data.max_train_samples"] = args.max_train_samples
    for item in args.set:
        key, value = item.split("=", 1)
        import yaml

        overrides[key] = yaml.safe_load(value)
    if args.time_to is not None:
        overrides["train.recipe_options.monitor_tta"] = "flip_translate"
    cfg = load_config(cfg_path, overrides)
    prep = api.prepare_data(cfg, bundle)
    model = create_model(cfg.model, prep.train.class_names)
    rd = RunDir(out_dir / f"seed{seed}")
    rd.path.mkdir(parents=True, exist_ok=True)
    reached: dict[str, float] = {}

    def on_epoch(epoch: int, logs: dict) -> None:
        acc = logs.get("val_accuracy")
        if args.time_to is not None and acc is not None and acc >= args.time_to and not reached:
            reached.update(epoch=epoch + 1, seconds=logs["train_seconds_total"], accuracy=acc)

    # With --time-to, the test split is the per-epoch monitor (passed as `val`), as in airbench.
    monitor = prep.test if args.time_to is not None else None
    res = fit(cfg, model, prep.train, monitor, rd, progress=False, log=print, epoch_callback=on_epoch)
    device = next(res.model.parameters()).device
    dtype = resolve_precision(cfg.train.precision, device)
    n_workers = 1 if device.type != "cpu" else (int(options(cfg.train.recipe_options)["workers"]) or physical_cores())
    workers = Workers(n_workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if n_workers > 1 else threads)
    y = torch.from_numpy(prep.test.y)
    accs = {}
    try:
        for tta in ("none", "flip_translate"):
            logits = predict_parallel(res.model, prep.test.x, workers, tta=tta, device=device, dtype=dtype,
                                      batch_size=cfg.train.eval_batch_size)
            accs[tta] = accuracy(logits, y)
    finally:
        workers.close()
        torch.set_num_threads(threads)
    row = {
        "seed": seed,
        "epochs": res.epochs_run,
        "test_accuracy": accs["none"],
        "test_accuracy_tta": accs["flip_translate"],
        "train_seconds": res.train_seconds,
        "train_minutes": res.train_seconds / 60,
        "images_per_second": res.extra["train_gflops_per_second"] / res.extra["train_gflop_per_image"],
        "gflops_per_second": res.extra["train_gflops_per_second"],
        "train_gflop_per_image": res.extra["train_gflop_per_image"],
        "workers": res.extra["workers"],
        "precision": res.extra["precision"],
    }
    if args.time_to is not None:
        row["time_to_target"] = reached or None
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="recipe config (default: the `fast` preset)")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    ap.add_argument("--epochs", type=int, help="override train.epochs")
    ap.add_argument("--max-train-samples", type=int, help="train on a class-balanced subset (smoke runs)")
    ap.add_argument("--time-to", type=float, metavar="ACC",
                    help="also report the training time at which test accuracy with TTA first reached ACC")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-fast", help="run directories go here")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    args = ap.parse_args()
    if not os.environ.get("CNNLAB_CIFAR10"):
        print("note: CNNLAB_CIFAR10 is not set; cnnlab will look for the official CIFAR-10 download", file=sys.stderr)

    setup_threads()
    cfg_path = args.config or preset_path("fast")
    print(f"machine: {machine_summary()}")
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    print(f"matmul peak ({MATMUL_SIZE}x{MATMUL_SIZE}, {torch.get_num_threads()} threads): "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s, fp32 {peaks['fp32']:.0f} GFLOP/s")
    print(f"config: {cfg_path}")
    bundle = api.load_data("cifar10", load_config(cfg_path))

    rows = []
    for seed in range(args.seeds):
        row = one_seed(cfg_path, seed, args, bundle, args.out)
        peak = peaks["bf16" if row["precision"] == "bfloat16" else "fp32"]
        row["share_of_peak"] = row["gflops_per_second"] / peak
        rows.append(row)
        line = (f"seed {seed}: test accuracy {row['test_accuracy']:.4f}, with TTA {row['test_accuracy_tta']:.4f} | "
                f"{row['epochs']} epochs in {row['train_minutes']:.2f} min | {row['images_per_second']:.0f} img/s | "
                f"{row['gflops_per_second']:.0f} GFLOP/s = {100 * row['share_of_peak']:.0f}% of the "
                f"{'bf16' if row['precision'] == 'bfloat16' else 'fp32'} matmul peak")
        if args.time_to is not None:
            t = row["time_to_target"]
            line += (f" | reached {args.time_to:.3f} with TTA after epoch {t['epoch']}, {t['seconds'] / 60:.2f} min"
                     if t else f" | did not reach {args.time_to:.3f}")
        print(line, flush=True)

    def stat(key: str) -> str:
        vals = [r[key] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.4f} ± {sd:.4f}" if key.startswith("test") else \
            f"{statistics.mean(vals):.2f} ± {sd:.2f}"

    print(f"mean over {len(rows)} seed(s): test accuracy {stat('test_accuracy')}, with TTA {stat('test_accuracy_tta')}, "
          f"training {stat('train_minutes')} min, {stat('images_per_second')} img/s, "
          f"{stat('gflops_per_second')} GFLOP/s, share of peak {stat('share_of_peak')}")
    print(f"machine: {machine_summary()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_summary(), "matmul_peak_gflops": peaks,
                                         "config": str(cfg_path), "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
