"""Issue 10, "Faces found in tight photos": PhotoFrontEnd on photos cropped to the face.

Tight crops are made from the fixture photos: the subject's face is located on the whole photo (with
context, MTCNN through a padded ``FaceFrontEnd``, coordinates of the original photo), then a crop is cut
around it so that the face box fills a random 80-100% of the crop's width and height, shifted at random
within that slack, and resized to a random short side (48-640 px, log-uniform), so both of
PhotoFrontEnd's paths are exercised (small photos are upscaled and padded; large ones are not).

The floor: PhotoFrontEnd finds a face in >= 99.5% of such crops, with MTCNN (the offline default) and
with YuNet when its fixture model is present. Run as a script to measure on more crops::

    .venv/bin/python -m tests.test_tight_crops --n 600 --detector mtcnn
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import numpy as np
import pytest

from facediag.edge.face.contract import PreprocessContract
from facediag.edge.face.detector import Detector, make_detector
from facediag.edge.face.imageio import load_image
from facediag.edge.face.pipeline import (
    NO_FACE,
    TIGHT_CROP_PAD,
    TIGHT_CROP_SIDE,
    TIGHT_CROP_UPSCALE_TO,
    FaceFrontEnd,
    PhotoFrontEnd,
    _upscaled,
)
from facediag.edge.face.subject import choose_subject
from tests.conftest import FIXTURES, fixture_path

ARCFACE = PreprocessContract("arcface_112x112")
FLOOR = 0.995
N_CROPS = 300
YUNET_MODEL = "models/face_detection_yunet_2026may.onnx"


def _sources(faces_dir: Path, n: int, rng: random.Random) -> list[Path]:
    """Photos to crop from: all of yale and wild, the rest from CelebA (a seeded sample)."""
    yale = sorted((faces_dir / "yale").iterdir())
    wild = sorted(p for p in (faces_dir / "wild").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    celeba = sorted((faces_dir / "celeba").glob("*.jpg"))
    n_yale, n_wild = min(len(yale), n // 5), min(len(wild), n // 8)
    picked = rng.sample(yale, n_yale) + rng.sample(wild, n_wild)
    return picked + rng.sample(celeba, max(0, n - len(picked)))


def reference_box(reference: Detector, image: np.ndarray) -> tuple[float, float, float, float] | None:
    """The subject's face box on the whole photo, in its own pixels (small photos upscaled to detect)."""
    import cv2

    h, w = image.shape[:2]
    scale = max(1.0, 256.0 / min(h, w))
    big = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC) if scale > 1 else image
    faces = FaceFrontEnd(reference, ARCFACE, pad_fraction=0.3, max_detect_side=1024).detect(big)
    subject = choose_subject(faces, big.shape)
    if subject is None:
        return None
    x1, y1, x2, y2 = subject.box
    return x1 / scale, y1 / scale, x2 / scale, y2 / scale


def tight_crop(image: np.ndarray, box: tuple[float, float, float, float], rng: random.Random) -> np.ndarray | None:
    """A crop in which ``box`` fills 80-100% of the width and height, resized to a random size."""
    import cv2

    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    fill = rng.uniform(0.8, 1.0)
    cw, ch = bw / fill, bh / fill
    cx1 = x1 - rng.uniform(0.0, cw - bw)
    cy1 = y1 - rng.uniform(0.0, ch - bh)
    ix1, iy1 = max(0, round(cx1)), max(0, round(cy1))
    ix2, iy2 = min(image.shape[1], round(cx1 + cw)), min(image.shape[0], round(cy1 + ch))
    if ix2 - ix1 < 16 or iy2 - iy1 < 16:
        return None
    crop = image[iy1:iy2, ix1:ix2]
    short = math.exp(rng.uniform(math.log(48), math.log(640)))
    s = short / min(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)


