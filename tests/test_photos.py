"""The photo-collection layer (facediag.edge.photos): suffix policy, labelled sets, the cropper."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from facediag.edge.errors import ConfigError
from facediag.edge.photos import (
    IMAGE_SUFFIXES,
    LabelledPhoto,
    PhotoCropper,
    PhotoSetError,
    is_image_file,
    list_images,
    list_photo_candidates,
    read_labelled,
    read_labelled_csv,
    read_labelled_folder,
)
from tests.conftest import fixture_path

YUNET = "models/face_detection_yunet_2026may.onnx"


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Photos in every case, hidden files and folders, text files, a suffix-less scan."""
    for name in ("a.jpg", "B.JPG", "c.Png", "d.jpeg", "e.TIFF", "notes.txt", "labels.csv", "subject01.glasses",
                 ".hidden.jpg", "._a.jpg", "sub/f.webp", "sub/readme.md", ".git/g.jpg", "sub/.thumbs/h.png"):
        _touch(tmp_path / name)
    (tmp_path / "folder.jpg").mkdir()  # a folder with an image suffix is not an image
    return tmp_path


def test_suffix_policy_is_case_insensitive_and_skips_hidden_and_non_images(mixed: Path) -> None:
    assert [p.name for p in list_images(mixed)] == ["B.JPG", "a.jpg", "c.Png", "d.jpeg", "e.TIFF"]
    assert [p.relative_to(mixed).as_posix() for p in list_images(mixed, recursive=True)] == [
        "B.JPG", "a.jpg", "c.Png", "d.jpeg", "e.TIFF", "sub/f.webp",
    ]
    assert is_image_file(mixed / "B.JPG") and not is_image_file(mixed / ".hidden.jpg")
    assert not is_image_file(mixed / "folder.jpg") and not is_image_file(mixed / "notes.txt")
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)
    with pytest.raises(PhotoSetError, match="not a folder"):
        list_images(mixed / "a.jpg")


def test_permissive_listing_for_crop_keeps_unknown_suffixes(mixed: Path) -> None:
    got = [p.relative_to(mixed).as_posix() for p in list_photo_candidates(mixed, exclude_names=("d.jpeg",))]
    assert got == ["B.JPG", "a.jpg", "c.Png", "e.TIFF", "sub/f.webp", "subject01.glasses"]
    assert list_photo_candidates(mixed / "a.jpg") == [mixed / "a.jpg"]
    with pytest.raises(PhotoSetError, match="no such folder"):
        list_photo_candidates(mixed / "nowhere")


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_labelled_csv_reads_rows_in_order_with_default_split(tmp_path: Path) -> None:
    images = tmp_path / "img"
    _touch(images / "x.JPG")
    _touch(images / "sub" / "y.png")
    rows = read_labelled_csv(_csv(tmp_path, "image,label,split\nx.JPG,pale,TEST\nsub/y.png,healthy,\n"), images)
    assert rows == [
        LabelledPhoto(images / "x.JPG", "pale", "test", where="labels.csv line 2", name="x.JPG"),
        LabelledPhoto(images / "sub" / "y.png", "healthy", "train", where="labels.csv line 3", name="sub/y.png"),
    ]
    # Without a split column every row is train; the BOM some spreadsheets write is ignored.
    no_split = read_labelled_csv(_csv(tmp_path, "\ufeffimage,label\nx.JPG,pale\n"), images)
    assert [(r.label, r.split) for r in no_split] == [("pale", "train")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,split\nx.jpg,train\n", r"header must name the columns image,label\[,split\]; missing label"),
        ("img,lab\nx.jpg,pale\n", "missing image, label"),
        ("image,label,split\nx.jpg,pale,train\nx.jpg,pale,dev\n", r"labels.csv line 3: unknown split 'dev' for x.jpg"),
        ("image,label,split\nx.jpg,pale,train\nnope.jpg,pale,test\n", r"labels.csv line 3: image nope.jpg not found under"),
        ("image,label\nx.jpg,\n", "labels.csv line 2: empty image or label"),
        ("image,label\n", "no rows"),
    ],
)
def test_labelled_csv_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    images = tmp_path / "img"
    _touch(images / "x.jpg")
    with pytest.raises(PhotoSetError, match=message):
        read_labelled_csv(_csv(tmp_path, text), images)


