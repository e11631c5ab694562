"""Images to predict on, as a user has them: paths, folders, a uint8 array or a DataFrame.

:func:`unlabelled_images` turns any of them into one (N, H, W, 3) uint8 array plus a name per
image (its path, or ``#i`` for an array row), decoding files at the size asked for (see
decode.py); :func:`input_paths` only lists the files, and :func:`decoded_chunks` decodes them a
chunk at a time, each chunk only when the caller asks for it (predictions, embeddings and
explanations of paths, folders and DataFrames stream that way). Labelled data for evaluation goes through :func:`cnnlab.data.sources.load_source`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data.dataset import ImageArrays
from cnnlab.data.decode import decode_image, list_image_files
from cnnlab.data.tabular import IMAGE_COLUMNS
from cnnlab.errors import DataError


def check_array(x: Any, where: str = "images") -> np.ndarray:
    """An (N, H, W, 3) uint8 array, or a DataError saying what it is instead."""
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        shape = getattr(x, "shape", None)
        raise DataError(f"{where}: expected an (N, H, W, 3) uint8 array, got {shape} {getattr(x, 'dtype', type(x))}")
    return x


def image_paths(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """Image files, with folders expanded (recursively, sorted); a missing path, or a folder
    without images, is a DataError naming it (decode.list_image_files)."""
    return list_image_files([inputs] if isinstance(inputs, (str, Path)) else list(inputs))


def decode_paths(paths: Sequence[Path], size: int | None) -> np.ndarray:
    return np.stack([decode_image(p, size) for p in paths])


def decoded_chunks(paths: Sequence[Path], size: int | None, step: int) -> Iterator[tuple[np.ndarray, list[Path]]]:
    """(pixels (n, H, W, 3) uint8, their files) for ``paths`` in order, ``step`` files at a time:
    a chunk is decoded only when the caller asks for the next one, so memory holds one chunk of
    pixels however many files there are, and the caller's work on the first chunk begins before
    the last file is decoded. A bad file raises decode_image's DataError (naming it) when its
    chunk is reached."""
    step = max(1, int(step))
    for i in range(0, len(paths), step):
        part = list(paths[i : i + step])
        yield decode_paths(part, size), part


def frame_image_column(df: Any, column: str | None = None) -> str:
    columns = [str(c) for c in df.columns]
    if column is not None:
        if column not in columns:
            raise DataError(f"DataFrame: no column {column!r} for the image paths; columns are {columns}")
        return column
    lower = {c.lower(): c for c in columns}
    for cand in IMAGE_COLUMNS:
        if cand in lower:
            return lower[cand]
    raise DataError(f"DataFrame: missing the image path column; expected one of {list(IMAGE_COLUMNS)}, "
                    f"columns are {columns}")


def unlabelled_images(data: Any, size: int | None, *, image_column: str | None = None,
                      base_dir: str | Path | None = None) -> tuple[np.ndarray, list[str], Any]:
    """(images, names, index) for paths, a folder, an array, an ImageArrays or a DataFrame.

    ``index`` is the DataFrame's index for a DataFrame (predictions line up with its rows),
    else None. Arrays are taken as they are (no resizing). Files are all decoded into one array;
    ImagePredictor's predictions, embeddings and explanations of files use :func:`decoded_chunks`.
    """
    if isinstance(data, ImageArrays):
        return data.x, list(data.paths or [f"#{i}" for i in range(len(data))]), None
    if isinstance(data, np.ndarray):
        x = check_array(data)
        return x, [f"#{i}" for i in range(len(x))], None
    paths, index = input_paths(data, image_column=image_column, base_dir=base_dir)  # type: ignore[misc]
    return decode_paths(paths, size), [str(p) for p in paths], index


def frame_paths(df: Any, image_column: str | None = None, base_dir: str | Path | None = None) -> list[Path]:
    """The image files a DataFrame's image-path column names (relative ones under ``base_dir``);
    a missing file, or no rows, is a DataError. Nothing is decoded."""
    col = frame_image_column(df, image_column)
    base = Path(base_dir or ".")
    paths = [Path(str(p)) if Path(str(p)).is_absolute() else base / str(p) for p in df[col]]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"DataFrame column {col!r}: {missing}: no such file")
    if not paths:
        raise DataError("no images to predict")
    return paths


def input_paths(data: Any, *, image_column: str | None = None, base_dir: str | Path | None = None
                ) -> tuple[list[Path], Any] | None:
    """(image files, the DataFrame's index or None) for paths, folders or a DataFrame of paths;
    None for pixels already in memory (an array, an ImageArrays). Nothing is decoded, so callers
    can decode the files a batch at a time (ImagePredictor.iter_proba)."""
    import pandas as pd

    if isinstance(data, (ImageArrays, np.ndarray)):
        return None
    if isinstance(data, pd.DataFrame):
        return frame_paths(data, image_column, base_dir), data.index
    return image_paths(data), None
