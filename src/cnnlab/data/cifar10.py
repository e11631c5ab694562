"""CIFAR-10 in its official "python" format: download, verify, cache and read.

The official archive ``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/`` with five
training batches (``data_batch_1`` .. ``data_batch_5``), ``test_batch`` and ``batches.meta``.
Each is a pickle (protocol 2, written by Python 2) of a dict with ``b"data"``, an
``(N, 3072)`` uint8 array in planar CHW order (1024 red, 1024 green, 1024 blue values, each
plane row by row), and ``b"labels"``, a list of ints. ``batches.meta`` has ``b"label_names"``.

Reading never runs arbitrary pickle code: :class:`_RestrictedUnpickler` resolves only the
few numpy globals such files need. Downloads stream to a temporary file in the destination
folder, are checked for size and MD5, and are renamed into place only once they verify.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from cnnlab.utils.paths import cnnlab_home  # noqa: F401  (re-exported)
from cnnlab.errors import CnnlabError, DataError, DownloadError
from cnnlab.data import download as download_mod
from cnnlab.data.download import download  # noqa: F401  (re-exported)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_SIZE = 170_498_071
CLASS_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

#: Folder inside the official archive.
_BATCH_DIR = "cifar-10-batches-py"
_TRAIN_RE = re.compile(r"^data_batch_(\d+)$")
_KNOWN_MEMBERS = {"batches.meta", "test_batch", "readme.html"} | {f"data_batch_{i}" for i in range(1, 6)}
#: How many archive members :func:`is_python_format` looks at before giving up.
_PEEK_MEMBERS = 4
_IMAGE_BYTES = 3 * 32 * 32




@dataclass
class Cifar10Arrays:
    """CIFAR-10 as arrays: images ``(N, 32, 32, 3)`` uint8 HWC, labels int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]


# --------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------


