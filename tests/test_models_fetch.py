"""`facediag models fetch`: the pinned sha256 is enforced (the real download cannot run here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from facediag.edge.errors import ModelFileError
from facediag.edge.models import KNOWN_MODELS, check_sha256, fetch_model
from tests.conftest import fixture_path


def test_fixture_yunet_matches_the_pinned_hash() -> None:
    check_sha256(fixture_path("models/face_detection_yunet_2026may.onnx"), KNOWN_MODELS["yunet"].sha256)


def test_fetch_from_a_mirror_verifies_and_installs(tmp_path: Path) -> None:
    src = fixture_path("models/face_detection_yunet_2026may.onnx")
    out = fetch_model("yunet", tmp_path / "models", url=src.as_uri())
    assert out.name == "face_detection_yunet_2026may.onnx"
    assert out.read_bytes() == src.read_bytes()


def test_fetch_of_a_wrong_file_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(b"not the model")
    dest = tmp_path / "models"
    with pytest.raises(ModelFileError, match="does not match the pinned"):
        fetch_model("yunet", dest, url=wrong.as_uri())
    assert list(dest.iterdir()) == []


def test_unreachable_download_says_how_to_copy_by_hand(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="copy face_detection_yunet_2026may.onnx into"):
        fetch_model("yunet", tmp_path, url=(tmp_path / "missing.onnx").as_uri())


def test_unknown_model_name() -> None:
    with pytest.raises(ModelFileError, match="known models are yunet"):
        fetch_model("retinaface")
