"""From scratch: the same backbone architecture from random weights, trained end to end.

The seed study's baseline for "does face-recognition pre-training help?". Every
layer trains (SGD with momentum 0.9 and weight decay 5e-4 like DTL1, but a
learning rate suited to random initialisation, 1e-2), with mirror-image
augmentation and early stopping on validation loss. The embedding is not
L2-normalised (a random network's embedding direction carries no meaning yet).
Batch-norm statistics are recomputed after every epoch (see
``dtl1.refresh_batchnorm``): without that, a fast-moving random network gives
every photo the same output in eval mode. Face-recognition features are built
to ignore skin tone and lighting, so a sign carried by colour (pale skin) can
be learnt better from scratch than from them, even from a hundred photos.
"""

from __future__ import annotations

from typing import Any

from facediag.training.strategies import STRATEGIES, StrategyInput, StrategyResult, StrategySpec
from facediag.training.strategies.dtl1 import _hparams, fit_sgd
from facediag.training.strategies.neural import neural_strategy

DEFAULTS: dict[str, Any] = {
    "lr": 1e-2,
    "head_lr_mult": 1.0,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "epochs": 40,
    "patience": 8,
    "batch_size": 32,
    "l2_normalize": False,
    "augment": 0.0,
}


def train_scratch(inp: StrategyInput) -> StrategyResult:
    from facediag.training.classifier import FaceClassifier

    hp = _hparams(inp, DEFAULTS)
    backbone = inp.make_backbone(False)
    model = FaceClassifier(backbone, len(inp.classes), l2_normalize=bool(hp["l2_normalize"]))
    history = fit_sgd(model, inp, hp, unfreeze=None)
    hp["optimizer"] = "SGD"
    hp["pretrained"] = False
    return StrategyResult(
        model=model, backbone=getattr(backbone, "backbone_name", inp.backbone_name), hyperparameters=hp, history=history
    )


STRATEGIES.register(
    StrategySpec(
        name="scratch",
        summary="the same architecture from random weights, trained end to end",
        factory=neural_strategy(train_scratch),
        options=("epochs", "lr", "head_lr_mult", "batch_size", "patience", "augment"),
        pretrained=False,
    )
)