def _numpy_reconstruct() -> Callable[..., Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _latin1_encode(obj: Any, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``, which Python 3 uses to pickle bytes at protocol 2.

    Only ``encode(str, "latin1")`` is allowed: other codecs are not needed and not trusted.
    """
    if not isinstance(obj, str) or not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in (
        "latin1",
        "latin-1",
    ):
        raise pickle.UnpicklingError("_codecs.encode is only allowed as encode(str, 'latin1')")
    return obj.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_reconstruct()
    return {
        # Written by numpy 1.x (the official files) and by numpy 2.x.
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickling bytes at protocol 2: encode(str, 'latin1') and bytes() for b"".
        ("_codecs", "encode"): _latin1_encode,
        ("__builtin__", "bytes"): bytes,
        ("builtins", "bytes"): bytes,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals a CIFAR-10 batch file needs."""

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to load pickle global {module}.{name}; "
                "a CIFAR-10 batch file only uses numpy arrays (file is corrupt or not CIFAR-10)"
            ) from None


def _unpickle(file: IO[bytes], source: str) -> Any:
    try:
        return _RestrictedUnpickler(file, source).load()
    except CnnlabError:
        raise
    except MemoryError:
        raise DataError(f"{source}: not a CIFAR-10 batch file (ran out of memory reading it)") from None
    except Exception as exc:  # corrupt pickle, truncated gzip stream, bad numpy state ...
        raise DataError(f"{source}: could not read CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _batch_folder(path: Path) -> Path | None:
    """The folder holding ``data_batch_1`` for an extracted copy, else None."""
    for folder in (path, path / _BATCH_DIR):
        if (folder / "data_batch_1").is_file():
            return folder
    return None


def _peek_archive(path: Path) -> bool:
    with tarfile.open(path, mode="r:*") as tar:
        for _ in range(_PEEK_MEMBERS):
            member = tar.next()
            if member is None:
                return False
            parts = member.name.strip("/").split("/")
            if parts[0] != _BATCH_DIR:
                return False
            if len(parts) == 2 and parts[1] in _KNOWN_MEMBERS:
                return True
    return False


def is_python_format(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is the official python-format archive or an extracted copy of it.

    An archive is recognised from its first few member names (``cifar-10-batches-py/...``),
    without extracting it; a folder must contain ``data_batch_1`` directly or under
    ``cifar-10-batches-py/``.
    """
    path = Path(path)
    if path.is_dir():
        return _batch_folder(path) is not None
    if not path.is_file():
        return False
    try:
        return _peek_archive(path)
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError):
        return False


def _check_batch(obj: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled batch; return images ``(N, 32, 32, 3)`` and int64 labels."""
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a dict in a CIFAR-10 batch, found {type(obj).__name__}")
    data = _get(obj, "data")
    labels = _get(obj, "labels")
    if data is None or labels is None:
        keys = sorted(k.decode("latin-1") if isinstance(k, bytes) else str(k) for k in obj)
        hint = " (this looks like CIFAR-100, which is not supported here)" if "fine_labels" in keys else ""
        raise DataError(f"{source}: batch lacks 'data' or 'labels' (keys: {', '.join(keys)}){hint}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _IMAGE_BYTES:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source}: 'data' must be a uint8 array of shape (N, {_IMAGE_BYTES}), found {desc}")
    try:
        y = np.asarray(labels)
    except Exception:
        raise DataError(f"{source}: 'labels' is not a list of integers") from None
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: 'labels' must be a flat list of integers, found {y.dtype} with shape {y.shape}")
    if len(y) != len(data):
        raise DataError(f"{source}: {len(data)} images but {len(y)} labels")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, y.astype(np.int64)


def _check_labels(y: np.ndarray, source: str, n_classes: int) -> None:
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        bad = int(y[(y < 0) | (y >= n_classes)][0])
        raise DataError(f"{source}: label {bad} is outside 0..{n_classes - 1}")


def _get(d: dict[Any, Any], key: str) -> Any:
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _class_names(meta: Any, source: str) -> list[str]:
    names = _get(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{source}: expected a non-empty 'label_names' list")
    out = []
    for name in names:
        if isinstance(name, bytes):
            name = name.decode("utf-8", errors="replace")
        if not isinstance(name, str):
            raise DataError(f"{source}: class name {name!r} is not a string")
        out.append(name)
    return out


def _iter_archive(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(member basename, unpickled object)`` for the batch files in the archive."""
    try:
        tar = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 archive ({exc})") from None
    with tar:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{path}: archive is truncated or corrupt ({exc})") from None
            if member is None:
                return
            parts = member.name.strip("/").split("/")
            if len(parts) != 2 or parts[0] != _BATCH_DIR or not member.isfile():
                continue
            base = parts[1]
            if base in ("batches.meta", "test_batch") or _TRAIN_RE.match(base):
                fh = tar.extractfile(member)
                if fh is None:  # pragma: no cover - isfile() members always have data
                    continue
                with fh:
                    yield base, _unpickle(fh, f"{path}:{member.name}")


def _iter_folder(folder: Path) -> Iterator[tuple[str, Any]]:
    for file in sorted(folder.iterdir()):
        if file.is_file() and (file.name in ("batches.meta", "test_batch") or _TRAIN_RE.match(file.name)):
            try:
                fh = open(file, "rb")
            except OSError as exc:
                raise DataError(f"{file}: cannot open ({exc.strerror or exc})") from None
            with fh:
                yield file.name, _unpickle(fh, str(file))


def read_python_format(path: str | os.PathLike[str]) -> Cifar10Arrays:
    """Read CIFAR-10 from the official archive (streamed, not extracted) or an extracted folder."""
    path = Path(path)
    if path.is_dir():
        folder = _batch_folder(path)
        if folder is None:
            raise DataError(f"{path}: no data_batch_1 here or under {_BATCH_DIR}/; not an extracted CIFAR-10 copy")
        items, where = _iter_folder(folder), str(folder)
    elif path.is_file():
        items, where = _iter_archive(path), str(path)
    else:
        raise DataError(f"{path}: no such file or folder")

    # Convert each batch as it arrives so only one raw batch is in memory at a time.
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    class_names: list[str] | None = None
    with contextlib.closing(items):
        for name, obj in items:
            if name == "batches.meta":
                class_names = _class_names(obj, f"{where}:batches.meta")
            else:
                batches[name] = _check_batch(obj, f"{where}:{name}")
            del obj
    train_numbers = sorted(int(m.group(1)) for m in map(_TRAIN_RE.match, batches) if m)
    if not train_numbers or "test_batch" not in batches:
        found = ", ".join(sorted(batches)) or "no batch files"
        raise DataError(f"{where}: expected data_batch_1.. and test_batch, found {found}")
    if train_numbers != list(range(1, len(train_numbers) + 1)):
        raise DataError(f"{where}: training batches are not numbered 1..N (found {train_numbers})")
    if class_names is None:
        class_names = list(CLASS_NAMES)
    for name, (_, y) in batches.items():
        _check_labels(y, f"{where}:{name}", len(class_names))

    train = [batches.pop(f"data_batch_{i}") for i in train_numbers]
    test_x, test_y = batches.pop("test_batch")
    return Cifar10Arrays(
        train_x=np.concatenate([x for x, _ in train]) if len(train) > 1 else train[0][0],
        train_y=np.concatenate([y for _, y in train]) if len(train) > 1 else train[0][1],
        test_x=test_x,
        test_y=test_y,
        class_names=class_names,
    )


# --------------------------------------------------------------------------------------
# Cached fetch (the download and the verification: data/download.py)
# --------------------------------------------------------------------------------------


def fetch_python_format(
    home: Path | None = None,
    *,
    url: str = URL,
    md5: str | None = MD5,
    progress: bool = True,
) -> Path:
    """Return ``<home>/cifar-10-python.tar.gz``, downloading it first if missing or bad.

    An existing file is checked against ``md5`` (once: the result is cached in a small
    sidecar keyed by size and mtime). A file that fails the check is deleted and downloaded
    again.
    """
    home = Path(home) if home is not None else cnnlab_home()
    dest = home / ARCHIVE_NAME
    if dest.is_file():
        if md5 is None or download_mod.verified(dest, md5.lower()):
            return dest
        for stale in (dest, download_mod.sidecar(dest)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    expected_size = ARCHIVE_SIZE if url == URL and md5 is not None and md5.lower() == MD5 else None
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create cache folder {home} ({exc.strerror or exc}); set CNNLAB_HOME") from None
    download(url, dest, md5=md5, expected_size=expected_size, progress=progress)
    if md5 is not None:
        download_mod.remember(dest, md5.lower())
    return dest
