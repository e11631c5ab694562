"""Does the few-shot candidate's out-of-fold temperature calibrate it on photos it never saw?

    apt-get install mate-backgrounds
    python benchmarks/fewshot_calibration.py [--data runs/photos-fewshot] [--per-class 5 10 20] [--draws 3]

The photo folder is make_photo_set.py's (as fewshot_photos.py builds it: 3 classes, 8 training
and 8 test crops per source photo, train/ and test/ cut from disjoint regions). For each size
(images a class) and draw (a seeded class-balanced sample of train/), the few-shot candidate
(cnnlab/autofit/fewshot.py) fits its temperature on the sample's out-of-fold logits; this prints
the temperature, the out-of-fold ECE before / after it, and the ECE of all of test/ (112 photos,
15 bins) before / after, with the cross-validated and the test accuracy (unchanged by a
temperature), the temperature fitted on test/ itself (an oracle, for comparison only), and the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnnlab.autofit import fewshot  # noqa: E402
from cnnlab.evaluation.calibration import fit_temperature, uncalibrated  # noqa: E402
from cnnlab.utils.hardware import machine_summary  # noqa: E402
from fewshot_photos import load_photos, sample  # noqa: E402  (the same draws and photo folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/photos-fewshot")
    ap.add_argument("--per-class", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--draws", type=int, default=3)
    args = ap.parse_args(argv)
    train, test = load_photos(args.data)
    print(f"photos: {len(train)} train, {len(test)} test, classes {train.class_names}")
    print("| images a class | draw | temperature | out-of-fold ECE before -> after | test ECE before -> after "
          "| CV accuracy | test accuracy | oracle T on test |")
    print("|---|---|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.per_class:
            for d in range(args.draws):
                part = sample(train, n, seed=100 * n + d)
                res, _ = fewshot.fit_fewshot(part, None, test, Path(tmp) / f"fs-{n}-{d}", seed=d, log=lambda s: None)
                c = res.extra["calibration"]
                rows.append((c["test_ece_before"], c["test_ece_after"]))
                raw = np.log(np.clip(uncalibrated(res.test_probs, c["temperature"]), 1e-30, None))  # logits + a row constant
                oracle = fit_temperature(raw, test.y)[0]
                print(f"| {n} | {d} | {c['temperature']:.3f} | {c['val_ece_before']:.4f} -> {c['val_ece_after']:.4f} "
                      f"| {c['test_ece_before']:.4f} -> {c['test_ece_after']:.4f} | {res.extra['cv']['accuracy']:.4f} "
                      f"| {res.test_accuracy:.4f} | {oracle:.3f} |", flush=True)
    before, after = np.mean(rows, 0)
    print(f"mean test ECE over {len(rows)} draws: {before:.4f} -> {after:.4f}; wall {time.perf_counter() - t0:.0f} s")
    print(f"machine: {machine_summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
