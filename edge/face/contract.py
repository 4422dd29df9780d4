"""The preprocessing contract: template, crop size, colour order and scaling.

A contract is written into every checkpoint and bundle and read back by
training, calibration, export, verification and the daemon, so that all of them
produce the same tensor from the same photo.

What a model receives at run time: a float32 NCHW batch of aligned crops in the
contract's colour order with pixel values 0..255 (``crops_to_input``). The
scaling (``mean_std`` or ``prewhiten``) is applied *inside* the exported graph,
so runtimes only hand over crops; ``apply_scaling`` is the numpy reference used
by tests and by the PyTorch side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from facediag.edge.errors import ConfigError

# insightface's five ArcFace points for a 112x112 crop (x, y), LANDMARK_NAMES order.
_ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def _scaled_template(size: int, face_fraction: float) -> np.ndarray:
    """ArcFace's points scaled to a size x size square, the face taking ``face_fraction`` of the ArcFace scale."""
    centre = np.array([56.0, 56.0])
    pts: np.ndarray = (_ARCFACE_112 - centre) * face_fraction * (size / 112.0) + size / 2.0
    return pts


# dlib's mean face (dlib/image_transforms/interpolation.h, get_face_chip_details: the mean positions of
# iBUG points 17-67 in a unit square) at the points facediag's detectors give, LANDMARK_NAMES order:
# the centres of points 36-41 and 42-47 (eyes), point 30 (nose tip), points 48 and 54 (mouth corners).
_DLIB_MEAN_FACE_5 = np.array(
    [
        [0.2254918, 0.2159903],
        [0.7547613, 0.2159903],
        [0.490127, 0.515625],
        [0.254149, 0.780233],
        [0.726104, 0.780233],
    ],
    dtype=np.float64,
)


def _dlib_chip_template(size: int, padding: float) -> np.ndarray:
    """ArcFace's points scaled and shifted to fit dlib's chip (least squares), a size x size square.

    dlib's chip puts a unit-square mean-face position p at (padding + p) / (1 + 2 padding) * size. The
    template is the scale + shift of the ArcFace points closest to those positions (residual <= 3.2 px at
    150 px, at the mouth corners), so that every facediag template stays a scale + shift of every other one
    (a fused recipe re-samples one crop into another template exactly). Measured on 101 real faces (YuNet
    landmarks): the dlib ResNet's descriptors from these crops are 0.191 (mean Euclidean distance) from
    those of dlib's own pipeline (HOG detector, 5-point predictor, get_face_chip), against 0.189 with dlib's
    mean-face points themselves; both separate master.csv's pairs with AUC 1.0.
    """
    target = (padding + _DLIB_MEAN_FACE_5) / (1.0 + 2.0 * padding) * size
    design = np.concatenate([_ARCFACE_112.reshape(-1, 1), np.tile(np.eye(2), (len(_ARCFACE_112), 1))], axis=1)
    (scale, tx, ty), *_ = np.linalg.lstsq(design, target.reshape(-1), rcond=None)
    pts: np.ndarray = _ARCFACE_112 * scale + np.array([tx, ty])
    return pts


# name -> (height, width, landmarks)
TEMPLATES: dict[str, tuple[int, int, np.ndarray]] = {
    "arcface_112x112": (112, 112, _ARCFACE_112.copy()),
    # SphereFace / MobileFaceNet crop: the ArcFace points shifted 8 px left on a 96-wide crop.
    "sphereface_112x96": (112, 96, _ARCFACE_112 - np.array([8.0, 0.0])),
    # FaceNet was trained on loose MTCNN crops (box + margin); the face is smaller than in ArcFace.
    "facenet_160x160": (160, 160, _scaled_template(160, 0.90)),
    # VGG-Face crops include the whole head.
    "vggface_224x224": (224, 224, _scaled_template(224, 0.70)),
    # dlib's face chip (get_face_chip_details(shape, 150, 0.25)); see _dlib_chip_template.
    "dlib_150x150": (150, 150, _dlib_chip_template(150, 0.25)),
}

COLOUR_ORDERS = ("RGB", "BGR")
SCALING_KINDS = ("mean_std", "prewhiten")


