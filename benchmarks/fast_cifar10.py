"""Benchmark of the fast recipe on CIFAR-10: accuracy, training time and hardware use.

    CNNLAB_CIFAR10=/path/cifar10-jpeg.tar.gz python benchmarks/fast_cifar10.py   # speed.yaml, 3 seeds
    python benchmarks/fast_cifar10.py --config experiments/fast/long.yaml --seeds 3
    python benchmarks/fast_cifar10.py --seeds 1 --epochs 1 --max-train-samples 5000     # smoke check
    python benchmarks/fast_cifar10.py --seeds 1 --time-to 0.909                         # time to 90.9%

For each seed it trains the recipe on the 50,000 training images and reports the test accuracy
without and with flip/translate test-time augmentation, the training wall time (evaluation
excluded, as published fast-CIFAR-10 times are), images/s and the achieved GFLOP/s: training
FLOPs as executed (forward + backward, counted by PyTorch's FLOP counter) over the training
time. The share of the machine is that figure over the matrix-product peak this script measures
first, in the dtype the run trains in (the precision rule of utils/hardware.py: bf16 only where
the CPU has AVX512-BF16 or AMX), with square products grown until one takes a second, for at
most 10 s. It also times what lies outside training: loading the data (decoding, then the
cache), the recipe's set-up (planning, whitening, FLOP count) and the final evaluation. ``--time-to ACC`` also evaluates
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
from cnnlab.config import load_config, parse_override  # noqa: E402
from cnnlab.evaluation.metrics import accuracy  # noqa: E402
from cnnlab.models.registry import create_model  # noqa: E402
from cnnlab.training.recipes.fast import Workers, fit, options, predict_parallel  # noqa: E402
from cnnlab.training.rundir import RunDir  # noqa: E402
from cnnlab.utils.hardware import (autocast, choose_precision, machine_summary, physical_cores,  # noqa: E402
                                   resolve_precision, setup_threads)

PEAK_SECONDS = 10.0  # the whole peak measurement stays under this


def matmul_peak(dtype: torch.dtype, max_seconds: float = PEAK_SECONDS) -> tuple[float, int]:
    """Best GFLOP/s of a square matrix product in ``dtype`` on all cores, and its size.

    Sizes double from 256 until a product takes about a second or the time is spent, so a CPU
    without native support for ``dtype`` (emulated bf16: 40x slower) still ends in time.
    """
    t_end = time.perf_counter() + max_seconds
    best, size, n = 0.0, 256, 256
    while time.perf_counter() < t_end:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        t = time.perf_counter()
        a @ b
        took = time.perf_counter() - t
        for _ in range(3):
            if time.perf_counter() + took > t_end:
                break
            t = time.perf_counter()
            a @ b
            took = min(took, time.perf_counter() - t)
        rate = 2 * n**3 / took / 1e9
        if rate > best:
            best, size = rate, n
        if took > 1.0 or n >= 4096:
            break
        n *= 2
    return best, size


def conv_reference(dtype: torch.dtype, repeats: int = 3) -> float:
    """Best GFLOP/s of 3x3 convolutions in ``dtype`` (B=64, 256->256 channels, 8x8), one worker per core."""
    import torch.nn.functional as F

    cores = physical_cores()
    x = torch.randn(64, 256, 8, 8).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
    workers = Workers(cores)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def run() -> float:
            t = time.perf_counter()
            workers.map(lambda: F.conv2d(x, w, padding=1), [()] * cores)
            return time.perf_counter() - t

        run()
        best = min(run() for _ in range(repeats))
    finally:
        workers.close()
        torch.set_num_threads(threads)
    return cores * 2 * 64 * 64 * 256 * 256 * 9 / best / 1e9


def profile_step(cfg_path: Path, batch: int = 256, steps: int = 2) -> None:
    """Where one core's time goes in a training step: torch.profiler over ``steps`` steps of one
    single-threaded worker on ``batch`` random images, by operator, with GFLOP/s for convolutions."""
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from cnnlab.models.fastnet import init_whitening
    from cnnlab.training.recipes.fast import heap_for_large_tensors

    cfg = load_config(cfg_path)
    model = create_model(cfg.model, [str(i) for i in range(10)]).to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    init_whitening(model, x)
    model.backbone.whiten.bias.requires_grad_(False)  # as after the first epochs
    params = [p for p in model.parameters() if p.requires_grad]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    dtype = resolve_precision(cfg.train.precision, torch.device("cpu"))

    def step() -> None:
        with autocast(torch.device("cpu"), dtype):
            logits = model(x)
        torch.autograd.grad(F.cross_entropy(logits.float(), y, label_smoothing=0.2), params)

    try:
        with heap_for_large_tensors():
            step()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(steps):
                    step()
    finally:
        torch.set_num_threads(threads)
    rows = []
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.self_cpu_time_total <= 0 or not ev.key.startswith("aten::"):
            continue
        shapes = ev.input_shapes
        flops = 0.0
        if ev.key in ("aten::mkldnn_convolution", "aten::convolution_backward") and len(shapes) > 1 and shapes[1]:
            xs = shapes[0] if ev.key == "aten::mkldnn_convolution" else shapes[1]
            ws = shapes[1] if ev.key == "aten::mkldnn_convolution" else shapes[2]
            if len(xs) == 4 and len(ws) == 4:
                out_hw = (xs[2] + 2 * (ws[2] // 2) - ws[2] + 1) * (xs[3] + 2 * (ws[3] // 2) - ws[3] + 1)
                flops = 2.0 * xs[0] * out_hw * ws[0] * ws[1] * ws[2] * ws[3] * ev.count
        elif ev.key == "aten::mm" and len(shapes) == 2 and len(shapes[0]) == 2:
            flops = 2.0 * shapes[0][0] * shapes[0][1] * shapes[1][1] * ev.count
        rows.append((ev.self_cpu_time_total / 1e3 / steps, ev.key, shapes[:3], flops / steps))
    total = sum(r[0] for r in rows)
    print(f"profile: one worker, one thread, batch {batch}, {total:.0f} ms per step (self time, profiler on)")
    print(f"{'ms/step':>8} {'share':>6} {'GFLOP/s':>8}  operator  input shapes")
    for ms, key, shapes, flops in sorted(rows, reverse=True)[:18]:
        rate = f"{flops / ms / 1e6:8.0f}" if flops else f"{'':8}"
        print(f"{ms:8.1f} {100 * ms / total:5.1f}% {rate}  {key[6:]}  {shapes}")


def one_seed(cfg_path: Path, seed: int, args: argparse.Namespace, bundle, out_dir: Path) -> dict:
    overrides = {"seed": seed}
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.max_train_samples is not None:
        overrides["data.max_train_samples"] = args.max_train_samples
    overrides.update(dict(parse_override(item) for item in args.set))
    if args.time_to is not None:
        overrides["train.recipe_options.monitor_tta"] = "flip_translate"
    cfg = load_config(cfg_path, overrides)
    t0 = time.monotonic()
    prep = api.prepare_data(cfg, bundle)
    prepare_seconds = time.monotonic() - t0
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
    t_fit = time.monotonic()
    res = fit(cfg, model, prep.train, monitor, rd, progress=False, log=print, epoch_callback=on_epoch,
              test=prep.test, started_at=t0)
    fit_seconds = time.monotonic() - t_fit
    device = next(res.model.parameters()).device
    dtype = resolve_precision(cfg.train.precision, device)
    n_workers = 1 if device.type != "cpu" else (int(options(cfg.train.recipe_options)["workers"]) or physical_cores())
    workers = Workers(n_workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if n_workers > 1 else threads)
    y = torch.from_numpy(prep.test.y)
    accs, eval_seconds = {}, {}
    try:
        for tta in ("none", "flip_translate"):
            t = time.monotonic()
            logits = predict_parallel(res.model, prep.test.x, workers, tta=tta, device=device, dtype=dtype,
                                      batch_size=cfg.train.eval_batch_size)
            eval_seconds[tta] = time.monotonic() - t
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
        "plan": res.extra.get("plan"),
        # what lies outside training (seconds)
        "prepare_seconds": prepare_seconds,
        "setup_seconds": res.extra["setup_seconds"],
        "fit_other_seconds": fit_seconds - res.train_seconds - res.extra["setup_seconds"],
        "eval_seconds": eval_seconds,
    }
    if args.time_to is not None:
        row["time_to_target"] = reached or None
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="recipe config (default: the `fast` preset)")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    ap.add_argument("--first-seed", type=int, default=0, help="start the seeds here (to add seeds to a run)")
    ap.add_argument("--epochs", type=int, help="override train.epochs")
    ap.add_argument("--max-train-samples", type=int, help="train on a class-balanced subset (smoke runs)")
    ap.add_argument("--time-to", type=float, metavar="ACC",
                    help="also report the training time at which test accuracy with TTA first reached ACC")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-fast", help="run directories go here")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    ap.add_argument("--profile", action="store_true",
                    help="only profile a training step of the config's net on one core (no data needed)")
    args = ap.parse_args()
    if not os.environ.get("CNNLAB_CIFAR10"):
        print("note: CNNLAB_CIFAR10 is not set; cnnlab will look for the official CIFAR-10 download", file=sys.stderr)

    setup_threads()
    cfg_path = args.config or ROOT / "experiments" / "fast" / "speed.yaml"
    if args.profile:
        print(f"machine: {machine_summary()}")
        profile_step(cfg_path)
        return 0
    print(f"machine: {machine_summary()}")
    precision = choose_precision(load_config(cfg_path).train.precision, torch.device("cpu"))
    print(precision.note())
    peak, peak_size = matmul_peak(precision.dtype or torch.float32)
    print(f"{precision.name} matmul peak ({peak_size}x{peak_size}, {torch.get_num_threads()} threads): "
          f"{peak:.0f} GFLOP/s")
    conv_ref = conv_reference(precision.dtype or torch.float32)
    print(f"{precision.name} 3x3 convolution reference (one single-threaded worker per core): {conv_ref:.0f} GFLOP/s")
    print(f"config: {cfg_path}")
    budget = options(load_config(cfg_path).train.recipe_options)["max_train_minutes"]
    if budget:
        print(f"note: this config has a time budget (max_train_minutes={budget:g}): a slow machine trains fewer "
              f"epochs; experiments/fast/speed.yaml and long.yaml have none")
    t = time.monotonic()
    bundle = api.load_data("cifar10", load_config(cfg_path))
    print(f"data: CIFAR-10 loaded in {time.monotonic() - t:.1f} s (decoded once, then from cnnlab's cache)")

    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        row = one_seed(cfg_path, seed, args, bundle, args.out)
        row["share_of_peak"] = row["gflops_per_second"] / peak
        row["share_of_conv_reference"] = row["gflops_per_second"] / conv_ref
        rows.append(row)
        line = (f"seed {seed}: test accuracy {row['test_accuracy']:.4f}, with TTA {row['test_accuracy_tta']:.4f} | "
                f"{row['epochs']} epochs in {row['train_minutes']:.2f} min | {row['images_per_second']:.0f} img/s | "
                f"{row['gflops_per_second']:.0f} GFLOP/s = {100 * row['share_of_peak']:.0f}% of the "
                f"{row['precision']} matmul peak, "
                f"{100 * row['share_of_conv_reference']:.0f}% of the conv reference")
        if args.time_to is not None:
            t = row["time_to_target"]
            line += (f" | reached {args.time_to:.3f} with TTA after epoch {t['epoch']}, {t['seconds'] / 60:.2f} min"
                     if t else f" | did not reach {args.time_to:.3f}")
        print(line, flush=True)
        print(f"seed {seed} outside training: preparing the splits {row['prepare_seconds']:.1f} s, recipe set-up "
              f"(planning, whitening, FLOP count) {row['setup_seconds']:.1f} s, per-epoch monitoring and saving "
              f"{row['fit_other_seconds']:.1f} s, final evaluation {row['eval_seconds']['none']:.1f} s without TTA, "
              f"{row['eval_seconds']['flip_translate']:.1f} s with 6 views"
              + (f" | plan: {row['plan']}" if row["plan"] else ""), flush=True)

    def stat(key: str) -> str:
        vals = [r[key] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.4f} ± {sd:.4f}" if key.startswith("test") else \
            f"{statistics.mean(vals):.2f} ± {sd:.2f}"

    print(f"mean over {len(rows)} seed(s): test accuracy {stat('test_accuracy')}, with TTA {stat('test_accuracy_tta')}, "
          f"training {stat('train_minutes')} min, {stat('images_per_second')} img/s, "
          f"{stat('gflops_per_second')} GFLOP/s, share of matmul peak {stat('share_of_peak')}, "
          f"of conv reference {stat('share_of_conv_reference')}")
    print(f"machine: {machine_summary()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_summary(), "matmul_peak_gflops": {precision.name: peak},
                                         "conv_reference_gflops": conv_ref,
                                         "config": str(cfg_path), "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
