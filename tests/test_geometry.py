"""Property tests on the alignment geometry and the preprocessing contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facediag.edge.errors import ConfigError
from facediag.edge.face.align import align_face, invert_affine, similarity_transform, transform_points
from facediag.edge.face.contract import TEMPLATES, PreprocessContract, apply_scaling, crops_to_input
from facediag.edge.face.types import clip_box

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
template_names = st.sampled_from(sorted(TEMPLATES))


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


@given(
    name=template_names,
    angle=st.floats(-math.pi, math.pi),
    scale=st.floats(0.05, 20.0),
    tx=finite,
    ty=finite,
)
def test_similarity_recovers_a_known_transform(name: str, angle: float, scale: float, tx: float, ty: float) -> None:
    template = TEMPLATES[name][2]
    m = _similarity(angle, scale, tx, ty)
    src = transform_points(template, invert_affine(m))
    fitted = similarity_transform(src, template)
    np.testing.assert_allclose(transform_points(src, fitted), template, atol=1e-6 * max(1.0, scale))


@given(angle=st.floats(-math.pi, math.pi), scale=st.floats(0.1, 10.0), tx=finite, ty=finite)
def test_transform_round_trip(angle: float, scale: float, tx: float, ty: float) -> None:
    m = _similarity(angle, scale, tx, ty)
    pts = np.array([[0.0, 0.0], [10.0, 5.0], [-3.0, 7.0], [100.0, -50.0]])
    back = transform_points(transform_points(pts, m), invert_affine(m))
    np.testing.assert_allclose(back, pts, atol=1e-6 * max(1.0, abs(tx), abs(ty)))


@given(st.tuples(finite, finite, finite, finite), st.integers(1, 5000), st.integers(1, 5000))
def test_boxes_are_clipped_to_the_frame(box: tuple[float, float, float, float], w: int, h: int) -> None:
    x1, y1, x2, y2 = clip_box(box, w, h)
    assert 0 <= x1 <= x2 <= w
    assert 0 <= y1 <= y2 <= h


@settings(max_examples=30, deadline=None)
@given(
    name=template_names,
    h=st.integers(20, 400),
    w=st.integers(20, 400),
    seed=st.integers(0, 2**31 - 1),
)
def test_aligned_crop_shape_and_dtype_are_fixed(name: str, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    # Any non-degenerate landmarks, even far outside the frame, give a crop of the template's size.
    landmarks = rng.uniform(-w, 2 * w, size=(5, 2)).astype(np.float32)
    contract = PreprocessContract(template=name)
    crop = align_face(image, landmarks, contract)
    assert crop.shape == (contract.height, contract.width, 3)
    assert crop.dtype == np.uint8
    batch = crops_to_input([crop, crop], contract)
    assert batch.shape == (2, 3, contract.height, contract.width)
    assert batch.dtype == np.float32


def test_degenerate_landmarks_are_refused() -> None:
    with pytest.raises(ValueError, match="one point"):
        similarity_transform(np.zeros((5, 2)), TEMPLATES["arcface_112x112"][2])
    with pytest.raises(ValueError, match="finite"):
        similarity_transform(np.full((5, 2), np.nan), TEMPLATES["arcface_112x112"][2])


def test_colour_order_and_scaling_follow_the_contract() -> None:
    crop = np.zeros((112, 112, 3), np.uint8)
    crop[..., 0] = 10  # B
    crop[..., 2] = 200  # R
    rgb = crops_to_input(crop, PreprocessContract("arcface_112x112", colour_order="RGB"))
    bgr = crops_to_input(crop, PreprocessContract("arcface_112x112", colour_order="BGR"))
    assert rgb[0, 0, 0, 0] == 200 and rgb[0, 2, 0, 0] == 10
    assert bgr[0, 0, 0, 0] == 10 and bgr[0, 2, 0, 0] == 200
    scaled = apply_scaling(rgb, PreprocessContract("arcface_112x112"))
    assert scaled[0, 0, 0, 0] == pytest.approx((200 - 127.5) / 128)
    white = apply_scaling(rgb, PreprocessContract("arcface_112x112", scaling="prewhiten"))
    assert abs(float(white.mean())) < 1e-4 and float(white.std()) == pytest.approx(1.0, abs=1e-3)


def test_contract_round_trips_and_rejects_unknown_fields() -> None:
    c = PreprocessContract("sphereface_112x96", colour_order="BGR", mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    assert PreprocessContract.from_dict(c.to_dict()) == c
    d = c.to_dict()
    d["colour"] = "RGB"
    with pytest.raises(ConfigError, match="colour"):
        PreprocessContract.from_dict(d)
    with pytest.raises(ConfigError, match="unknown alignment template"):
        PreprocessContract("arcface_999")
    d = c.to_dict()
    d["height"] = 120
    with pytest.raises(ConfigError, match="incompatible"):
        PreprocessContract.from_dict(d)
