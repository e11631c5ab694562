"""Offline tests for the CIFAR-10 python-format download, cache and reader.

A tiny archive in the official layout is built in tmp_path and served by a local HTTP
server on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from cnnlab.data import cifar10
from cnnlab.data import download as download_mod
from cnnlab.errors import DataError, DownloadError

# --------------------------------------------------------------------------------------
# Building fake CIFAR-10 files
# --------------------------------------------------------------------------------------


class _Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), like the official files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def py2_pickle(obj: object) -> bytes:
    """A protocol-2 pickle shaped like one written by Python 2 with numpy 1.x."""
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    # numpy 1.x, which wrote the official files, named the module numpy.core.multiarray.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def to_planar(images_hwc: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) HWC -> (N, 3072) planar CHW rows, the official layout."""
    return images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), -1).copy()


@dataclass
class FakeCifar:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    files: dict[str, bytes] = field(default_factory=dict)


def make_fake(rng: np.random.Generator, names: list[str] | None = None) -> FakeCifar:
    names = names or list(cifar10.CLASS_NAMES)
    sizes = [3, 2]  # two training batches
    train = [rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8) for n in sizes]
    train_labels = [rng.integers(0, 10, size=n).tolist() for n in sizes]
    test_x = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    test_y = [9, 0]
    files = {}
    for i, (x, y) in enumerate(zip(train, train_labels), start=1):
        files[f"data_batch_{i}"] = py2_pickle(
            {b"batch_label": f"training batch {i} of 2", b"labels": y, b"data": to_planar(x), b"filenames": []}
        )
    files["test_batch"] = py2_pickle({b"batch_label": "testing batch 1 of 1", b"labels": test_y, b"data": to_planar(test_x)})
    files["batches.meta"] = py2_pickle({b"label_names": names, b"num_cases_per_batch": 3, b"num_vis": 3072})
    return FakeCifar(
        train_x=np.concatenate(train),
        train_y=np.array(sum(train_labels, []), dtype=np.int64),
        test_x=test_x,
        test_y=np.array(test_y, dtype=np.int64),
        class_names=names,
        files=files,
    )


def write_archive(path: Path, files: dict[str, bytes]) -> bytes:
    """Write a .tar.gz in the official layout (top folder first, batches in mixed order)."""
    with tarfile.open(path, "w:gz") as tar:
        top = tarfile.TarInfo(cifar10._BATCH_DIR)
        top.type = tarfile.DIRTYPE
        top.mode = 0o755
        tar.addfile(top)
        for name in sorted(files, reverse=True):
            info = tarfile.TarInfo(f"{cifar10._BATCH_DIR}/{name}")
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    return path.read_bytes()


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def assert_matches(arrays: cifar10.Cifar10Arrays, fake: FakeCifar) -> None:
    assert arrays.train_x.shape == (5, 32, 32, 3) and arrays.train_x.dtype == np.uint8
    assert arrays.test_x.shape == (2, 32, 32, 3) and arrays.test_x.dtype == np.uint8
    assert arrays.train_y.dtype == np.int64 and arrays.test_y.dtype == np.int64
    np.testing.assert_array_equal(arrays.train_x, fake.train_x)
    np.testing.assert_array_equal(arrays.train_y, fake.train_y)
    np.testing.assert_array_equal(arrays.test_x, fake.test_x)
    np.testing.assert_array_equal(arrays.test_y, fake.test_y)
    assert arrays.class_names == fake.class_names


@pytest.fixture
def fake(tmp_path: Path) -> FakeCifar:
    return make_fake(np.random.default_rng(0))


@pytest.fixture
def archive(tmp_path: Path, fake: FakeCifar) -> tuple[Path, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    path = src / cifar10.ARCHIVE_NAME
    return path, write_archive(path, fake.files)


# --------------------------------------------------------------------------------------
# A local HTTP server
# --------------------------------------------------------------------------------------


@dataclass
class Server:
    base: str
    routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]]
    hits: dict[str, int]

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[Server]:
    routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = {}
    hits: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            hits[self.path] = hits.get(self.path, 0) + 1
            route = routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
            else:
                route(self)

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", routes, hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def serve_bytes(data: bytes) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/gzip")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return route


