"""Folders owned by one cnnlab process at a time, and new folders named without a race.

- :func:`folder_lock`: an exclusive ``fcntl.flock`` on ``FOLDER/.cnnlab.lock`` for the lifetime of
  a train / resume / fit; a second process is refused at once with one line naming the holder's
  pid. The kernel drops the lock when the holder exits, however it exits (SIGKILL included), so a
  stale lock file never blocks anyone.
- :func:`new_folder`: ``mkdir`` without ``exist_ok``, retrying with a suffix (``-2``, ``-3`` ...),
  so two processes started in the same second never share a folder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cnnlab.errors import ConfigError

LOCK_NAME = ".cnnlab.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "run directory") -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for the block; ConfigError when another process holds it."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise ConfigError(f"{what} {folder}: in use by another cnnlab process (pid {holder}); "
                              "wait for it to finish, or use another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield folder
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def new_folder(base: str | Path) -> Path:
    """Create and return ``base``, or ``base-2``, ``base-3`` ... (the first that did not exist)."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    path, k = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            k += 1
            path = base.with_name(f"{base.name}-{k}")
