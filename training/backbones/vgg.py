"""VGG-16 for faces: VGG-Face (Parkhi et al. 2015; the seed study's best backbone) and ImageNet VGG-16.

Layout: the one used by the common PyTorch ports of VGG-Face (converted from
the MatConvNet/Caffe release, e.g. ``vgg_face_dag.pth``): thirteen 3x3 convs
``conv1_1`` .. ``conv5_3`` (with bias), 2x2 max-pools after each group, then
``fc6`` (4096, 512*7*7), ``fc7`` (4096, 4096) and ``fc8``, all ``nn.Linear``.
``fc8`` is the identity classifier of the pre-training task (2622 VGG-Face
identities; 1000 ImageNet classes for ``vgg16``). It is kept so that public
checkpoints load strictly, but the embedding is the ``fc7`` activation after
its ReLU (4096-d), the face descriptor of the VGG-Face paper.

ImageNet VGG-16 checkpoints in torchvision's layout (``features.0`` ..
``features.28``, ``classifier.0/3/6``) are renamed to this layout by
``from_torchvision_layout`` before the strict load.

Preprocessing: RGB, per-channel mean subtraction (VGG-Face's training-set mean
129.19/104.76/93.59, std 1) for ``vggface``; torchvision's ImageNet mean/std
(times 255, because input is 0..255) for ``vgg16``. Both use the loose
224x224 ``vggface_224x224`` crop.
"""

from __future__ import annotations

import torch
from torch import nn

from facediag.edge.face.contract import PreprocessContract
from facediag.training.backbones.base import ContractScaling

VGGFACE_CONTRACT = PreprocessContract(
    template="vggface_224x224",
    colour_order="RGB",
    scaling="mean_std",
    mean=(129.186279296875, 104.76238250732422, 93.59396362304688),
    std=(1.0, 1.0, 1.0),
)
IMAGENET_CONTRACT = PreprocessContract(
    template="vggface_224x224",
    colour_order="RGB",
    scaling="mean_std",
    mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
    std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
)
EMBEDDING_DIM = 4096
# (group, convs in group, output channels)
CONV_GROUPS: tuple[tuple[int, int, int], ...] = (
    (1, 2, 64),
    (2, 2, 128),
    (3, 3, 256),
    (4, 3, 512),
    (5, 3, 512),
)
VARIANTS: dict[str, tuple[PreprocessContract, int]] = {
    "vggface": (VGGFACE_CONTRACT, 2622),
    "vgg16": (IMAGENET_CONTRACT, 1000),
}


def conv_names() -> list[str]:
    """``conv1_1`` .. ``conv5_3`` in forward order."""
    return [f"conv{g}_{i}" for g, n, _ in CONV_GROUPS for i in range(1, n + 1)]


class VGG16(nn.Module):
    """VGG-16 backbone: ``crops_to_input`` batch (N, 3, 224, 224) RGB 0..255 -> fc7 embedding (N, 4096)."""

    def __init__(self, name: str = "vggface") -> None:
        super().__init__()
        if name not in VARIANTS:
            raise ValueError(f"unknown VGG variant {name!r}: choose one of {', '.join(VARIANTS)}")
        contract, classes = VARIANTS[name]
        self.contract = contract
        self.embedding_dim = EMBEDDING_DIM
        self.backbone_name = name
        self.num_pretraining_classes = classes
        self.scaling = ContractScaling(contract)  # no state-dict entries: buffers are non-persistent
        channels = 3
        for group, count, width in CONV_GROUPS:
            for i in range(1, count + 1):
                setattr(self, f"conv{group}_{i}", nn.Conv2d(channels, width, kernel_size=3, padding=1))
                channels = width
        self.fc6 = nn.Linear(512 * 7 * 7, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, classes)
        self.dropout = nn.Dropout(p=0.5)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled input -> pool5 output (N, 512, 7, 7)."""
        for group, count, _ in CONV_GROUPS:
            for i in range(1, count + 1):
                x = torch.relu(getattr(self, f"conv{group}_{i}")(x))
            x = nn.functional.max_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.contract.height, self.contract.width):
            raise ValueError(
                f"VGG-16 takes 224x224 crops (template {self.contract.template}), got {tuple(x.shape[-2:])}"
            )
        x = torch.flatten(self.conv_features(self.scaling(x)), 1)
        x = self.dropout(torch.relu(self.fc6(x)))
        return torch.relu(self.fc7(x))

    def pretraining_logits(self, x: torch.Tensor) -> torch.Tensor:
        """fc8 output (identities / ImageNet classes): only for checking that loaded weights behave."""
        return self.fc8(self.dropout(self.forward(x)))


def from_torchvision_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision VGG-16 keys (``features.N``, ``classifier.N``) to ``convG_I`` / ``fcN``.

    Returns the dict unchanged when it is not in torchvision's layout.
    """
    if not any(k.startswith("features.") for k in state):
        return state
    conv_indices = []
    index = 0
    for _, count, _ in CONV_GROUPS:
        for _ in range(count):
            conv_indices.append(index)
            index += 2  # conv, ReLU
        index += 1  # max-pool
    mapping = {f"features.{i}.": f"{name}." for i, name in zip(conv_indices, conv_names(), strict=True)}
    mapping.update({"classifier.0.": "fc6.", "classifier.3.": "fc7.", "classifier.6.": "fc8."})
    renamed = {}
    for key, value in state.items():
        prefix = next((p for p in mapping if key.startswith(p)), None)
        renamed[mapping[prefix] + key[len(prefix) :] if prefix else key] = value
    return renamed


def build_vgg(name: str) -> VGG16:
    """A freshly initialised VGG-16 (``vggface`` or ``vgg16``)."""
    return VGG16(name)
