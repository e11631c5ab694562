"""Archives are untrusted: member size, count, sparse members and zip ratios are capped; running out
of memory while loading is one line."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

import cnnlab.data.folder as folder
from cnnlab.cli.main import main
from cnnlab.data.sources import load_source
from cnnlab.errors import DataError


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _tar_with(path, members):
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _good_members():
    return [(f"{c}/{i}.png", _png()) for c in ("a", "b") for i in range(3)]


def test_a_sparse_tar_member_declaring_100_gb_is_refused(tmp_path):
    path = _tar_with(tmp_path / "d.tar", _good_members())
    # Append a GNU sparse member whose header declares 100 GB (a few hundred bytes on disk).
    info = tarfile.TarInfo("a/huge.png")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 0
    with tarfile.open(path, "a", format=tarfile.GNU_FORMAT) as tf:
        buf = info.tobuf(tarfile.GNU_FORMAT)
        block = bytearray(buf[:512])
        # realsize field of the old GNU sparse header (offset 483, 12 octal bytes): 100 GB
        block[483:495] = b"%011o\0" % (100 * 1024 ** 3)
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
        tf.fileobj.write(bytes(block))
        tf.offset += 512
    with pytest.raises(DataError, match="sparse tar member"):
        load_source(path)


def test_a_member_over_the_size_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(folder, "MAX_MEMBER_BYTES", 50_000)
    path = _tar_with(tmp_path / "d.tar", _good_members() + [("a/big.png", b"\0" * 60_000)])
    with pytest.raises(DataError, match="exceeds cnnlab's limit of 50,000 bytes"):
        load_source(path)


def test_too_many_members_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(folder, "MAX_MEMBERS", 4)
    path = _tar_with(tmp_path / "d.tar", _good_members())
    with pytest.raises(DataError, match="over 4 members"):
        load_source(path)


def test_a_zip_bomb_member_is_refused(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _good_members():
            zf.writestr(name, data)
        zf.writestr("a/bomb.png", b"\0" * (20 * 1024 * 1024))  # ~20 kB compressed: 1000:1
    with pytest.raises(DataError, match="possible zip bomb"):
        load_source(path)


def test_good_archives_still_load(tmp_path):
    bundle = load_source(_tar_with(tmp_path / "d.tar", _good_members()))
    assert bundle.train.class_names == ["a", "b"] and len(bundle.train) == 6


def test_memory_error_while_loading_is_one_line(tmp_path, monkeypatch, capsys):
    path = _tar_with(tmp_path / "d.tar", _good_members())

    def boom(*a, **k):
        raise MemoryError

    import cnnlab.data.decode as decode

    monkeypatch.setattr(decode, "decode_image", boom)  # the decoder every loader calls (decode_store.py)
    with pytest.raises(DataError, match="out of memory"):
        load_source(path)
    assert main(["data", "inspect", str(path), "--out", str(tmp_path / "insp")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cnnlab: error") or "Traceback" in line]
    assert len(err) == 1 and err[0].startswith("cnnlab: error:") and "out of memory" in err[0]
