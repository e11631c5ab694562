"""Frozen ImageNet backbone on CIFAR-10: feature-extraction throughput, then the end-to-end run.

Part 1 (always): images/s of the feature extraction cnnlab runs for a frozen base (the
backbone at its input size, 32 -> 224 px resized inside the model), on real CIFAR-10 images
when available, for four variants taken interleaved over --repeats rounds, with ratios to fp32
per round:

- fp32:          eager PyTorch, fp32, channels-last;
- bf16:          the same under bf16 autocast (AMX/AVX512-BF16 where the CPU has them);
- bf16+compile:  bf16 and torch.compile with frozen weights (what the feature cache runs for
                 >= 4,096 images: BatchNorm folded into the convolutions, weights pre-packed).
                 Its compilation is timed apart, in the warm-up.

(cnnlab's training kernels, models/cpu_kernels.py, are not used here: measured in an earlier
run they slow inference, 35.0 / 48.5 img/s against 36.4 / 73.7; see benchmarks/RESULTS.md.)

Part 2 (--end-to-end CONFIG): trains CONFIG (default experiments/transfer/II.yaml: frozen
base at 224 px, cached features, the study's head) with an empty feature cache, so the time
printed is end to end: decoding from the disk cache, feature extraction of all train, val and
test images, head training and evaluation. Target (issue): >= 90% test accuracy in < 20 minutes
on 2 cores.

    python benchmarks/transfer_frozen.py [--arch efficientnet_lite0] [--images 512] [--repeats 3]
    python benchmarks/transfer_frozen.py --end-to-end experiments/transfer/II.yaml
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab.config import ModelConfig  # noqa: E402
from cnnlab.models.registry import create_model  # noqa: E402
from cnnlab.training.features import extract_features  # noqa: E402
from cnnlab.utils.hardware import machine_summary, resolve_precision, setup_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "bf16", "bf16+compile")


def load_images(n: int) -> np.ndarray:
    try:
        from cnnlab.data.sources import load_source

        return load_source("cifar10").train.x[:n]
    except Exception as exc:  # noqa: BLE001 - speed does not depend on the pixels
        print(f"(CIFAR-10 not available: {exc}; using random pixels)")
        return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def build_variants(arch: str, input_size: int,
                   feature_stages: int = 0) -> dict[str, tuple[torch.nn.Module, torch.dtype | None, bool]]:
    mc = ModelConfig(arch=arch, pretrained="offline", preprocessing="auto", freeze_base=True,
                     input_size=input_size, feature_stages=feature_stages)
    base = create_model(mc, [str(i) for i in range(10)]).eval()
    base.to(memory_format=torch.channels_last)
    bf16 = resolve_precision("bf16", torch.device("cpu"))
    return {name: (copy.deepcopy(base), bf16 if name.startswith("bf16") else None, "compile" in name)
            for name in VARIANTS}


def throughput(variants, x: np.ndarray, batch_size: int, repeats: int) -> dict[str, list[float]]:
    ips: dict[str, list[float]] = {k: [] for k in variants}
    for name, (m, dtype, comp) in variants.items():  # warm-up: compilation, oneDNN primitives, allocator
        t0 = time.perf_counter()
        extract_features(m, x[:batch_size], batch_size=batch_size, dtype=dtype, compile=comp, progress=False)
        print(f"warm-up {name}: {time.perf_counter() - t0:.1f} s{' (compilation included)' if comp else ''}",
              flush=True)
    for r in range(repeats):
        for name, (m, dtype, comp) in variants.items():
            t0 = time.perf_counter()
            extract_features(m, x, batch_size=batch_size, dtype=dtype, compile=comp, progress=False)
            ips[name].append(len(x) / (time.perf_counter() - t0))
        line = " | ".join(f"{k} {ips[k][-1]:7.1f} img/s ({ips[k][-1] / ips['fp32'][-1]:.2f}x)" for k in ips)
        print(f"round {r + 1}: {line}", flush=True)
    return ips


def end_to_end(config: Path, overrides: list[str]) -> None:
    """Train ``config`` with an empty feature cache; decoded images are reused from the real cache."""
    from cnnlab import api
    from cnnlab.utils.paths import cnnlab_home

    home = cnnlab_home()
    tmp_home = Path(tempfile.mkdtemp(prefix="cnnlab-e2e-"))
    try:
        if (home / "decoded").is_dir():
            os.symlink(home / "decoded", tmp_home / "decoded")
        os.environ["CNNLAB_HOME"] = str(tmp_home)
        run_dir = tmp_home / "run"
        t0 = time.perf_counter()
        result = api.train(config, overrides=overrides, run_dir=run_dir, progress=False)
        wall = time.perf_counter() - t0
        m = result.metrics
        acc = m.get("test", {}).get("accuracy")
        print(f"end to end: {config} -> test accuracy {acc:.4f} in {wall / 60:.1f} min "
              f"(features {m.get('feature_seconds', 0) / 60:.1f} min, head {m['train_seconds'] / 60:.1f} min, "
              f"{m['epochs_run']} epochs; feature cache {m.get('feature_cache')})")
        print(f"target >= 0.90 in < 20 min: accuracy {'met' if acc >= 0.90 else 'missed'}, "
              f"time {'met' if wall < 1200 else 'missed'}")
    finally:
        os.environ["CNNLAB_HOME"] = str(home)
        shutil.rmtree(tmp_home, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, default=224, help="inputs resized to this size inside the model")
    p.add_argument("--feature-stages", type=int, default=0, help="also pool the last N stages (model.feature_stages)")
    p.add_argument("--images", type=int, default=512, help="images per throughput measurement")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--end-to-end", type=Path, default=None, metavar="CONFIG",
                   help="also train CONFIG with an empty feature cache and time it end to end")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    setup_threads()
    print(f"machine: {machine_summary()}")
    x = load_images(args.images)
    variants = build_variants(args.arch, args.input_size, args.feature_stages)
    size = variants["fp32"][0].spec.input_size
    print(f"feature extraction: {args.arch} at {size}x{size} (from {x.shape[1]} px), {len(x)} images, "
          f"batch {args.batch_size}, {args.repeats} interleaved rounds")
    ips = throughput(variants, x, args.batch_size, args.repeats)
    print("| variant | img/s (median) | min | max | vs fp32 (median of per-round ratios) | 60,000 images |")
    print("|---|---|---|---|---|---|")
    for k, v in ips.items():
        ratio = statistics.median(a / b for a, b in zip(v, ips["fp32"], strict=True))
        med = statistics.median(v)
        print(f"| {k} | {med:.1f} | {min(v):.1f} | {max(v):.1f} | {ratio:.2f}x | {60_000 / med / 60:.1f} min |")
    if args.end_to_end is not None:
        end_to_end(args.end_to_end, args.overrides)


if __name__ == "__main__":
    main()
