"""Disk cache of decoded pixels, so a second load of a dataset is a few ``np.load`` calls.

The key is a SHA-256 over everything that changes the pixels: the source's file list with sizes
and modification times (or an archive's size and mtime), the target image size and the decoding
rules' version. An entry is a folder ``<home>/decoded/<key>/`` holding one ``.npy`` pair per
split and a ``meta.json``; it is written to a temporary folder and renamed into place, so a
killed process never leaves a half-written entry that a later load would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data.dataset import DatasetBundle, ImageArrays
from cnnlab.data.decode import DECODE_VERSION
from cnnlab.utils.io import atomic_write_json
from cnnlab.utils.paths import cnnlab_home


def cache_key(*parts: Any) -> str:
    h = hashlib.sha256()
    h.update(f"decode-v{DECODE_VERSION}".encode())
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def file_stamp(path: str | Path) -> list[Any]:
    try:
        st = Path(path).stat()
    except OSError:  # a dangling symlink: reading the file reports it; nothing to cache by
        return [str(path), "unreadable"]
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def cache_enabled() -> bool:
    return os.environ.get("CNNLAB_NO_CACHE", "") not in ("1", "true", "yes")


def _entry_dir(key: str) -> Path:
    return cnnlab_home() / "decoded" / key


def load_cached(key: str) -> DatasetBundle | None:
    folder = _entry_dir(key)
    meta_path = folder / "meta.json"
    if not cache_enabled() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        splits = {}
        for split in meta["splits"]:
            x = np.load(folder / f"{split}_x.npy")
            y = np.load(folder / f"{split}_y.npy")
            paths = meta.get("paths", {}).get(split)
            splits[split] = ImageArrays(x, y, list(meta["class_names"]), paths)
    except (OSError, ValueError, KeyError):
        return None  # unreadable entry: decode again and overwrite it
    info = dict(meta.get("info", {}))
    info["cache"] = "hit"
    return DatasetBundle(meta["name"], splits["train"], splits.get("test"), splits.get("val"), info)


def store_cached(key: str, bundle: DatasetBundle) -> None:
    if not cache_enabled():
        return
    final = _entry_dir(key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        splits = bundle.splits()
        for split, arr in splits.items():
            np.save(tmp / f"{split}_x.npy", arr.x)
            np.save(tmp / f"{split}_y.npy", arr.y)
        meta = {
            "name": bundle.name,
            "splits": list(splits),
            "class_names": bundle.class_names,
            "paths": {s: a.paths for s, a in splits.items() if a.paths is not None},
            "info": {k: v for k, v in bundle.info.items() if k != "cache"},
        }
        atomic_write_json(tmp / "meta.json", meta)
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not break training
