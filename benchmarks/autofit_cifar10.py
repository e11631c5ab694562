"""Benchmark of auto-fit (`cnnlab fit`'s Python path) on CIFAR-10 within a time budget.

    python benchmarks/autofit_cifar10.py --time-limit 10m                  # the ../shared copy
    python benchmarks/autofit_cifar10.py --time-limit 3m --train 3000 --test 1000   # a subset
    python benchmarks/autofit_cifar10.py --time-limit 30m --quality high_quality --json out.json

It prints the machine (CPU model, bf16 or not, the precision the fit runs in), the plan, the
leaderboard, the test accuracy, the whole fit's elapsed time (data loading, planning,
training, ensembling, final evaluation and report) and the overrun against the limit. The
data: ``$CNNLAB_CIFAR10``, else ``../shared/datasets/cifar10-jpeg.tar.gz`` beside the checkout. The
whole-set fit's clock starts with the process (decoding the archive, or reading cnnlab's cache of
it, included); a subset's starts once the subset is cut.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    t_start = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time-limit", default="10m")
    ap.add_argument("--quality", "--presets", dest="preset", default="medium_quality")
    ap.add_argument("--train", type=int, help="a class-balanced subset of the training images")
    ap.add_argument("--test", type=int, help="the first N test images")
    ap.add_argument("--out", help="the fit folder (default: runs/bench-fit-<time>)")
    ap.add_argument("--json", help="write the fit summary here")
    args = ap.parse_args()
    shared = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
    if not os.environ.get("CNNLAB_CIFAR10") and shared.is_file():
        os.environ["CNNLAB_CIFAR10"] = str(shared)

    from cnnlab.autofit.fit import auto_fit, time_limit_seconds
    from cnnlab.autofit.leaderboard import text
    from cnnlab.data.dataset import DatasetBundle
    from cnnlab.data.sources import load_source
    from cnnlab.data.split import limit_samples
    from cnnlab.predictor import ImagePredictor
    from cnnlab.utils.hardware import choose_precision, cpu_has_bf16, cpu_name, default_device

    limit = time_limit_seconds(args.time_limit)
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, bf16 instructions: "
          f"{'yes' if cpu_has_bf16() else 'no'}; {choose_precision('auto', default_device()).note()}")
    data: object = "cifar10"
    if args.train or args.test:  # a subset, loaded inside the budget
        b = load_source("cifar10")
        test = b.test.subset(range(min(args.test or len(b.test), len(b.test)))) if b.test is not None else None
        data = DatasetBundle("cifar10-subset", limit_samples(b.train, args.train), test, info=dict(b.info))
        t_start = time.monotonic()  # a subset's fit counts from here (the whole archive's loading is not its own)
    out = Path(args.out) if args.out else ROOT / "runs" / f"bench-fit-{time.strftime('%Y%m%d-%H%M%S')}"
    pred = ImagePredictor(label="label", path=out)
    auto_fit(pred, data, time_limit=limit, presets=args.preset, started_at=t_start)
    info = pred.fit_summary()
    print("leaderboard:")
    for line in text(info["leaderboard"]):
        print("  " + line)
    acc = info.get("test_accuracy")
    print(f"test accuracy: {acc:.4f}" if acc is not None else "test accuracy: - (no test split)")
    print(f"elapsed: {info['elapsed_seconds']:.1f} s of {limit:.0f} s; overrun {info['overrun']:+.2%} "
          f"(process wall {time.monotonic() - t_start:.1f} s); fit folder {out}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