@dataclass(frozen=True)
class PreprocessContract:
    """How an aligned crop becomes model input. Serialisable with ``to_dict``/``from_dict``."""

    template: str
    colour_order: str = "RGB"
    scaling: str = "mean_std"  # "mean_std": (x - mean) / std per channel; "prewhiten": per-image standardisation
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    input_range: str = "0-255"
    layout: str = "NCHW"
    dtype: str = "float32"
    version: int = 1

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ConfigError(f"unknown alignment template {self.template!r}: choose one of {', '.join(TEMPLATES)}")
        if self.colour_order not in COLOUR_ORDERS:
            raise ConfigError(f"colour_order must be one of {COLOUR_ORDERS}, got {self.colour_order!r}")
        if self.scaling not in SCALING_KINDS:
            raise ConfigError(f"scaling must be one of {SCALING_KINDS}, got {self.scaling!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError("mean and std need three values each, std > 0")
        if (self.input_range, self.layout, self.dtype) != ("0-255", "NCHW", "float32"):
            raise ConfigError("only 0-255 float32 NCHW model inputs are supported")

    @property
    def height(self) -> int:
        return TEMPLATES[self.template][0]

    @property
    def width(self) -> int:
        return TEMPLATES[self.template][1]

    @property
    def landmarks(self) -> np.ndarray:
        """Template landmarks (5, 2) in crop pixel coordinates."""
        points: np.ndarray = TEMPLATES[self.template][2].copy()
        return points

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["height"] = self.height
        d["width"] = self.width
        d["landmarks"] = self.landmarks.round(4).tolist()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessContract:
        known = {"template", "colour_order", "scaling", "mean", "std", "input_range", "layout", "dtype", "version"}
        derived = {"height", "width", "landmarks"}
        unknown = set(data) - known - derived
        if unknown:
            raise ConfigError(f"unknown preprocessing-contract field(s): {', '.join(sorted(unknown))}")
        if "template" not in data:
            raise ConfigError("preprocessing contract has no 'template' field")
        kwargs = {k: data[k] for k in known if k in data}
        for k in ("mean", "std"):
            if k in kwargs:
                kwargs[k] = tuple(float(v) for v in kwargs[k])
        contract = cls(**kwargs)
        # Derived fields, when present, must agree with this version's template table.
        if "height" in data and (data["height"], data["width"]) != (contract.height, contract.width):
            raise ConfigError(
                f"contract says {data['height']}x{data['width']} but template {contract.template!r} "
                f"is {contract.height}x{contract.width}: the bundle was made by an incompatible version"
            )
        if "landmarks" in data and not np.allclose(np.asarray(data["landmarks"]), contract.landmarks, atol=1e-3):
            raise ConfigError(f"contract landmarks differ from template {contract.template!r}: incompatible version")
        return contract


def crops_to_input(crops_bgr: list[np.ndarray] | np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """Aligned BGR uint8 crops (N of H x W x 3) -> float32 NCHW in the contract's colour order, 0..255."""
    batch = np.asarray(crops_bgr)
    if batch.ndim == 3:
        batch = batch[None]
    expected = (contract.height, contract.width, 3)
    if batch.ndim != 4 or batch.shape[1:] != expected:
        raise ValueError(f"crops must be N x {expected}, got {batch.shape}")
    if contract.colour_order == "RGB":
        batch = batch[..., ::-1]
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def apply_scaling(x: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """Reference (numpy) for the scaling the exported graph applies to ``crops_to_input`` output."""
    x = x.astype(np.float32)
    if contract.scaling == "mean_std":
        mean = np.asarray(contract.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(contract.std, np.float32).reshape(1, 3, 1, 1)
        return (x - mean) / std
    n = x.shape[0]
    flat = x.reshape(n, -1)
    mean = flat.mean(axis=1).reshape(n, 1, 1, 1)
    std = flat.std(axis=1).reshape(n, 1, 1, 1)
    std = np.maximum(std, 1.0 / np.sqrt(flat.shape[1]))
    whitened: np.ndarray = (x - mean) / std
    return whitened
