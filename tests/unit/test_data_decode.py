"""decode.py: every Pillow colour mode to RGB uint8, EXIF orientation, resize + centre crop,
and clear errors (naming the file) for corrupt, truncated, empty, non-image and bomb files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import decode
from cnnlab.data.decode import decode_image, is_image_name, resize_center_crop
from cnnlab.errors import DataError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise_png(size: int = 48, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A random RGB image: incompressible, so cutting its file in half loses pixel data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), fmt)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


# --------------------------------------------------------------------------- colour modes


def test_rgb_png_is_returned_exactly(image_bytes) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = decode_image(image_bytes(Image.fromarray(pixels)))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, pixels)


def test_palette_without_transparency_expands_through_palette() -> None:
    img = Image.new("P", (4, 3), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    img.putpixel((1, 2), 1)
    out = decode_image(encode(img))
    assert out.shape == (3, 4, 3)
    assert out[2, 1].tolist() == [200, 100, 50]
    assert out[0, 0].tolist() == [10, 20, 30]
    assert (out.reshape(-1, 3) == [10, 20, 30]).all(axis=1).sum() == 11


def test_palette_with_transparency_composites_on_white() -> None:
    img = Image.new("P", (3, 2), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    img.putpixel((2, 1), 1)
    data = encode(img, transparency=0)  # index 0 is fully transparent
    assert "transparency" in Image.open(io.BytesIO(data)).info
    out = decode_image(data)
    assert out[0, 0].tolist() == [255, 255, 255]  # the transparent index -> white, not (10, 20, 30)
    assert out[1, 2].tolist() == [200, 100, 50]


def test_gif_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 0)
    path = tmp_path / "t.gif"
    img.save(path, transparency=0)
    out = decode_image(path)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[3, 3].tolist() == [0, 128, 0]


def test_grayscale_and_bilevel_copy_gray_to_rgb() -> None:
    gray = np.array([[0, 77, 255]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(gray, mode="L")))
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    bi = Image.new("1", (2, 1), 0)
    bi.putpixel((0, 0), 1)
    assert decode_image(encode(bi)).tolist() == [[[255, 255, 255], [0, 0, 0]]]


def test_rgba_is_composited_on_white() -> None:
    img = Image.new("RGBA", (3, 1), (10, 20, 30, 0))  # fully transparent
    img.putpixel((1, 0), (10, 20, 30, 255))  # opaque
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black over white -> mid gray
    out = decode_image(encode(img))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [10, 20, 30]
    assert all(126 <= v <= 128 for v in out[0, 2])


def test_gray_with_alpha_is_composited_on_white() -> None:
    img = Image.new("LA", (2, 1), (40, 0))
    img.putpixel((1, 0), (40, 255))
    out = decode_image(encode(img))
    assert out.tolist() == [[[255, 255, 255], [40, 40, 40]]]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_is_scaled_by_257(fmt: str) -> None:
    img = Image.new("I;16", (4, 1), 0)
    for x, v in enumerate([0, 257 * 100, 1000, 65535]):
        img.putpixel((x, 0), v)
    data = encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 100, 4, 255]  # 1000 / 257 = 3.9 -> 4
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_dark_16_bit_image_stays_dark() -> None:
    """A 16-bit image whose values are all small is dark: value / 257 whatever its maximum."""
    img = Image.new("I;16", (2, 1), 0)
    img.putpixel((0, 0), 200)
    img.putpixel((1, 0), 255)
    out = decode_image(encode(img))
    assert out[0, :, 0].tolist() == [1, 1]


def test_float_image_in_unit_range_is_scaled() -> None:
    img = Image.new("F", (3, 1), 0.0)
    img.putpixel((1, 0), 0.5)
    img.putpixel((2, 0), 1.0)
    out = decode_image(encode(img, "TIFF"))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_uses_pillows_conversion() -> None:
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (0, 255, 255, 0))  # full magenta + yellow = red
    cmyk.putpixel((1, 0), (51, 102, 0, 0))
    cmyk.putpixel((2, 0), (0, 0, 0, 128))  # half black
    out = decode_image(encode(cmyk, "TIFF"))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [204, 153, 255]
    assert all(126 <= v <= 128 for v in out[0, 2])
    # and it is exactly Pillow's conversion on arbitrary CMYK data
    rnd = Image.frombytes("CMYK", (6, 5), np.random.default_rng(2).integers(0, 256, 120, dtype=np.uint8).tobytes())
    np.testing.assert_array_equal(decode_image(encode(rnd, "TIFF")), np.asarray(rnd.convert("RGB")))


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    data = encode(cmyk, "JPEG", quality=100)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    assert out.shape == (16, 16, 3)
    r, g, b = out[8, 8].astype(int)
    assert r > 240 and g < 15 and b < 15


# --------------------------------------------------------------------------- EXIF orientation


def _half_red_half_blue(w: int = 20, h: int = 10) -> Image.Image:
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : w // 2] = RED
    a[:, w // 2 :] = BLUE
    return Image.fromarray(a)


def _jpeg_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(_half_red_half_blue(), "JPEG", quality=95, exif=exif.tobytes())


def _is_red(p: np.ndarray) -> bool:
    return p[0] > 180 and p[2] < 80


def _is_blue(p: np.ndarray) -> bool:
    return p[2] > 180 and p[0] < 80


def test_exif_orientation_6_rotates_clockwise() -> None:
    out = decode_image(_jpeg_with_orientation(6))
    assert out.shape == (20, 10, 3)  # a 20 x 10 (w x h) photo taken sideways comes out 10 wide, 20 tall
    # rotated 90 degrees clockwise: the stored left (red) half is now on top
    assert _is_red(out[2, 5]) and _is_blue(out[17, 5])


def test_exif_orientation_8_rotates_counter_clockwise() -> None:
    out = decode_image(_jpeg_with_orientation(8))
    assert out.shape == (20, 10, 3)
    assert _is_blue(out[2, 5]) and _is_red(out[17, 5])


def test_no_orientation_tag_keeps_the_stored_layout() -> None:
    out = decode_image(_jpeg_with_orientation(1))
    assert out.shape == (10, 20, 3)
    assert _is_red(out[5, 2]) and _is_blue(out[5, 17])


# --------------------------------------------------------------------------- resizing


def _stripes(vertical: bool) -> bytes:
    """40 x 20 (or 20 x 40) image of four 10-pixel stripes: red, green, blue, white."""
    a = np.zeros((20, 40, 3), dtype=np.uint8)
    for k, colour in enumerate([RED, GREEN, BLUE, WHITE]):
        a[:, 10 * k : 10 * (k + 1)] = colour
    if not vertical:
        a = a.transpose(1, 0, 2).copy()  # 20 wide, 40 tall: horizontal stripes top to bottom
    return encode(Image.fromarray(a))


def test_resize_keeps_aspect_and_crops_the_centre() -> None:
    out = decode_image(_stripes(vertical=True), 10)
    assert out.shape == (10, 10, 3)
    # Shorter side 20 -> 10, so 40 -> 20 wide, and the middle 10 columns are kept: the green and
    # blue stripes only. Squashing the whole image (no crop) would show red and white too.
    r = out[..., 0].astype(int)
    assert r.max() < 64, "no red or white stripe may survive a centre crop"
    assert (out[:, 1:4, 1] > 200).all() and (out[:, 1:4, 2] < 40).all()  # left: green
    assert (out[:, 6:9, 2] > 200).all() and (out[:, 6:9, 1] < 40).all()  # right: blue


def test_resize_tall_image_crops_top_and_bottom() -> None:
    out = decode_image(_stripes(vertical=False), 10)
    assert out.shape == (10, 10, 3)
    assert out[..., 0].astype(int).max() < 64
    assert (out[1:4, :, 1] > 200).all()  # top rows green
    assert (out[6:9, :, 2] > 200).all()  # bottom rows blue


def test_resize_upscales_small_images_and_keeps_same_size_exactly() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels))
    assert decode_image(data, 24).shape == (24, 24, 3)
    assert decode_image(data).shape == (6, 9, 3)  # no size: as stored
    square = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(square)), 8), square)


def test_resize_center_crop_on_pil_image() -> None:
    img = Image.new("RGB", (30, 12))
    assert resize_center_crop(img, 6).size == (6, 6)
    assert resize_center_crop(img, 12).size == (12, 12)


# --------------------------------------------------------------------------- bad files


def _check_names(exc: pytest.ExceptionInfo[DataError], path: Path) -> str:
    msg = str(exc.value)
    assert str(path) in msg, msg
    return msg


def test_truncated_png_names_the_file(tmp_path: Path) -> None:
    data = noise_png()
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as exc:
        decode_image(path)
    assert "truncated" in _check_names(exc, path)


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    data = noise_png(fmt="JPEG")
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as exc:
        decode_image(path)
    assert "truncated" in _check_names(exc, path)


def test_corrupt_png_data_names_the_file(tmp_path: Path) -> None:
    data = bytearray(noise_png())
    i = data.index(b"IDAT")
    data[i + 20 : i + 60] = b"\xff" * 40  # damage the compressed pixel stream
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as exc:
        decode_image(path)
    assert "corrupt" in _check_names(exc, path)


def test_empty_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(DataError) as exc:
        decode_image(path)
    assert "empty file" in _check_names(exc, path)
    with pytest.raises(DataError, match=r"^member\.png: empty file"):
        decode_image(b"", name="member.png")


def test_text_with_an_image_suffix_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(DataError) as exc:
        decode_image(path)
    assert "not an image" in _check_names(exc, path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.png"
    with pytest.raises(DataError) as exc:
        decode_image(path)
    assert "not found" in _check_names(exc, path)


def test_bytes_errors_use_the_given_name() -> None:
    with pytest.raises(DataError, match=r"^data\.zip:a/b\.png: not an image"):
        decode_image(b"garbage bytes", name="data.zip:a/b.png")


def test_png_header_claiming_a_huge_size_is_a_decompression_bomb(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 10 gigapixels, RGB
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
    path = tmp_path / "bomb.png"
    path.write_bytes(data + png_chunk(b"IEND", b""))
    with pytest.raises(DataError) as exc:
        decode_image(path)
    assert "decompression bomb" in _check_names(exc, path)


def test_max_pixels_module_limit_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 10)).save(path)
    assert decode_image(path).shape == (10, 20, 3)
    monkeypatch.setattr(decode, "MAX_PIXELS", 199)
    with pytest.raises(DataError) as exc:
        decode_image(path)
    msg = _check_names(exc, path)
    assert "decompression bomb" in msg and "20x10" in msg and "199" in msg
    assert decode_image(path, max_pixels=200).shape == (10, 20, 3)  # an explicit limit wins


def test_image_names() -> None:
    assert is_image_name("a/B.JPG") and is_image_name("x.png") and is_image_name("y.webp")
    assert not is_image_name("README.md") and not is_image_name("labels.csv") and not is_image_name("png")
