"""Disk cache of decoded pixels, read back as memory maps, with a size cap and LRU eviction.

The key is a SHA-256 over everything that changes the pixels: the source's file list with sizes
and modification times (or an archive's size and mtime), the target image size and the decoding
rules' version. A changed file therefore re-decodes the whole source: the rows are stored in one
fixed shuffled order per split (folder.py), and one added or removed file moves every row.

An entry is a folder ``<home>/decoded/<key>/`` holding ``<split>_x.npy`` (the pixels, opened with
``mmap_mode``: nothing is read into memory until a batch touches it), ``<split>_y.npy`` and a
``meta.json`` whose modification time is the entry's last use. A loader decodes straight into a
temporary folder ``.tmp-<pid>-...`` next to the entries, which is renamed into place when it is
complete, so a killed process never leaves an entry a later load would trust; the temporary
folders of dead processes are swept at the next store. Two processes that load the same new
source build it once: the second waits on a file lock (the ``filelock`` package) and then reads
the first one's entry.

Both caches (decoded pixels here, frozen-backbone features in ``<home>/features``) together are
kept under ``CNNLAB_CACHE_MAX_GB`` (default :data:`DEFAULT_MAX_GB`) by deleting the least recently
used entries after each store; ``cnnlab cache list`` / ``cnnlab cache clean`` show and delete them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data.dataset import DatasetBundle, ImageArrays
from cnnlab.data.decode import DECODE_VERSION
from cnnlab.errors import ConfigError, DataError
from cnnlab.utils.io import atomic_write_json
from cnnlab.utils.paths import cnnlab_home

#: Both caches together, in GB, unless ``CNNLAB_CACHE_MAX_GB`` says otherwise.
DEFAULT_MAX_GB = 50.0
#: A temporary folder whose process cannot be checked is stale after this long.
STALE_TMP_SECONDS = 24 * 3600
_TMP_PREFIX = ".tmp-"


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


def decoded_root() -> Path:
    return cnnlab_home() / "decoded"


def features_root() -> Path:
    return cnnlab_home() / "features"


def _entry_dir(key: str) -> Path:
    return decoded_root() / key


def max_bytes() -> int:
    env = os.environ.get("CNNLAB_CACHE_MAX_GB")
    if not env:
        return int(DEFAULT_MAX_GB * 1e9)
    try:
        gb = float(env)
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise ConfigError(f"CNNLAB_CACHE_MAX_GB={env!r}: must be a number of GB, 0 or more")
    return int(gb * 1e9)


# ------------------------------------------------------------------------------------------------
# Reading and writing entries
# ------------------------------------------------------------------------------------------------


def open_bundle(folder: Path, meta: dict[str, Any]) -> DatasetBundle:
    """The bundle an entry folder holds, its pixels as copy-on-write memory maps (see decode_store)."""
    from cnnlab.data.decode_store import open_split

    splits = {}
    for split in meta["splits"]:
        x = open_split(folder / f"{split}_x.npy", meta.get("counts", {}).get(split))
        y = np.load(folder / f"{split}_y.npy")
        splits[split] = ImageArrays(x, y, list(meta["class_names"]), meta.get("paths", {}).get(split))
    return DatasetBundle(meta["name"], splits["train"], splits.get("test"), splits.get("val"), dict(meta["info"]))


def load_cached(key: str) -> DatasetBundle | None:
    folder = _entry_dir(key)
    meta_path = folder / "meta.json"
    if not cache_enabled() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        bundle = open_bundle(folder, meta)
        os.utime(meta_path)  # the entry's last use, for LRU eviction
    except (OSError, ValueError, KeyError):
        return None  # unreadable entry: decode again and overwrite it
    bundle.info["cache"] = "hit"
    return bundle


def _write_entry(tmp: Path, bundle: DatasetBundle, source: str) -> dict[str, Any]:
    """Write what the builder did not write itself (labels, in-memory pixels) and meta.json."""
    splits = bundle.splits()
    counts = {}
    for split, arr in splits.items():
        xfile = tmp / f"{split}_x.npy"
        if not xfile.is_file():  # a loader that decoded in memory (CIFAR-10's pickles): save it in chunks
            out = np.lib.format.open_memmap(xfile, mode="w+", dtype=np.uint8, shape=arr.x.shape)
            for i in range(0, len(arr.x), 4096):
                out[i : i + 4096] = arr.x[i : i + 4096]
            out.flush()
            del out
        counts[split] = len(arr)
        np.save(tmp / f"{split}_y.npy", arr.y)
    meta = {
        "name": bundle.name,
        "source": source,
        "created": time.time(),
        "splits": list(splits),
        "counts": counts,
        "class_names": bundle.class_names,
        "paths": {s: a.paths for s, a in splits.items() if a.paths is not None},
        "info": {k: v for k, v in bundle.info.items() if k != "cache"},
    }
    atomic_write_json(tmp / "meta.json", meta)
    return meta


def _no_space(folder: Path, needed: int | None) -> DataError:
    from cnnlab.data.decode_store import no_space_error

    return no_space_error(folder, needed)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def get_or_build(key: str, source: str, build: Callable[[Path], DatasetBundle], needed: int | None = None,
                 say: Callable[[str], None] | None = None) -> DatasetBundle:
    """The cached entry ``key``, or ``build(folder)`` run once and stored under ``key``.

    ``build`` may write ``<split>_x.npy`` files into ``folder`` (and return memory maps of them) or
    return in-memory arrays. ``needed``: the bytes it will write, when known (for the disk-full line).
    With the cache off (``CNNLAB_NO_CACHE=1``) the files go to a scratch folder deleted at once (the
    open memory maps keep them readable until they are closed).
    """
    root = decoded_root()
    if not cache_enabled():
        with _temp_folder(root) as tmp:
            bundle = _build(tmp, build, needed)
            meta = _write_entry(tmp, bundle, source)
            out = open_bundle(tmp, meta)
        out.info["cache"] = "miss"  # decoded afresh, kept nowhere
        return out
    hit = load_cached(key)
    if hit is not None:
        return hit
    with _lock(key, say):
        hit = load_cached(key)  # built by the process we waited for
        if hit is not None:
            return hit
        sweep_stale()
        final = _entry_dir(key)
        with _temp_folder(root) as tmp:
            bundle = _build(tmp, build, needed)
            try:
                _write_entry(tmp, bundle, source)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise _no_space(root, needed) from None
                raise
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    enforce_cap(keep={final})
    out = load_cached(key)
    if out is None:  # pragma: no cover - the entry was removed between the rename and here
        raise DataError(f"{final}: the decoded-pixel cache entry vanished while it was being opened")
    out.info["cache"] = "miss"
    return out


def _build(tmp: Path, build: Callable[[Path], DatasetBundle], needed: int | None) -> DatasetBundle:
    try:
        return build(tmp)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _no_space(tmp.parent, needed) from None
        raise


def scratch_folder() -> contextlib.AbstractContextManager[Path]:
    """A temporary folder among the cache entries (same disk), deleted when the block ends."""
    return _temp_folder(decoded_root())


@contextlib.contextmanager
def _temp_folder(root: Path) -> Iterator[Path]:
    """A fresh ``.tmp-<pid>-...`` folder under ``root``, removed afterwards unless renamed away."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=root))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_lock(name: str, say: Callable[[str], None] | None = None) -> contextlib.AbstractContextManager[None]:
    """A file lock under ``<home>/locks`` held while one process builds the entry ``name``."""
    return _lock(name, say)


