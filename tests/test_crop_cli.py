"""`facediag crop` end to end as a real subprocess, on a folder mixing good and bad files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, fixture_path

YUNET = "models/face_detection_yunet_2026may.onnx"


def _facediag(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "facediag", *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO
    )


def _manifest(dst: Path) -> dict[str, dict[str, str]]:
    with open(dst / "manifest.csv", newline="") as fh:
        return {row["source"]: row for row in csv.DictReader(fh)}


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    src = tmp_path / "photos"
    (src / "healthy").mkdir(parents=True)
    (src / "pale").mkdir()
    shutil.copy(fixture_path("faces/wild/img1.jpg"), src / "healthy" / "a.jpg")
    shutil.copy(fixture_path("faces/wild/couple.jpg"), src / "healthy" / "couple.jpg")
    shutil.copy(fixture_path("faces/yale/subject01.happy"), src / "pale" / "subject01.happy")
    (src / "pale" / "empty.jpg").write_bytes(b"")
    (src / "pale" / "text.jpg").write_text("not an image")
    data = fixture_path("faces/wild/img2.jpg").read_bytes()
    (src / "pale" / "truncated.jpg").write_bytes(data[: len(data) // 4])
    skdata = pytest.importorskip("skimage.data", reason="scikit-image ships the no-face photo used here")
    from PIL import Image

    Image.fromarray(skdata.coffee()).save(src / "pale" / "coffee.png")
    return src


def test_crop_folder_reports_bad_files_and_resumes(photo_folder: Path, tmp_path: Path) -> None:
    dst = tmp_path / "crops"
    model = str(fixture_path(YUNET))
    proc = _facediag("crop", str(photo_folder), str(dst), "--detector-model", model)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cropped"] == 3 and summary["skipped"] == 4

    rows = _manifest(dst)
    assert rows["healthy/a.jpg"]["status"] == "ok"
    assert (dst / "healthy" / "a.jpg.png").is_file() and (dst / "pale" / "subject01.happy.png").is_file()
    assert len(json.loads(rows["healthy/a.jpg"]["landmarks"])) == 5
    assert "2 faces found; kept the largest" in rows["healthy/couple.jpg"]["reason"]
    assert "empty (0 bytes)" in rows["pale/empty.jpg"]["reason"]
    assert "not a readable image" in rows["pale/text.jpg"]["reason"]
    assert "truncated or corrupt" in rows["pale/truncated.jpg"]["reason"]
    assert "no face found" in rows["pale/coffee.png"]["reason"]
    assert all(len(r["source_sha256"]) == 64 for r in rows.values())
    import cv2

    crop = cv2.imread(str(dst / "healthy" / "a.jpg.png"))
    assert crop.shape == (112, 112, 3)

    # A re-run does nothing new; a new photo is the only work done.
    shutil.copy(fixture_path("faces/wild/img3.jpg"), photo_folder / "healthy" / "b.jpg")
    proc = _facediag("crop", str(photo_folder), str(dst), "--detector-model", model)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == {**summary, "cropped": 1, "skipped": 0, "already_done": 7}
    assert len(_manifest(dst)) == 8

    # Other settings for the same destination are refused (exit 78, configuration error).
    proc = _facediag("crop", str(photo_folder), str(dst), "--detector-model", model, "--template", "facenet_160x160")
    assert proc.returncode == 78
    assert "other crop settings" in proc.stderr


def test_crop_of_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    proc = _facediag("crop", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "no such folder" in proc.stderr


def test_yunet_without_model_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = _facediag("crop", str(tmp_path), str(tmp_path / "out"), "--detector", "yunet")
    assert proc.returncode == 78
    assert "facediag models fetch yunet" in proc.stderr