def test_labelled_csv_missing_paths_and_unlabelled_rows(tmp_path: Path) -> None:
    images = tmp_path / "img"
    _touch(images / "x.jpg")
    with pytest.raises(PhotoSetError, match="--csv .*: no such file"):
        read_labelled_csv(tmp_path / "none.csv", images)
    with pytest.raises(PhotoSetError, match="--images .*: not a folder"):
        read_labelled_csv(_csv(tmp_path, "image,label\nx.jpg,a\n"), tmp_path / "none")
    rows = read_labelled_csv(_csv(tmp_path, "image,label\nx.jpg,\n"), images, require_label=False)
    assert rows[0].label == ""


def test_labelled_folder_layouts_and_errors(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for name in ("healthy/a.JPG", "healthy/.b.jpg", "healthy/notes.txt", "pale/c.png", ".cache/d.jpg"):
        _touch(flat / name)
    got = read_labelled_folder(flat)
    assert [(p.name, p.label, p.split) for p in got] == [("healthy/a.JPG", "healthy", "train"), ("pale/c.png", "pale", "train")]
    split = tmp_path / "split"
    for name in ("train/healthy/a.jpg", "test/healthy/b.jpg", "val/pale/c.jpg"):
        _touch(split / name)
    assert [(p.name, p.label, p.split) for p in read_labelled_folder(split)] == [
        ("test/healthy/b.jpg", "healthy", "test"), ("train/healthy/a.jpg", "healthy", "train"),
        ("val/pale/c.jpg", "pale", "val"),
    ]
    _touch(split / "pale" / "d.jpg")
    with pytest.raises(PhotoSetError, match=r"has split folders \(test, train, val\) and other folders \(pale\)"):
        read_labelled_folder(split)
    _touch(tmp_path / "empty" / "healthy" / "notes.txt")
    with pytest.raises(PhotoSetError, match="no images found"):
        read_labelled_folder(tmp_path / "empty")
    with pytest.raises(PhotoSetError, match="not a folder"):
        read_labelled_folder(tmp_path / "missing")


def test_read_labelled_needs_exactly_one_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="either --data DIR or --csv"):
        read_labelled()
    with pytest.raises(ConfigError, match="either --data DIR or --csv"):
        read_labelled(folder=tmp_path, csv_path=tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="--csv needs --images"):
        read_labelled(csv_path=tmp_path / "x.csv")


def test_command_line_splits_are_the_layers_splits() -> None:
    from facediag.commands import _args
    from facediag.edge import photos

    assert _args.SPLITS == photos.SPLITS


def test_calibration_sources_use_the_same_policy(tmp_path: Path) -> None:
    from facediag.calibration.calibration_set import list_sources

    for name in ("healthy/a.JPG", "healthy/.b.jpg", "pale/c.png", "pale/notes.txt"):
        _touch(tmp_path / "classes" / name)
    assert [(s.name, s.label) for s in list_sources(tmp_path / "classes")] == [("healthy/a.JPG", "healthy"), ("pale/c.png", "pale")]
    _touch(tmp_path / "top" / "x.PNG")
    _touch(tmp_path / "top" / "sub" / "y.png")
    assert [(s.name, s.label) for s in list_sources(tmp_path / "top")] == [("x.PNG", None)]
    # A calibration CSV may tag rows with any split name; rows of other splits are not checked.
    csv_path = _csv(tmp_path, "image,label,split\nhealthy/a.JPG,healthy,train\npale/c.png,,Calib\ngone.jpg,pale,test\n")
    assert [(s.name, s.label) for s in list_sources(tmp_path / "classes", csv_path, split="calib")] == [("pale/c.png", None)]
    with pytest.raises(PhotoSetError, match="no rows with split 'val'"):
        list_sources(tmp_path / "classes", csv_path, split="val")
    with pytest.raises(PhotoSetError, match="line 4: image gone.jpg not found"):
        list_sources(tmp_path / "classes", csv_path)
    # Training's reader knows only train/val/test.
    with pytest.raises(PhotoSetError, match="line 2: unknown split 'calib'"):
        read_labelled_csv(_csv(tmp_path, "image,label,split\nhealthy/a.JPG,healthy,calib\n"), tmp_path / "classes")


