"""A few real photos a class: the few-shot candidate against the frozen-head candidate, same images.

    apt-get install mate-backgrounds
    python benchmarks/fewshot_photos.py [--data runs/photos-fewshot] [--per-class 5 10 20] [--draws 3]

The photo folder is make_photo_set.py's (3 classes: flower, foliage, other; crops of 14 real
photos, mixed sizes and modes; train/ and test/ cut from disjoint regions of each photo), built
with 8 training and 8 test crops per source photo when --data does not exist yet. For each size
(images a class) and draw (a seeded class-balanced sample of train/), on the same images:

- ``fewshot`` (cnnlab/autofit/fewshot.py): lite0 embeddings at 224 px, logistic regression,
  stratified k-fold cross-validation on all the sampled images, refitted on all;
- ``frozen``: the auto-fit's frozen-head candidate as the planner runs it (candidates.py: the
  same lite0 at 224 px, cached features, a linear head trained with AdamW, label smoothing and
  early stopping on val_loss), on the fit's split: 20% of the sample held out, stratified.

Both are scored on all of test/ (112 photos). Prints one row per size: the mean test accuracy over
the draws of each, the few-shot candidate's cross-validated estimate with its mean 95% interval,
and the machine.
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
from cnnlab.autofit.candidates import build_config  # noqa: E402
from cnnlab.autofit.profile import load_bundle  # noqa: E402
from cnnlab.autofit.runner import run_candidate  # noqa: E402
from cnnlab.data.split import split_train_val  # noqa: E402
from cnnlab.utils.hardware import machine_summary  # noqa: E402


def sample(train, per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(train.y == c))[:per_class] for c in range(train.num_classes)])
    return train.subset(np.sort(idx))


def load_photos(folder: str):
    """(train, test) of the photo folder, built first (make_photo_set.py, 8 + 8 crops a source) if absent."""
    if not Path(folder).exists():
        from make_photo_set import build_photo_set

        build_photo_set(folder, train_per_source=8, test_per_source=8, seed=0)
    bundle, _ = load_bundle(folder, log=lambda s: None)
    return bundle.train, bundle.test


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/photos-fewshot")
    ap.add_argument("--per-class", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--draws", type=int, default=3)
    args = ap.parse_args(argv)
    train, test = load_photos(args.data)
    print(f"photos: {len(train)} train, {len(test)} test, classes {train.class_names} "
          f"(train {np.bincount(train.y).tolist()}, test {np.bincount(test.y).tolist()})")
    quiet = lambda s: None  # noqa: E731
    rows = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.per_class:
            fs, fz, cvs, cis = [], [], [], []
            for d in range(args.draws):
                part = sample(train, n, seed=100 * n + d)
                res, _ = fewshot.fit_fewshot(part, None, test, Path(tmp) / f"fs-{n}-{d}", seed=d, log=quiet)
                fs.append(res.test_accuracy)
                cvs.append(res.extra["cv"]["accuracy"])
                cis.append(res.extra["cv"]["ci95"])
                tr, val = split_train_val(part, 0.2, "stratified", d)  # the fit's split at this size
                cfg = build_config("frozen", seconds=600, epochs=30, seed=d)
                fr = run_candidate("frozen", cfg, tr, val, test, Path(tmp) / f"fz-{n}-{d}",
                                   end=time.monotonic() + 1e6, eval_seconds=0.0, log=quiet)
                fz.append(fr.test_accuracy)
                print(f"  {n:2d}/class draw {d}: fewshot test {res.test_accuracy:.4f} (CV {res.extra['cv']['accuracy']:.3f},"
                      f" {res.extra['cv']['method']}), frozen test {fr.test_accuracy:.4f} (val {fr.val_accuracy:.3f} "
                      f"on {len(val)} images)", flush=True)
            rows.append((n, np.mean(fs), np.std(fs), np.mean(fz), np.std(fz), np.mean(cvs), np.mean(cis, 0)))
    print("| images a class | fewshot test (mean +- sd) | frozen head test (mean +- sd) | fewshot CV estimate "
          "(mean 95% CI) |")
    print("|---|---|---|---|")
    for n, m1, s1, m2, s2, cv, ci in rows:
        print(f"| {n} | {m1:.4f} +- {s1:.4f} | {m2:.4f} +- {s2:.4f} | {cv:.3f} ({ci[0]:.3f}-{ci[1]:.3f}) |")
    print(f"draws {args.draws} per size; wall {time.perf_counter() - t_start:.0f} s")
    print(f"machine: {machine_summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
