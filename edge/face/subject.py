"""Subject choice: of several faces in a frame, the person being screened."""

from __future__ import annotations

import math
from collections.abc import Sequence

from facediag.edge.face.types import Face

# Faces within this fraction of the largest face's area count as "as large"; among them the
# most central wins. A kiosk's subject stands closest (largest), usually in the middle.
NEAR_TIE_AREA_FRACTION = 0.85


def centrality(face: Face, frame_shape: Sequence[int]) -> float:
    """1.0 at the frame centre, 0.0 at a corner."""
    h, w = frame_shape[0], frame_shape[1]
    cx, cy = face.centre
    dist = math.hypot(cx - w / 2.0, cy - h / 2.0)
    half_diag = math.hypot(w / 2.0, h / 2.0)
    return max(0.0, 1.0 - dist / half_diag) if half_diag > 0 else 0.0


def choose_subject(faces: Sequence[Face], frame_shape: Sequence[int]) -> Face | None:
    """The largest face; among faces nearly as large as it, the most central one."""
    if not faces:
        return None
    largest = max(f.area for f in faces)
    contenders = [f for f in faces if f.area >= NEAR_TIE_AREA_FRACTION * largest]
    return max(contenders, key=lambda f: (centrality(f, frame_shape), f.area))
