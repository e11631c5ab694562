"""Exact and near-duplicate images within and across the splits of a source (leaks).

- **Exact**: identical decoded pixels (a SHA-1 of each image's uint8 array, as loaded). Two files
  that decode to the same pixels (the same file copied, or a PNG saved again as PNG) are exact
  duplicates, whatever their bytes; distance 0.
- **Near**: perceptual hashes (``imagehash.phash``, computed in batches: a 64-bit sign pattern of the 8x8 lowest DCT
  frequencies of a 32x32 grey thumbnail) at most :data:`MAX_DISTANCE` bits apart (Hamming). Measured
  on 24 crops of scikit-learn's two sample photos: a copy resized (x0.5, x2) or re-encoded as JPEG
  (quality 40-50) lands 0-6 bits from its original, distinct crops 20 or more apart
  (tests/unit/test_duplicates.py plants such copies and checks both sides). On CIFAR-10 (32 px)
  the pairs at 4 bits or less looked all true, at 6 mostly true, at 8 about half false (plain-sky
  airplanes and ships), hence 6. Limitation: an image with almost no detail (a clear sky) has an
  unstable pHash; its copies re-encoded at low quality may be missed, and such images may pair
  with each other.

The search is not all-pairs: multi-index hashing (Norouzi et al., 2012) cuts the 64 bits into
``MAX_DISTANCE + 1`` chunks; two hashes within ``MAX_DISTANCE`` bits agree exactly on at least one
chunk (pigeonhole), so only images sharing a chunk value are compared, with numpy. Hand-written
(a few numpy lines; no maintained library does this on numpy arrays). CIFAR-10's 60,000 images:
see benchmarks/RESULTS.md.

Both hashes read the pixels a block at a time (at most :data:`BLOCK_BYTES`) in file order
(data/rows.py row_blocks): a split of a decoded cache costs a few large ``pread`` calls, never one
read or page fault per image, and resident memory stays one block however large the set
(benchmarks/duplicates_memmap.py).

Exact copies are grouped, and only one image of each group (one outside the training split, when
there is one) is hashed perceptually; pairs are reported as ``{"a": path, "b": path, "distance": d}``,
``a`` in the earlier split (train, val, test) when they differ.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnlab.data.rows import row_blocks

MAX_DISTANCE = 6  #: Hamming distance (of 64 bits) up to which two pHashes count as a near-duplicate
#: Pixels read per block when hashing (data/rows.py row_blocks): at most this many bytes (1,024
#: images at 32 px are 3 MiB, 111 at 224 px 16 MiB), so memory does not grow with the data set.
BLOCK_BYTES = 16 * 2**20
SPLIT_ORDER = ("train", "val", "test")


@dataclass
class DuplicateReport:
    exact: list[dict[str, Any]] = field(default_factory=list)
    near: list[dict[str, Any]] = field(default_factory=list)
    cross_split: list[dict[str, Any]] = field(default_factory=list)
    #: indices into the training split of images that duplicate a validation or test image
    train_leaks: list[int] = field(default_factory=list)
    max_distance: int = MAX_DISTANCE
    images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"exact_duplicates": self.exact, "near_duplicates": self.near,
                "cross_split_duplicates": self.cross_split, "near_max_distance": self.max_distance,
                "leaked_train_images": len(self.train_leaks)}

    def counts(self, *, removed: bool = False) -> dict[str, int]:
        """The pairs found, the training images that duplicate a validation or test image, and how
        many of them were removed (``removed``: ``check_splits(drop_leaks=True)`` took them out)."""
        n = len(self.train_leaks)
        return {"exact_pairs": len(self.exact), "near_pairs": len(self.near), "cross_split_pairs": len(self.cross_split),
                "leaked_train_images": n, "leaked_train_images_removed": n if removed else 0}

    @property
    def found(self) -> bool:
        return bool(self.exact or self.near)

    def warning(self) -> str | None:
        """One line for the start of a fit, or None when there are no duplicates."""
        if not self.found:
            return None
        line = (f"warning: duplicates: {len(self.exact)} exact and {len(self.near)} near-duplicate pairs "
                f"(pHash distance <= {self.max_distance}) among {self.images:,} images")
        if self.cross_split:
            n = len(self.train_leaks)
            line += (f"; {len(self.cross_split)} pairs cross splits ({n} training image{'s' * (n != 1)} "
                     f"duplicate{'s' * (n == 1)} a validation or test image: cnnlab fit --drop-leaks removes them)")
        return line


def phashes(x: np.ndarray, batch: int = 1024, index: np.ndarray | None = None) -> np.ndarray:
    """The 64-bit perceptual hash of each image of ``x`` (N, H, W, 3) as uint64, bit for bit
    ``imagehash.phash`` (hash_size 8): PIL's grey 32x32 LANCZOS thumbnail, the 8x8 lowest
    frequencies of its 2-D DCT-II, each bit "above their median".

    Hand-written batch form of imagehash's per-image function (which the tests use as the
    reference): the DCT as two matrix products over all images at once, 6x faster (60 against
    340 us an image on 2 busy cores), which a fit's start on 60,000 images needs.
    ``index``: hash only ``x[index]``. Pixels decoded to disk are read a block at a time in file
    order (data/rows.py row_blocks), never copied whole."""
    from PIL import Image

    n_ = np.arange(32)
    dct8 = 2.0 * np.cos(np.pi * np.arange(8)[:, None] * (2 * n_[None, :] + 1) / 64.0)  # scipy's DCT-II rows 0-7
    index = np.arange(len(x)) if index is None else np.asarray(index, dtype=np.int64)
    out = np.empty(len(index), dtype=np.uint64)
    for pos, block in row_blocks(x, _block_rows(x, batch), index):
        grey = np.stack([np.asarray(Image.fromarray(a).convert("L").resize((32, 32), Image.Resampling.LANCZOS))
                         for a in block]).astype(np.float64)
        low = (dct8 @ grey @ dct8.T).reshape(len(grey), 64)
        bits = low > np.median(low, axis=1, keepdims=True)
        out[pos] = np.packbits(bits, axis=1).view(">u8").reshape(-1)
    return out


def _block_rows(x: Any, most: int) -> int:
    """Rows per block: at most ``most``, and at most BLOCK_BYTES of pixels."""
    row = int(np.prod(x.shape[1:])) * np.dtype(x.dtype).itemsize
    return max(1, min(most, BLOCK_BYTES // max(1, row)))


def sha1_digests(x: Any) -> list[bytes]:
    """The SHA-1 of each image's pixels (its uint8 bytes, row-major), in order; read a block at a
    time in file order (data/rows.py row_blocks), so a split on disk costs a few large reads."""
    out = [b""] * len(x)
    for pos, block in row_blocks(x, _block_rows(x, 1024)):
        for p, img in zip(pos.tolist(), block):
            out[p] = hashlib.sha1(img).digest()  # a C-contiguous row: the bytes tobytes() gives
    return out


def _popcount(v: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(v).astype(np.int64)
    b = v.view(np.uint8).reshape(-1, 8)
    return np.unpackbits(b, axis=1).sum(1).astype(np.int64)


def near_pairs(h: np.ndarray, max_distance: int = MAX_DISTANCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (i, j, distance), i < j, with ``popcount(h[i] ^ h[j]) <= max_distance``: multi-index hashing."""
    h = np.asarray(h, dtype=np.uint64)
    n = len(h)
    found: list[np.ndarray] = []
    chunks = max_distance + 1
    bounds = np.linspace(0, 64, chunks + 1).round().astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        key = (h >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        sk = key[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        sizes = np.diff(np.r_[starts, n])
        for s, size in zip(starts[sizes > 1], sizes[sizes > 1]):
            members = order[s:s + size]
            iu, ju = np.triu_indices(size, 1)
            a, b = members[iu], members[ju]
            d = _popcount(h[a] ^ h[b])
            keep = d <= max_distance
            if keep.any():
                lo_i, hi_i = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
                found.append(np.stack([lo_i, hi_i, d[keep]], 1))
    if not found:
        e = np.empty(0, dtype=np.int64)
        return e, e, e
    pairs = np.unique(np.concatenate(found).astype(np.int64), axis=0)
    return pairs[:, 0], pairs[:, 1], pairs[:, 2]


def _names(split: str, arr: Any) -> list[str]:
    paths = getattr(arr, "paths", None)
    return list(paths) if paths is not None else [f"{split}[{i}]" for i in range(len(arr))]


def find_duplicates(splits: dict[str, Any], max_distance: int = MAX_DISTANCE) -> DuplicateReport:
    """Exact and near-duplicate pairs among the images of ``splits`` (name -> ImageArrays)."""
    names: list[str] = []
    split_of: list[str] = []
    local: list[int] = []
    xs = []
    for s in sorted(splits, key=lambda k: SPLIT_ORDER.index(k) if k in SPLIT_ORDER else len(SPLIT_ORDER)):
        arr = splits[s]
        if arr is None or len(arr) == 0:
            continue
        names += _names(s, arr)
        split_of += [s] * len(arr)
        local += list(range(len(arr)))
        xs.append(arr.x)
    report = DuplicateReport(max_distance=max_distance, images=len(names))
    if not names:
        return report
    rank = {s: i for i, s in enumerate(SPLIT_ORDER)}

    # exact: group identical pixel arrays; the group's representative is its first image outside train
    groups: dict[bytes, list[int]] = {}
    digests = [d for x in xs for d in sha1_digests(x)]  # 20 bytes an image
    for g, d in enumerate(digests):
        groups.setdefault(d, []).append(g)
    members = list(groups.values())
    reps = []
    for m in members:
        outside = [i for i in m if split_of[i] != "train"]
        rep = outside[0] if outside else m[0]
        reps.append(rep)
        for i in m:
            if i != rep:
                report.exact.append(_pair(i, rep, 0, names, split_of, rank))

    # near: perceptual hashes of the representatives only, split by split (no copy of all the images)
    part = np.searchsorted(np.cumsum([len(x) for x in xs]), reps, side="right")
    h = np.empty(len(reps), dtype=np.uint64)
    for k, x in enumerate(xs):
        sel = np.flatnonzero(part == k)
        if len(sel):
            h[sel] = phashes(x, index=np.asarray(local)[np.asarray(reps)[sel]])
    gi, gj, gd = near_pairs(h, max_distance)
    leaks: set[int] = set()
    for m in members:
        if any(split_of[i] != "train" for i in m):
            leaks.update(i for i in m if split_of[i] == "train")
    for a, b, d in zip(gi.tolist(), gj.tolist(), gd.tolist()):
        ma, mb = members[a], members[b]
        report.near.append(_pair(_pick(ma, mb, split_of), _pick(mb, ma, split_of), d, names, split_of, rank))
        if any(split_of[i] != "train" for i in mb):
            leaks.update(i for i in ma if split_of[i] == "train")
        if any(split_of[i] != "train" for i in ma):
            leaks.update(i for i in mb if split_of[i] == "train")
    report.cross_split = [p for p in report.exact + report.near if p.pop("_cross")]
    for p in report.exact + report.near:
        p.pop("_cross", None)
    report.train_leaks = sorted(local[i] for i in leaks)
    return report


def _pick(mine: list[int], other: list[int], split_of: list[str]) -> int:
    """The member of ``mine`` that best shows a leak against ``other`` (a split the other lacks)."""
    theirs = {split_of[i] for i in other}
    for i in mine:
        if split_of[i] not in theirs:
            return i
    return mine[0]


def _pair(i: int, j: int, d: int, names: list[str], split_of: list[str], rank: dict[str, int]) -> dict[str, Any]:
    if rank.get(split_of[j], 9) < rank.get(split_of[i], 9):
        i, j = j, i
    return {"a": names[i], "b": names[j], "distance": int(d), "_cross": split_of[i] != split_of[j]}


def write_pairs_page(summary: dict[str, Any], splits: dict[str, Any], path: Any, limit: int = 24) -> Any:
    """An HTML page of example pairs (cross-split first, then exact, then near), each image inline
    (a PNG, base64) with its path and the distance; ``summary``: :meth:`DuplicateReport.to_dict`'s keys."""
    import base64
    import html
    import io
    from pathlib import Path

    from PIL import Image

    from cnnlab.utils.io import atomic_write_text

    lookup = {}
    for s, arr in splits.items():
        if arr is not None:
            for i, name in enumerate(_names(s, arr)):
                lookup[name] = arr.x[i]

    def img(name: str) -> str:
        buf = io.BytesIO()
        im = Image.fromarray(lookup[name])
        im.thumbnail((160, 160))
        im.save(buf, "PNG")
        return (f'<figure><img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
                f"<figcaption>{html.escape(name)}</figcaption></figure>")

    parts = ["<!doctype html><meta charset='utf-8'><title>duplicates</title>",
             "<style>body{font-family:sans-serif}.pair{display:flex;gap:8px;align-items:center;margin:8px 0}"
             "figure{margin:0;max-width:220px;font-size:11px;word-break:break-all}</style>",
             "<h1>Duplicates and leaks</h1>",
             f"<p>{len(summary['exact_duplicates'])} exact pairs, {len(summary['near_duplicates'])} near-duplicate "
             f"pairs (pHash distance &le; {summary['near_max_distance']}), {len(summary['cross_split_duplicates'])} "
             f"across splits; {summary['leaked_train_images']} training images duplicate a validation or test "
             "image.</p>"]
    for title, key in (("Across splits (leaks)", "cross_split_duplicates"), ("Exact", "exact_duplicates"),
                       ("Near", "near_duplicates")):
        pairs = summary[key][:limit]
        parts.append(f"<h2>{title}: {len(summary[key])}{' (first ' + str(limit) + ')' if len(summary[key]) > limit else ''}</h2>")
        if not pairs:
            parts.append("<p>none</p>")
        for p in pairs:
            parts.append(f"<div class='pair'>{img(p['a'])}{img(p['b'])}<span>distance {p['distance']}</span></div>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def check_splits(train: Any, val: Any, test: Any, *, drop_leaks: bool = False,
                 log: Any = print) -> tuple[Any, DuplicateReport]:
    """A fit's start: one warning line when the splits hold duplicates; with ``drop_leaks``, the
    training images that duplicate a validation or test image are removed (and counted).
    Returns (train, the report)."""
    report = find_duplicates({"train": train, "val": val, "test": test})
    line = report.warning()
    if line:
        log(line)
    if drop_leaks:
        if report.train_leaks:
            kept = train.subset(np.setdiff1d(np.arange(len(train)), report.train_leaks))
            emptied = [n for c, n in enumerate(train.class_names) if (train.y == c).any() and not (kept.y == c).any()]
            if emptied:
                from cnnlab.errors import DataError

                raise DataError(f"--drop-leaks: every training image of class {emptied[0]!r} duplicates a validation "
                                "or test image; removing them would leave the class nothing to learn from")
            train = kept
        n = len(report.train_leaks)
        log(f"--drop-leaks: removed {n} training image{'s' * (n != 1)} that duplicate{'s' * (n == 1)} a validation "
            f"or test image ({len(train):,} left)")
    return train, report
