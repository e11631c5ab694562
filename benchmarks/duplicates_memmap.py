"""Duplicate search on pixels decoded to disk: time and resident memory of find_duplicates.

    python benchmarks/duplicates_memmap.py [--images 20000] [--size 32] [--rounds 2] [--src DIR]

Builds a synthetic cache laid out like a decoded source (data/decode_store.py): one memory-mapped
``.npy`` of training rows, split 90/10 into train and validation index views (data/rows.py
RowView), and a test ``.npy``; 1% of the test images are exact copies of training images and 1%
slightly noised copies (near duplicates). Times cnnlab.data.duplicates.find_duplicates on the
three splits, with the time spent in the perceptual hashes (phashes) and the pair search
(near_pairs) apart; the rest is the exact (SHA-1) pass. Also prints the growth of this process's
peak resident memory (VmHWM) during the search, the pair counts and a digest of the pairs (equal
digests: equal results). ``--src``: the cnnlab source tree to import (default this checkout's), to
time an older version on the same data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _status(key: str) -> int:
    """A /proc/self/status figure in bytes (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def build(root: Path, n: int, size: int, seed: int = 0):
    from cnnlab.data.dataset import ImageArrays
    from cnnlab.data.rows import subset

    rng = np.random.default_rng(seed)
    n_test = n // 10
    n_train = n - n_test
    shape = (size, size, 3)
    base = np.lib.format.open_memmap(root / "train.npy", mode="w+", dtype=np.uint8, shape=(n_train, *shape))
    for i in range(0, n_train, 4096):
        base[i : i + 4096] = rng.integers(0, 256, (min(4096, n_train - i), *shape), dtype=np.uint8)
    test = np.lib.format.open_memmap(root / "test.npy", mode="w+", dtype=np.uint8, shape=(n_test, *shape))
    test[:] = rng.integers(0, 256, test.shape, dtype=np.uint8)
    k = max(1, n // 100)
    src = rng.choice(n_train, 2 * k, replace=False)
    test[:k] = base[src[:k]]  # exact copies
    noise = rng.integers(-3, 4, (k, *shape))
    test[k : 2 * k] = np.clip(base[src[k:]].astype(np.int16) + noise, 0, 255).astype(np.uint8)  # near copies
    base.flush()
    test.flush()
    del base, test
    base = np.load(root / "train.npy", mmap_mode="r")
    test = np.load(root / "test.npy", mmap_mode="r")
    order = rng.permutation(n_train)
    n_val = n_train // 10
    y = rng.integers(0, 10, n_train)
    names = [f"c{i}" for i in range(10)]
    tr, va = np.sort(order[n_val:]), np.sort(order[:n_val])
    return {"train": ImageArrays(subset(base, tr), y[tr], names),
            "val": ImageArrays(subset(base, va), y[va], names),
            "test": ImageArrays(test, rng.integers(0, 10, n_test), names)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    from cnnlab.data import duplicates as dup

    spent = {"phashes": 0.0, "near_pairs": 0.0}

    def timed(name, fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t0
        return run

    dup.phashes = timed("phashes", dup.phashes)
    dup.near_pairs = timed("near_pairs", dup.near_pairs)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores (shared with other jobs), python {platform.python_version()}")
    print(f"cnnlab from {dup.__file__}")
    with tempfile.TemporaryDirectory() as tmp:
        splits = build(Path(tmp), args.images, args.size)
        mb = args.images * args.size * args.size * 3 / 2**20
        print(f"{args.images:,} images at {args.size} px ({mb:.0f} MiB decoded): "
              f"train {len(splits['train']):,} and val {len(splits['val']):,} (index views of one file), "
              f"test {len(splits['test']):,}")
        for r in range(args.rounds):
            spent.update(phashes=0.0, near_pairs=0.0)
            peak_ok = _reset_peak()
            rss0 = _status("VmRSS")
            t0 = time.perf_counter()
            rep = dup.find_duplicates(splits)
            total = time.perf_counter() - t0
            grew = (_status("VmHWM") if peak_ok else _status("VmRSS")) - rss0
            pairs = json.dumps([rep.exact, rep.near, rep.cross_split, rep.train_leaks], sort_keys=True)
            exact_pass = total - spent["phashes"] - spent["near_pairs"]
            print(f"round {r + 1}: find_duplicates {total:.2f}s = exact pass {exact_pass:.2f}s "
                  f"+ phashes {spent['phashes']:.2f}s + near_pairs {spent['near_pairs']:.2f}s; "
                  f"{'peak' if peak_ok else ''} resident memory +{grew / 2**20:.0f} MiB; "
                  f"exact {len(rep.exact)}, near {len(rep.near)}, cross-split {len(rep.cross_split)}, "
                  f"leaks {len(rep.train_leaks)}; pairs digest {hashlib.sha1(pairs.encode()).hexdigest()[:12]}")


if __name__ == "__main__":
    main()
