"""Training and inference speed of the study's MobileNet Model I (batch 128, 32x32 CIFAR-10).

Prints training images/s, inference images/s and seconds per epoch (40,000 training images
plus 10,000 validation images, as in the study) for:

- torch-plain:  PyTorch fp32, channels-last, stock convolutions (what a plain port does);
- cnnlab:       cnnlab's trainer settings (CPU conv kernels, bf16 autocast where AMX exists);
- keras:        Keras 3 on TensorFlow, the study's own stack, when --keras-python names a Python
                that has TensorFlow (it is run in a subprocess, in the same run, for a ratio).

Variants run interleaved (A B A B ...) over --repeats rounds, and ratios are taken per round,
so a machine whose speed drifts still gives a fair comparison. Real CIFAR-10 images are used
when CNNLAB_CIFAR10 (or the cifar10 cache) is available, random pixels otherwise; speed does
not depend on pixel values.

    python benchmarks/train_speed.py [--steps 40] [--repeats 3] [--keras-python /path/to/python]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab.config import load_config  # noqa: E402
from cnnlab.models.cpu_kernels import optimize_for_cpu  # noqa: E402
from cnnlab.models.registry import create_model  # noqa: E402
from cnnlab.training.optim import build_optimizer  # noqa: E402
from cnnlab.utils.hardware import autocast, machine_summary, resolve_precision, setup_threads  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "experiments/mobilenet/I.yaml"
BATCH = 128
TRAIN_IMAGES, VAL_IMAGES = 40_000, 10_000
# Untimed steps before each measurement, the same for every variant: the first steps of a fresh
# model pay for oneDNN primitive creation, allocator growth and (Keras) graph tracing.
WARMUP = 10


def load_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from cnnlab.data.sources import load_source

        b = load_source("cifar10")
        return b.train.x[:n], b.train.y[:n]
    except Exception as exc:  # noqa: BLE001 - a benchmark falls back to random pixels
        print(f"(CIFAR-10 not available: {exc}; using random pixels)")
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def torch_variant(name: str, x: np.ndarray, y: np.ndarray, steps: int) -> dict[str, float]:
    cfg = load_config(CONFIG)
    model = create_model(cfg.model, [str(i) for i in range(10)])
    model.to(memory_format=torch.channels_last)
    if name == "cnnlab":
        optimize_for_cpu(model)
        dtype = resolve_precision(cfg.train.precision, torch.device("cpu"))
    else:
        dtype = None
    opt = build_optimizer(model, cfg.train.optimizer)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    model.train()

    def step(i: int) -> None:
        idx = slice((i * BATCH) % (len(yt) - BATCH), (i * BATCH) % (len(yt) - BATCH) + BATCH)
        xb = xt[idx].contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), dtype):
            loss = F.cross_entropy(model(xb).float(), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(WARMUP):  # warm-up: oneDNN primitive creation, allocator
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    train_ips = steps * BATCH / (time.perf_counter() - t0)
    model.eval()
    with torch.inference_mode():
        xb = xt[:512].float().contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), dtype):
            model(xb)
        t0 = time.perf_counter()
        n = 0
        for i in range(0, min(len(xt), 2048), 512):
            xb = xt[i : i + 512].float().contiguous(memory_format=torch.channels_last)
            with autocast(torch.device("cpu"), dtype):
                model(xb)
            n += len(xb)
        infer_ips = n / (time.perf_counter() - t0)
    return {"train_ips": train_ips, "infer_ips": infer_ips}


KERAS_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, numpy as np
    import keras
    steps, warm = int(sys.argv[1]), int(sys.argv[2])
    base = keras.applications.MobileNet(input_shape=(32, 32, 3), include_top=False, weights=None)
    inp = keras.Input((32, 32, 3))
    h = keras.applications.mobilenet.preprocess_input(inp)
    h = base(h)
    h = keras.layers.GlobalMaxPooling2D()(h)
    h = keras.layers.Dense(512, activation="relu")(h)
    out = keras.layers.Dense(10, activation="softmax")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, ((steps + warm) * 128, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    model.fit(x[:warm * 128], y[:warm * 128], batch_size=128, epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(x[warm * 128:], y[warm * 128:], batch_size=128, epochs=1, verbose=0)
    train_ips = steps * 128 / (time.perf_counter() - t0)
    model.predict(x[:512], batch_size=512, verbose=0)
    t0 = time.perf_counter()
    model.predict(x[:2048], batch_size=512, verbose=0)
    infer_ips = 2048 / (time.perf_counter() - t0)
    print(json.dumps({"train_ips": train_ips, "infer_ips": infer_ips, "params": model.count_params()}))
    """
)


def keras_variant(python: str, steps: int) -> dict[str, float]:
    out = subprocess.run([python, "-c", KERAS_SCRIPT, str(steps), str(WARMUP)], capture_output=True, text=True,
                         env={"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "PATH": "/usr/bin:/bin"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--keras-python", help="a Python with TensorFlow/Keras 3, to measure the study's stack")
    args = ap.parse_args()
    setup_threads()
    print(f"machine: {machine_summary()}")
    x, y = load_images((args.steps + 4) * BATCH)
    variants = ["torch-plain", "cnnlab"] + (["keras"] if args.keras_python else [])
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants:
            res = keras_variant(args.keras_python, args.steps) if v == "keras" else torch_variant(v, x, y, args.steps)
            results[v].append(res)
            print(f"round {r + 1} {v:12s} train {res['train_ips']:7.0f} img/s  infer {res['infer_ips']:7.0f} img/s",
                  flush=True)
    print()
    print(f"{'variant':12s} {'train img/s':>12s} {'infer img/s':>12s} {'s/epoch':>9s}  (median of {args.repeats})")
    med = {}
    for v in variants:
        tr = statistics.median(r["train_ips"] for r in results[v])
        inf = statistics.median(r["infer_ips"] for r in results[v])
        med[v] = tr
        epoch = TRAIN_IMAGES / tr + VAL_IMAGES / inf
        print(f"{v:12s} {tr:12.0f} {inf:12.0f} {epoch:9.1f}")
    for base in [v for v in ("keras", "torch-plain") if v in results]:
        ratios = [c["train_ips"] / b["train_ips"] for c, b in zip(results["cnnlab"], results[base])]
        print(f"cnnlab / {base}: training speed ratio per round {', '.join(f'{q:.2f}' for q in ratios)}; "
              f"median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
