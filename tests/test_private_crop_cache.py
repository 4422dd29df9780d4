"""The training crop cache holds face crops: private folders (0700) and files (0600), and it can be off."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import fixture_path


@pytest.fixture(scope="module")
def cropper():
    from facediag.edge.face.contract import PreprocessContract
    from facediag.training.crop_cache import make_cropper

    return make_cropper("yunet", fixture_path("models/face_detection_yunet_2026may.onnx"),
                        PreprocessContract(template="arcface_112x112"))


def test_cache_folders_and_files_are_private(tmp_path, cropper):
    from facediag.training.crop_cache import CropCache

    old = os.umask(0o022)  # a usual login umask: without the fix everything would be world-readable
    try:
        root = tmp_path / "shared" / "crops"
        root.mkdir(parents=True, mode=0o755)
        cache = CropCache(root, cropper)
        crop, reasons = cache.get(fixture_path("faces/wild/img1.jpg"))
    finally:
        os.umask(old)
    assert crop is not None, reasons
    entries = [p for p in root.rglob("*") if p.is_file()]
    assert len(entries) == 1 and entries[0].suffix == ".npz"
    assert stat.S_IMODE(entries[0].stat().st_mode) == 0o600
    for folder in (root, entries[0].parent, entries[0].parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    again = CropCache(root, cropper)
    assert again.get(fixture_path("faces/wild/img1.jpg"))[0] is not None and again.hits == 1


def test_cache_can_be_turned_off(tmp_path, cropper, monkeypatch):
    from facediag.training.crop_cache import CropCache

    monkeypatch.setenv("HOME", str(tmp_path))
    cache = CropCache(None, cropper)
    crop, _ = cache.get(fixture_path("faces/wild/img1.jpg"))
    assert crop is not None and cache.misses == 1
    assert not [p for p in Path(tmp_path).rglob("*") if p.is_file()]
