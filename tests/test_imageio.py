"""Bad and unusual inputs to the photo reader: each gives a clear message or the right pixels."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facediag.edge.errors import ImageLoadError
from facediag.edge.face.imageio import load_image
from tests.conftest import fixture_path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _huge_png(path: Path, side: int = 30000) -> None:
    """A valid 1-bit greyscale PNG of side x side pixels (~100 KB on disk, 900 megapixels decoded)."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty \(0 bytes\)"):
        load_image(p)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a photo\n")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(p)


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = fixture_path("faces/wild/img1.jpg").read_bytes()
    p = tmp_path / "truncated.jpg"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(p)


def test_huge_png_is_refused_before_decoding(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    _huge_png(p)
    assert p.stat().st_size < 2_000_000
    data = p.read_bytes()
    assert struct.unpack(">II", data[16:24]) == (30000, 30000)  # a valid 30000x30000 PNG header
    assert zlib.decompressobj().decompress(data[41:1000])  # with real compressed rows behind it
    with pytest.raises(ImageLoadError, match="refused before decoding, 900 megapixels"):
        load_image(p)


def test_greyscale_gif_becomes_three_equal_channels() -> None:
    img = load_image(fixture_path("faces/yale/subject01.happy"))
    assert img.shape == (243, 320, 3) and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[..., 0] = 255  # red
    arr[:5, :, 3] = 255  # top half opaque, bottom half transparent
    p = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(p)
    img = load_image(p)
    assert img.shape == (10, 10, 3)
    assert tuple(img[0, 0]) == (0, 0, 255)  # BGR red
    assert tuple(img[9, 9]) == (255, 255, 255)


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    with Image.open(p) as im:
        assert im.mode.startswith("I")
    img = load_image(p)
    assert img.dtype == np.uint8
    assert img[0, 0, 0] == 0 and img[-1, -1, 0] == 255
    assert 100 < img[8, 0, 0] < 160  # mid-grey stays mid-grey (clipping would give 255)


def test_exif_rotation_is_honoured(tmp_path: Path) -> None:
    src = Image.open(fixture_path("faces/wild/img1.jpg")).convert("RGB")
    src = src.resize((src.width // 4, src.height // 4))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rotated.jpg"
    src.save(p, exif=exif.tobytes())
    img = load_image(p)
    assert img.shape[:2] == (src.width, src.height)  # width and height swapped: rotated upright
