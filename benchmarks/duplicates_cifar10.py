"""Duplicate and leak search on CIFAR-10's 60,000 images: time and what it finds.

    python benchmarks/duplicates_cifar10.py [--data ../shared/datasets/cifar10-jpeg.tar.gz]

Loads the source (the disk cache decodes it once), then times cnnlab.data.duplicates.find_duplicates
on all of train and test: the SHA-1 of each image's pixels (exact), the pHash of each distinct
image (imagehash's, computed in batches), and the multi-index-hash search for pairs within
MAX_DISTANCE bits. The decoding of the archive is timed apart (the disk cache makes it once). Prints the
counts, a few cross-split examples and the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab.data import duplicates  # noqa: E402
from cnnlab.data.sources import load_source  # noqa: E402
from cnnlab.utils.hardware import machine_summary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("CNNLAB_CIFAR10", "../shared/datasets/cifar10-jpeg.tar.gz"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    bundle = load_source(args.data)
    t_load = time.perf_counter() - t0
    splits = bundle.splits()
    n = sum(len(s) for s in splits.values())
    t0 = time.perf_counter()
    h = duplicates.phashes(splits["train"].x[:5000])
    t_hash = (time.perf_counter() - t0) / 5000
    t0 = time.perf_counter()
    rep = duplicates.find_duplicates(splits)
    t_all = time.perf_counter() - t0
    print(f"machine: {machine_summary()}")
    print(f"images: {n:,} (loaded in {t_load:.1f}s); pHash {t_hash * 1e6:.0f} us/image")
    print(f"find_duplicates: {t_all:.1f}s for {n:,} images (max distance {rep.max_distance})")
    print(f"exact pairs {len(rep.exact)}, near pairs {len(rep.near)}, cross-split pairs {len(rep.cross_split)}, "
          f"training images duplicating a test image {len(rep.train_leaks)}")
    dist = {}
    for p in rep.near:
        dist[p["distance"]] = dist.get(p["distance"], 0) + 1
    print("near pairs by distance:", dict(sorted(dist.items())))
    for p in rep.cross_split[:8]:
        print(f"  {p['a']}  {p['b']}  d={p['distance']}")


if __name__ == "__main__":
    main()
