"""DTL1: replace the last layer and fine-tune with SGD, early stopping on validation loss.

The seed study's fine-tuning recipe: SGD, learning rate 5e-5, momentum 0.9,
weight decay 5e-4. As in the usual transfer-learning setup of that study's
toolbox, the new layer learns faster than the pretrained ones
(``head_lr_mult``, default 1000, i.e. 0.05: a freshly initialised layer on
unit-norm embeddings barely moves at 5e-5 in a few dozen epochs; measured on
GENKI-4K, x100 still underfits after 60 epochs). ``--unfreeze N`` picks how many trailing backbone
blocks train with it (0 = the head only, the default). Frozen blocks stay in
eval mode, so their batch-norm statistics remain the pretrained ones.

With ``--unfreeze 0`` the backbone is a fixed function, so its embeddings (of
each training crop and its mirror image, the only augmentation) are computed
once and the head trains on them: the same mathematics as running the whole
network every step, at a fraction of the cost.

When backbone blocks train, their batch-norm statistics are recomputed on the
training crops after every epoch (``refresh_batchnorm``), so that validation
(eval mode) sees statistics of the current weights.

Training stops when the validation loss has not improved for ``patience``
epochs; the weights of the best epoch are restored.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from facediag.training.strategies import STRATEGIES, StrategyInput, StrategyResult, StrategySpec, batched
from facediag.training.strategies.neural import neural_strategy

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "lr": 5e-5,
    "head_lr_mult": 1000.0,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "epochs": 60,
    "patience": 8,
    "batch_size": 32,
    "unfreeze": 0,
    "l2_normalize": True,
}


def _hparams(inp: StrategyInput, defaults: dict[str, Any]) -> dict[str, Any]:
    hp = {k: inp.hp(k, v) for k, v in defaults.items()}
    if hp["epochs"] < 1 or hp["batch_size"] < 1 or hp["patience"] < 1:
        from facediag.edge.errors import ConfigError

        raise ConfigError("--epochs, --batch-size and --patience must be >= 1")
    if not hp["lr"] > 0:
        from facediag.edge.errors import ConfigError

        raise ConfigError(f"--lr must be > 0, got {hp['lr']}")
    return hp


def _optimizer(model, hp: dict[str, Any]):
    import torch

    head = [p for p in model.head.parameters()]
    body = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": hp["lr"] * hp["head_lr_mult"]}]
    if body:
        groups.append({"params": body, "lr": hp["lr"]})
    return torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])


def _set_modes(model, trainable_blocks: list, train_all: bool) -> None:
    if train_all:
        model.train()
        return
    model.eval()
    for b in trainable_blocks:
        b.train()
    model.head.train()


def refresh_batchnorm(model, scope, x: Any, batch_size: int) -> int:
    """Recompute the running statistics of the batch-norm layers in ``scope`` for the current weights.

    While weights move fast (training from scratch), the exponential running
    averages lag behind them; in eval mode the lag can swamp the real signal and
    make every photo look the same. A no-grad pass over the training crops with
    cumulative averaging ("precise BN") fixes that. Returns the number of layers refreshed.
    """
    import torch
    from torch import nn

    bns = [m for m in scope.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or len(x) == 0:
        return 0
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
        m.train()
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            if len(x[s : s + batch_size]) > 1:
                model.logits(x[s : s + batch_size])
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()
    return len(bns)


def _logit_fns(model, inp: StrategyInput, head_only: bool) -> tuple[Callable, Callable, Any]:
    """(train_logits(idx, flip), val_logits(), training inputs or None) for the two ways of training.

    Head only: the fixed backbone's embeddings of every crop and its mirror image, computed once.
    Otherwise: the preprocessed crops, run through the whole network at every step.
    """
    import torch

    from facediag.edge.face.contract import crops_to_input

    if head_only:
        model.eval()
        f_tr = torch.from_numpy(batched(model.embed, inp.train.crops, inp.contract, 64, "embeddings", inp.progress))
        f_fl = torch.from_numpy(
            batched(model.embed, np.ascontiguousarray(inp.train.crops[:, :, ::-1]), inp.contract, 64,
                    "embeddings (mirrored)", inp.progress)
        )
        f_va = torch.from_numpy(batched(model.embed, inp.val.crops, inp.contract, 64))

        def head_train_logits(idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
            f = torch.where(flip[:, None], f_fl[idx], f_tr[idx])
            return model.head(f)

        def head_val_logits() -> torch.Tensor:
            with torch.no_grad():
                return model.head(f_va)

        return head_train_logits, head_val_logits, None

    x_tr_all = torch.from_numpy(crops_to_input(inp.train.crops, inp.contract))
    x_va_all = torch.from_numpy(crops_to_input(inp.val.crops, inp.contract)) if len(inp.val) else None

    def train_logits(idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        x = x_tr_all[idx]
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return model.logits(x)

    def val_logits() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            assert x_va_all is not None  # only called when there is a val split
            return torch.cat([model.logits(x_va_all[s : s + 64]) for s in range(0, len(x_va_all), 64)])

    return train_logits, val_logits, x_tr_all


def _sgd_epoch(opt, train_logits: Callable, y_tr, gen, bs: int, head_only: bool) -> float:
    """One pass over the shuffled training set (random mirror flips); the mean training loss."""
    import torch
    import torch.nn.functional as F

    order = torch.randperm(len(y_tr), generator=gen)
    flips = torch.rand(len(y_tr), generator=gen) < 0.5
    total, n = 0.0, 0
    for s in range(0, len(order), bs):
        idx = order[s : s + bs]
        if len(idx) < 2 and not head_only:
            continue  # batch norm cannot train on one sample
        loss = F.cross_entropy(train_logits(idx, flips[idx]), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        n += len(idx)
    return total / max(n, 1)


def _validate(val_logits: Callable, y_va, train_loss: float) -> tuple[float, float]:
    """(validation loss, accuracy); without validation crops, (training loss, nan)."""
    import torch.nn.functional as F

    if len(y_va):
        zv = val_logits()
        return float(F.cross_entropy(zv, y_va)), float((zv.argmax(1) == y_va).float().mean())
    return train_loss, float("nan")


def fit_sgd(model, inp: StrategyInput, hp: dict[str, Any], unfreeze: int | None) -> dict[str, Any]:
    """Train ``model`` (a FaceClassifier) in place; ``unfreeze=None`` trains every layer. Returns history."""
    import torch

    from facediag.training.classifier import freeze_backbone
    from facediag.training.seeding import torch_generator

    gen = torch_generator(inp.seed)
    blocks = freeze_backbone(model, unfreeze)
    head_only = unfreeze == 0
    y_tr = torch.from_numpy(inp.train.labels.astype(np.int64))
    y_va = torch.from_numpy(inp.val.labels.astype(np.int64))
    bs = int(hp["batch_size"])
    train_logits, val_logits, x_tr_all = _logit_fns(model, inp, head_only)

    opt = _optimizer(model, hp)
    best_loss, best_state, best_epoch, bad = math.inf, None, 0, 0
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "val_accuracy": []}
    from tqdm import tqdm

    bar = tqdm(range(1, int(hp["epochs"]) + 1), desc="epochs", unit="epoch", disable=not inp.progress, leave=False)
    for epoch in bar:
        if not head_only:
            _set_modes(model, blocks, train_all=unfreeze is None)
        history["train_loss"].append(_sgd_epoch(opt, train_logits, y_tr, gen, bs, head_only))
        if not head_only:
            scope = model.backbone if unfreeze is None else torch.nn.ModuleList(blocks)
            refresh_batchnorm(model, scope, x_tr_all, bs)
        vloss, vacc = _validate(val_logits, y_va, history["train_loss"][-1])
        history["val_loss"].append(vloss)
        history["val_accuracy"].append(vacc)
        bar.set_postfix(train_loss=f"{history['train_loss'][-1]:.3f}", val_loss=f"{vloss:.3f}")
        if vloss < best_loss - 1e-6:
            best_loss, best_epoch, bad = vloss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= int(hp["patience"]):
                log.info("early stopping at epoch %d (best %d, val loss %.4f)", epoch, best_epoch, best_loss)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    history["best_epoch"] = best_epoch
    history["epochs_run"] = len(history["train_loss"])
    history["trainable_blocks"] = len(blocks) if unfreeze is not None else "all"
    return history


def train_dtl1(inp: StrategyInput) -> StrategyResult:
    from facediag.training.classifier import FaceClassifier

    hp = _hparams(inp, DEFAULTS)
    if hp["unfreeze"] < 0:
        from facediag.edge.errors import ConfigError

        raise ConfigError(f"--unfreeze must be >= 0, got {hp['unfreeze']}")
    backbone = inp.make_backbone(True)
    model = FaceClassifier(backbone, len(inp.classes), l2_normalize=bool(hp["l2_normalize"]))
    history = fit_sgd(model, inp, hp, unfreeze=int(hp["unfreeze"]))
    hp["optimizer"] = "SGD"
    return StrategyResult(
        model=model, backbone=getattr(backbone, "backbone_name", inp.backbone_name), hyperparameters=hp, history=history
    )


STRATEGIES.register(
    StrategySpec(
        name="dtl1",
        summary="new last layer + fine-tuning, SGD lr 5e-5 momentum 0.9 weight decay 5e-4, early stopping "
        "(--unfreeze N also trains the last N backbone blocks)",
        factory=neural_strategy(train_dtl1),
        options=("epochs", "lr", "head_lr_mult", "unfreeze", "batch_size", "patience"),
    )
)
