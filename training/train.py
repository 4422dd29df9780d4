"""The training run behind ``facediag train``: data -> crops -> strategy -> calibration -> checkpoint.

One function, ``run_training(config)``, so the command line, tests and
benchmarks all train the same way:

1. seed everything (``facediag.training.seeding``);
2. read and check the labelled photos, carve a validation split if there is none;
3. crop every photo through the station's face front-end with the backbone's
   contract (cached on disk; photos without a face are skipped and counted);
4. train with the chosen strategy on the train split (model selection on val);
5. calibrate probabilities on the validation split only (temperature, or Platt
   for two classes) and measure accuracy, NLL and ECE on every split, before and
   after calibration (test split included when present);
6. write the checkpoint folder (``facediag.training.checkpoint``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.errors import ConfigError
from facediag.edge.face.contract import PreprocessContract
from facediag.training.data import DEFAULT_VAL_FRACTION, SPLITS, Dataset, DatasetError, load_dataset

log = logging.getLogger(__name__)

# split -> (crops (N, H, W, 3) uint8, labels (N,), the CropSet they came from)
_Splits = dict[str, tuple[np.ndarray, np.ndarray, Any]]

@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` hyperparameters mean "the strategy's default"."""

    out: Path
    backbone: str = "facenet"
    strategy: str = "dtl2"
    data_dir: Path | None = None
    csv_path: Path | None = None
    images_dir: Path | None = None
    weights: Path | None = None
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    unfreeze: int | None = None
    batch_size: int | None = None
    patience: int | None = None
    svm_c: float | None = None
    head_lr_mult: float | None = None
    cache: Path | None = None  # None = no cache
    detector: str | None = None  # None = yunet when detector_model else mtcnn
    detector_model: Path | None = None
    keep_classes: list[str] | None = None  # --binary POS NEG
    healthy: str | None = None
    calibration: str = "temperature"
    val_fraction: float = DEFAULT_VAL_FRACTION
    threads: int | None = 2
    progress: bool = True


@dataclass
class TrainOutcome:
    out_dir: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per split, for the summary table


def _crop_splits(ds: Dataset, contract: PreprocessContract, cfg: TrainConfig) -> tuple[_Splits, str]:
    """Per split: (crops, labels, CropSet); photos without a face are dropped from the split."""
    from facediag.training.crop_cache import CropCache, make_cropper

    detector = cfg.detector if cfg.detector not in (None, "auto") else None
    cropper = make_cropper(detector, cfg.detector_model, contract)
    cache = CropCache(cfg.cache, cropper)
    out = {}
    for split in SPLITS:
        samples = ds.split(split)
        if not samples:
            continue
        cs = cache.crop_all(
            [s.path for s in samples], [s.where for s in samples], desc=f"crops ({split})", progress=cfg.progress
        )
        labels = ds.label_index([samples[i] for i in cs.kept])
        out[split] = (cs.crops, labels, cs)
    log.info("crop cache: %d hits, %d computed (%s)", cache.hits, cache.misses, cfg.cache or "no cache")
    detector_name = getattr(cropper.detector, "name", detector or "?")
    return out, detector_name


def _check_after_crops(classes: list[str], splits: _Splits) -> None:
    for i, c in enumerate(classes):
        n_tr = int((splits["train"][1] == i).sum()) if "train" in splits else 0
        n_va = int((splits["val"][1] == i).sum()) if "val" in splits else 0
        if n_tr < 1 or n_tr + n_va < 2:
            raise DatasetError(
                f"class {c!r} has {n_tr} training and {n_va} validation photo(s) with a detectable face; "
                "every class needs at least 2 (one to train, one to validate): add photos or check the detector"
            )


