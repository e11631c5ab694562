"""A folder of a few hundred real photos in 3 classes, built offline from installable packages.

    apt-get install mate-backgrounds           # Debian: the MATE desktop's nature photos
    python benchmarks/make_photo_set.py --out runs/photos [--train-per-source 24 --test-per-source 8]

Sources (real photographs, free licences):

- Debian's ``mate-backgrounds`` package, ``/usr/share/backgrounds/mate/nature/*.jpg``: 12 nature
  photos of 1280x1024 to 2560x1920 px, GPL-2+ (authors in the package's copyright file: Charles
  Barbin, Jens Ansorg, Lennart Poettering, Marco Cogoni, Timothy Schellhase and others);
- scikit-learn's bundled sample photos ``china.jpg`` (a temple) and ``flower.jpg``, 640x427 px,
  CC BY 2.0 (Flickr users danielbuechele and vultilion; sklearn/datasets/images/README.txt).

Classes: what a photo mostly shows.

- ``flower``: FreshFlower, Garden, YellowFlower, TwoWings (dandelion seeds over orange flowers),
  scikit-learn's flower.jpg;
- ``foliage``: leaves and grass without flowers in front: Blinds (a leaf's veins), GreenMeadow,
  RainDrops (wet leaves), LadyBird (a ladybird on grass stems), Dune (dune grass under sea and sky);
- ``other``: neither: Aqua (a water drop), Storm (sky over a road), Wood (planks),
  scikit-learn's china.jpg.

(A first version had Dune under ``other`` and crops down to 20% of the shorter side; the error
analysis of its baseline showed dune grass predicted as foliage and featureless out-of-focus
patches among the worst images, so Dune moved and crops start at 35%.)

Each output image is a random crop of one source photo (aspect ratio 0.6 to 1.8, 35% to 80% of
the region's shorter side, so at several scales), rescaled to a random longer side of 96 to
640 px, and saved in a random mode: RGB JPEG (55%), grayscale JPEG or PNG (15%), RGBA PNG with a
partly transparent border (15%), palette PNG (15%), so sizes, aspect ratios and modes are mixed.

Split: by region. Every source photo is cut into a left part (the first 68% of its width) for
train/ and a right part (from 72%) for test/, with a 4% gap, and crops never cross their part:
no test pixel was seen in training (neighbouring regions of one photo still share its light and
colours, so the test is honest about pixels, not about unseen scenes). ``manifest.csv`` lists
every file's source, box and split. The seed fixes everything.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

MATE = Path("/usr/share/backgrounds/mate/nature")
CLASSES = {
    "flower": ["mate:FreshFlower", "mate:Garden", "mate:YellowFlower", "mate:TwoWings", "sklearn:flower"],
    "foliage": ["mate:Blinds", "mate:GreenMeadow", "mate:RainDrops", "mate:LadyBird", "mate:Dune"],
    "other": ["mate:Aqua", "mate:Storm", "mate:Wood", "sklearn:china"],
}
TRAIN_PART, TEST_PART = (0.0, 0.68), (0.72, 1.0)  # of the width
MODES = (("rgb_jpeg", 0.55), ("gray", 0.15), ("rgba_png", 0.15), ("palette_png", 0.15))


def sklearn_photo(name: str) -> Path:
    from importlib.resources import files

    return Path(str(files("sklearn.datasets") / "images" / f"{name}.jpg"))


def source_path(ref: str) -> Path:
    kind, name = ref.split(":", 1)
    path = MATE / f"{name}.jpg" if kind == "mate" else sklearn_photo(name)
    if not path.is_file():
        hint = "apt-get install mate-backgrounds" if kind == "mate" else "pip install scikit-learn"
        raise SystemExit(f"make_photo_set: {path} is missing ({hint})")
    return path


def _crop_box(rng: np.random.Generator, w: int, h: int, part: tuple[float, float]) -> tuple[int, int, int, int]:
    x0, x1 = int(part[0] * w), int(part[1] * w)
    rw, rh = x1 - x0, h
    short = min(rw, rh)
    for _ in range(100):
        side = rng.uniform(0.35, 0.8) * short
        aspect = rng.uniform(0.6, 1.8)  # width / height
        cw, ch = int(side * np.sqrt(aspect)), int(side / np.sqrt(aspect))
        if 16 <= cw <= rw and 16 <= ch <= rh:
            left = x0 + int(rng.integers(0, rw - cw + 1))
            top = int(rng.integers(0, rh - ch + 1))
            return left, top, left + cw, top + ch
    raise RuntimeError("no crop fits")  # only for a photo far smaller than these


def _encode(rng: np.random.Generator, im: Image.Image) -> tuple[bytes, str, str]:
    mode = MODES[int(rng.choice(len(MODES), p=[p for _, p in MODES]))][0]
    buf = io.BytesIO()
    if mode == "rgb_jpeg":
        im.save(buf, "JPEG", quality=int(rng.integers(70, 95)))
        return buf.getvalue(), ".jpg", "RGB"
    if mode == "gray":
        g = im.convert("L")
        fmt, ext = ("JPEG", ".jpg") if rng.random() < 0.5 else ("PNG", ".png")
        g.save(buf, fmt)
        return buf.getvalue(), ext, "L"
    if mode == "rgba_png":
        a = np.full((im.height, im.width), 255, np.uint8)
        b = max(1, min(im.size) // 12)
        a[:b, :], a[-b:, :], a[:, :b], a[:, -b:] = 96, 96, 96, 96  # a half-transparent frame
        rgba = im.convert("RGBA")
        rgba.putalpha(Image.fromarray(a))
        rgba.save(buf, "PNG")
        return buf.getvalue(), ".png", "RGBA"
    im.quantize(colors=int(rng.integers(32, 256))).save(buf, "PNG")
    return buf.getvalue(), ".png", "P"


def build_photo_set(out: str | Path, classes: dict[str, list[str | Path]] | None = None, *,
                    train_per_source: int = 24, test_per_source: int = 8, seed: int = 0,
                    max_side: tuple[int, int] = (96, 640)) -> dict[str, int]:
    """Write out/train/<class>/*, out/test/<class>/* and out/manifest.csv; returns counts per split.

    ``classes``: class -> source photos ("mate:Name", "sklearn:name" or a path); default CLASSES.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows, counts = [], {"train": 0, "test": 0}
    for label, sources in (classes or CLASSES).items():
        for ref in sources:
            path = Path(ref) if isinstance(ref, Path) or ":" not in str(ref) else source_path(str(ref))
            with Image.open(path) as src:
                photo = src.convert("RGB")
            for split, part, n in (("train", TRAIN_PART, train_per_source), ("test", TEST_PART, test_per_source)):
                folder = out / split / label
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    box = _crop_box(rng, photo.width, photo.height, part)
                    crop = photo.crop(box)
                    longer = int(rng.integers(max_side[0], max_side[1] + 1))
                    scale = longer / max(crop.size)
                    crop = crop.resize((max(8, round(crop.width * scale)), max(8, round(crop.height * scale))),
                                       Image.Resampling.LANCZOS)
                    data, ext, mode = _encode(rng, crop)
                    name = f"{path.stem}_{i:03d}{ext}"
                    tmp = folder / f".{name}.tmp"
                    tmp.write_bytes(data)
                    tmp.replace(folder / name)  # atomic: a reader never sees half a file
                    rows.append({"file": f"{split}/{label}/{name}", "split": split, "class": label,
                                 "source": path.name, "box": " ".join(map(str, box)), "mode": mode,
                                 "width": crop.width, "height": crop.height})
                    counts[split] += 1
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tmp = out / ".manifest.csv.tmp"
    tmp.write_text(buf.getvalue())
    tmp.replace(out / "manifest.csv")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/photos", help="output folder (default runs/photos)")
    ap.add_argument("--train-per-source", type=int, default=24)
    ap.add_argument("--test-per-source", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts = build_photo_set(args.out, train_per_source=args.train_per_source,
                             test_per_source=args.test_per_source, seed=args.seed)
    print(f"{args.out}: {counts['train']} train and {counts['test']} test photos in {len(CLASSES)} classes "
          f"({', '.join(CLASSES)}) from {sum(len(v) for v in CLASSES.values())} source photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
