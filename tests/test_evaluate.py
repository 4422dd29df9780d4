"""Evaluation end to end: the report files, the dense-SIFT baseline, and `facediag evaluate` on real photos.

Real components throughout: GENKI-4K faces from ../shared/fixtures, the YuNet
detector, ONNX Runtime, matplotlib. Expected figures are computed here
independently of the code under test (plain numpy on the same crops).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES, fixture_path

GENKI = FIXTURES / "faces" / "genki4k"
YUNET = "models/face_detection_yunet_2026may.onnx"
MOBILEFACENET = "models/mobilefacenet_112x96_casia.ckpt"
CLASSES = ["non_smile", "smile"]  # GENKI folder 0 = non-smile, 1 = smile


def _strict_json(path: Path) -> dict:
    def no_constants(name: str) -> None:
        raise ValueError(f"{path.name} holds {name}, which is not valid JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)


def _assert_pngs(folder: Path) -> None:
    from PIL import Image

    for name in ("confusion_matrix.png", "roc.png", "reliability.png"):
        path = folder / name
        assert path.is_file() and path.stat().st_size > 1000, name
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
            im.load()  # decodes every pixel; a truncated file raises here


# --------------------------------------------------------------------------------------------- report


def test_report_writes_strict_json_pngs_and_table(tmp_path: Path) -> None:
    from facediag.training.metrics import summarize
    from facediag.training.report import format_table, write_report

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    logits = rng.normal(size=(60, 3)) + 2.0 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # Class "rare" is absent from the labels: its sensitivity/AUC are undefined and must come out as null.
    probs4 = np.concatenate([probs * 0.9, np.full((60, 1), 0.1)], axis=1)
    classes = ["a", "b", "c", "rare"]
    report = {"model_id": "m@123", "split": "test", "thresholds": {"b": 0.3},
              "metrics": summarize(y, probs4, classes, thresholds={"b": 0.3})}
    paths = write_report(tmp_path / "out", report)
    data = _strict_json(paths["report.json"])
    assert data["metrics"]["per_class"]["rare"]["sensitivity"] is None
    assert data["metrics"]["per_class"]["rare"]["auc"] is None
    assert sum(map(sum, data["metrics"]["confusion_matrix"])) == 60
    assert data["metrics"]["top1"] == pytest.approx(float(np.mean(probs4.argmax(1) == y)))
    _assert_pngs(tmp_path / "out")
    table = format_table(data)
    lines = table.splitlines()
    assert any(line.startswith("rare ") and "n/a" in line for line in lines)
    assert f"{100 * data['metrics']['top1']:.1f}%" in table


# --------------------------------------------------------------------------------------------- dense SIFT


def _genki(split_folder: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for label in (0, 1):
        files = sorted((GENKI / split_folder / str(label)).glob("*.jpg"))
        for i in sorted(rng.choice(len(files), per_class, replace=False)):
            img = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
            assert img is not None, files[i]
            crops.append(img)
            labels.append(label)
    return np.stack(crops), np.array(labels)


@pytest.fixture(scope="module")
def genki_model():
    """A dense-SIFT model trained on 500 GENKI-4K training crops, and 300 held-out test crops.

    The 64x64 GENKI crops are used directly (no detection or alignment): dense
    SIFT only needs a fixed-size face, which these tight crops already are.
    A cheaper grid than the default keeps the test quick on two cores.
    """
    if not GENKI.is_dir():
        pytest.skip("needs ../shared/fixtures/faces/genki4k (the shared fixtures are not beside this checkout)")
    from facediag.training.strategies.dsift import GridParams, train_dsift

    x_tr, y_tr = _genki("train_folder", 250, seed=1)
    x_te, y_te = _genki("test_folder", 150, seed=2)
    grid = GridParams(image_size=(64, 64), step=6, patch_sizes=(12,), pyramid=(1, 2))
    model = train_dsift(x_tr, y_tr, CLASSES, seed=0, vocab_size=64, grid=grid, max_vocab_descriptors=20_000)
    return model, x_te, y_te


def test_dsift_learns_smiles_above_chance(genki_model) -> None:  # type: ignore[no-untyped-def]
    from facediag.training.metrics import roc_auc

    model, x_te, y_te = genki_model
    probs = model.predict_proba(x_te)
    assert probs.shape == (300, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    acc = float(np.mean(probs.argmax(axis=1) == y_te))
    auc = roc_auc(y_te == 1, probs[:, 1])
    print(f"dense SIFT on GENKI-4K (500 train / 300 held-out test, 64 words): top-1 {acc:.3f}, AUC {auc:.3f}, "
          f"T {model.temperature:.3g}, C {model.hyperparameters['svm_c']}")
    # Chance is 0.5 (balanced). With 300 test crops, 0.56 is about 2 standard errors above it.
    assert acc > 0.56
    assert auc > 0.60
    assert model.temperature > 0


def test_dsift_save_load_round_trip(genki_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from facediag.training.checkpoint import read_meta
    from facediag.training.strategies.dsift import is_dsift_checkpoint, load_dsift

    model, x_te, _ = genki_model
    # An undefined metric (NaN) must not make checkpoint.json invalid JSON.
    model = dataclasses.replace(model, metrics={**model.metrics, "undefined": float("nan")})
    model.save(tmp_path / "ck")
    assert _strict_json(tmp_path / "ck" / "checkpoint.json")["metrics"]["undefined"] is None
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["checkpoint.json", "dsift.npz"]
    with np.load(tmp_path / "ck" / "dsift.npz", allow_pickle=False) as z:  # no object arrays inside
        assert z["vocabulary"].shape == (64, 128)
    meta = read_meta(tmp_path / "ck")  # the shared checkpoint reader accepts it
    assert meta["strategy"] == "dsift" and meta["backbone"] == "dsift" and meta["classes"] == CLASSES
    for key in ("format", "format_version", "healthy_class", "contract", "hyperparameters", "seed", "versions",
                "metrics", "temperature", "thresholds"):
        assert key in meta
    assert is_dsift_checkpoint(tmp_path / "ck")
    loaded = load_dsift(tmp_path / "ck")
    assert loaded.grid == model.grid and loaded.temperature == model.temperature
    np.testing.assert_array_equal(loaded.predict_proba(x_te[:40]), model.predict_proba(x_te[:40]))


def test_load_dsift_errors_say_what_is_wrong(genki_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from facediag.edge.errors import ModelFileError
    from facediag.training.strategies.dsift import load_dsift

    with pytest.raises(ModelFileError, match="not a dense-SIFT checkpoint"):
        load_dsift(tmp_path / "nothing")
    model, _, _ = genki_model
    ck = model.save(tmp_path / "ck")
    np.savez(ck / "dsift.npz", vocabulary=np.zeros((64, 128), np.float32))
    with pytest.raises(ModelFileError, match="lacks array"):
        load_dsift(ck)


def test_dsift_rejects_bad_input() -> None:
    from facediag.training.strategies.dsift import GridParams, dense_descriptors, train_dsift

    crops = np.zeros((4, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="only one class"):
        train_dsift(crops, np.zeros(4, int), CLASSES, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        dense_descriptors(np.zeros((1, 64, 64, 3), np.float32), GridParams())
    with pytest.raises(ValueError, match="smaller than the image"):
        GridParams(image_size=(32, 32), patch_sizes=(32,))


# --------------------------------------------------------------------------------------------- facediag evaluate


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/{train,val,test}/{non_smile,smile}/*.jpg as symlinks to GENKI-4K photos (nothing copied)."""
    if not GENKI.is_dir():
        pytest.skip("needs ../shared/fixtures/faces/genki4k (the shared fixtures are not beside this checkout)")
    root = tmp_path_factory.mktemp("photos")
    for split, source, take in (("train", "train_folder", slice(0, 20)), ("val", "train_folder", slice(-10, None)),
                                ("test", "test_folder", slice(0, 12))):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for f in sorted((GENKI / source / str(label)).glob("*.jpg"))[take]:
                os.symlink(f, folder / f.name)
    return root


