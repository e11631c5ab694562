"""The study's sanity check of a dataset: shapes, per-class counts per split, pixel range, and
(``duplicates=True``) exact and near-duplicate pairs within and across splits (duplicates.py)."""

from __future__ import annotations

from typing import Any

from cnnlab.data.dataset import DatasetBundle, imbalance
from cnnlab.data.rows import chunks


def summarize(bundle: DatasetBundle, *, duplicates: bool = False) -> dict[str, Any]:
    splits = {}
    for name, arr in bundle.splits().items():
        # a chunk at a time: pixels decoded to disk (rows.py) are never all read into memory
        ranges = [(int(c.min()), int(c.max())) for c in chunks(arr.x)] if len(arr) else []
        splits[name] = {
            "images": len(arr),
            "shape": list(arr.x.shape),
            "pixel_min": min(r[0] for r in ranges) if ranges else None,
            "pixel_max": max(r[1] for r in ranges) if ranges else None,
            "class_counts": arr.class_counts(),
        }
    out = {
        "name": bundle.name,
        "classes": bundle.class_names,
        "splits": splits,
        "imbalance": imbalance(bundle.train.class_counts()),  # of the training split
        "skipped": bundle.info.get("skipped", 0),
        "skipped_files": bundle.info.get("skipped_files", []),
        "cache": bundle.info.get("cache"),
    }
    if duplicates:
        from cnnlab.data.duplicates import find_duplicates

        out.update(find_duplicates(bundle.splits()).to_dict())
    return out
