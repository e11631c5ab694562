"""Long-tailed CIFAR-10 (Cao et al. 2019, imbalance ratio 100) and ``cnnlab fit`` on it.

    python benchmarks/longtail_cifar10.py [--archive ../shared/datasets/cifar10-jpeg.tar.gz]
        [--out DIR] [--time-limit 10m] [--build-only]

The standard construction: class i of the usual CIFAR-10 order (airplane, automobile, bird, cat,
deer, dog, frog, horse, ship, truck) keeps its first floor(5000 * 0.01 ** (i / 9)) training
images (5,000 down to 50; 12,406 in all); the 10,000 test images are unchanged, 1,000 a class,
so test accuracy is balanced accuracy. The folder is written under ``--out`` (default: a new
temporary folder; never commit it, it is decoded from the CIFAR-10 archive) as
``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, the archive's JPEG bytes copied as they are.

Then it runs ``cnnlab fit --data <folder> --time-limit T`` (a subprocess, the way a user would)
and prints the test accuracy, the balanced accuracy, the recall of every class and the worst
class, with the machine. Published reference points (ResNet-32, 200 epochs on a GPU, Cao et al.
2019): cross-entropy 70.4%, LDAM-DRW 77.0%.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS, RATIO = 5000, 100


def kept(i: int) -> int:
    """Training images class i keeps: floor(5000 * (1 / ratio) ** (i / 9))."""
    return math.floor(PER_CLASS * (1 / RATIO) ** (i / (len(CLASSES) - 1)))


def default_archive() -> Path:
    here = Path(__file__).resolve().parents[1]
    for p in (here / ".." / "shared" / "datasets" / "cifar10-jpeg.tar.gz", Path("/work/shared/datasets/cifar10-jpeg.tar.gz")):
        if p.is_file():
            return p.resolve()
    return Path(os.environ.get("CNNLAB_CIFAR10", "cifar10-jpeg.tar.gz"))


def build(archive: Path, out: Path) -> dict[str, int]:
    """Write the long-tailed folder; returns the training images per class."""
    keep = {c: kept(i) for i, c in enumerate(CLASSES)}
    members: dict[tuple[str, str], list[tarfile.TarInfo]] = {}
    with tarfile.open(archive) as tar:
        infos = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        for m in infos:
            parts = Path(m.name).parts[-3:]
            if len(parts) == 3 and parts[0] in ("train", "test") and parts[1] in keep:
                members.setdefault((parts[0], parts[1]), []).append(m)
        for (split, cls), ms in sorted(members.items()):
            ms.sort(key=lambda m: Path(m.name).name)  # "the first" images: in file order
            chosen = ms[: keep[cls]] if split == "train" else ms
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for m in chosen:
                fh = tar.extractfile(m)
                assert fh is not None
                (folder / Path(m.name).name).write_bytes(fh.read())
    counts = {c: len(list((out / "train" / c).glob("*.jpg"))) for c in CLASSES}
    tests = sum(len(list((out / "test" / c).glob("*.jpg"))) for c in CLASSES)
    print(f"long-tailed CIFAR-10 in {out}: {sum(counts.values()):,} training images "
          f"({', '.join(f'{c} {n}' for c, n in counts.items())}), {tests:,} test images")
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=None, help="cifar10-jpeg.tar.gz (default: ../shared/datasets/)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the data set and the fit (default: a temp dir)")
    ap.add_argument("--time-limit", default="10m")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args()
    archive = args.archive or default_archive()
    if not archive.is_file():
        print(f"{archive}: no such file (give --archive)", file=sys.stderr)
        return 2
    root = args.out or Path(tempfile.mkdtemp(prefix="longtail-cifar10-"))
    data = root / "data"
    if not (data / "train").is_dir():
        build(archive, data)
    else:
        print(f"reusing {data}")
    if args.build_only:
        return 0
    from cnnlab.utils.hardware import machine_summary

    fit_dir = root / f"fit-{int(time.time())}"
    cmd = [sys.executable, "-m", "cnnlab.cli.main", "fit", "--data", str(data), "--time-limit", str(args.time_limit),
           "--out", str(fit_dir)] + (["--preset", args.preset] if args.preset else [])
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"cnnlab fit exited with {rc}", file=sys.stderr)
        return rc
    info = json.loads((fit_dir / "fit.json").read_text())
    recall = info.get("test_per_class_recall") or {}
    if not recall:  # a fit folder written before fit.json had it: evaluate its best entry
        from cnnlab.predictor import ImagePredictor

        report = ImagePredictor.load(fit_dir).evaluate(str(data))
        recall = {r["class"]: r["recall"] for r in report["per_class"]}
    print()
    print(f"machine: {machine_summary()}")
    print(f"long-tailed CIFAR-10 (ratio {RATIO}, 12,406 train), cnnlab fit --time-limit {args.time_limit}: "
          f"best {info['best']}, {info['elapsed_seconds']:.1f} s (wall {wall:.1f} s)")
    print(f"selection: {info.get('selection')}")
    print(f"test accuracy {100 * info['test_accuracy']:.2f}% (= balanced accuracy: the test set is balanced; "
          f"recorded balanced {100 * (info.get('test_balanced_accuracy') or float('nan')):.2f}%)")
    for c in CLASSES:
        if recall.get(c) is not None:
            print(f"  {c:<11} recall {100 * recall[c]:6.2f}%  ({kept(CLASSES.index(c)):,} training images)")
    if recall:
        worst = min((c for c in recall if recall[c] is not None), key=lambda c: recall[c])
        print(f"worst class: {worst} {100 * recall[worst]:.2f}%; classes below 50%: "
              f"{sum(1 for v in recall.values() if v is not None and v < 0.5)}")
    print(f"fit folder: {fit_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