@pytest.fixture(scope="module")
def crop_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crop-cache")


def _train(args: list[str]) -> None:
    from facediag.cli import main

    assert main(["-q", "train", *args, "--no-progress"]) == 0


def _evaluate(args: list[str]) -> int:
    from facediag.cli import main

    return main(["-q", "evaluate", *args, "--no-progress"])


def _crops_of(split_dir: Path, contract, cache: Path):  # type: ignore[no-untyped-def]
    """The test split's crops and labels through the same front-end and cache (what evaluate should see)."""
    from facediag.training.crop_cache import CropCache, make_cropper

    paths, labels = [], []
    for label, name in enumerate(CLASSES):
        for p in sorted((split_dir / name).iterdir()):
            paths.append(p)
            labels.append(label)
    cs = CropCache(cache, make_cropper("yunet", fixture_path(YUNET), contract)).crop_all(paths, progress=False)
    return cs.crops, np.array(labels)[cs.kept], len(paths) - len(cs.kept)


def _check_report(out: Path, expected_probs: np.ndarray, y: np.ndarray, skipped: int, target: float) -> dict:
    report = _strict_json(out / "report.json")
    m = report["metrics"]
    assert report["split"] == "test"
    assert m["n"] == len(y) and report["skipped"]["total"] == skipped
    assert report["counts"] == {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}
    pred = expected_probs.argmax(axis=1)
    assert m["top1"] == pytest.approx(float(np.mean(pred == y)))
    expected_cm = [[int(np.sum((y == i) & (pred == j))) for j in range(2)] for i in range(2)]
    assert m["confusion_matrix"] == expected_cm
    # Per-photo predictions: paths relative to the data root, argmax = predicted, same correct count as expected.
    rows = report["predictions"]
    assert len(rows) == len(y) and all(r["photo"].startswith("test/") for r in rows)
    assert sorted(r["true"] for r in rows) == sorted(CLASSES[int(i)] for i in y)
    assert all(r["predicted"] == max(r["probabilities"], key=r["probabilities"].get) for r in rows)
    assert sum(r["predicted"] == r["true"] for r in rows) == int(np.sum(pred == y))
    k, n = int(np.sum(pred == y)), len(y)  # Wilson, written out here
    centre = (k / n + 1.96**2 / (2 * n)) / (1 + 1.96**2 / n)
    half = 1.96 / (1 + 1.96**2 / n) * np.sqrt(k / n * (1 - k / n) / n + 1.96**2 / (4 * n * n))
    assert m["top1_ci95"] == pytest.approx([max(0.0, centre - half), min(1.0, centre + half)])
    # The healthy class gets no threshold; "smile" does, chosen on val (never on test), reaching the target there.
    assert set(report["thresholds"]) == {"smile"}
    sel = report["threshold_selection"]
    # dtl2 checkpoints (out-of-fold calibration) choose on their stored out-of-fold predictions
    assert sel["split"] in ("val", "out-of-fold") and sel["target_sensitivity"] == target
    assert sel["on_val"]["smile"]["sensitivity"] >= target
    t = report["thresholds"]["smile"]
    called = expected_probs[:, 1] >= t
    assert m["at_thresholds"]["smile"]["sensitivity"] == pytest.approx(float(np.mean(called[y == 1])))
    _assert_pngs(out)
    return report