@contextlib.contextmanager
def _lock(key: str, say: Callable[[str], None] | None) -> Iterator[None]:
    from filelock import FileLock, Timeout

    folder = cnnlab_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if say:
            say("another process is decoding the same source; waiting for it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[Path]:
    """Remove the temporary folders and files of dead processes (or older than a day); return them."""
    removed = []
    now = time.time()
    for root in (decoded_root(), features_root()):
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if not p.name.startswith("."):
                continue
            stale = False
            if p.name.startswith(_TMP_PREFIX):
                pid = p.name[len(_TMP_PREFIX):].split("-", 1)[0]
                stale = pid.isdigit() and not _pid_alive(int(pid))
            with contextlib.suppress(OSError):
                stale = stale or now - p.stat().st_mtime > STALE_TMP_SECONDS
            if stale:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# ------------------------------------------------------------------------------------------------
# Listing, cleaning, the size cap
# ------------------------------------------------------------------------------------------------


@dataclass
class CacheEntry:
    kind: str  # "decoded" or "features"
    path: Path
    bytes: int
    last_use: float
    source: str
    images: int

    def as_row(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.path.name.removesuffix(".npy"), "bytes": self.bytes,
                "size_mb": round(self.bytes / 1e6, 1),
                "last_use": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last_use)),
                "images": self.images, "source": self.source, "path": str(self.path)}


