"""Two trainings at once on the same cores: total throughput against one alone.

    python benchmarks/concurrent_train.py                      # fast recipe and standard loop
    python benchmarks/concurrent_train.py --recipes standard --no-share   # also without core sharing

Each variant runs one `cnnlab train` alone, then two side by side (same config, other seeds),
and reads the training images/s from each run's metrics.json. With core sharing
(utils/cores.py, the default) each process takes its share of the physical cores; with
``--no-share`` (CNNLAB_SHARE_CORES=0) both take every core, as PyTorch does by default, which
is where oversubscribed OpenMP threads stall. Prints the machine, each figure, and the ratio
total(2 at once) / 1 alone (1.0 = no loss; < 1: the two slow each other down).
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
    # the fast recipe, fixed size (no planning): a narrow net for 2 epochs on 10,000 images
    "fast": ["--preset", "fast", "--max-train-samples", "10000", "--epochs", "2",
             "--set", "train.recipe_options.size=fixed", "--set", "train.recipe_options.max_train_minutes=0",
             "--set", "model.kwargs.widths=[32,128,128]", "--set", "train.tta=none"],
    # the standard loop (PyTorch's intra-op threads): the study's MobileNet Model I, 1 epoch on 5,000
    "standard": ["-c", str(ROOT / "experiments" / "mobilenet" / "I.yaml"), "--max-train-samples", "5000",
                 "--epochs", "1"],
}


def launch(args: list[str], run_dir: Path, seed: int, share: bool) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env["CNNLAB_SHARE_CORES"] = "1" if share else "0"
    cmd = [sys.executable, "-m", "cnnlab", "train", *args, "--data", "cifar10", "--seed", str(seed),
           "--run-dir", str(run_dir), "--no-progress"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rate(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["train_images_per_second"]


def run_variant(name: str, share: bool, out: Path) -> dict:
    tag = f"{name}-{'share' if share else 'noshare'}"
    t = time.monotonic()
    p = launch(CONFIGS[name], out / f"{tag}-alone", 0, share)
    if p.wait() != 0:
        raise SystemExit(f"{tag}: the single run failed: {p.stderr.read()[-2000:]}")
    alone_s = time.monotonic() - t
    t = time.monotonic()
    ps = [launch(CONFIGS[name], out / f"{tag}-pair{k}", k + 1, share) for k in range(2)]
    for k, q in enumerate(ps):
        if q.wait() != 0:
            raise SystemExit(f"{tag}: pair run {k} failed: {q.stderr.read()[-2000:]}")
    pair_s = time.monotonic() - t
    one = rate(out / f"{tag}-alone")
    pair = [rate(out / f"{tag}-pair{k}") for k in range(2)]
    row = {"variant": tag, "alone_img_s": one, "pair_img_s": pair, "pair_total_img_s": sum(pair),
           "ratio": sum(pair) / one, "alone_wall_s": alone_s, "pair_wall_s": pair_s}
    print(f"{tag}: alone {one:.0f} img/s ({alone_s:.0f} s wall); two at once {pair[0]:.0f} + {pair[1]:.0f} = "
          f"{sum(pair):.0f} img/s ({pair_s:.0f} s wall); total / alone = {row['ratio']:.2f}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["fast", "standard"], choices=sorted(CONFIGS))
    ap.add_argument("--no-share", action="store_true", help="also run each variant without core sharing")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(f"machine: {machine_summary()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnnlab-concurrent-") as tmp:
        for name in args.recipes:
            for share in ([True, False] if args.no_share else [True]):
                rows.append(run_variant(name, share, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_summary(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
