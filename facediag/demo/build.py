"""Build (once) the demo's model bundle: FaceNet + the shipped head, exported through the real exporter.

Cached in the demo's work folder with a stamp that records what it was built from
(head weights hash, facediag version); a changed head or version rebuilds it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.atomicio import atomic_write_text
from facediag.edge.errors import FacediagError, ModelFileError
from facediag.edge.hashing import sha256_file

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
HEAD_JSON = HERE / "head.json"
STAMP = "bundle.stamp.json"


def default_work_dir() -> Path:
    """``$FACEDIAG_CACHE/demo``, else ``$XDG_CACHE_HOME/facediag/demo``, else ``~/.cache/facediag/demo``."""
    if os.environ.get("FACEDIAG_CACHE"):
        return Path(os.environ["FACEDIAG_CACHE"]).expanduser() / "demo"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "facediag" / "demo"
    return Path.home() / ".cache" / "facediag" / "demo"


def load_head() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The shipped head: (description, {"weight", "bias", "temperature"}), hash-checked."""
    from safetensors.numpy import load_file

    meta = json.loads(HEAD_JSON.read_text(encoding="utf-8"))
    weights = HERE / meta["weights_file"]
    if not weights.is_file() or sha256_file(weights) != meta["weights_sha256"]:
        raise ModelFileError(f"{weights} is missing or does not match head.json; reinstall facediag")
    return meta, load_file(str(weights))


def _stamp(meta: dict[str, Any]) -> dict[str, str]:
    from facediag.edge.version import __version__

    return {"head_sha256": meta["weights_sha256"], "facediag": __version__}


def cached_bundle(work: Path) -> Path | None:
    """The bundle in ``work`` when it was built from this head and version and still verifies."""
    from facediag.edge.bundle import load_bundle
    from facediag.edge.errors import BundleError

    stamp_path = work / STAMP
    if not stamp_path.is_file():
        return None
    try:
        meta, _ = load_head()
        if json.loads(stamp_path.read_text(encoding="utf-8")) != _stamp(meta):
            return None
        return Path(load_bundle(work / "bundle").path)
    except (BundleError, ValueError, OSError):
        return None


def face_inputs(frames: list[np.ndarray], contract: Any, count: int = 8) -> np.ndarray:
    """Real aligned crops of the clip's faces (for the exporter's parity check)."""
    from facediag.edge.face.contract import crops_to_input
    from facediag.edge.face.mtcnn import MTCNNDetector
    from facediag.edge.face.pipeline import FaceFrontEnd

    front = FaceFrontEnd(MTCNNDetector(), contract)
    crops = []
    step = max(1, len(frames) // (count * 2))
    for frame in frames[::step]:
        result = front.process(frame)
        if result.crop is not None:
            crops.append(result.crop)
        if len(crops) >= count:
            break
    if not crops:
        raise FacediagError("no face found in the demo clip: the MTCNN detector does not work on this machine")
    return crops_to_input(crops, contract)


def build_bundle(work: Path, frames: list[np.ndarray]) -> Path:
    """Convert FaceNet (cached by the backbone module), attach the head, export and check; returns the bundle."""
    from facediag.demo.bundle import build_head_bundle
    from facediag.training.backbones import get_backbone

    meta, head = load_head()
    backbone = get_backbone(meta["backbone"])
    inputs = face_inputs(frames, backbone.contract)
    bundle = build_head_bundle(
        backbone, head["weight"], head["bias"], temperature=float(head["temperature"].reshape(-1)[0]),
        classes=list(meta["classes"]), healthy_class=meta["healthy_class"], parity_inputs=inputs, out_dir=work,
        l2_normalize=bool(meta["l2_normalize"]), strategy="dtl2",
        extra_meta={"demo": {"what": meta["what"], "measured": meta["measured"]}},
    )
    # The checkpoint (a full FaceNet copy) was only a step towards the bundle; the bundle records its hash.
    import shutil

    shutil.rmtree(work / "checkpoint", ignore_errors=True)
    atomic_write_text(work / STAMP, json.dumps(_stamp(meta)) + "\n")  # the stamp says "this bundle is whole"
    return Path(bundle.path)
