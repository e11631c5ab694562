"""The study's sanity check of a dataset: shapes, per-class counts per split, pixel range, and
(``duplicates=True``) exact and near-duplicate pairs within and across splits (duplicates.py)."""

from __future__ import annotations

from typing import Any

from cnnlab.data.dataset import DatasetBundle, imbalance


def summarize(bundle: DatasetBundle, *, duplicates: bool = False) -> dict[str, Any]:
    splits = {}
    for name, arr in bundle.splits().items():
        splits[name] = {
            "images": len(arr),
            "shape": list(arr.x.shape),
            "pixel_min": int(arr.x.min()) if len(arr) else None,
            "pixel_max": int(arr.x.max()) if len(arr) else None,
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
