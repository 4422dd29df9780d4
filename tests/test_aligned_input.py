"""Aligned crops from `facediag crop` go into train and evaluate as they are, and are the crops of the photos.

Real components: `facediag crop` run as a subprocess, the YuNet detector, real fixture faces
(GENKI-4K and CelebA tight crops, which take the upscale/pad branch of the photo front-end,
and full-size photos, which take the plain branch), ONNX Runtime for the evaluated bundle.
The reference crops are those of the detecting branch on the original photos.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, fixture_path

YUNET = "models/face_detection_yunet_2026may.onnx"
CLASSES = ("non_smile", "smile")


def _facediag(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "facediag", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/{train,val,test}/{non_smile,smile}/: GENKI 64x64 crops, CelebA 89x109 faces and full-size photos."""
    root = tmp_path_factory.mktemp("photos")
    genki = fixture_path("faces/genki4k")
    celeba = fixture_path("faces/celeba")
    wild = fixture_path("faces/wild")
    for split, source, take in (("train", "train_folder", slice(0, 5)), ("val", "train_folder", slice(-2, None)),
                                ("test", "test_folder", slice(0, 4))):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for f in sorted((genki / source / str(label)).glob("*.jpg"))[take]:
                shutil.copy(f, folder / f.name)
    shutil.copy(celeba / "000001.jpg", root / "train" / "smile" / "celeba1.jpg")
    shutil.copy(celeba / "000002.jpg", root / "test" / "non_smile" / "celeba2.jpg")
    shutil.copy(wild / "img1.jpg", root / "train" / "non_smile" / "wild1.jpg")
    shutil.copy(wild / "img2.jpg", root / "test" / "smile" / "wild2.jpg")
    return root


