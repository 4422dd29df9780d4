"""DTL1: replace the last layer and fine-tune with SGD: light augmentation, gradual unfreezing, early stopping.

The seed study's fine-tuning recipe: SGD, learning rate 5e-5, momentum 0.9,
weight decay 5e-4. As in the usual transfer-learning setup of that study's
toolbox, the new layer learns faster than the pretrained ones
(``head_lr_mult``, default 1000, i.e. 0.05: a freshly initialised layer on
unit-norm embeddings barely moves at 5e-5 in a few dozen epochs; measured on
GENKI-4K, x100 still underfits after 60 epochs).

Training batches are augmented (``--augment S``, see ``facediag.training.augment``):
random mirror images always; at S > 0 also colour and geometry jitter, scaled by S
(default 0: the jitter did not beat mirror images alone on the proxy benchmark,
see benchmarks/dtl1.md). Validation photos never are.

Gradual unfreezing (``--unfreeze N``, ``--unfreeze-every E``): the head trains
first, alone, for up to ``head_epochs`` epochs (early stopping on validation
loss ends that stage); then the last backbone block is unfrozen and trains with
the head for E epochs, then the last two for E more, and so on up to N blocks.
Each stage starts from the best weights so far. The last block learns at
``lr * block_lr_mult``, each earlier one at ``layer_lr_decay`` times the rate of
the block after it, so the early (general) layers move least. ``--unfreeze-every 0``
trains all N blocks from the first epoch (with the same per-block rates).
Pretrained blocks keep their batch-norm statistics (eval mode) while they train:
batches of a few dozen faces are too small to re-estimate them.

While only the head trains the backbone is a fixed function, so its embeddings of
each training crop (the crop, its mirror image and, with augmentation, a few
jittered views) are computed once and the head trains on them: the same
mathematics as running the whole network every step, at a fraction of the cost.

Training stops when the validation loss has not improved for ``patience``
epochs; the weights of the best epoch are restored. Every epoch is recorded in
``history["epochs"]`` (written as curves.csv / curves.png into the checkpoint).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from facediag.training.strategies import STRATEGIES, StrategyInput, StrategyResult, StrategySpec
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
    "augment": 0.0,  # measured on the proxy benchmark: see benchmarks/dtl1.md
    "unfreeze_every": 3,
    "head_epochs": 40,
    "block_lr_mult": 20.0,
    "layer_lr_decay": 0.5,
}
#: Jittered views per training crop in the head-only stage's embedding bank (besides the crop and its mirror).
HEAD_VIEWS = 4


def _config_error(message: str) -> Exception:
    from facediag.edge.errors import ConfigError

    return ConfigError(message)


def _hparams(inp: StrategyInput, defaults: dict[str, Any]) -> dict[str, Any]:
    hp = {k: inp.hp(k, v) for k, v in defaults.items()}
    if hp["epochs"] < 1 or hp["batch_size"] < 1 or hp["patience"] < 1:
        raise _config_error("--epochs, --batch-size and --patience must be >= 1")
    if not hp["lr"] > 0:
        raise _config_error(f"--lr must be > 0, got {hp['lr']}")
    if not (math.isfinite(hp.get("augment", 0.0)) and hp.get("augment", 0.0) >= 0):
        raise _config_error(f"--augment must be >= 0, got {hp['augment']}")
    if hp.get("unfreeze_every", 0) < 0 or hp.get("head_epochs", 1) < 1:
        raise _config_error("--unfreeze-every must be >= 0 and --head-epochs >= 1")
    if not hp.get("block_lr_mult", 1.0) > 0 or not 0 < hp.get("layer_lr_decay", 1.0) <= 1:
        raise _config_error("--block-lr-mult must be > 0 and --layer-lr-decay in (0, 1]")
    return hp


@dataclass(frozen=True)
class Stage:
    """``unfrozen`` trailing backbone blocks train with the head for at most ``epochs`` epochs (0: head only)."""

    unfrozen: int
    epochs: int


def unfreeze_schedule(unfreeze: int, every: int, head_epochs: int, epochs: int) -> list[Stage]:
    """The stages of a DTL1 run, at most ``epochs`` epochs in all.

    ``unfreeze`` 0: the head alone for ``epochs``. ``every`` 0: all ``unfreeze`` blocks from the start.
    Otherwise: the head alone (``head_epochs``), then one more trailing block every ``every`` epochs.
    """
    if unfreeze < 0 or every < 0:
        raise ValueError("unfreeze and every must be >= 0")
    if unfreeze == 0:
        return [Stage(0, epochs)]
    if every == 0:
        return [Stage(unfreeze, epochs)]
    out: list[Stage] = []
    left = epochs
    for st in [Stage(0, head_epochs)] + [Stage(k, every) for k in range(1, unfreeze + 1)]:
        if left <= 0:
            break
        out.append(Stage(st.unfrozen, min(st.epochs, left)))
        left -= out[-1].epochs
    return out


def make_optimizer(model, blocks: list, hp: dict[str, Any], all_layers: bool = False):
    """SGD with one parameter group per trainable part: the head first, then the trainable blocks from the last.

    ``blocks`` (forward order) are the trainable trailing blocks: the last one learns at
    ``lr * block_lr_mult``, each earlier one ``layer_lr_decay`` times slower. ``all_layers``
    (training from scratch): one group for the whole backbone at ``lr``.
    """
    import torch

    groups: list[dict[str, Any]] = [{"params": list(model.head.parameters()), "lr": hp["lr"] * hp["head_lr_mult"],
                                     "name": "head"}]
    if all_layers:
        groups.append({"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": hp["lr"],
                       "name": "backbone"})
    else:
        top = hp["lr"] * hp.get("block_lr_mult", 1.0)
        for depth, block in enumerate(reversed(blocks)):
            groups.append({"params": list(block.parameters()), "lr": top * hp.get("layer_lr_decay", 1.0) ** depth,
                           "name": f"block -{depth + 1}"})
    return torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])


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


def _embed(model, x, desc: str = "", progress: bool = False):
    import torch
    from tqdm import tqdm

    with torch.no_grad():
        return torch.cat([model.embed(x[s : s + 64]) for s in tqdm(
            range(0, len(x), 64), desc=desc, unit="batch", disable=not progress or not desc, leave=False)])


class _Feeds:
    """Training logits (``head``: from the embedding bank; ``full``: the whole network) and validation logits."""

    def __init__(self, model, inp: StrategyInput, hp: dict[str, Any], seed: int) -> None:
        import torch

        from facediag.edge.face.contract import crops_to_input
        from facediag.training.augment import AugmentConfig
        from facediag.training.seeding import torch_generator

        self.model, self.inp = model, inp
        self.x_tr = torch.from_numpy(crops_to_input(inp.train.crops, inp.contract))
        self.x_va = torch.from_numpy(crops_to_input(inp.val.crops, inp.contract)) if len(inp.val) else None
        self.jitter = AugmentConfig.light(float(hp.get("augment", 0.0)), flip=False)
        self.aug_gen = torch_generator(seed + 1_000_003)  # its own stream: the shuffling stays as without jitter
        self.bank: Any = None
        self.f_va: Any = None

    def head_logits(self, idx, flip, gen):
        import torch

        if self.bank is None:
            self._make_bank()
        if len(self.bank) == 2:
            f = torch.where(flip[:, None], self.bank[1][idx], self.bank[0][idx])
        else:
            f = self.bank[torch.randint(len(self.bank), (len(idx),), generator=gen), idx]
        return self.model.head(f)

    def _make_bank(self) -> None:
        import torch

        from facediag.training.augment import AugmentConfig, augment_batch

        self.model.eval()
        p = self.inp.progress
        views = [_embed(self.model, self.x_tr, "embeddings", p), _embed(self.model, self.x_tr.flip(-1), "embeddings (mirrored)", p)]
        if self.jitter.colour or self.jitter.geometry:
            cfg = AugmentConfig(**{**self.jitter.to_dict(), "flip": True})
            for v in range(HEAD_VIEWS):
                views.append(_embed(self.model, augment_batch(self.x_tr, cfg, self.aug_gen), f"embeddings (view {v + 3})", p))
        self.bank = torch.stack(views)
        if self.x_va is not None:
            self.f_va = _embed(self.model, self.x_va)

    def full_logits(self, idx, flip, gen):
        from facediag.training.augment import augment_batch, mirror

        x = mirror(self.x_tr[idx], flip)
        if self.jitter.colour or self.jitter.geometry:
            x = augment_batch(x, self.jitter, self.aug_gen)
        return self.model.logits(x)

    def val_logits(self, head_only: bool):
        import torch

        if self.x_va is None:
            return None
        if head_only:
            if self.f_va is None:
                self._make_bank()
            with torch.no_grad():
                return self.model.head(self.f_va)
        self.model.eval()
        with torch.no_grad():
            return torch.cat([self.model.logits(self.x_va[s : s + 64]) for s in range(0, len(self.x_va), 64)])


def _sgd_epoch(opt, train_logits: Callable, y_tr, gen, bs: int, head_only: bool) -> tuple[float, float]:
    """One pass over the shuffled training set (random mirror flips); mean training loss and accuracy."""
    import torch
    import torch.nn.functional as F

    order = torch.randperm(len(y_tr), generator=gen)
    flips = torch.rand(len(y_tr), generator=gen) < 0.5
    total, correct, n = 0.0, 0, 0
    for s in range(0, len(order), bs):
        idx = order[s : s + bs]
        if len(idx) < 2 and not head_only:
            continue  # batch norm cannot train on one sample
        z = train_logits(idx, flips[idx], gen)
        loss = F.cross_entropy(z, y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        correct += int((z.detach().argmax(1) == y_tr[idx]).sum())
        n += len(idx)
    return total / max(n, 1), correct / max(n, 1)


class _Best:
    def __init__(self) -> None:
        self.loss, self.epoch, self.state = math.inf, 0, None

    def offer(self, loss: float, epoch: int, model) -> bool:
        if loss < self.loss - 1e-6:
            self.loss, self.epoch, self.state = loss, epoch, copy.deepcopy(model.state_dict())
            return True
        return False

    def restore(self, model) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def _block_names(model, blocks: list) -> list[str]:
    names = {id(m): n for n, m in model.backbone.named_modules()}
    return [names.get(id(b), "?") for b in blocks]


def _epoch_record(epoch: int, stage: int, unfrozen: Any, opt, train: tuple[float, float], val: tuple[float, float]
                  ) -> dict[str, Any]:
    groups = opt.param_groups
    return {
        "epoch": epoch, "stage": stage, "unfrozen_blocks": unfrozen, "lr_head": groups[0]["lr"],
        "lr_blocks": groups[1]["lr"] if len(groups) > 1 else None, "train_loss": train[0], "train_accuracy": train[1],
        "val_loss": val[0], "val_accuracy": val[1],
    }


def _validate(z_val, y_va, train_loss: float) -> tuple[float, float]:
    """(validation loss, accuracy); without validation crops, (training loss, nan)."""
    import torch.nn.functional as F

    if z_val is not None and len(y_va):
        return float(F.cross_entropy(z_val, y_va)), float((z_val.argmax(1) == y_va).float().mean())
    return train_loss, float("nan")


def _prepare_stage(model, stage: Stage, unfreeze: int | None, hp: dict[str, Any]) -> tuple[list, Any, bool]:
    """Freeze/unfreeze for ``stage``; (trainable blocks, optimizer, head_only)."""
    from facediag.training.classifier import freeze_backbone

    scratch = unfreeze is None
    blocks = freeze_backbone(model, None if scratch else stage.unfrozen)
    opt = make_optimizer(model, blocks, hp, all_layers=scratch)
    if not scratch and stage.unfrozen:
        log.info("unfreezing %s (learning rates %s)", ", ".join(_block_names(model, blocks)),
                 ", ".join(f"{g['name']} {g['lr']:.3g}" for g in opt.param_groups))
    return blocks, opt, not scratch and stage.unfrozen == 0


def fit_sgd(model, inp: StrategyInput, hp: dict[str, Any], unfreeze: int | None) -> dict[str, Any]:
    """Train ``model`` (a FaceClassifier) in place by the stages of :func:`unfreeze_schedule`.

    ``unfreeze=None`` trains every layer from the first epoch (training from scratch: batch-norm
    layers train and their statistics are refreshed after each epoch). Returns the history.
    """
    import torch
    from tqdm import tqdm

    from facediag.training.classifier import trailing_blocks
    from facediag.training.seeding import torch_generator

    gen = torch_generator(inp.seed)
    n_blocks = len(trailing_blocks(model.backbone))
    if unfreeze is not None and unfreeze > n_blocks:
        log.warning("--unfreeze %d: the backbone has only %d blocks; unfreezing all of them", unfreeze, n_blocks)
        unfreeze = n_blocks
    epochs, patience, bs = int(hp["epochs"]), int(hp["patience"]), int(hp["batch_size"])
    schedule = ([Stage(n_blocks, epochs)] if unfreeze is None else
                unfreeze_schedule(unfreeze, int(hp.get("unfreeze_every", 0)), int(hp.get("head_epochs", epochs)), epochs))
    feeds = _Feeds(model, inp, hp, inp.seed)
    y_tr = torch.from_numpy(inp.train.labels.astype(np.int64))
    y_va = torch.from_numpy(inp.val.labels.astype(np.int64))
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "val_accuracy": [], "epochs": [],
                               "schedule": [[s.unfrozen, s.epochs] for s in schedule]}
    best, epoch, stop = _Best(), 0, False
    bar = tqdm(total=sum(s.epochs for s in schedule), desc="epochs", unit="epoch", disable=not inp.progress,
               leave=True, mininterval=0)
    for si, stage in enumerate(schedule):
        if si:
            best.restore(model)  # each stage starts from the best weights so far
        blocks, opt, head_only = _prepare_stage(model, stage, unfreeze, hp)
        train_logits = feeds.head_logits if head_only else feeds.full_logits
        bad = 0
        for _ in range(stage.epochs):
            epoch += 1
            model.eval()
            if unfreeze is None:
                model.train()
            model.head.train()
            train = _sgd_epoch(opt, train_logits, y_tr, gen, bs, head_only)
            if unfreeze is None:
                refresh_batchnorm(model, model.backbone, feeds.x_tr, bs)
            val = _validate(feeds.val_logits(head_only), y_va, train[0])
            rec = _epoch_record(epoch, si, "all" if unfreeze is None else stage.unfrozen, opt, train, val)
            history["epochs"].append(rec)
            history["train_loss"].append(train[0])
            history["val_loss"].append(val[0])
            history["val_accuracy"].append(val[1])
            bar.update(1)
            bar.set_postfix(blocks=rec["unfrozen_blocks"], train_loss=f"{train[0]:.3f}", val_loss=f"{val[0]:.3f}",
                            val_acc=f"{val[1]:.2f}")
            bad = 0 if best.offer(val[0], epoch, model) else bad + 1
            if bad >= patience:
                stop = not head_only or si == len(schedule) - 1
                log.info("no better val loss for %d epochs at epoch %d (best %d, %.4f): %s", bad, epoch, best.epoch,
                         best.loss, "stopping" if stop else "next stage")
                break
        if stop:
            break
    bar.set_description(f"epochs (best {best.epoch})")
    bar.close()
    best.restore(model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    history["best_epoch"] = best.epoch
    history["epochs_run"] = epoch
    history["trainable_blocks"] = "all" if unfreeze is None else schedule[-1].unfrozen
    if unfreeze:
        history["unfrozen_block_names"] = _block_names(model, trailing_blocks(model.backbone)[n_blocks - unfreeze:])
    return history


def train_dtl1(inp: StrategyInput) -> StrategyResult:
    from facediag.training.augment import AugmentConfig
    from facediag.training.classifier import FaceClassifier

    hp = _hparams(inp, DEFAULTS)
    if hp["unfreeze"] < 0:
        raise _config_error(f"--unfreeze must be >= 0, got {hp['unfreeze']}")
    backbone = inp.make_backbone(True)
    model = FaceClassifier(backbone, len(inp.classes), l2_normalize=bool(hp["l2_normalize"]))
    history = fit_sgd(model, inp, hp, unfreeze=int(hp["unfreeze"]))
    hp["optimizer"] = "SGD"
    hp["augmentation"] = AugmentConfig.light(float(hp["augment"])).to_dict()
    return StrategyResult(
        model=model, backbone=getattr(backbone, "backbone_name", inp.backbone_name), hyperparameters=hp, history=history
    )


#: The hyperparameters (TrainConfig fields / flags) DTL1 reads.
DTL1_OPTIONS = ("epochs", "lr", "head_lr_mult", "unfreeze", "batch_size", "patience", "augment", "unfreeze_every",
                "head_epochs", "block_lr_mult", "layer_lr_decay")

STRATEGIES.register(
    StrategySpec(
        name="dtl1",
        summary="new last layer + fine-tuning, SGD lr 5e-5 momentum 0.9 weight decay 5e-4, early stopping; "
        "--augment S: light colour/geometry jitter; --unfreeze N: then the last N backbone blocks, one stage at a time",
        factory=neural_strategy(train_dtl1),
        options=DTL1_OPTIONS,
    )
)
