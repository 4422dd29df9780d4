"""Backbone + a linear head given as numbers -> a real bundle, through the real checkpoint and exporter.

Why a head "as numbers": a DTL2 model is a frozen face-recognition backbone plus one
``Linear`` layer (the linear SVM folded into it) and a temperature. Only those few
numbers are specific to a task, so the demo ships them (a few KB) and rebuilds the
rest on the user's machine: the backbone from its offline weights, then
``facediag.training.checkpoint.save_checkpoint`` and ``facediag.converters.export.export_checkpoint``
exactly as ``facediag train`` / ``facediag export`` would.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def build_head_bundle(
    backbone: Any,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    temperature: float,
    classes: list[str],
    healthy_class: str,
    parity_inputs: np.ndarray,
    out_dir: str | Path,
    l2_normalize: bool = True,
    thresholds: dict[str, float] | None = None,
    strategy: str = "dtl2",
    extra_meta: dict[str, Any] | None = None,
) -> Any:
    """Write a checkpoint (``out_dir``/checkpoint) and export it to a bundle (``out_dir``/bundle).

    ``backbone``: a ``facediag.training.backbones.get_backbone`` module; ``weight`` (C, D) and ``bias`` (C,)
    the head; ``parity_inputs``: real ``crops_to_input`` tensors for the exporter's parity check.
    Returns the loaded ``facediag.edge.bundle.Bundle``.
    """
    import torch

    from facediag.converters.export import export_checkpoint
    from facediag.training.checkpoint import save_checkpoint
    from facediag.training.classifier import FaceClassifier

    weight = np.asarray(weight, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    if weight.shape != (len(classes), backbone.embedding_dim) or bias.shape != (len(classes),):
        raise ValueError(
            f"head shapes {weight.shape} / {bias.shape} do not fit {len(classes)} classes on a "
            f"{backbone.embedding_dim}-d backbone"
        )
    model = FaceClassifier(backbone, len(classes), l2_normalize=l2_normalize, temperature=float(temperature))
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
    model.eval()
    out = Path(out_dir)
    ckpt = out / "checkpoint"
    bundle_dir = out / "bundle"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    meta = {
        "backbone": backbone.backbone_name,
        "classes": list(classes),
        "healthy_class": healthy_class,
        "contract": backbone.contract.to_dict(),
        "strategy": strategy,
        "thresholds": thresholds,
        "head": {"l2_normalize": bool(l2_normalize)},
        "seed": 0,
        **(extra_meta or {}),
    }
    save_checkpoint(ckpt, model, meta)
    return export_checkpoint(ckpt, bundle_dir, np.asarray(parity_inputs, dtype=np.float32), force=True)
