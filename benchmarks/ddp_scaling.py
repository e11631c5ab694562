"""Data-parallel scaling on one machine: training images/s of 1 process against 2 (torchrun, gloo).

    python benchmarks/ddp_scaling.py                    # both recipes, 1 and 2 processes
    python benchmarks/ddp_scaling.py --recipes fast --procs 1 2 4

Each variant is one `cnnlab train` (the 2-process one with `--nproc-per-node 2`, which gives each
process cores/2 threads) on a CIFAR-10 subset ($CNNLAB_CIFAR10 or the cache), with the same
global batch; the figure is the run's median-epoch training images/s from metrics.json (the
global rate: every process trains its half of each batch in that time). Prints the machine and
a Markdown table with the ratio to 1 process.
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
sys.path.insert(0, str(ROOT / "src"))

from cnnlab.utils.hardware import machine_summary  # noqa: E402

CONFIGS = {
    # the fast recipe, fixed size (no planning): a narrow net for 2 epochs on 10,000 images, batch 512
    "fast": ["--preset", "fast", "--max-train-samples", "10000", "--epochs", "2",
             "--set", "train.recipe_options.size=fixed", "--set", "train.recipe_options.max_train_minutes=0",
             "--set", "model.kwargs.widths=[32,128,128]", "--set", "train.tta=none"],
    # the standard loop: the study's MobileNet Model I (BatchNorm per rank), 2 epochs on 5,000, batch 128
    "standard": ["-c", str(ROOT / "experiments" / "mobilenet" / "I.yaml"), "--max-train-samples", "5000",
                 "--epochs", "2", "--set", "data.validation_split=0.05"],
}


def run_one(recipe: str, procs: int, out: Path) -> dict:
    run_dir = out / f"{recipe}-{procs}"
    cmd = [sys.executable, "-m", "cnnlab", "train", *CONFIGS[recipe], "--data", "cifar10", "--run-dir", str(run_dir),
           "--no-progress"]
    if procs > 1:
        cmd += ["--nproc-per-node", str(procs)]
    # Every process takes its threads without yielding to other cnnlab processes on the machine
    # (utils/cores.py would give a lone process fewer threads while others run; the launcher
    # gives each of N processes cores/N through OMP_NUM_THREADS either way).
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "CNNLAB_SHARE_CORES": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{recipe} x{procs} failed:\n{proc.stderr[-3000:]}")
    m = json.loads((run_dir / "metrics.json").read_text())
    threads = m["machine"].rsplit(", ", 1)[-1]  # "N threads": each process's torch threads
    return {"recipe": recipe, "procs": procs, "threads": threads, "img_s": m["train_images_per_second"], "wall_s": wall,
            "train_s": m["train_seconds"], "accuracy": (m.get("test") or m.get("val") or {}).get("accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=["standard", "fast"], choices=sorted(CONFIGS))
    ap.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2, help="rounds; odd rounds run the process counts in reverse")
    args = ap.parse_args()
    print(f"machine: {machine_summary()}")
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        for rnd in range(args.rounds):
            for recipe in args.recipes:
                for procs in (args.procs if rnd % 2 == 0 else args.procs[::-1]):
                    rows.append({**run_one(recipe, procs, Path(tmp) / str(rnd)), "round": rnd + 1})
                    r = rows[-1]
                    print(f"  round {rnd + 1}, {recipe} x{procs}: {r['img_s']:.0f} img/s ({r['wall_s']:.0f} s wall, "
                          f"load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}\n")
    print("| round | recipe | processes x threads | training img/s (median epoch) | vs 1 process | training s | wall s "
          "| accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b["img_s"] for b in rows
                    if b["recipe"] == r["recipe"] and b["procs"] == min(args.procs) and b["round"] == r["round"])
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        print(f"| {r['round']} | {r['recipe']} | {r['procs']} x {r['threads']} | {r['img_s']:,.0f} | {r['img_s'] / base:.2f}x | "
              f"{r['train_s']:.1f} | {r['wall_s']:.0f} | {acc} |")


if __name__ == "__main__":
    main()
