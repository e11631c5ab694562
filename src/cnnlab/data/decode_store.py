"""Decoding many images straight to disk: one ``.npy`` file per split, filled chunk by chunk.

Every image source that names files (a folder tree, an archive, a CSV) lists its images as
:class:`Item` rows and calls :func:`decode_to_folder`, which

1. picks the decoded size before any pixel is decoded: ``image_size`` when given, else the size
   the image headers announce (Pillow reads only the header on ``Image.open``), so a folder of
   mixed sizes is refused at once and never half-decoded;
2. creates each split's ``<split>_x.npy`` at its final shape with ``numpy.lib.format.open_memmap``
   and reserves its disk space (``posix_fallocate``), so a full disk is one error before decoding
   rather than a crash half-way;
3. decodes in chunks (in worker processes when there are many images) and writes each image's
   row with ``os.pwrite`` at its offset in the file. Writing through a file descriptor instead of
   the memory map keeps the decoded pixels out of the process's resident memory and turns a disk
   that fills up into an ``OSError`` (a write through a map would be a SIGBUS);
4. with ``skip_bad``, moves the good rows down over the bad ones (chunk by chunk) and records the
   count; the arrays are then opened as read-only memory maps (``mmap_mode``), so no split is
   ever held in memory whole.

numpy's own ``.npy`` format is used rather than Arrow / Hugging Face ``datasets``: the pixels are
one fixed-shape uint8 array per split, which ``np.load(mmap_mode=...)`` maps with no copy and no
extra dependency, and the trainers already index numpy arrays.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError

#: Images per chunk handed to a worker (and per progress-bar update).
CHUNK = 256
#: Below this many images the worker processes' start-up (about a second) is not worth it.
PARALLEL_MIN_IMAGES = 4096


@dataclass
class Item:
    """One image to decode: its split, row in that split, class index, shown name and reader key."""

    split: str
    row: int
    label: int
    name: str  # shown to the user: a path, or "archive.tar.gz:member"
    key: str  # a file path, or an archive member name


def decode_workers(n_images: int) -> int:
    """Worker processes for ``n_images``: ``CNNLAB_DECODE_WORKERS`` when set, else one per core
    (at most 8) for large sets and none (decode in this process) for small ones."""
    env = os.environ.get("CNNLAB_DECODE_WORKERS")
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            raise DataError(f"CNNLAB_DECODE_WORKERS={env!r}: not a whole number") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if n_images < PARALLEL_MIN_IMAGES or cores < 2 else min(cores, 8)


# ------------------------------------------------------------------------------------------------
# Sizes from the headers
# ------------------------------------------------------------------------------------------------

_SWAP_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90 degrees


def header_size(data: str | bytes) -> tuple[int, int] | None:
    """(height, width) of an image after its EXIF rotation, from its header only; None if unreadable."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            w, h = img.size
            try:
                if img.getexif().get(0x0112) in _SWAP_ORIENTATIONS:
                    w, h = h, w
            except Exception:  # a malformed EXIF block: decoding reports what matters
                pass
            return h, w
    except Exception:  # unreadable: the decode step names the file and the reason
        return None


