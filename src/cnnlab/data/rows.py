"""Rows of memory-mapped pixels: index views, batch reads and releasing mapped pages.

A split decoded to disk (decode_store.py) is an ``np.memmap``. Indexing it with an index array
(a train/validation split, a subset) would copy every chosen row into memory, so
:meth:`ImageArrays.subset <cnnlab.data.dataset.ImageArrays.subset>` returns a :class:`RowView`
instead: the base array and the row numbers, read only when a batch asks for them. Splits used
together (every image of a source, training + validation for a final fit) are a :class:`JoinedRows`
of their arrays, likewise read a batch at a time, never concatenated.

Batches are read from the file with ``pread`` (:func:`take_rows`, :func:`read_all`): the rows
come from the kernel's page cache, shared by every process reading the file (e.g. the DDP ranks
of one machine) and reclaimable, and are never mapped into this process, so its resident memory
stays flat however large the data set is. Pages read through the map itself (code that indexes
the array directly) count as resident until :func:`release_pages` drops them again
(``madvise(MADV_DONTNEED)``; the page cache keeps them).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from typing import Any

import numpy as np


class RowView:
    """Rows ``index`` of ``base`` (N, ...), read lazily. Behaves enough like an ndarray for the
    trainers: ``len``, ``shape``, ``dtype``, ``ndim``, ``nbytes``; an int gives one row, a slice
    another view, an index array (numpy or torch) the rows as an in-memory ndarray, and
    ``np.asarray(view)`` the whole view in memory (only for small ones)."""

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.base.dtype.itemsize

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return self.base[self.index[key]]
        if isinstance(key, slice):
            return RowView(self.base, self.index[key])
        if hasattr(key, "numpy"):  # a torch index tensor
            key = key.cpu().numpy()
        return take_rows(self.base, self.index[np.asarray(key)])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = take_rows(self.base, self.index)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class JoinedRows:
    """Several arrays (N_i, ...) one after another, as one (sum N_i, ...) array, without copying:
    the splits of a source joined (every image of a source, training + validation for a final
    fit). Behaves like a :class:`RowView` (same attributes; an int gives one row, a step-1 slice
    another joined view, an index array those rows in memory); each part keeps its own storage, so
    parts on disk are read a batch at a time (``pread``, :func:`take_rows`) and never joined in memory.

    Hand-written rather than a library: numpy has no lazy concatenation of memory maps (dask's
    ``concatenate`` does, but as a dask array the trainers could not index), and this is 60 lines."""

    def __init__(self, parts: list[Any]):
        parts = [p.parts if isinstance(p, JoinedRows) else [p] for p in parts]
        self.parts: list[Any] = [q for p in parts for q in p]
        if not self.parts:
            raise ValueError("JoinedRows needs at least one array")
        first = self.parts[0]
        for p in self.parts[1:]:
            if tuple(p.shape[1:]) != tuple(first.shape[1:]) or p.dtype != first.dtype:
                raise ValueError(f"cannot join rows of {tuple(p.shape[1:])} {p.dtype} "
                                 f"to rows of {tuple(first.shape[1:])} {first.dtype}")
        self.starts = np.cumsum([0] + [len(p) for p in self.parts]).astype(np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.starts[-1]), *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[Any, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows")
        i = i + n if i < 0 else i
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k], i - int(self.starts[k])

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            part, row = self._locate(int(key))
            return part[row]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return RowView(self, np.arange(start, stop, step))
            stop = max(start, stop)
            pieces = []
            for part, lo, hi in zip(self.parts, self.starts[:-1], self.starts[1:]):
                a, b = max(start, int(lo)), min(stop, int(hi))
                if a < b:
                    pieces.append(part[a - int(lo) : b - int(lo)])
            if not pieces:
                return self.parts[0][:0]
            return pieces[0] if len(pieces) == 1 else JoinedRows(pieces)
        if hasattr(key, "numpy"):  # a torch index tensor
            key = key.cpu().numpy()
        return take_rows(self, np.asarray(key))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = read_all(self)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def join_rows(parts: list[Any]) -> Any:
    """``parts`` one after another without copying: the one part itself, else a :class:`JoinedRows`."""
    return parts[0] if len(parts) == 1 else JoinedRows(parts)


def is_disk_backed(x: Any) -> bool:
    """Pixels read as batches ask for them: a memory map, a view of one, or a joined view (whose
    parts are read one batch at a time whether on disk or in memory)."""
    return isinstance(x, (RowView, JoinedRows)) or mapping_of(x) is not None


def take_rows(x: Any, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of ``x`` as an in-memory array, reading only those rows (in file order).

    Rows of a memory-mapped file are read with ``os.preadv`` rather than through the map: a read
    fault on a file map also maps its neighbours (the kernel's fault-around, 64 kB), so random rows
    read through the map leave several times their size resident in this process, while ``pread``
    copies just the rows from the page cache (and measured faster: 7.5 vs 12.5 ms for 256 rows of
    64-px images)."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(x, RowView):
        return take_rows(x.base, x.index[idx])
    if isinstance(x, JoinedRows):
        if len(idx) and (idx.min() < -len(x) or idx.max() >= len(x)):
            raise IndexError(f"row index out of range for {len(x)} rows")
        idx = np.where(idx < 0, idx + len(x), idx)
        out = np.empty((len(idx), *x.shape[1:]), dtype=x.dtype)
        which = np.searchsorted(x.starts, idx, side="right") - 1
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            out[sel] = take_rows(x.parts[k], idx[sel] - x.starts[k])
        return out
    loc = file_location(x)
    if idx.ndim != 1 or loc is None:
        return np.asarray(x[idx])
    if len(idx) and (idx.min() < -len(x) or idx.max() >= len(x)):
        raise IndexError(f"row index out of range for {len(x)} rows")
    idx = np.where(idx < 0, idx + len(x), idx)
    path, offset = loc
    row = int(np.prod(x.shape[1:])) * x.dtype.itemsize
    out = np.empty((len(idx), *x.shape[1:]), dtype=x.dtype)
    flat = out.reshape(len(idx), -1).view(np.uint8)
    fd = _open(path)
    if fd is None:  # the file is gone (a scratch file, an entry cleaned meanwhile): its map still reads
        order = np.argsort(idx, kind="stable")
        out[order] = x[idx[order]]
        release_pages(x)
        return out
    try:
        for j in np.argsort(idx, kind="stable"):
            if os.preadv(fd, [flat[j]], offset + int(idx[j]) * row) != row:
                raise OSError(f"{path}: short read (the cache file was truncated)")
    finally:
        os.close(fd)
    return out


def read_all(x: Any) -> np.ndarray:
    """``x`` as an in-memory array; rows of a memory-mapped file are read in one ``pread``."""
    if isinstance(x, RowView):
        return take_rows(x.base, x.index)
    if isinstance(x, JoinedRows):
        out = np.empty(x.shape, dtype=x.dtype)
        for part, lo, hi in zip(x.parts, x.starts[:-1], x.starts[1:]):
            out[lo:hi] = read_all(part)
        return out
    loc = file_location(x)
    if loc is None or not len(x):
        return np.array(x)
    out = np.empty(x.shape, dtype=x.dtype)
    fd = _open(loc[0])
    if fd is None:  # the file is gone: read through its map, then drop the pages again
        out[...] = x
        release_pages(x)
        return out
    try:
        if os.preadv(fd, [out.reshape(-1).view(np.uint8)], loc[1]) != out.nbytes:
            raise OSError(f"{loc[0]}: short read (the cache file was truncated)")
    finally:
        os.close(fd)
    return out


def _open(path: str) -> int | None:
    """A descriptor for reading ``path``, or None when it no longer exists: a scratch file (cache
    off, a DataFrame) is deleted as soon as it is mapped, and ``cnnlab cache clean`` may remove an
    entry a running process still reads; the map keeps the pixels readable in both cases."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def file_location(x: Any) -> tuple[str, int] | None:
    """(file, byte offset of row 0) of a C-contiguous view of a memory-mapped ``.npy``, else None."""
    root = x
    for _ in range(8):
        if not isinstance(root, np.memmap):
            return None
        if isinstance(root.base, mmap.mmap):
            break
        root = root.base
    else:
        return None
    if root.filename is None or not x.flags.c_contiguous:
        return None
    return str(root.filename), int(root.offset) + (x.ctypes.data - root.ctypes.data)