def _split_metrics(raw: np.ndarray, calibrated: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy, NLL and ECE of one split from logits before and after calibration."""
    from facediag.training.calibrate_probs import ece, nll, softmax

    if len(labels) == 0:
        return {"n": 0}
    return {
        "n": int(len(labels)),
        "accuracy": float((calibrated.argmax(axis=1) == labels).mean()),
        "accuracy_uncalibrated": float((raw.argmax(axis=1) == labels).mean()),
        "loss_uncalibrated": nll(raw, labels),
        "loss": nll(calibrated, labels),
        "ece_uncalibrated": ece(softmax(raw), labels),
        "ece": ece(softmax(calibrated), labels),
    }


def _counts(classes: list[str], splits: _Splits) -> dict[str, dict[str, int]]:
    return {sp: {c: int((v[1] == i).sum()) for i, c in enumerate(classes)} for sp, v in splits.items()}


def _skipped(splits: _Splits) -> tuple[dict[str, dict[str, int]], list[dict[str, str]]]:
    per: dict[str, dict[str, int]] = {}
    examples: list[dict[str, str]] = []
    for sp, (_, _, cs) in splits.items():
        if cs.skipped:
            per[sp] = dict(cs.skipped)
        examples.extend({"split": sp, "photo": w, "reason": r} for w, r in cs.skipped_items)
    return per, examples[:50]


def _hyperparameters(cfg: TrainConfig, strategy: Any) -> dict[str, Any]:
    """The training options a strategy may read; warns about those given that this strategy ignores."""
    hyper = {
        "epochs": cfg.epochs, "lr": cfg.lr, "unfreeze": cfg.unfreeze, "batch_size": cfg.batch_size,
        "patience": cfg.patience, "svm_c": cfg.svm_c, "head_lr_mult": cfg.head_lr_mult,
    }
    unused = sorted(k for k, v in hyper.items() if v is not None and k not in strategy.spec.options)
    if unused:
        log.warning("strategy %s does not use %s", cfg.strategy, ", ".join(f"--{k.replace('_', '-')}" for k in unused))
    return hyper


def _metrics(
    fitted: Any, present: dict[str, Any], skipped: dict[str, dict[str, int]], skipped_examples: list[dict[str, str]]
) -> dict[str, Any]:
    """The checkpoint's metrics: the strategy's own, per-split scores, skipped photos and the training history."""
    metrics: dict[str, Any] = dict(fitted.base_metrics)
    for sp, (raw, calibrated) in fitted.scores.items():
        metrics[sp] = _split_metrics(raw, calibrated, present[sp].labels)
    metrics["skipped_photos"] = skipped
    metrics["skipped_total"] = int(sum(sum(v.values()) for v in skipped.values()))
    metrics["skipped_examples"] = skipped_examples
    if fitted.history is not None:
        metrics["history"] = fitted.history
    return metrics


def run_training(cfg: TrainConfig) -> TrainOutcome:
    """Train, calibrate, measure and save one model; see the module docstring for the steps."""
    from facediag.training.seeding import seed_everything
    from facediag.training.strategies import CALIBRATIONS, SplitData, StrategyInput, get_strategy

    t0 = time.monotonic()
    strategy = get_strategy(cfg.strategy)  # ConfigError for an unknown name, before the slow cropping
    if cfg.calibration not in CALIBRATIONS:
        raise ConfigError(f"unknown calibration {cfg.calibration!r}: choose temperature, platt or none")
    seed_everything(cfg.seed, cfg.threads)
    ds = load_dataset(
        data_dir=cfg.data_dir, csv_path=cfg.csv_path, images_dir=cfg.images_dir, keep_classes=cfg.keep_classes,
        healthy=cfg.healthy, val_fraction=cfg.val_fraction, seed=cfg.seed,
    )
    contract = strategy.contract(cfg.backbone)
    weights_info = strategy.weights_info(cfg.backbone, cfg.weights)

    splits, detector_name = _crop_splits(ds, contract, cfg)
    _check_after_crops(ds.classes, splits)
    skipped, skipped_examples = _skipped(splits)
    if skipped:
        log.warning("photos skipped (no usable face): %s", skipped)
    empty = np.zeros((0, contract.height, contract.width, 3), np.uint8)

    def get(sp: str) -> tuple[np.ndarray, np.ndarray, Any]:
        return splits.get(sp, (empty, np.zeros(0, np.int64), None))

    hyper = _hyperparameters(cfg, strategy)
    data_info = {
        "source": str(cfg.csv_path or cfg.data_dir),
        "images": str(cfg.images_dir) if cfg.images_dir else None,
        "classes_kept": cfg.keep_classes,
        "val_fraction": cfg.val_fraction,
        "counts_used": _counts(ds.classes, splits),
        "detector": detector_name,
    }

    def make_backbone(pretrained: bool) -> Any:
        from facediag.training.backbones import get_backbone

        if pretrained:
            return get_backbone(cfg.backbone, weights=cfg.weights, pretrained=True)
        return get_backbone(cfg.backbone, weights=None, pretrained=False)

    inp = StrategyInput(
        classes=ds.classes, contract=contract, train=SplitData(*get("train")[:2]), val=SplitData(*get("val")[:2]),
        seed=cfg.seed, hyperparameters=hyper, make_backbone=make_backbone, backbone_name=cfg.backbone,
        progress=cfg.progress, healthy_class=ds.healthy_class,
    )
    present = {sp: SplitData(*splits[sp][:2]) for sp in SPLITS if sp in splits}
    fitted = strategy.fit(inp, present, cfg.calibration)

    metrics = _metrics(fitted, present, skipped, skipped_examples)
    metrics["seconds"] = round(time.monotonic() - t0, 1)

    run_meta = {
        "backbone_weights": weights_info,
        "classes": ds.classes,
        "healthy_class": ds.healthy_class,
        "contract": contract.to_dict(),
        "strategy": cfg.strategy,
        "seed": cfg.seed,
        "data": data_info,
        "metrics": metrics,
    }
    fitted.save(Path(cfg.out), run_meta)
    from facediag.training.checkpoint import read_meta

    return TrainOutcome(out_dir=Path(cfg.out), meta=read_meta(cfg.out), rows=_rows(metrics))


def _rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for sp in SPLITS:
        m = metrics.get(sp)
        if m and m.get("n"):
            rows.append({"split": sp, **{k: m.get(k) for k in (
                "n", "accuracy", "accuracy_uncalibrated", "loss_uncalibrated", "loss", "ece_uncalibrated", "ece")}})
    return rows


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}

