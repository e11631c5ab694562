"""Inference speed: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8 (CPU, fp32 torch).

    python benchmarks/inference_bench.py [--models cifar_fastnet:32,efficientnet_lite0:224]
                                         [--batch 64] [--seconds 3] [--run-dir DIR]

For each model (name:image_size) an untrained model (BatchNorm statistics set on synthetic
images) is saved as a run, exported with `cnnlab export` (fp32 and --quantize int8), and each
backend is timed on the same seeded synthetic uint8 images: batch-1 latency (median and p90 of
single-image calls) and throughput at --batch images per call. Speed does not depend on the
weights' values, so untrained weights measure the same as trained ones. cifar_fastnet is the
fast preset's net (widths 64/256/256, depth 2). Threads: one per physical core for both
PyTorch and ONNX Runtime, at each of --threads (on a shared machine
PyTorch's OpenMP threads suffer badly when a core is taken, so 1 thread is measured too).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import HeadConfig, ModelConfig
from cnnlab.export.onnx import compare, export_onnx, synthetic_images
from cnnlab.export.runtime import OnnxRuntimeBackend
from cnnlab.inference import InferenceModel
from cnnlab.models.io import save_model
from cnnlab.models.registry import create_model
from cnnlab.utils.hardware import machine_summary, physical_cores


class _Logits:  # the torch inference path seen as a backend (predict_logits -> numpy)
    def __init__(self, inf):
        self.inf = inf

    def predict_logits(self, x):
        return self.inf.raw_logits(x).numpy()

KWARGS = {"cifar_fastnet": {"widths": [64, 256, 256], "depth": 2, "activation": "relu"}}


def make_run(folder: Path, arch: str, size: int) -> Path:
    head = HeadConfig(pooling="max" if arch == "cifar_fastnet" else "avg")
    model = create_model(ModelConfig(arch=arch, kwargs=KWARGS.get(arch, {}), head=head),
                         [f"class_{i}" for i in range(10)])
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.from_numpy(synthetic_images(16, size, seed)).permute(0, 3, 1, 2))
    return save_model(model.eval(), folder, {"data_image_size": size})


def time_calls(fn, x: np.ndarray, seconds: float, min_calls: int = 5) -> list[float]:
    warm = time.perf_counter() + min(1.0, seconds / 2)
    for i in itertools.count():  # warm-up: at least 2 calls and up to half the budget (1 s at most)
        fn(x)
        if i >= 1 and time.perf_counter() > warm:
            break
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_calls:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="cifar_fastnet:32,efficientnet_lite0:224")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0, help="timing budget per measurement")
    p.add_argument("--threads", default=f"1,{physical_cores()}",
                   help="thread counts to measure, for PyTorch and ONNX Runtime alike (default 1 and the physical cores)")
    p.add_argument("--run-dir", help="where to keep the runs and ONNX files (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(physical_cores())
    print(f"machine: {machine_summary()}; load average {os.getloadavg()[0]:.2f} at start")
    root = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="cnnlab-infer-"))
    rows = []
    for item in args.models.split(","):
        arch, size = item.split(":")[0], int(item.split(":")[1])
        run = make_run(root / arch, arch, size)
        fp32 = export_onnx(run, parity_count=0)["path"]
        int8 = export_onnx(run, quantize="int8", parity_count=0)["path"]
        one = synthetic_images(1, size, seed=9)
        many = synthetic_images(args.batch, size, seed=10)
        check = synthetic_images(256, size, seed=11)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            torch_path = InferenceModel.load(run, precision="fp32", threads=threads)
            backends = {"pytorch eager": _Logits(torch_path), "ort fp32": OnnxRuntimeBackend(fp32, threads=threads),
                        "ort int8": OnnxRuntimeBackend(int8, threads=threads)}
            ref = backends["pytorch eager"].predict_logits(check)
            base_lat = None
            for name, b in backends.items():
                lat = time_calls(b.predict_logits, one, args.seconds)
                thr = time_calls(b.predict_logits, many, args.seconds, min_calls=3)
                med = statistics.median(lat)
                base_lat = base_lat or med
                agree = compare(ref, b.predict_logits(check))["top1_agreement"]
                rows.append((arch, size, threads, name, med * 1e3, sorted(lat)[int(0.9 * (len(lat) - 1))] * 1e3,
                             args.batch / statistics.median(thr), base_lat / med, agree))
                print(f"{arch} {size}px {threads} thr {name:14s} batch-1 median {med * 1e3:7.2f} ms  "
                      f"batch-{args.batch} {rows[-1][6]:8.1f} img/s  speed-up {rows[-1][7]:.2f}x  "
                      f"top-1 agreement with PyTorch {100 * agree:.1f}%  (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print("\n| model | image | threads | backend | batch-1 median ms | batch-1 p90 ms | "
          f"batch-{args.batch} images/s | batch-1 speed-up vs eager | top-1 agreement (256 synthetic) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} px | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.0f} | {r[7]:.2f}x | {100 * r[8]:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