def subset(x: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of ``x``: a slice view for a run of rows, a :class:`RowView` of a disk-backed
    array, else an in-memory copy (what numpy indexing gives)."""
    index = np.asarray(index, dtype=np.int64)
    if isinstance(x, RowView):
        return RowView(x.base, x.index[index])
    if is_disk_backed(x):  # also a JoinedRows: a slice of it for a run of rows, else a RowView over it
        if len(index) and index[0] >= 0 and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
            return x[int(index[0]) : int(index[0]) + len(index)]
        return RowView(x, index)
    return x[index]


def mapping_of(x: Any) -> mmap.mmap | None:
    """The ``mmap`` object under a memory-mapped array (or a view of one), if any."""
    seen = 0
    while x is not None and seen < 8:
        m = getattr(x, "_mmap", None)
        if isinstance(m, mmap.mmap):
            return m
        x = getattr(x, "base", None)
        seen += 1
    return None


def release_pages(x: Any) -> None:
    """Drop the pages of ``x``'s file mapping from this process's resident memory (they stay in
    the page cache; the next read maps them again). A no-op for in-memory arrays."""
    if isinstance(x, RowView):
        x = x.base
    if isinstance(x, JoinedRows):
        for part in x.parts:
            release_pages(part)
        return
    m = mapping_of(x)
    if m is None or not hasattr(m, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        m.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # a closed map, or a platform without it: nothing to release
        pass


#: :func:`row_blocks` reads the whole run of rows from the first chosen one to the last in one
#: ``pread`` when the run is at most this many times the rows chosen (a split's rows of its file),
#: else the chosen rows alone (:func:`take_rows`).
DENSE_RUN = 4


def row_blocks(x: Any, rows: int = 1024, index: np.ndarray | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``x[index]`` (default: every row of ``x``) in memory, at most ``rows`` rows at a time, as
    (positions, pixels): ``pixels[k]`` is ``x[index[positions[k]]]``, and every position comes
    exactly once. For a pass over a whole split (hashing every image), whose order does not matter.

    Rows are read in file order: the rows of a :class:`RowView` (a split of a decoded file) are
    sorted by their row in the file, and each block's run of rows is read with one ``pread`` when
    it is dense (:data:`DENSE_RUN`), so a pass costs a few large reads rather than one read or one
    page fault per row, and nothing is mapped into this process (resident memory stays one block)."""
    idx = np.arange(len(x), dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    base = x
    if isinstance(x, RowView):
        base, idx = x.base, x.index[idx]
    idx = np.where(idx < 0, idx + len(base), idx)
    order = np.argsort(idx, kind="stable")
    rows = max(1, int(rows))
    for s in range(0, len(order), rows):
        pos = order[s : s + rows]
        want = idx[pos]
        lo, hi = int(want[0]), int(want[-1]) + 1
        if isinstance(base, (np.ndarray, JoinedRows)) and hi - lo <= DENSE_RUN * len(want):
            span = base[lo:hi]
            span = read_all(span) if is_disk_backed(span) else span
            yield pos, np.ascontiguousarray(span[want - lo])
        else:
            yield pos, np.ascontiguousarray(take_rows(base, want))


def chunks(x: Any, size: int = 4096) -> Any:
    """``x`` as in-memory arrays of at most ``size`` rows, in order (never the whole of a big set)."""
    for i in range(0, len(x), size):
        yield read_all(x[i : i + size])
