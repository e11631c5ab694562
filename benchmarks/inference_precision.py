"""What the one inference precision costs or saves: images/s of the inference path in fp32 and bf16.

    python benchmarks/inference_precision.py [--models cifar_fastnet:32,efficientnet_lite0:224]
                                             [--batch 256] [--seconds 4]

For each model (name:image_size, untrained weights: speed does not depend on their values) a run
is saved and loaded through cnnlab.inference.InferenceModel with ``precision="fp32"`` and
``precision="bf16"`` (bf16 only where the CPU runs it natively; elsewhere the rule falls back to
fp32 and this script says so). Timed on the same seeded uint8 images: throughput at --batch images
per call (micro-batches of 32 in fp32, 8 in bf16) and single-image latency (in bf16 a single image
is padded to a micro-batch of 8, the price of answers that do not depend on grouping; the script times the
unpadded alternative too, micro_batch=1). Ratios are within this one run; the machine is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cnnlab.config import HeadConfig, ModelConfig
from cnnlab.export.onnx import synthetic_images
from cnnlab.inference import InferenceModel
from cnnlab.models.io import save_model
from cnnlab.models.registry import create_model
from cnnlab.utils.hardware import choose_precision, machine_summary


def timed(fn, seconds: float, min_calls: int = 3) -> list[float]:
    out, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(out) < min_calls:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cifar_fastnet:32,efficientnet_lite0:224")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args(argv)
    print(f"machine: {machine_summary()}")
    print(f"bf16 here: {choose_precision('bf16', 'cpu').note()}")
    print("| model | precision | throughput img/s | vs fp32 | 1-image latency ms (median) | 1 image, unpadded (micro_batch=1) ms |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.models.split(","):
            arch, size = item.split(":")[0], int(item.split(":")[1])
            kwargs = {"widths": [64, 256, 256], "depth": 2} if arch == "cifar_fastnet" else {}
            model = create_model(ModelConfig(arch=arch, kwargs=kwargs, head=HeadConfig(pooling="avg"),
                                             input_size=None if arch == "cifar_fastnet" else size),
                                 [f"c{i}" for i in range(10)])
            run = Path(tmp) / arch
            save_model(model.eval(), run, {"data_image_size": size, "tta": "none"})
            many, one = synthetic_images(args.batch, size, seed=1), synthetic_images(1, size, seed=2)
            base = None
            for precision in ("fp32", "bf16"):
                inf = InferenceModel.load(run, precision=precision)
                inf.logits(many[:64])  # warm-up
                thr = args.batch / statistics.median(timed(lambda: inf.logits(many), args.seconds))
                lat = 1000 * statistics.median(timed(lambda: inf.logits(one), args.seconds / 2))
                unpadded = InferenceModel.load(run, precision=precision, batch_size=1)
                unpadded.logits(one)
                lat1 = 1000 * statistics.median(timed(lambda: unpadded.logits(one), args.seconds / 2))
                base = base or thr
                print(f"| {arch} {size}px | {inf.precision} | {thr:,.0f} | {thr / base:.2f}x | {lat:.1f} | {lat1:.1f} |")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
