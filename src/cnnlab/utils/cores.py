"""Sharing the CPU cores between cnnlab processes that compute at the same time.

PyTorch's OpenMP threads spin and wait for each other at every parallel region; when two
processes each start one thread per core on the same cores, the threads are descheduled in the
middle of those barriers and every operator waits for a thread that is not running (a 20x
slowdown was measured on a 2-core machine: `cnnlab tune --workers 2`, or two trainings at once).
Each compute process therefore registers itself while it computes, and takes
``physical cores // processes registered`` threads (at least one).

The register is a folder of lock files, one per process, each held with ``flock`` for as long
as the process computes: the kernel releases a lock when its process dies (even by SIGKILL),
so a file whose lock can be taken belongs to a dead process and is removed. No library offers
this across independent processes, so it is written here. ``CNNLAB_SHARE_CORES=0`` turns it
off (every process takes every core); ``OMP_NUM_THREADS``, when set, always wins.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from cnnlab.utils import hardware

SHARE_ENV = "CNNLAB_SHARE_CORES"


def register_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"cnnlab-cores-{os.getuid() if hasattr(os, 'getuid') else 0}"


def owned_private_dir(folder: Path) -> bool:
    """Make ``folder`` (mode 0700) if missing; True only when it is a real folder (not a symlink) that
    this user owns and nobody else can write to. In a shared /tmp another user could have made the
    predictable name first: such a folder is not used (the process computes without a registration)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return False
    return not st.st_mode & 0o022


def live_processes(folder: Path | None = None) -> int:
    """How many processes hold a registration in ``folder`` (stale files are removed)."""
    folder = folder or register_dir()
    live = 0
    if not owned_private_dir(folder):
        return live
    for path in folder.glob("*.lock"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            live += 1  # its owner is alive and computing
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                path.unlink()  # the owner died without cleaning up
        finally:
            os.close(fd)
    return live


def threads_per_process(processes: int = 1) -> int:
    """The one thread-count formula for N processes started together (torchrun ranks, tuning workers,
    server workers, an ONNX Runtime session): ``OMP_NUM_THREADS`` when set, else physical cores // N."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, hardware.physical_cores() // max(1, processes))


class CoreShare:
    """This process's registration; :meth:`threads` is its share of the cores right now."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or register_dir()
        self.path: Path | None = None
        self.fd: int | None = None

    def threads(self) -> int:
        if os.environ.get(SHARE_ENV, "1") == "0" or self.fd is None:
            return threads_per_process(1)
        return threads_per_process(live_processes(self.folder))

    def __enter__(self) -> CoreShare:
        if os.environ.get(SHARE_ENV, "1") == "0" or not hasattr(fcntl, "flock"):
            return self
        if not owned_private_dir(self.folder):
            return self
        try:
            self.path = self.folder / f"{os.getpid()}-{id(self)}.lock"
            self.fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a read-only /tmp: compute without a registration
            self._release()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # closing drops the lock
            self.fd = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None


@contextlib.contextmanager
def scoped_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, the caller's setting restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


_active: contextvars.ContextVar[CoreShare | None] = contextvars.ContextVar("cnnlab_core_share", default=None)


@contextlib.contextmanager
def compute_threads(threads: int | None = None) -> Iterator[CoreShare]:
    """Register this process, run the block with its share of the cores (``threads`` when given:
    e.g. ``cnnlab serve --threads``), then restore the caller's thread count. Inside it,
    :func:`share_now` follows processes that start or end. Nested inside another
    ``compute_threads`` (inference inside a training or a fit) the process keeps its one
    registration: a second one would count this process twice and halve its share."""
    outer = _active.get()
    if outer is not None:
        with scoped_threads(threads or outer.threads()):
            yield outer
        return
    with CoreShare() as share, scoped_threads(threads or share.threads()):
        token = _active.set(share)
        try:
            yield share
        finally:
            _active.reset(token)


def share_now() -> int | None:
    """The current share of the cores inside :func:`compute_threads` (None outside it)."""
    share = _active.get()
    return None if share is None else share.threads()


def rebalance_threads() -> None:
    """Inside :func:`compute_threads`, set PyTorch's threads to the current share (cheap: a few
    ``flock`` calls; the training loops call it every few dozen steps)."""
    n = share_now()
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