def test_evaluate_dsift_checkpoint_end_to_end(photo_tree: Path, crop_cache: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A dense-SIFT checkpoint (small grid and vocabulary, to stay quick) trained on the tree's train split."""
    from facediag.training.strategies.dsift import DSIFT_CONTRACT, GridParams, load_dsift, train_dsift

    yunet = str(fixture_path(YUNET))
    x_tr, y_tr, _ = _crops_of(photo_tree / "train", DSIFT_CONTRACT, crop_cache)
    grid = GridParams(image_size=(64, 64), step=8, patch_sizes=(16,), pyramid=(1, 2))
    ck = train_dsift(x_tr, y_tr, CLASSES, seed=0, vocab_size=32, grid=grid, healthy_class="non_smile",
                     contract=DSIFT_CONTRACT).save(tmp_path / "ck-dsift")
    out = tmp_path / "eval"
    rc = _evaluate([str(ck), "--data", str(photo_tree), "--split", "test", "--sensitivity", "0.8",
                    "--detector", "yunet", "--detector-model", yunet, "--cache", str(crop_cache), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    model = load_dsift(ck)
    crops, y, skipped = _crops_of(photo_tree / "test", model.contract, crop_cache)
    report = _check_report(out, model.predict_proba(crops), y, skipped, 0.8)
    assert report["model"]["kind"] == "checkpoint" and report["model"]["strategy"] == "dsift"
    assert report["model_id"].startswith("ck-dsift@")
    assert "top-1" in printed and "smile" in printed and "report.json" in printed


def _tiny_bundle(folder: Path) -> np.ndarray:
    """A real bundle around a hand-made ONNX model: probabilities = softmax(channel means @ W + b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from facediag.edge.bundle import create_bundle
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.hashing import sha256_file

    w = np.array([[0.08, -0.08], [0.0, 0.0], [-0.08, 0.08]], np.float32)  # R - B colour balance
    b = np.array([0.0, 1.0], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["means"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["means", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir()
    onnx.save(model, folder / "model.onnx")
    create_bundle(
        folder, classes=CLASSES, healthy_class="non_smile",
        contract=PreprocessContract("arcface_112x112", colour_order="RGB"), thresholds={"smile": 0.5},
        fp32_file="model.onnx", fp32_gate={"note": "test"},
        source_checkpoint={"path": "none", "sha256": sha256_file(folder / "model.onnx")}, creator="facediag test",
    )
    return w, b


def test_evaluate_bundle_end_to_end(photo_tree: Path, crop_cache: Path, tmp_path: Path) -> None:
    from facediag.edge.face.contract import PreprocessContract, crops_to_input

    yunet = str(fixture_path(YUNET))
    w, b = _tiny_bundle(tmp_path / "bundle")
    # The same photos plus a class the model does not have: its photos are left out and counted.
    tree = tmp_path / "tree"
    for split in ("train", "val", "test"):
        (tree / split).mkdir(parents=True)
        for name in CLASSES:
            os.symlink(photo_tree / split / name, tree / split / name)
    (tree / "test" / "other").mkdir()
    for f in sorted((photo_tree / "train" / "smile").iterdir())[:3]:
        os.symlink(f, tree / "test" / "other" / f.name)
    out = tmp_path / "eval"
    rc = _evaluate([str(tmp_path / "bundle"), "--data", str(tree), "--sensitivity", "0.9", "--detector",
                    "yunet", "--detector-model", yunet, "--cache", str(crop_cache), "--out", str(out)])
    assert rc == 0
    contract = PreprocessContract("arcface_112x112", colour_order="RGB")
    crops, y, skipped = _crops_of(photo_tree / "test", contract, crop_cache)
    z = crops_to_input(crops, contract).mean(axis=(2, 3)) @ w + b
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    report = _check_report(out, expected, y, skipped, 0.9)
    assert report["model"]["kind"] == "bundle" and report["model"]["precision"] == "fp32"
    assert report["skipped"]["label_not_in_model"] == {"other": 3}


def test_evaluate_deep_checkpoint_end_to_end(photo_tree: Path, crop_cache: Path, tmp_path: Path) -> None:
    """DTL2 on MobileFaceNet (the small fixture backbone): the torch path of evaluate."""
    import torch

    from facediag.edge.face.contract import crops_to_input
    from facediag.training.checkpoint import load_classifier

    yunet = str(fixture_path(YUNET))
    weights = str(fixture_path(MOBILEFACENET))
    ck = tmp_path / "ck-mfn"
    _train(["--data", str(photo_tree), "--backbone", "mobilefacenet", "--weights", weights, "--strategy", "dtl2",
            "--healthy", "non_smile", "--detector", "yunet", "--detector-model", yunet, "--cache", str(crop_cache),
            "--out", str(ck)])
    out = tmp_path / "eval"
    assert _evaluate([str(ck), "--data", str(photo_tree), "--sensitivity", "0.8", "--detector", "yunet",
                      "--detector-model", yunet, "--cache", str(crop_cache), "--out", str(out)]) == 0
    net, meta = load_classifier(ck)
    from facediag.edge.face.contract import PreprocessContract

    contract = PreprocessContract.from_dict(meta["contract"])
    crops, y, skipped = _crops_of(photo_tree / "test", contract, crop_cache)
    with torch.no_grad():
        probs = net(torch.from_numpy(crops_to_input(crops, contract))).numpy()
    report = _check_report(out, probs, y, skipped, 0.8)
    assert report["model"]["strategy"] == "dtl2" and report["model"]["backbone"] == "mobilefacenet"


def test_evaluate_errors(photo_tree: Path, tmp_path: Path) -> None:
    import argparse

    from facediag.commands import evaluate
    from facediag.edge.errors import ConfigError, FacediagError, ModelFileError

    def ns(model: Path, **kw) -> argparse.Namespace:  # type: ignore[no-untyped-def]
        parser = argparse.ArgumentParser()
        evaluate.add_arguments(parser)
        args = parser.parse_args([str(model), "--data", str(photo_tree), "--no-cache", "--no-progress"])
        for k, v in kw.items():
            setattr(args, k, v)
        return args

    with pytest.raises(ModelFileError, match="no such folder"):
        evaluate.run(ns(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="neither a checkpoint"):
        evaluate.run(ns(tmp_path / "empty"))
    assert _evaluate([str(tmp_path / "missing"), "--data", str(photo_tree)]) == 1  # the CLI's exit status
    with pytest.raises(ConfigError, match="optimistic"):
        evaluate.run(ns(tmp_path / "empty", val_split="test"))
    with pytest.raises(ConfigError, match="sensitivity"):
        evaluate.run(ns(tmp_path / "empty", sensitivity=1.5))
    # A checkpoint whose classes are not in the data: nothing to evaluate in the split.
    w_dir = tmp_path / "other"
    _tiny_bundle(w_dir)
    doc = json.loads((w_dir / "bundle.json").read_text())
    assert doc["classes"] == CLASSES
    no_test = tmp_path / "no-test"
    (no_test / "train").mkdir(parents=True)
    for name in CLASSES:
        os.symlink(photo_tree / "train" / name, no_test / "train" / name)
    args = ns(w_dir)
    args.data = no_test
    with pytest.raises(FacediagError, match="no images .* in split 'test'"):
        evaluate.run(args)


def test_evaluation_module_called_directly_carves_val_and_never_tunes_on_test(
    photo_tree: Path, crop_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The library behind the command: no argparse, photos from the photo-collection layer."""
    from facediag.edge.errors import ConfigError
    from facediag.edge.face.contract import PreprocessContract, crops_to_input
    from facediag.edge.photos import read_labelled_folder
    from facediag.training.crop_cache import CropCache, make_cropper
    from facediag.training.data import carve_validation
    from facediag.training.evaluation import EvaluationOptions, evaluate, load_model

    w, b = _tiny_bundle(tmp_path / "bundle")
    model = load_model(tmp_path / "bundle")
    assert model.kind == "bundle" and model.classes == CLASSES
    # Without a val split, thresholds are chosen on a seeded share carved out of train.
    photos = [p for p in read_labelled_folder(photo_tree) if p.split != "val"]
    cache = CropCache(crop_cache, make_cropper("yunet", fixture_path(YUNET), model.contract))
    opts = EvaluationOptions(split="test", val_fraction=0.25, seed=3, sensitivity=0.8)
    report = evaluate(model, photos, cache, opts, data_source={"folder": "somewhere"})
    assert report["data"] == {"folder": "somewhere"}
    sel = report["threshold_selection"]
    assert sel["carved_from_train"] is True and sel["seed"] == 3 and sel["val_fraction"] == 0.25
    carved = [p for p in carve_validation(photos, 0.25, 3) if p.split == "val"]
    assert sel["n"] + sel["skipped"] == len(carved) == 10  # 25% of 20 train photos per class
    # The evaluated figures are the test photos' own, through the same cache and contract.
    crops, y, skipped = _crops_of(photo_tree / "test", model.contract, crop_cache)
    z = crops_to_input(crops, model.contract).mean(axis=(2, 3)) @ w + b
    assert report["metrics"]["n"] == len(y) and report["skipped"]["total"] == skipped
    assert report["metrics"]["top1"] == pytest.approx(float(np.mean(z.argmax(1) == y)))

    # Thresholds are never chosen on the evaluated split; evaluating val itself chooses none.
    with pytest.raises(ConfigError, match="optimistic"):
        evaluate(model, photos, cache, EvaluationOptions(split="test", val_split="test"))
    with caplog.at_level("WARNING"):
        on_val = evaluate(model, read_labelled_folder(photo_tree), cache, EvaluationOptions(split="val"))
    assert on_val["thresholds"] == {} and on_val["threshold_selection"]["split"] is None
    assert "no thresholds" in caplog.text
    # A cropper made for another contract would measure crops the model never sees.
    other = CropCache(None, make_cropper("yunet", fixture_path(YUNET), PreprocessContract("facenet_160x160")))
    with pytest.raises(ConfigError, match="contract"):
        evaluate(model, photos, other, opts)
