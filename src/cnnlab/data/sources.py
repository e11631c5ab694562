"""One entry point for every data source: ``load_source(SOURCE)``.

``SOURCE`` is ``"cifar10"``, a folder tree, an archive of one (.zip / .tar / .tar.gz), a CSV
file, or (from Python) a pandas DataFrame. Decoded pixels are cached on disk (see cache.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data import cache
from cnnlab.data.dataset import DatasetBundle, ImageArrays
from cnnlab.data.folder import is_archive, load_tree
from cnnlab.data.tabular import csv_image_stamp, load_csv, load_frame
from cnnlab.errors import DataError

CIFAR10_ENV = "CNNLAB_CIFAR10"


def _say(msg: str) -> None:
    print(f"cnnlab: {msg}", file=sys.stderr, flush=True)


def _cifar10(image_size: int | None, skip_bad: bool) -> DatasetBundle:
    from cnnlab.data import cifar10

    if image_size == 32:
        image_size = None  # CIFAR-10's own size: the same pixels, so the same cache entry

    env = os.environ.get(CIFAR10_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise DataError(f"{CIFAR10_ENV}={env}: no such file or folder")
        if not cifar10.is_python_format(path):
            if not (path.is_dir() or is_archive(path)):
                raise DataError(
                    f"{CIFAR10_ENV}={env}: neither the official cifar-10-python archive nor an "
                    "image-folder tree or archive"
                )
            # A folder's own mtime misses edits inside it: stamp every file, as for any tree.
            stamp = _tree_stamp(path) if path.is_dir() else None
            key = cache.cache_key("tree", cache.file_stamp(path), stamp, image_size, skip_bad)
            return _cached(key, str(path), lambda d: load_tree(path, image_size, skip_bad, "cifar10", _say, d))
    else:
        path = cifar10.fetch_python_format()
    key = cache.cache_key("cifar10-python", cache.file_stamp(path), image_size)

    def read(_: Path) -> DatasetBundle:
        _say(f"reading {path}")
        arrays = cifar10.read_python_format(path)
        names = list(arrays.class_names)
        train, test = arrays.train_x, arrays.test_x
        if image_size not in (None, 32):
            train, test = _resize_all(train, image_size), _resize_all(test, image_size)
        return DatasetBundle(
            "cifar10",
            ImageArrays(train, arrays.train_y, names),
            ImageArrays(test, arrays.test_y, names),
            info={"source": str(path), "skipped": 0},
        )

    return _cached(key, str(path), read)


def _resize_all(x: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    from cnnlab.data.decode import resize_center_crop

    return np.stack([np.asarray(resize_center_crop(Image.fromarray(im), size)) for im in x])


def _cached(key: str, source: str, build: Any) -> DatasetBundle:
    """The cache entry ``key``, or ``build(folder)`` decoding into it once (see cache.py)."""
    return cache.get_or_build(key, source, build, say=_say)


def _tree_stamp(root: Path) -> list[Any]:
    """Every file's relative path, size and mtime: any change re-decodes the folder."""
    stamp = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        stamp.append([rel, "dir"])
        for name in sorted(filenames):
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:  # a dangling symlink or an unreadable entry: decoding reports it
                stamp.append([rel, name, "unreadable"])
                continue
            stamp.append([rel, name, st.st_size, st.st_mtime_ns])
    return stamp


def load_source(source: str | os.PathLike[str] | Any, **kwargs: Any) -> DatasetBundle:
    """Load a data source into memory (see :func:`_load_source` for the arguments); running out of
    memory is one line naming the source, not a traceback."""
    try:
        return _load_source(source, **kwargs)
    except MemoryError:
        what = "a DataFrame" if not isinstance(source, (str, os.PathLike)) else repr(os.fspath(source))
        raise DataError(f"data source {what}: out of memory while loading it (try a smaller --image-size, "
                        "or fewer images)") from None


def _load_source(
    source: str | os.PathLike[str] | Any,
    *,
    image_size: int | None = None,
    skip_bad: bool = False,
    image_column: str | None = None,
    label_column: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> DatasetBundle:
    """Load a data source into memory.

    Args:
        source: ``"cifar10"``, a folder, an archive, a ``.csv`` file or a pandas DataFrame.
        image_size: resize every image to this square size (see decode.py for the rule);
            None keeps the images' own size, which must then be the same for all.
        skip_bad: skip unreadable images (counted in ``bundle.info["skipped"]``) instead of failing.
        image_column / label_column: CSV / DataFrame column names (auto-detected by default).
        base_dir: folder that relative DataFrame paths start from (default: the working folder).
    """
    if image_size is not None:
        from cnnlab.validation import at_least, check_value

        check_value("image_size", image_size, at_least(1), flag="--image-size")  # configs ask >= 8
    try:
        import pandas as pd

        if isinstance(source, pd.DataFrame):
            return load_frame(
                source,
                Path(base_dir or "."),
                image_column=image_column,
                label_column=label_column,
                image_size=image_size,
                skip_bad=skip_bad,
            )
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    text = os.fspath(source)
    if text.lower() == "cifar10":
        return _cifar10(image_size, skip_bad)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"data source {text!r}: no such file or folder (or use 'cifar10')")
    if path.suffix.lower() == ".csv":
        key = cache.cache_key(
            "csv", cache.file_stamp(path), csv_image_stamp(path, image_column), image_size, skip_bad,
            image_column, label_column,
        )
        return _cached(
            key, str(path),
            lambda d: load_csv(
                path, image_column=image_column, label_column=label_column, image_size=image_size,
                skip_bad=skip_bad, out_dir=d,
            ),
        )
    if path.is_dir():
        key = cache.cache_key("tree", str(path.resolve()), _tree_stamp(path), image_size, skip_bad)
    elif is_archive(path):
        key = cache.cache_key("tree", cache.file_stamp(path), image_size, skip_bad)
    else:
        raise DataError(
            f"data source {text!r}: not a folder, an archive (.zip, .tar, .tar.gz) or a .csv file"
        )
    return _cached(key, str(path), lambda d: load_tree(path, image_size, skip_bad, None, _say, d))