def make_tight_crops(faces_dir: Path, n: int, seed: int = 10) -> list[tuple[str, np.ndarray]]:
    """``n`` (or a few fewer) tight crops from the fixture photos, each named by its source photo."""
    rng = random.Random(seed)
    reference = make_detector("mtcnn")
    crops: list[tuple[str, np.ndarray]] = []
    for path in _sources(faces_dir, n, rng):
        image = load_image(path)
        box = reference_box(reference, image)
        crop = tight_crop(image, box, rng) if box is not None else None
        if crop is not None:
            crops.append((f"{path.parent.name}/{path.name}", crop))
    return crops


def detection_rate(detector: Detector, crops: list[tuple[str, np.ndarray]]) -> tuple[float, list[str]]:
    """Share of crops in which PhotoFrontEnd finds a face, and the names of the crops it missed."""
    front_end = PhotoFrontEnd(detector, ARCFACE)
    missed = [name for name, crop in crops if front_end.process(crop).crop is None]
    return 1.0 - len(missed) / len(crops), missed


@pytest.fixture(scope="module")
def crops() -> list[tuple[str, np.ndarray]]:
    fixture_path("faces/celeba")
    made = make_tight_crops(FIXTURES / "faces", N_CROPS)
    assert len(made) >= 0.95 * N_CROPS, "the reference detector found too few faces to crop around"
    return made


def test_crops_are_tight(crops: list[tuple[str, np.ndarray]]) -> None:
    """The crops really are tight (no photo keeps its context) and span both PhotoFrontEnd paths."""
    sides = [min(c.shape[:2]) for _, c in crops]
    assert min(sides) < 100 and max(sides) > 300
    assert {name.split("/")[0] for name, _ in crops} == {"celeba", "yale", "wild"}


def test_mtcnn_finds_faces_in_tight_crops(crops: list[tuple[str, np.ndarray]]) -> None:
    rate, missed = detection_rate(make_detector("mtcnn"), crops)
    assert rate >= FLOOR, f"MTCNN found {rate:.3f} of {len(crops)} tight crops; missed {missed}"


def test_yunet_finds_faces_in_tight_crops(crops: list[tuple[str, np.ndarray]]) -> None:
    rate, missed = detection_rate(make_detector("yunet", fixture_path(YUNET_MODEL)), crops)
    assert rate >= FLOOR, f"YuNet found {rate:.3f} of {len(crops)} tight crops; missed {missed}"


def test_retries_only_after_a_miss(crops: list[tuple[str, np.ndarray]]) -> None:
    """Photos found on the first attempt keep exactly the crop they had before retries existed."""
    detector = make_detector("mtcnn")
    front_end = PhotoFrontEnd(detector, ARCFACE)
    plain = FaceFrontEnd(detector, ARCFACE)
    padded = FaceFrontEnd(detector, ARCFACE, pad_fraction=TIGHT_CROP_PAD)
    large = [c for _, c in crops if min(c.shape[:2]) >= TIGHT_CROP_SIDE][:12]
    small = [c for _, c in crops if min(c.shape[:2]) < TIGHT_CROP_SIDE][:12]
    assert len(large) == len(small) == 12
    firsts = [(c, plain.process(c)) for c in large]
    firsts += [(c, padded.process(_upscaled(c, TIGHT_CROP_UPSCALE_TO))) for c in small]
    found = [(image, first) for image, first in firsts if first.crop is not None]
    assert len(found) >= 20
    for image, first in found:
        np.testing.assert_array_equal(front_end.process(image).crop, first.crop)
    blank = np.full((300, 240, 3), 128, np.uint8)
    assert front_end.process(blank).reasons == [NO_FACE]


def _main() -> None:
    parser = argparse.ArgumentParser(description="PhotoFrontEnd's detection rate on tight crops of the fixtures")
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--detector", choices=("mtcnn", "yunet", "both"), default="both")
    args = parser.parse_args()
    made = make_tight_crops(FIXTURES / "faces", args.n, args.seed)
    names = ("mtcnn", "yunet") if args.detector == "both" else (args.detector,)
    for name in names:
        detector = make_detector(name, FIXTURES / YUNET_MODEL if name == "yunet" else None)
        rate, missed = detection_rate(detector, made)
        print(f"{name}: found {rate:.4f} of {len(made)} tight crops; missed {len(missed)}: {missed}")


if __name__ == "__main__":
    _main()
