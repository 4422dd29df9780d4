"""Issue 11 item 6: one image-decoding policy. Every decoder error is an ImageLoadError (never a
ValueError or a traceback), only JPEG/PNG/BMP/TIFF/WebP (+ GIF and PPM/PGM, which the project's own
photo sets use) are decoded, symlinks out of a folder are refused, and ``facediag crop`` keeps the
whole source name and survives any file-name encoding. The fuzz part mutates real photo files
(Hypothesis, a bounded number of examples)."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from facediag.edge.errors import ImageLoadError
from facediag.edge.face.imageio import load_image
from tests.conftest import fixture_path

pytestmark = pytest.mark.faults


def _png_with_a_text_bomb(path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (20 * 2**20), zip=True)  # inflates past Pillow's text-chunk limit
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("name, content", [
    ("maxval0.ppm", b"P6\n2 2\n0\n" + b"\0" * 12),
    ("maxval_huge.pgm", b"P5\n2 2\n99999\n" + b"\0" * 8),
    ("eps_named.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"),
    ("icon.jpg", None),  # an .ico named .jpg: a format outside the allow-list
])
def test_decoder_errors_and_formats_outside_the_allow_list_are_image_load_errors(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        Image.new("RGB", (16, 16)).save(path, format="ICO")
    else:
        path.write_bytes(content)
    with pytest.raises(ImageLoadError):
        load_image(path)


def test_a_png_text_chunk_bomb_is_an_image_load_error(tmp_path):
    with pytest.raises(ImageLoadError):
        load_image(_png_with_a_text_bomb(tmp_path / "bomb.png"))


def test_allowed_formats_still_decode(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    for fmt, suffix in (("JPEG", ".jpg"), ("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif"), ("WEBP", ".webp"),
                        ("PPM", ".ppm")):
        p = tmp_path / f"x{suffix}"
        Image.fromarray(rgb).save(p, format=fmt)
        assert load_image(p).shape == (20, 30, 3), fmt
    assert load_image(fixture_path("faces/yale/subject01.happy")).ndim == 3  # Yale faces are GIF


def test_symlinks_out_of_the_folder_are_refused(tmp_path):
    from facediag.edge.photos import list_images, list_photo_candidates

    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(fixture_path("faces/wild/img1.jpg"), outside / "secret.jpg")
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(fixture_path("faces/wild/img1.jpg"), folder / "a.jpg")
    (folder / "inside_link.jpg").symlink_to(folder / "a.jpg")
    (folder / "leak.jpg").symlink_to(outside / "secret.jpg")
    (folder / "dirlink").symlink_to(outside, target_is_directory=True)
    assert [p.name for p in list_images(folder, contained=True)] == ["a.jpg", "inside_link.jpg"]
    assert sorted(p.name for p in list_photo_candidates(folder, contained=True)) == ["a.jpg", "inside_link.jpg"]
    # the station's folder source lists contained: the leaking link is never read
    from facediag.edge.capture.image_folder_source import ImageFolderSource

    source = ImageFolderSource(folder)
    source.open()
    assert sorted(p.name for p in source._files) == ["a.jpg", "inside_link.jpg"]
    # training/evaluation sets of symlinks into a photo collection stay allowed (not contained)
    assert "leak.jpg" in [p.name for p in list_images(folder)]


_SEEDS = {}


def _seed_files() -> dict[str, bytes]:
    if not _SEEDS:
        img = load_image(fixture_path("faces/wild/img1.jpg"))[:64, :64, ::-1]
        for fmt in ("JPEG", "PNG", "PPM", "GIF", "BMP", "TIFF", "WEBP"):
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(img)).save(buf, format=fmt)
            _SEEDS[fmt] = buf.getvalue()
    return _SEEDS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["JPEG", "PNG", "PPM", "GIF", "BMP", "TIFF", "WEBP"]),
       edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(1, 4000)))
def test_fuzzed_photos_decode_or_fail_cleanly(tmp_path_factory, fmt, edits, cut):
    data = bytearray(_seed_files()[fmt])
    for pos, value in edits:  # mostly in the header, where the parsers are
        if pos < len(data):
            data[pos] = value
    if cut is not None:
        data = data[:cut]
    path = tmp_path_factory.mktemp("fuzz") / "photo"
    path.write_bytes(bytes(data))
    try:
        out = load_image(path, max_pixels=4_000_000)
    except ImageLoadError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


def _manifest(dst: Path) -> list[dict[str, str]]:
    with open(dst / "manifest.csv", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return list(csv.DictReader(fh))


def test_crop_keeps_whole_names_skips_bad_files_and_survives_any_name_encoding(tmp_path):
    from facediag.edge.face.batch_crop import crop_folder
    from facediag.edge.face.detector import make_detector
    from facediag.edge.face.pipeline import FaceFrontEnd

    src = tmp_path / "src"
    src.mkdir()
    for name in ("subject01.glasses", "subject01.happy"):
        shutil.copy(fixture_path(f"faces/yale/{name}"), src / name)
    shutil.copy(fixture_path("faces/wild/img1.jpg"), src / "a.jpg")
    Image.open(fixture_path("faces/wild/img1.jpg")).save(src / "a.png")
    (src / "maxval.ppm").write_bytes(b"P6\n2 2\n0\n" + b"\0" * 12)
    _png_with_a_text_bomb(src / "bomb.png")
    odd = os.fsencode(src) + b"/caf\xe9.jpg"  # Latin-1, not UTF-8
    shutil.copy(fixture_path("faces/wild/img1.jpg"), os.fsdecode(odd))
    front = FaceFrontEnd(make_detector("yunet", fixture_path("models/face_detection_yunet_2026may.onnx")),
                         _contract())
    dst = tmp_path / "crops"
    summary = crop_folder(src, dst, front, {"test": 1})
    rows = _manifest(dst)
    assert len(rows) == 7 and len({r["source"] for r in rows}) == 7  # one row per source file
    ok = {r["source"]: r["output"] for r in rows if r["status"] == "ok"}
    assert summary.done == len(ok) and summary.skipped == 2
    assert len(set(ok.values())) == len(ok), "two photos share a crop"
    assert ok["subject01.glasses"] == "subject01.glasses.png" and ok["subject01.happy"] == "subject01.happy.png"
    assert ok["a.jpg"] == "a.jpg.png" and ok["a.png"] == "a.png.png"
    assert all((dst / out).is_file() for out in ok.values())
    assert os.fsdecode(b"caf\xe9.jpg") in ok
    # a re-run does nothing and dies on nothing
    again = crop_folder(src, dst, front, {"test": 1})
    assert again.done == 0 and again.already_done == 7


def _contract():
    from facediag.edge.face.contract import PreprocessContract

    return PreprocessContract(template="arcface_112x112")


def test_the_folder_source_warns_once_per_bad_file_and_refuses_station_sized_pixel_bombs(tmp_path, caplog):
    import logging

    from facediag.edge.capture.image_folder_source import ImageFolderSource

    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(fixture_path("faces/wild/img1.jpg"), folder / "a.jpg")
    (folder / "b.ppm").write_bytes(b"P6\n2 2\n0\n" + b"\0" * 12)
    Image.new("L", (4200, 4200)).save(folder / "c.png")  # 17.6 MP: over the station's 16 MP limit
    source = ImageFolderSource(folder, loop=True)
    source.open()
    with caplog.at_level(logging.WARNING):
        frames = [source.read() for _ in range(30)]  # ten loops over the folder
    assert all(f is not None and f.shape[2] == 3 for f in frames)
    warnings = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert len(warnings) == 2 and sorted(p.name for p in source.skipped) == ["b.ppm", "c.png"]
    assert any("megapixels" in r.getMessage() for r in warnings)
