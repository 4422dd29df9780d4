"""Quality gates: is this face good enough to screen? Each failing gate gives a reason string."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from facediag.edge.face.types import Face


@dataclass(frozen=True)
class QualityGates:
    """Thresholds; ``None`` switches a gate off.

    min_face_px: shorter side of the detector box, in frame pixels.
    min_sharpness: variance of the Laplacian of the grey aligned crop (blur lowers it).
    exposure: allowed range of the crop's mean grey level, and the largest fraction of
        clipped (<= 5 or >= 250) pixels.
    max_yaw / max_roll / max_pitch: pose limits from landmark geometry (see ``pose_from_landmarks``).
    """

    min_face_px: float | None = 64.0
    min_sharpness: float | None = 20.0
    min_brightness: float | None = 40.0
    max_brightness: float | None = 215.0
    max_clipped_fraction: float | None = 0.25
    max_yaw: float | None = 0.35
    max_roll_deg: float | None = 20.0
    max_pitch: float | None = 0.35

    @classmethod
    def off(cls) -> QualityGates:
        return cls(None, None, None, None, None, None, None, None)


@dataclass
class QualityReport:
    figures: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons


def pose_from_landmarks(landmarks: np.ndarray) -> dict[str, float]:
    """Frontal-pose figures from the 5 landmarks, each 0 for a frontal, upright face.

    roll_deg: angle of the eye line from horizontal.
    yaw: horizontal offset of the nose tip from the eye/mouth midline, over the inter-eye distance
        (about +-0.5 at a 45 degree head turn).
    pitch: vertical position of the nose between the eye line and the mouth line, relative to the
        frontal ratio (~0.5 of the way down); positive = looking down.
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    le, re, nose, lm_, rm = lm
    eye_vec = re - le
    inter_eye = float(np.hypot(*eye_vec))
    if inter_eye < 1e-6:
        return {"roll_deg": 90.0, "yaw": 1.0, "pitch": 1.0}
    roll = math.degrees(math.atan2(eye_vec[1], eye_vec[0]))
    # Rotate so the eye line is horizontal, then measure in the face's own frame.
    c, s = math.cos(-math.radians(roll)), math.sin(-math.radians(roll))
    rot = np.array([[c, -s], [s, c]])
    pts = (lm - le) @ rot.T
    eye_mid = (pts[0] + pts[1]) / 2
    mouth_mid = (pts[3] + pts[4]) / 2
    mid_x = (eye_mid[0] + mouth_mid[0]) / 2
    yaw = (pts[2][0] - mid_x) / inter_eye
    eye_to_mouth = mouth_mid[1] - eye_mid[1]
    if eye_to_mouth <= 1e-6:
        return {"roll_deg": roll, "yaw": float(yaw), "pitch": 1.0}
    nose_ratio = (pts[2][1] - eye_mid[1]) / eye_to_mouth
    pitch = (nose_ratio - 0.5) / 0.5
    return {"roll_deg": float(roll), "yaw": float(yaw), "pitch": float(pitch)}


def image_figures(crop_bgr: np.ndarray) -> dict[str, float]:
    """Sharpness and exposure figures of an aligned crop."""
    import cv2

    grey = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    brightness = float(grey.mean())
    clipped = float(((grey <= 5) | (grey >= 250)).mean())
    return {"sharpness": sharpness, "brightness": brightness, "clipped_fraction": clipped}


def assess(face: Face, crop_bgr: np.ndarray | None, gates: QualityGates) -> QualityReport:
    """Measure the face and its aligned crop against the gates."""
    report = QualityReport()
    size = min(face.width, face.height)
    report.figures["face_px"] = float(size)
    report.figures.update(pose_from_landmarks(face.landmarks))
    if crop_bgr is not None:
        report.figures.update(image_figures(crop_bgr))
    f = report.figures
    r = report.reasons
    if gates.min_face_px is not None and size < gates.min_face_px:
        r.append(f"face too small: {size:.0f} px < {gates.min_face_px:.0f} px (step closer)")
    if crop_bgr is not None:
        if gates.min_sharpness is not None and f["sharpness"] < gates.min_sharpness:
            r.append(f"blurred: sharpness {f['sharpness']:.1f} < {gates.min_sharpness:.1f} (hold still, check focus)")
        if gates.min_brightness is not None and f["brightness"] < gates.min_brightness:
            r.append(f"too dark: mean level {f['brightness']:.0f} < {gates.min_brightness:.0f}")
        if gates.max_brightness is not None and f["brightness"] > gates.max_brightness:
            r.append(f"too bright: mean level {f['brightness']:.0f} > {gates.max_brightness:.0f}")
        if gates.max_clipped_fraction is not None and f["clipped_fraction"] > gates.max_clipped_fraction:
            r.append(
                f"badly exposed: {100 * f['clipped_fraction']:.0f}% of pixels clipped "
                f"> {100 * gates.max_clipped_fraction:.0f}%"
            )
    if gates.max_roll_deg is not None and abs(f["roll_deg"]) > gates.max_roll_deg:
        r.append(f"head tilted: roll {f['roll_deg']:.0f} deg > {gates.max_roll_deg:.0f} deg")
    if gates.max_yaw is not None and abs(f["yaw"]) > gates.max_yaw:
        r.append(f"not frontal: head turned (yaw {f['yaw']:.2f} > {gates.max_yaw:.2f})")
    if gates.max_pitch is not None and abs(f["pitch"]) > gates.max_pitch:
        r.append(f"not frontal: head raised or lowered (pitch {f['pitch']:.2f} > {gates.max_pitch:.2f})")
    return report
