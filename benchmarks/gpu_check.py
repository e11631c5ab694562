"""GPU checks for a machine that has one (never part of CI): images/s and accuracy of the fast
preset and of a fine-tune on one GPU, and of the fast preset as a 2-process DDP job (NCCL)
when there are two GPUs.

    python benchmarks/gpu_check.py                 # CIFAR-10 from $CNNLAB_CIFAR10 or the cache
    python benchmarks/gpu_check.py --quick         # 2 epochs each, a smoke test

Prints one Markdown row per run: what, GPUs, training images/s (median epoch), training seconds
and test accuracy (from each run's metrics.json). Exits 0 without running anything when no
CUDA device is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNS = {
    "fast preset, 1 GPU": (1, ["--preset", "fast", "--set", "train.recipe_options.size=fixed",
                               "--set", "train.recipe_options.max_train_minutes=0"]),
    "fine-tune efficientnet_lite0 at 96 px, 1 GPU": (1, ["-c", str(ROOT / "experiments" / "transfer" / "finetune_fast.yaml")]),
    "fast preset, 2 GPUs (DDP, NCCL)": (2, ["--preset", "fast", "--set", "train.recipe_options.size=fixed",
                                            "--set", "train.recipe_options.max_train_minutes=0"]),
}


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 epochs per run")
    args = ap.parse_args()
    gpus = torch.cuda.device_count()
    if not gpus:
        print("no CUDA device: nothing to check")
        return 0
    print(f"{gpus} GPU(s): {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| run | GPUs | training img/s | training s | test accuracy | wall s |\n|---|---|---|---|---|---|")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for i, (what, (n, flags)) in enumerate(RUNS.items()):
            if n > gpus:
                print(f"| {what} | {n} | skipped: {gpus} GPU(s) | | | |")
                continue
            run_dir = Path(tmp) / f"run{i}"
            cmd = [sys.executable, "-m", "cnnlab", "train", *flags, "--data", "cifar10", "--run-dir", str(run_dir),
                   "--no-progress"] + (["--epochs", "2"] if args.quick else []) + (
                   ["--nproc-per-node", str(n)] if n > 1 else [])
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                print(f"| {what} | {n} | failed: {proc.stderr.strip().splitlines()[-1:]} | | | {wall:.0f} |")
                continue
            m = json.loads((run_dir / "metrics.json").read_text())
            acc = (m.get("test") or {}).get("accuracy")
            print(f"| {what} | {n} | {m['train_images_per_second']:,.0f} | {m['train_seconds']:.1f} | "
                  f"{acc if acc is None else f'{acc:.4f}'} | {wall:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