def split_shapes(
    sizes: Iterable[tuple[Item, tuple[int, int] | None]], image_size: int | None, where: str
) -> dict[str, tuple[int, int]]:
    """Each split's (height, width): ``image_size`` square, or the size most of its headers announce.

    A corrupt file may have a readable header of another size, so a disagreement is not refused
    here: an image that then decodes to another size is (``_decode_chunk``), naming it.
    """
    seen: dict[str, Counter] = {}
    for item, hw in sizes:
        per = seen.setdefault(item.split, Counter())
        if image_size is not None:
            per[(image_size, image_size)] += 1
        elif hw is not None:
            per[hw] += 1
    # No readable header at all: every image of the split is bad, decoding says which and why.
    return {split: per.most_common(1)[0][0] if per else (1, 1) for split, per in seen.items()}


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def _create_npy(path: Path, shape: tuple[int, ...]) -> int:
    """Create ``path`` as a uint8 ``.npy`` of ``shape`` with its space reserved; return the data offset."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    del mm
    with open(path, "rb+") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        offset = fh.tell()
        size = int(np.prod(shape))
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fh.fileno(), offset, size)
            except OSError as exc:
                if exc.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: a file system that cannot reserve
                    raise
    return offset


def _decode_chunk(job: tuple[dict[str, tuple[str, int, tuple[int, int]]], int | None, list[tuple[str, int, str, str | bytes]]]
                  ) -> list[tuple[int, str, int, str | None]]:
    """Decode a chunk and write its rows; returns (position in chunk, split, row, error or None).

    Runs in a worker process or in this one; it reopens the files by path (no shared state)."""
    from cnnlab.data.decode import decode_image

    files, image_size, chunk = job
    fds: dict[str, int] = {}
    out = []
    try:
        for pos, (split, row, name, data) in enumerate(chunk):
            path, offset, (h, w) = files[split]
            try:
                arr = decode_image(data, image_size, name=name)
            except DataError as exc:
                out.append((pos, split, row, str(exc)))
                continue
            if arr.shape[:2] != (h, w):
                raise DataError(
                    f"{name}: images have different sizes ({arr.shape[0]}x{arr.shape[1]} here, {h}x{w} for most "
                    "of the split); set data.image_size (CLI: --image-size N) to resize them all to N x N"
                )
            if split not in fds:
                fds[split] = os.open(path, os.O_WRONLY)
            os.pwrite(fds[split], np.ascontiguousarray(arr).data, offset + row * h * w * 3)
            out.append((pos, split, row, None))
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


def _chunks(it: Iterable[tuple[str, int, str, str | bytes]], size: int) -> Iterator[list]:
    buf: list = []
    for x in it:
        buf.append(x)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def decode_to_folder(
    out_dir: Path,
    items: list[Item],
    payloads: Iterable[tuple[Item, str | bytes]],
    shapes: dict[str, tuple[int, int]],
    counts: dict[str, int],
    image_size: int | None,
    skip_bad: bool,
    *,
    desc: str = "decoding",
    progress: bool = True,
) -> tuple[dict[str, int], dict[str, np.ndarray], list[str]]:
    """Decode ``payloads`` ((item, path or bytes), in any order) into ``out_dir/<split>_x.npy``.

    Returns the number of good rows per split (rows ``[:n]`` of the file, in row order), a
    boolean mask of good rows per split (in the original row numbering) and the bad files'
    messages. Without ``skip_bad`` the first bad file raises (in ``payloads`` order). A disk that
    fills up is one line naming the cache folder and the space needed.
    """
    try:
        return _decode_to_folder(out_dir, items, payloads, shapes, counts, image_size, skip_bad, desc, progress)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        needed = sum(n * shapes[s][0] * shapes[s][1] * 3 for s, n in counts.items())
        raise no_space_error(out_dir.parent, needed) from None


def no_space_error(folder: Path, needed: int | None) -> DataError:
    """The one line for a disk that fills up: the cache folder, the space needed and free."""
    import shutil

    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = f"{needed / 1e9:.2f} GB needed, " if needed else ""
    return DataError(f"{folder}: not enough disk space for the decoded images ({need}{free / 1e9:.2f} GB free); "
                     "free some space, run `cnnlab cache clean`, or set CNNLAB_HOME to a folder on a larger disk")


def _decode_to_folder(out_dir: Path, items: list[Item], payloads: Iterable[tuple[Item, str | bytes]],
                      shapes: dict[str, tuple[int, int]], counts: dict[str, int], image_size: int | None,
                      skip_bad: bool, desc: str, progress: bool
                      ) -> tuple[dict[str, int], dict[str, np.ndarray], list[str]]:
    from tqdm.auto import tqdm

    files = {}
    for split, n in counts.items():
        h, w = shapes[split]
        path = out_dir / f"{split}_x.npy"
        files[split] = (str(path), _create_npy(path, (n, h, w, 3)), (h, w))
    good = {split: np.zeros(n, dtype=bool) for split, n in counts.items()}
    bad: list[str] = []
    total = len(items)
    workers = decode_workers(total)
    jobs = ((files, image_size, [(it.split, it.row, it.name, data) for it, data in chunk])
            for chunk in _chunks(payloads, CHUNK))
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, disable=not progress or None, file=sys.stderr,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(workers, mp_context=_mp_context()) if workers else None

    def results() -> Iterator[list[tuple[int, str, int, str | None]]]:
        if pool is None:
            yield from map(_decode_chunk, jobs)
            return
        # At most two chunks per worker in flight: an archive's bytes are read as they are decoded.
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.submit(_decode_chunk, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    try:
        for res in results():
            for _, split, row, err in res:
                if err is None:
                    good[split][row] = True
                elif not skip_bad:
                    raise DataError(f"{err} (use --skip-bad to skip bad files and count them)")
                else:
                    bad.append(err)
            bar.update(len(res))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    rate = total / max(1e-9, time.perf_counter() - t0)
    if progress and total >= CHUNK:
        print(f"cnnlab: decoded {total:,} images at {rate:,.0f} images/s"
              f"{f' ({workers} worker processes)' if workers else ''}", file=sys.stderr, flush=True)
    kept = {}
    for split, mask in good.items():
        kept[split] = int(mask.sum())
        if kept[split] < len(mask):
            _compact(files[split], mask)
    return kept, good, bad


def _mp_context():
    import multiprocessing

    # "fork" where there is one: a worker starts at once and does not import the caller's __main__
    # again ("spawn" would re-run a script that calls cnnlab without an ``if __name__ == "__main__"``
    # guard). The workers only run Pillow and numpy, never torch, whose OpenMP pool is not fork-safe.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _compact(file: tuple[str, int, tuple[int, int]], mask: np.ndarray) -> None:
    """Move the good rows of a split's file down over the bad ones, in order, a chunk at a time."""
    path, offset, (h, w) = file
    row_bytes = h * w * 3
    keep = np.flatnonzero(mask)
    fd = os.open(path, os.O_RDWR)
    try:
        for dst, src in enumerate(keep):
            if dst != src:
                os.pwrite(fd, os.pread(fd, row_bytes, offset + int(src) * row_bytes), offset + dst * row_bytes)
    finally:
        os.close(fd)


def open_split(path: Path, count: int | None = None, mode: str = "c") -> np.ndarray:
    """A split's pixels as a memory map (its first ``count`` rows: a view, no copy).

    ``mode="c"`` (copy-on-write) reads through the shared page cache like ``"r"`` but gives a
    writable array, which ``torch.from_numpy`` needs to share it without a warning; nothing is
    ever written back to the file.
    """
    x = np.load(path, mmap_mode=mode)  # type: ignore[arg-type]
    return x if count is None or count == len(x) else x[:count]