def _disk_bytes(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += f.stat().st_size
    return total


def list_entries() -> list[CacheEntry]:
    """Every complete entry of both caches, least recently used first."""
    out = []
    if decoded_root().is_dir():
        for p in decoded_root().iterdir():
            meta_path = p / "meta.json"
            if p.name.startswith(".") or not meta_path.is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text())
                last = meta_path.stat().st_mtime
            except (OSError, ValueError):
                meta, last = {}, 0.0
            source = str(meta.get("source") or meta.get("info", {}).get("source") or "?")
            out.append(CacheEntry("decoded", p, _disk_bytes(p), last, source,
                                  int(sum(meta.get("counts", {}).values()))))
    if features_root().is_dir():
        for p in features_root().glob("*.npy"):
            if p.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError):
                st = p.stat()
                n = len(np.load(p, mmap_mode="r"))  # reads the header only
                out.append(CacheEntry("features", p, st.st_size, st.st_mtime, "frozen-backbone features", n))
    return sorted(out, key=lambda e: e.last_use)


def remove_entry(entry: CacheEntry) -> None:
    if entry.path.is_dir():
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        entry.path.unlink(missing_ok=True)


def enforce_cap(limit: int | None = None, keep: set[Path] | None = None) -> list[CacheEntry]:
    """Delete least recently used entries until both caches together fit ``limit`` bytes
    (default :func:`max_bytes`); entries in ``keep`` (the one just stored) stay. Returns those deleted."""
    limit = max_bytes() if limit is None else limit
    entries = list_entries()
    total = sum(e.bytes for e in entries)
    removed = []
    for e in entries:
        if total <= limit:
            break
        if keep and e.path in keep:
            continue
        remove_entry(e)
        total -= e.bytes
        removed.append(e)
    if removed:
        print(f"cnnlab: cache over {_gb(limit)} (CNNLAB_CACHE_MAX_GB): removed {len(removed)} least recently "
              f"used entries ({_gb(sum(e.bytes for e in removed))})", file=sys.stderr, flush=True)
    return removed


def parse_age(text: str) -> float:
    """Seconds in an age such as ``30d``, ``12h``, ``90m`` (days added to utils.durations' units)."""
    from cnnlab.utils.durations import parse_duration

    t = str(text).strip().lower()
    if t.endswith("d"):
        return parse_duration(t[:-1], "--older-than") * 86400
    return parse_duration(t, "--older-than")


def clean(older_than: float | None = None, everything: bool = False) -> list[CacheEntry]:
    """Delete entries unused for ``older_than`` seconds (or all of them), sweep stale temporary
    folders and apply the size cap. Returns the entries deleted."""
    sweep_stale()
    removed = []
    now = time.time()
    for e in list_entries():
        if everything or (older_than is not None and now - e.last_use > older_than):
            remove_entry(e)
            removed.append(e)
    return removed + enforce_cap()