def serve_truncated(data: bytes, claimed: int) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    """Promise ``claimed`` bytes, send ``data``, then hang up."""

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(claimed))
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()
        h.close_connection = True

    return route


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leftovers(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


# --------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------


def test_download_verifies_and_reads(tmp_path: Path, server: Server, archive: tuple[Path, bytes], fake: FakeCifar) -> None:
    _, data = archive
    server.routes["/c.tar.gz"] = serve_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    dest = tmp_path / "dl" / cifar10.ARCHIVE_NAME

    out = cifar10.download(server.url("/c.tar.gz"), dest, md5=md5, expected_size=len(data), progress=False)

    assert out == dest
    assert dest.read_bytes() == data
    assert leftovers(dest.parent) == [cifar10.ARCHIVE_NAME]  # no temp file left behind
    assert cifar10.is_python_format(dest)
    arrays = cifar10.read_python_format(dest)
    assert_matches(arrays, fake)
    # Pixel order: HWC pixel (0, 0) of image 0 is the first value of each CHW plane.
    planar = to_planar(fake.train_x[:1])[0]
    assert tuple(arrays.train_x[0, 0, 0]) == (planar[0], planar[1024], planar[2048])
    assert tuple(arrays.train_x[0, 0, 1]) == (planar[1], planar[1025], planar[2049])
    assert tuple(arrays.train_x[0, 1, 0]) == (planar[32], planar[1056], planar[2080])


def test_fetch_caches_and_skips_second_download(
    tmp_path: Path, server: Server, archive: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = archive
    server.routes["/c.tar.gz"] = serve_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    home = tmp_path / "home"

    first = cifar10.fetch_python_format(home, url=server.url("/c.tar.gz"), md5=md5, progress=False)
    assert first == home / cifar10.ARCHIVE_NAME and first.read_bytes() == data
    assert server.hits == {"/c.tar.gz": 1}

    # The second call neither downloads nor re-hashes the 170 MB file: the sidecar answers.
    def no_rehash(path: Path) -> str:
        raise AssertionError(f"re-hashed {path}")

    monkeypatch.setattr(download_mod, "file_md5", no_rehash)
    second = cifar10.fetch_python_format(home, url=server.url("/c.tar.gz"), md5=md5, progress=False)
    assert second == first
    assert server.hits == {"/c.tar.gz": 1}


def test_fetch_verifies_existing_file_without_sidecar(tmp_path: Path, server: Server, archive: tuple[Path, bytes]) -> None:
    _, data = archive
    home = tmp_path / "home"
    home.mkdir()
    (home / cifar10.ARCHIVE_NAME).write_bytes(data)  # copied in by hand, e.g. when offline
    out = cifar10.fetch_python_format(home, url=server.url("/c.tar.gz"), md5=hashlib.md5(data).hexdigest(), progress=False)
    assert out.read_bytes() == data
    assert server.hits == {}


def test_fetch_redownloads_bad_cached_file(tmp_path: Path, server: Server, archive: tuple[Path, bytes]) -> None:
    _, data = archive
    server.routes["/c.tar.gz"] = serve_bytes(data)
    home = tmp_path / "home"
    home.mkdir()
    (home / cifar10.ARCHIVE_NAME).write_bytes(data[:-10])  # truncated earlier copy
    out = cifar10.fetch_python_format(home, url=server.url("/c.tar.gz"), md5=hashlib.md5(data).hexdigest(), progress=False)
    assert out.read_bytes() == data
    assert server.hits == {"/c.tar.gz": 1}


def test_bad_checksum(tmp_path: Path, server: Server, archive: tuple[Path, bytes]) -> None:
    _, data = archive
    server.routes["/c.tar.gz"] = serve_bytes(data)
    wrong = "0" * 32
    dest = tmp_path / "dl" / cifar10.ARCHIVE_NAME
    with pytest.raises(DownloadError) as err:
        cifar10.download(server.url("/c.tar.gz"), dest, md5=wrong, progress=False)
    msg = str(err.value)
    assert wrong in msg and hashlib.md5(data).hexdigest() in msg and server.url("/c.tar.gz") in msg
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_bad_checksum_through_fetch_leaves_nothing(tmp_path: Path, server: Server, archive: tuple[Path, bytes]) -> None:
    _, data = archive
    server.routes["/c.tar.gz"] = serve_bytes(data)
    home = tmp_path / "home"
    with pytest.raises(DownloadError, match="checksum"):
        cifar10.fetch_python_format(home, url=server.url("/c.tar.gz"), md5="1" * 32, progress=False)
    assert leftovers(home) == []


def test_dropped_connection(tmp_path: Path, server: Server, archive: tuple[Path, bytes]) -> None:
    _, data = archive
    half = data[: len(data) // 2]
    server.routes["/drop"] = serve_truncated(half, claimed=len(data))
    dest = tmp_path / "dl" / cifar10.ARCHIVE_NAME
    with pytest.raises(DownloadError) as err:
        cifar10.download(server.url("/drop"), dest, md5=hashlib.md5(data).hexdigest(), progress=False)
    msg = str(err.value)
    assert "dropped" in msg and f"{len(half):,}" in msg and f"{len(data):,}" in msg
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_short_body_against_expected_size(tmp_path: Path, server: Server, archive: tuple[Path, bytes]) -> None:
    _, data = archive
    server.routes["/c.tar.gz"] = serve_bytes(data)
    dest = tmp_path / "dl" / cifar10.ARCHIVE_NAME
    with pytest.raises(DownloadError, match=f"{len(data) + 1:,}"):
        cifar10.download(server.url("/c.tar.gz"), dest, expected_size=len(data) + 1, progress=False)
    assert leftovers(dest.parent) == []


def test_http_404(tmp_path: Path, server: Server) -> None:
    dest = tmp_path / "dl" / cifar10.ARCHIVE_NAME
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        cifar10.download(server.url("/missing.tar.gz"), dest, progress=False)
    assert server.url("/missing.tar.gz") in str(err.value)
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_unreachable_host_suggests_offline_route(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/{cifar10.ARCHIVE_NAME}"
    home = tmp_path / "home"
    with pytest.raises(DownloadError) as err:
        cifar10.fetch_python_format(home, url=url, md5="2" * 32, progress=False)
    msg = str(err.value)
    assert "CNNLAB_CIFAR10" in msg and url in msg and str(home) in msg
    assert leftovers(home) == []


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def test_read_extracted_folder(tmp_path: Path, fake: FakeCifar) -> None:
    top = tmp_path / "extracted"
    write_folder(top / cifar10._BATCH_DIR, fake.files)
    for path in (top, top / cifar10._BATCH_DIR):  # the parent folder or the batch folder itself
        assert cifar10.is_python_format(path)
        assert_matches(cifar10.read_python_format(path), fake)


def test_reads_python3_protocol2_pickles(tmp_path: Path) -> None:
    """Files re-pickled by Python 3 + numpy 2 (bytes via _codecs.encode) still load."""
    fake = make_fake(np.random.default_rng(1), names=[f"c{i}" for i in range(10)])
    files = {name: pickle.dumps(pickle.loads(data, encoding="bytes"), protocol=2) for name, data in fake.files.items()}
    assert b"_codecs" in files["data_batch_1"]
    folder = write_folder(tmp_path / "py3", files)
    assert_matches(cifar10.read_python_format(folder), fake)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_malicious_pickle_is_refused(tmp_path: Path, fake: FakeCifar, form: str) -> None:
    marker = tmp_path / "pwned"
    files = dict(fake.files)
    files["data_batch_1"] = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    if form == "folder":
        path = write_folder(tmp_path / "evil", files)
    else:
        path = tmp_path / "evil.tar.gz"
        write_archive(path, files)
    with pytest.raises(DataError) as err:
        cifar10.read_python_format(path)
    msg = str(err.value)
    assert "data_batch_1" in msg and "system" in msg
    assert not marker.exists()


def test_truncated_archive(tmp_path: Path, archive: tuple[Path, bytes]) -> None:
    _, data = archive
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError) as err:
        cifar10.read_python_format(bad)
    assert str(bad) in str(err.value)


def test_garbage_and_missing_paths(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a tarball" * 10)
    assert not cifar10.is_python_format(junk)
    assert not cifar10.is_python_format(tmp_path / "nope")
    assert not cifar10.is_python_format(tmp_path)  # a folder without data_batch_1
    with pytest.raises(DataError, match="junk.tar.gz"):
        cifar10.read_python_format(junk)
    with pytest.raises(DataError, match="nope"):
        cifar10.read_python_format(tmp_path / "nope")


def test_other_archive_is_not_python_format(tmp_path: Path) -> None:
    other = tmp_path / "images.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        info = tarfile.TarInfo("train/cat/0001.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"jpg"))
    assert not cifar10.is_python_format(other)


def test_bad_labels_named(tmp_path: Path, fake: FakeCifar) -> None:
    files = dict(fake.files)
    x = np.zeros((1, 3072), dtype=np.uint8)
    files["test_batch"] = py2_pickle({b"data": x, b"labels": [10]})
    with pytest.raises(DataError, match=r"test_batch: label 10 is outside 0\.\.9"):
        cifar10.read_python_format(write_folder(tmp_path / "f", files))


def test_cnnlab_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path))
    assert cifar10.cnnlab_home() == tmp_path
    monkeypatch.delenv("CNNLAB_HOME")
    assert cifar10.cnnlab_home() == Path.home() / ".cache" / "cnnlab"
