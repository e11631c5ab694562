"""Downloads that verify, and files verified once.

:func:`download` streams a URL into a temporary file next to its destination, checks the size
and the MD5, and renames it into place only once it verifies. :func:`verified` checks a file's
MD5 once and remembers the answer in a small sidecar (``<file>.verified.json``) keyed by size
and mtime, so a 170 MB archive is not hashed again on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from cnnlab.errors import DataError, DownloadError
from cnnlab.utils.io import atomic_path, atomic_write_json

CHUNK = 1 << 20
#: Sidecar next to a verified file: records the size, mtime and MD5 that were checked.
VERIFIED_SUFFIX = ".verified.json"


def _offline_hint(url: str, dest: Path, env_var: str) -> str:
    return (
        f"could not reach {url}; if you are offline, download {dest.name} elsewhere and point "
        f"{env_var} at it, or copy it to {dest.parent}"
    )


def _fmt_bytes(n: int) -> str:
    return f"{n:,} bytes"


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None = None,
    expected_size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    env_var: str = "CNNLAB_CIFAR10",
) -> Path:
    """Download ``url`` to ``dest``, verifying size and MD5; return ``dest``.

    The body streams into a temporary file next to ``dest`` and is renamed into place only
    after it verifies. On any failure (unreachable host, HTTP error, dropped connection,
    wrong size or checksum, Ctrl-C) the temporary file is removed and nothing new appears at
    ``dest``; a file already there is left as it was. ``env_var`` is named in the offline hint
    (the variable that points at a copy of the file).
    """
    from tqdm import tqdm

    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "cnnlab"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the open response
        raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"{_offline_hint(url, dest, env_var)} ({exc.reason})") from None
    except (TimeoutError, socket.timeout):
        raise DownloadError(f"{_offline_hint(url, dest, env_var)} (timed out after {timeout:g} s)") from None
    except (http.client.HTTPException, OSError) as exc:
        raise DownloadError(f"{_offline_hint(url, dest, env_var)} ({type(exc).__name__}: {exc})") from None

    with response:
        length_header = response.headers.get("Content-Length")
        content_length = int(length_header) if length_header and length_header.strip().isdigit() else None
        if content_length is not None and expected_size is not None and content_length != expected_size:
            raise DownloadError(
                f"{url} has {_fmt_bytes(content_length)} but {_fmt_bytes(expected_size)} were expected; "
                "the server is not serving the expected file"
            )
        total = content_length if content_length is not None else expected_size
        digest = hashlib.md5()
        got = 0
        with atomic_path(dest) as tmp, open(tmp, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, disable=not progress, leave=False
        ) as bar:
            of_total = f" of {_fmt_bytes(total)}" if total is not None else ""
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (TimeoutError, socket.timeout):
                    raise DownloadError(
                        f"downloading {url} stalled: no data for {timeout:g} s after {_fmt_bytes(got)}{of_total}"
                    ) from None
                except (http.client.HTTPException, OSError) as exc:
                    raise DownloadError(
                        f"connection dropped while downloading {url}: got {_fmt_bytes(got)}{of_total} "
                        f"({type(exc).__name__}); try again"
                    ) from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise DownloadError(
                        f"cannot write to {dest.parent} while downloading {url}: {exc.strerror or exc}"
                    ) from None
                digest.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
            for expected, what in ((content_length, "Content-Length"), (expected_size, "expected size")):
                if expected is not None and got != expected:
                    raise DownloadError(
                        f"connection dropped while downloading {url}: got {_fmt_bytes(got)} "
                        f"but {what} is {_fmt_bytes(expected)}; try again"
                    )
            if md5 is not None and digest.hexdigest() != md5.lower():
                raise DownloadError(
                    f"checksum mismatch for {url}: expected MD5 {md5.lower()}, got {digest.hexdigest()}; "
                    "the file was not saved"
                )
    return dest


# ----------------------------------------------------------------------------- verified files


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + VERIFIED_SUFFIX)


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def verified(path: Path, md5: str) -> bool:
    """True if ``path`` has MD5 ``md5``; remembered in a sidecar keyed by size and mtime."""
    record_path = sidecar(path)
    stamp = _stamp(path)
    with contextlib.suppress(OSError, ValueError, TypeError):
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("md5") == md5 and {k: record.get(k) for k in stamp} == stamp:
            return True
    try:
        actual = file_md5(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read cached archive ({exc.strerror or exc})") from None
    if actual != md5:
        return False
    remember(path, md5, stamp)
    return True


def remember(path: Path, md5: str, stamp: dict[str, int] | None = None) -> None:
    with contextlib.suppress(OSError):  # the sidecar only saves time; never fail because of it
        atomic_write_json(sidecar(path), {"md5": md5, **(stamp or _stamp(path))})
