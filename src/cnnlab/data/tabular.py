"""A CSV file or pandas DataFrame of image paths and labels, as AutoGluon's predictors accept.

Columns: an image-path column (``image``, ``path``, ``filepath``, ``file``, ``filename`` or
the name given) and a label column (``label``, ``class``, ``target`` or the name given); an
optional ``split`` column with train / val / test. Relative paths are relative to the CSV's
folder (or ``base_dir`` for a DataFrame). Class names are the sorted distinct labels.

A CSV is a file people pass around, so its paths must stay inside the CSV's folder (after
resolving ``..`` and symbolic links): ``/etc/...`` or ``../../x`` is refused with one line, unless
``CNNLAB_CSV_ANY_PATH=1`` allows paths anywhere. A DataFrame (built by the caller's own code) is
not confined.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnlab.data.dataset import DatasetBundle, ImageArrays, check_classes
from cnnlab.data.decode_store import Item
from cnnlab.data.folder import SPLIT_NAMES, decode_to
from cnnlab.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

IMAGE_COLUMNS = ("image", "path", "filepath", "file_path", "file", "filename", "image_path")
LABEL_COLUMNS = ("label", "class", "target", "y", "category")
ANY_PATH_ENV = "CNNLAB_CSV_ANY_PATH"


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, where: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{where}: no column {wanted!r} for the {what}; columns are {columns}"
                            f"{_delimiter_hint(columns)}")
        return wanted
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    flag = f"--{what.split()[0]}-column"
    raise DataError(
        f"{where}: missing the {what} column; expected one of {list(candidates)} "
        f"(or name it with {flag} NAME), columns are {columns}{_delimiter_hint(columns)}"
    )


def _delimiter_hint(columns: list[str]) -> str:
    """A CSV read as one column whose name holds ';', tabs or '|' was written with another delimiter."""
    if len(columns) != 1:
        return ""
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
        if sep in columns[0]:
            return f"; the file looks delimited by {name}: cnnlab reads comma-separated CSV files"
    return ""


def _sort_labels(labels: list[object]) -> list[str]:
    try:
        return [str(v) for v in sorted(set(labels), key=float)]  # numeric labels: 2 before 10
    except (TypeError, ValueError):
        return sorted({str(v) for v in labels})


def load_frame(
    df: "pd.DataFrame",
    base_dir: Path,
    *,
    where: str = "DataFrame",
    image_column: str | None = None,
    label_column: str | None = None,
    image_size: int | None = None,
    skip_bad: bool = False,
    class_names: list[str] | None = None,
    confine: bool = False,
    out_dir: Path | None = None,
) -> DatasetBundle:
    """``confine``: every image path must resolve inside ``base_dir`` (a CSV's folder)."""
    columns = [str(c) for c in df.columns]
    root = os.path.realpath(base_dir) if confine and os.environ.get(ANY_PATH_ENV) != "1" else None
    img_col = _pick(columns, image_column, IMAGE_COLUMNS, "image path", where)
    lab_col = _pick(columns, label_column, LABEL_COLUMNS, "label", where)
    if len(df) == 0:
        raise DataError(f"{where}: has no rows")
    if df[lab_col].isna().any():
        row = int(np.flatnonzero(df[lab_col].isna().to_numpy())[0])
        raise DataError(f"{where}: row {row + 1} has an empty {lab_col!r}")
    labels = df[lab_col].tolist()
    splits = (
        [SPLIT_NAMES.get(str(s).strip().lower(), "?") for s in df["split"]]
        if "split" in df.columns
        else ["train"] * len(df)
    )
    if "?" in splits:
        bad = df["split"].iloc[splits.index("?")]
        raise DataError(f"{where}: split {bad!r} is not one of train, val, test")
    names = class_names or _sort_labels([lab for lab, s in zip(labels, splits) if s == "train"])
    counts = {n: 0 for n in names}
    for lab, s in zip(labels, splits):
        if s == "train" and str(lab) in counts:
            counts[str(lab)] += 1
    check_classes(names, counts, where)
    lookup = {n: i for i, n in enumerate(names)}
    items: list[Item] = []
    rows = {"train": 0, "val": 0, "test": 0}
    bad: list[str] = []
    for row, (raw_path, lab, split) in enumerate(zip(df[img_col].tolist(), labels, splits), start=1):
        if str(lab) not in lookup:
            raise DataError(f"{where}: row {row} has label {lab!r}, unknown to the classes {names}")
        if not isinstance(raw_path, str) or not raw_path.strip():
            raise DataError(f"{where}: row {row} has an empty {img_col!r}")
        path = Path(raw_path)
        if not path.is_absolute():
            path = base_dir / path
        if root is not None and os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise DataError(f"{where}: row {row}: image path {raw_path!r} is outside the CSV's folder {root}; "
                            f"refused (set {ANY_PATH_ENV}=1 to allow paths anywhere)")
        if not path.is_file():
            msg = f"{where}: row {row}: image file not found: {path}"
            if not skip_bad:
                raise DataError(f"{msg} (use --skip-bad to skip bad files and count them)")
            bad.append(msg)
            continue
        items.append(Item(split, rows[split], lookup[str(lab)], str(path), str(path)))
        rows[split] += 1
    if not items:
        raise DataError(f"{where}: no readable training images")

    def decode(folder: Path) -> tuple[dict[str, ImageArrays | None], list[str]]:
        return decode_to(folder, base_dir, items, image_size, skip_bad, names, where,
                         payloads=lambda: ((it, it.key) for it in items))

    if out_dir is None:
        from cnnlab.data.cache import scratch_folder

        with scratch_folder() as tmp:  # the open memory maps keep the deleted files readable
            out, more_bad = decode(tmp)
    else:
        out, more_bad = decode(out_dir)
    bad += more_bad
    if out["train"] is None:
        raise DataError(f"{where}: no readable training images")
    left = out["train"].class_counts()
    empty = [n for n in names if left[n] == 0]
    if empty:
        raise DataError(
            f"{where}: class {empty[0]!r} has no readable training images ({len(bad)} bad files skipped)"
        )
    info = {"source": where, "skipped": len(bad), "skipped_files": bad[:50]}
    return DatasetBundle(Path(where).stem, out["train"], out["test"], out["val"], info)


def csv_image_stamp(path: Path, image_column: str | None = None) -> list[object]:
    """Size and mtime of every image a CSV names, for the cache key: editing an image re-decodes.

    An unreadable CSV gives an empty stamp; loading it then reports the problem.
    """
    import pandas as pd

    try:
        df = pd.read_csv(path)
        col = _pick([str(c) for c in df.columns], image_column, IMAGE_COLUMNS, "image path", str(path))
    except (OSError, ValueError, DataError):
        return []
    stamp: list[object] = []
    for raw in df[col].tolist():
        if not isinstance(raw, str):
            stamp.append(None)
            continue
        p = Path(raw) if Path(raw).is_absolute() else path.parent / raw
        try:
            st = p.stat()
            stamp.append([raw, st.st_size, st.st_mtime_ns])
        except OSError:
            stamp.append([raw, None])
    return stamp


def load_csv(path: Path, **kwargs: object) -> DatasetBundle:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    return load_frame(df, path.parent, where=str(path), confine=True, **kwargs)  # type: ignore[arg-type]
