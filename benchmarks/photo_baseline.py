"""The bar for auto-fit on real photos: frozen efficientnet_lite0 (ImageNet, offline) at 224 px + a linear head.

    apt-get install mate-backgrounds && python benchmarks/make_photo_set.py --out runs/photos
    python benchmarks/photo_baseline.py --data runs/photos [--epochs 30]

Images are decoded at 224 x 224 (resized and centre-cropped by cnnlab's decode rule: every size
and mode of the folder), the base is frozen (BatchNorm in inference mode), its average-pooled
features are computed once (the feature cache) and a linear classifier (no hidden layer) is
trained on them with AdamW on 80% of train/, the other 20% for validation; the final weights are
scored on test/. Prints the test accuracy, the wall time of the whole run (decoding, features,
head, evaluation) and the machine: the issue asks `cnnlab fit` to reach at least this accuracy
in at most 2 minutes on the same folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab import api  # noqa: E402
from cnnlab.utils.hardware import machine_summary  # noqa: E402


def baseline_config(epochs: int, seed: int) -> dict:
    return {
        "name": "photo-baseline-lite0-frozen224",
        "seed": seed,
        "data": {"image_size": 224, "validation_split": 0.2},
        "model": {"arch": "efficientnet_lite0", "pretrained": "offline", "preprocessing": "auto",
                  "freeze_base": True, "input_size": 224, "head": {"pooling": "avg", "units": 0}},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 1.0e-3,
                                                                    "weight_decay": 1.0e-4},
                  "schedule": {"name": "cosine"}, "precision": "auto"},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/photos", help="the photo folder (make_photo_set.py)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-dir", help="keep the run here (default: a temporary folder)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        t0 = time.perf_counter()
        run = api.train(baseline_config(args.epochs, args.seed), data=args.data, run_dir=run_dir, progress=False,
                        log=lambda s: None)
        wall = time.perf_counter() - t0
        test = run.metrics["test"]
        print(f"photo baseline (frozen efficientnet_lite0 224 px + linear head, {args.epochs} epochs): "
              f"test accuracy {test['accuracy']:.4f} on {test['count']} images; "
              f"train {run.metrics.get('train_samples')} images; wall {wall:.1f} s end to end "
              f"(training {run.metrics.get('train_seconds', 0):.1f} s)")
        print(f"machine: {machine_summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
