"""The checkpoint folder ``facediag train`` writes and evaluate/export read.

``model.safetensors`` holds the state dict of the whole classifier, backbone
weights included, so a checkpoint is self-contained: it loads on a machine that
never saw the original backbone weights file. ``checkpoint.json`` says how to
rebuild the module (backbone name, class count, head options) and everything a
later stage or a reader needs (classes, healthy class, preprocessing contract,
strategy, hyperparameters, seed, package versions, metrics, temperature).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from edge.errors import ModelFileError

log = logging.getLogger(__name__)

FORMAT = "facediag-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
REQUIRED_KEYS = ("backbone", "classes", "contract", "strategy", "temperature")


def package_versions() -> dict[str, str]:
    """Versions of what shaped the numbers (facediag, python, torch, numpy, sklearn, opencv, safetensors)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    try:
        from facediag import __version__

        out["facediag"] = __version__
    except ImportError:  # pragma: no cover
        pass
    for dist in ("torch", "numpy", "scikit-learn", "opencv-python-headless", "safetensors", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _jsonable(obj: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python numbers, recursively (strict JSON)."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_checkpoint(out_dir: str | Path, model, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` + ``checkpoint.json`` into ``out_dir`` (created); returns the folder.

    ``meta`` needs at least backbone, classes, contract (dict), strategy; the
    temperature is taken from the model. Files are written to temporary names
    and renamed, so a crash never leaves a half-written checkpoint under the
    final names.
    """
    from safetensors.torch import save_file

    missing = [k for k in ("backbone", "classes", "contract", "strategy") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {', '.join(missing)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    full = dict(meta)
    full["format"] = FORMAT
    full["format_version"] = FORMAT_VERSION
    full["temperature"] = float(model.temperature) if hasattr(model, "temperature") else float(meta.get("temperature", 1.0))
    full.setdefault("versions", package_versions())
    full.setdefault("thresholds", None)
    full["head"] = {
        "num_classes": len(meta["classes"]),
        "l2_normalize": bool(getattr(model, "l2_normalize", True)),
        **full.get("head", {}),
    }
    full["state_dict_keys"] = len(state)
    tmp_w = out / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    tmp_m = out / f".{META_FILE}.{os.getpid()}.tmp"
    save_file(state, str(tmp_w), metadata={"format": FORMAT, "backbone": str(meta["backbone"])})
    tmp_m.write_text(json.dumps(_jsonable(full), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp_w, out / WEIGHTS_FILE)
    os.replace(tmp_m, out / META_FILE)
    log.info("checkpoint written to %s", out)
    return out


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` of a checkpoint folder, checked for format and required keys."""
    ckpt = Path(ckpt_dir)
    meta_path = ckpt / META_FILE
    if not ckpt.is_dir():
        raise ModelFileError(f"{ckpt}: not a checkpoint folder (expected {META_FILE} and {WEIGHTS_FILE} in it)")
    if not meta_path.is_file():
        raise ModelFileError(f"{ckpt}: no {META_FILE}; is this a folder written by `facediag train`?")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{meta_path}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{meta_path}: format_version {meta.get('format_version')!r}; this facediag reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelFileError(f"{meta_path}: missing key(s) {', '.join(missing)}")
    return meta


def _build_module(meta: dict[str, Any], backbone_weights: str | Path | None):
    """An untrained module of the checkpoint's architecture."""
    from edge.face.contract import PreprocessContract
    from training.backbones import BACKBONES, get_backbone
    from training.classifier import FaceClassifier

    name = meta["backbone"]
    if name not in BACKBONES:
        raise ModelFileError(f"checkpoint backbone {name!r} is unknown to this facediag ({', '.join(BACKBONES)})")
    contract = PreprocessContract.from_dict(meta["contract"])
    backbone = get_backbone(name, weights=backbone_weights, pretrained=False)
    if backbone.contract != contract:
        raise ModelFileError(
            f"checkpoint contract {contract} differs from backbone {name!r}'s contract {backbone.contract}: "
            "the checkpoint was made by an incompatible version"
        )
    head = meta.get("head", {})
    n = int(head.get("num_classes", len(meta["classes"])))
    if n != len(meta["classes"]):
        raise ModelFileError(f"checkpoint lists {len(meta['classes'])} classes but its head has {n} outputs")
    return FaceClassifier(backbone, n, l2_normalize=bool(head.get("l2_normalize", True)))


def load_classifier(ckpt_dir: str | Path, backbone_weights: str | Path | None = None):
    """(model in eval mode returning probabilities, meta) from a checkpoint folder.

    ``backbone_weights`` is not needed (the checkpoint carries every weight);
    when given it is only used to build the architecture. Missing or extra keys,
    or tensors of another shape (a checkpoint of another backbone), are errors
    that name the keys.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt = Path(ckpt_dir)
    meta = read_meta(ckpt)
    if meta.get("strategy") == "dsift":
        raise ModelFileError(
            f"{ckpt} is a dense-SIFT checkpoint (numpy, not a neural network): "
            "read it with training.strategies.dsift.load_dsift"
        )
    weights_path = ckpt / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelFileError(f"{ckpt}: no {WEIGHTS_FILE}; the checkpoint is incomplete")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    model = _build_module(meta, backbone_weights)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelFileError(
            f"{weights_path} does not match a {meta['backbone']!r} classifier: "
            + (f"missing {len(missing)} key(s) ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unexpected {len(extra)} key(s) ({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})" if extra else "")
            + ". Is it a checkpoint of another backbone?"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ModelFileError(
            f"{weights_path}: tensor shapes differ from a {meta['backbone']!r} classifier with "
            f"{len(meta['classes'])} classes: {'; '.join(wrong[:5])}. Is it a checkpoint of another backbone?"
        )
    model.load_state_dict(state, strict=True)
    if "temperature" in state and abs(float(state["temperature"]) - float(meta["temperature"])) > 1e-5 * max(
        1.0, abs(float(meta["temperature"]))
    ):
        raise ModelFileError(
            f"{ckpt}: temperature in {META_FILE} ({meta['temperature']}) differs from the weights file "
            f"({float(state['temperature'])}); the folder mixes two checkpoints"
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, meta