def _crop(src: Path, dst: Path, template: str) -> dict:
    done = _facediag("crop", str(src), str(dst), "--detector", "yunet", "--detector-model", str(fixture_path(YUNET)),
                     "--template", template)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def crops_112(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("crops") / "arcface"
    summary = _crop(photos, dst, "arcface_112x112")
    assert summary["size"] == "112x112" and summary["cropped"] > 0
    return dst


def _sources_with_crops(crop_dir: Path) -> set[str]:
    with open(crop_dir / "manifest.csv", newline="") as fh:
        return {row["source"] for row in csv.DictReader(fh) if row["status"] == "ok"}


def test_crop_folder_records_its_contract_and_front_end(crops_112: Path) -> None:
    from facediag.edge.crop_folders import PHOTO_FRONT_END, read_crop_folder
    from facediag.edge.face.contract import PreprocessContract

    folder = read_crop_folder(crops_112)
    assert folder is not None
    assert (folder.template, folder.height, folder.width) == ("arcface_112x112", 112, 112)
    assert folder.front_end == PHOTO_FRONT_END
    np.testing.assert_allclose(folder.landmarks, PreprocessContract("arcface_112x112").landmarks, atol=1e-4)
    assert set(folder.outputs) == _sources_with_crops(crops_112)
    assert read_crop_folder(crops_112.parent) is None  # a plain folder is no crop folder


def test_train_crops_of_a_crop_folder_are_bit_identical_to_detect_and_align(photos: Path, crops_112: Path) -> None:
    """training.train's own cropping step on the crop folder and on the photos: the same arrays, split by split."""
    from facediag.edge.face.contract import PreprocessContract
    from facediag.training.data import load_dataset
    from facediag.training.train import TrainConfig, _crop_splits

    contract = PreprocessContract("arcface_112x112")
    got = {}
    for root in (photos, crops_112):
        cfg = TrainConfig(out=Path("unused"), data_dir=root, cache=None, detector="yunet",
                          detector_model=fixture_path(YUNET), progress=False)
        ds = load_dataset(data_dir=root, seed=0)
        splits, detector_name = _crop_splits(ds, contract, cfg)
        names = {sp: [ds.split(sp)[i].name for i in splits[sp][2].kept] for sp in splits}
        got[root] = (splits, names, detector_name)
    (det, det_names, det_name), (ali, ali_names, ali_name) = got[photos], got[crops_112]
    assert det_name == "yunet" and ali_name.startswith("none: aligned crops")
    # What `facediag crop` could not crop is what the detecting path skips, no more, no less.
    all_photos = {p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg")}
    assert all_photos - _sources_with_crops(crops_112) == {
        Path(where).relative_to(photos).as_posix() for sp in det for where, _ in det[sp][2].skipped_items}
    assert set(det) == set(ali) == {"train", "val", "test"}
    for sp in det:
        assert det_names[sp] == ali_names[sp]  # the crop folder's photos keep their source names
        assert det[sp][0].dtype == ali[sp][0].dtype == np.uint8
        np.testing.assert_array_equal(ali[sp][0], det[sp][0])
        np.testing.assert_array_equal(ali[sp][1], det[sp][1])
        assert det[sp][0].shape[0] > 0


def test_csv_naming_the_source_photos_reads_the_crops(photos: Path, crops_112: Path, tmp_path: Path) -> None:
    """`--csv CSV --images CROPS`: the CSV written for the photos works on their crop folder."""
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.face.imageio import load_image
    from facediag.edge.photos import read_labelled_csv
    from facediag.training.data import photo_cropper

    rows = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
    table = tmp_path / "split.csv"
    table.write_text("image,label,split\n" + "".join(f"{r},{r.split('/')[1]},{r.split('/')[0]}\n" for r in rows))
    on_crops = read_labelled_csv(table, crops_112)
    on_photos = read_labelled_csv(table, photos)
    assert [p.name for p in on_photos] == rows
    cropped = _sources_with_crops(crops_112)
    assert [p.name for p in on_crops] == [r for r in rows if r in cropped]  # rows `crop` skipped are left out
    assert all(p.path.name.endswith(".jpg.png") for p in on_crops)
    on_photos = [p for p in on_photos if p.name in cropped]
    contract = PreprocessContract("arcface_112x112")
    aligned = photo_cropper(contract, root=crops_112)
    detecting = photo_cropper(contract, root=photos, detector="yunet", detector_model=fixture_path(YUNET))
    assert aligned.aligned == "yes" and aligned.detector is None and detecting.aligned == "no"
    for a, b in zip(on_crops[:6], on_photos[:6], strict=True):
        out_a, out_b = aligned.crop(load_image(a.path)), detecting.crop(load_image(b.path))
        assert out_a.aligned_input and not out_b.aligned_input
        np.testing.assert_array_equal(out_a.crop, out_b.crop)
    assert aligned.detector is None  # the aligned branch never made a detector


def _bundle(folder: Path) -> None:
    """A real bundle around a hand-made ONNX model: probabilities = softmax(channel means @ W + b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from facediag.edge.bundle import create_bundle
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.hashing import sha256_file

    w = np.array([[0.08, -0.08], [0.0, 0.0], [-0.08, 0.08]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["means"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["means", "W"], ["mm"]),
         helper.make_node("Add", ["mm", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir()
    onnx.save(model, folder / "model.onnx")
    create_bundle(folder, classes=list(CLASSES), healthy_class="non_smile",
                  contract=PreprocessContract("arcface_112x112", colour_order="RGB"), thresholds={"smile": 0.5},
                  fp32_file="model.onnx", fp32_gate={"note": "test"},
                  source_checkpoint={"path": "none", "sha256": sha256_file(folder / "model.onnx")}, creator="test")


def test_evaluate_on_crops_equals_evaluate_on_photos(photos: Path, crops_112: Path, tmp_path: Path) -> None:
    from facediag.cli import main

    _bundle(tmp_path / "bundle")
    reports = {}
    for name, root in (("photos", photos), ("crops", crops_112)):
        out = tmp_path / f"eval-{name}"
        rc = main(["-q", "evaluate", str(tmp_path / "bundle"), "--data", str(root), "--split", "test",
                   "--val-split", "train", "--detector", "yunet", "--detector-model", str(fixture_path(YUNET)),
                   "--no-cache", "--no-progress", "--out", str(out)])
        assert rc == 0
        reports[name] = json.loads((out / "report.json").read_text())
    a, b = reports["photos"], reports["crops"]
    assert a["front_end"] == {"detector": "yunet"}
    assert b["front_end"]["aligned_input"] == "yes" and b["front_end"]["aligned_crops"]["template"] == "arcface_112x112"
    assert a["predictions"] == b["predictions"] and len(a["predictions"]) == 10
    assert a["metrics"] == b["metrics"] and a["thresholds"] == b["thresholds"]
    # compare reads both: the same photos (source names), so the paired test runs.
    assert main(["-q", "compare", str(tmp_path / "eval-photos"), str(tmp_path / "eval-crops")]) == 0


def test_a_crop_folder_for_another_template_is_refused_naming_both(
    photos: Path, crops_112: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from facediag.cli import main
    from facediag.edge.crop_folders import CropFolderMismatch
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.photos import PhotoCropper, read_labelled_folder
    from facediag.training.data import photo_cropper

    narrow = PreprocessContract("sphereface_112x96")
    with pytest.raises(CropFolderMismatch, match=r"arcface_112x112 \(112x112\).*sphereface_112x96 \(96x112\)"):
        photo_cropper(narrow, root=crops_112)
    with pytest.raises(CropFolderMismatch, match="arcface_112x112"):
        photo_cropper(narrow, aligned="yes", root=crops_112)
    # The check belongs to the one cropper, whoever builds it.
    from facediag.edge.crop_folders import read_crop_folder

    folder = read_crop_folder(crops_112)
    assert folder is not None
    with pytest.raises(CropFolderMismatch, match="sphereface_112x96"):
        PhotoCropper(narrow, aligned="yes", crop_folder=folder)
    assert photo_cropper(narrow, aligned="no", root=crops_112, detector="yunet",
                         detector_model=fixture_path(YUNET)).aligned == "no"  # asked to detect again: allowed
    assert read_labelled_folder(crops_112)  # the folder itself is fine
    # The command refuses before scoring anything: a bundle for sphereface_112x96 crops is not needed,
    # the train command with the MobileFaceNet backbone (sphereface_112x96) meets the 112x112 crops.
    caplog.set_level(logging.ERROR)
    rc = main(["-q", "train", "--data", str(crops_112), "--backbone", "mobilefacenet", "--weights",
               str(fixture_path("models/mobilefacenet_112x96_casia.ckpt")), "--out", str(tmp_path / "ck"),
               "--no-cache", "--no-progress"])
    assert rc == 78
    assert "arcface_112x112" in caplog.text and "sphereface_112x96" in caplog.text
    assert not (tmp_path / "ck").exists()


def test_wrong_size_images_with_aligned_yes_are_skipped_with_a_reason(photos: Path) -> None:
    from facediag.edge.face.contract import PreprocessContract
    from facediag.training.crop_cache import CropCache
    from facediag.training.data import photo_cropper

    cropper = photo_cropper(PreprocessContract("arcface_112x112"), aligned="yes", root=photos)
    cs = CropCache(None, cropper).crop_all(sorted((photos / "train" / "smile").glob("*.jpg")), progress=False)
    assert cs.kept == [] and set(cs.skipped) == {"not an aligned 112x112 crop (64x64)", "not an aligned 112x112 crop (89x109)"}