def test_cropper_takes_aligned_crops_without_a_detector_and_refuses_other_sizes() -> None:
    from facediag.edge.face.contract import PreprocessContract

    contract = PreprocessContract("arcface_112x112")
    crop = np.full((112, 112, 3), 90, np.uint8)
    auto = PhotoCropper(contract, aligned="auto")
    out = auto.crop(crop)
    assert out.crop is crop and out.aligned_input and out.reasons == []
    assert auto.detector is None and auto.description == {"aligned": "auto"}  # no detector was made
    refused = PhotoCropper(contract, aligned="yes").crop(np.zeros((100, 80, 3), np.uint8))
    assert refused.crop is None and refused.reasons == ["not an aligned 112x112 crop (80x100)"]
    with pytest.raises(ConfigError, match="aligned must be one of"):
        PhotoCropper(contract, aligned="maybe")


def test_cropper_gives_the_photo_front_ends_crop(tmp_path: Path) -> None:
    """Training, calibration and evaluation crops are PhotoFrontEnd's crops, tight CelebA photos included."""
    from facediag.calibration.calibration_set import Cropper
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.face.detector import make_detector
    from facediag.edge.face.imageio import load_image
    from facediag.edge.face.pipeline import PhotoFrontEnd
    from facediag.training.crop_cache import FaceCropper

    detector = make_detector("yunet", fixture_path(YUNET))
    contract = PreprocessContract("arcface_112x112")
    photo = tmp_path / "FACE.JPG"
    shutil.copy(fixture_path("faces/celeba/000001.jpg"), photo)
    image = load_image(photo)
    expected = PhotoFrontEnd(detector, contract).process(image).crop
    assert expected is not None and expected.shape == (112, 112, 3)
    for cropper in (PhotoCropper(contract, detector), FaceCropper(detector, contract), Cropper(contract, detector)):
        out = cropper.crop(image)
        assert out.crop is not None and not out.aligned_input
        np.testing.assert_array_equal(out.crop, expected)
    used = Cropper(contract, detector)
    used.crop(image)
    assert used.description["detector"] == "yunet" and used.description["policy"]["pad"] == PhotoFrontEnd.policy()["pad"]
    blank = PhotoCropper(contract, detector).crop(np.full((300, 300, 3), 128, np.uint8))
    assert blank.crop is None and blank.reasons == ["no face found"]


def test_shared_command_line_groups_parse_into_library_objects(tmp_path: Path) -> None:
    import argparse

    from facediag.commands import _args
    from facediag.edge.config import StationConfig

    parser = argparse.ArgumentParser()
    _args.add_bundle_argument(parser, optional=True)
    _args.add_config_argument(parser)
    data = _args.add_labelled_photo_arguments(parser)
    _args.add_split_argument(data)
    _touch(tmp_path / "photos" / "healthy" / "a.jpg")
    station = Path(__file__).resolve().parents[1] / "systemd" / "station.toml"
    args = parser.parse_args(["--config", str(station), "--data", str(tmp_path / "photos"), "--split", "val"])
    assert args.bundle is None and args.split == "val"
    assert isinstance(_args.station_config_from_args(args), StationConfig)
    assert [p.name for p in _args.labelled_photos_from_args(args)] == ["healthy/a.jpg"]
    assert _args.labelled_photo_source(args) == {"csv": None, "images": None, "folder": str(tmp_path / "photos")}
    with pytest.raises(SystemExit):  # argparse refuses a split the photo-collection layer does not know
        parser.parse_args(["--split", "dev"])
    no_config = parser.parse_args([str(tmp_path / "bundle")])
    assert no_config.bundle == tmp_path / "bundle" and _args.station_config_from_args(no_config) is None
