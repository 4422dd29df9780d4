"""The training run behind ``facediag train``: data -> crops -> strategy -> calibration -> checkpoint.

One function, ``run_training(config)``, so the command line, tests and
benchmarks all train the same way:

1. seed everything (``training.seeding``);
2. read and check the labelled photos, carve a validation split if there is none;
3. crop every photo through the station's face front-end with the backbone's
   contract (cached on disk; photos without a face are skipped and counted);
4. train with the chosen strategy on the train split (model selection on val);
5. calibrate probabilities on the validation split only (temperature, or Platt
   for two classes) and measure accuracy, NLL and ECE on every split, before and
   after calibration (test split included when present);
6. write the checkpoint folder (``training.checkpoint``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ConfigError
from edge.face.contract import PreprocessContract
from training.data import DEFAULT_VAL_FRACTION, SPLITS, Dataset, DatasetError, load_dataset

log = logging.getLogger(__name__)

DSIFT_CONTRACT = PreprocessContract("arcface_112x112", colour_order="BGR")


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


def _weights_source(backbone: str, weights: Path | None, strategy: str) -> dict[str, Any]:
    from edge.hashing import sha256_file

    if strategy == "scratch":
        return {"kind": "random initialisation", "path": None, "sha256": None}
    if strategy == "dsift":
        return {"kind": "none (handcrafted features)", "path": None, "sha256": None}
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise ConfigError(f"--weights {p}: no such file")
        return {"kind": "file", "path": str(p.resolve()), "sha256": sha256_file(p)}
    from training.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    return {"kind": "built-in", "source": spec.weights_source if spec else None, "path": None, "sha256": None}


def _crop_splits(ds: Dataset, contract: PreprocessContract, cfg: TrainConfig):
    """Per split: (crops, labels, CropSet); photos without a face are dropped from the split."""
    from training.crop_cache import CropCache, make_cropper

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


def _check_after_crops(classes: list[str], splits: dict) -> None:
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
    from training.calibrate_probs import ece, nll, softmax

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


def _calibrate(model, method: str, z_val: np.ndarray, y_val: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Fit the calibration on validation logits and apply it to ``model``; returns what was done."""
    import torch

    from training.calibrate_probs import fit_platt, fit_temperature, fold_platt

    if method == "none" or len(y_val) == 0:
        if method != "none":
            log.warning("no validation photos: probabilities left uncalibrated (T = 1)")
        model.set_temperature(1.0)
        return {"method": "none", "temperature": 1.0}
    if method == "temperature":
        t = fit_temperature(z_val, y_val)
        model.set_temperature(t)
        return {"method": "temperature", "temperature": t, "fitted_on": "val", "n": int(len(y_val))}
    if method == "platt":
        if n_classes != 2 or not hasattr(model, "head"):
            raise ConfigError("--calibration platt needs two classes (e.g. --binary POS NEG); use temperature")
        a, b = fit_platt(z_val, y_val)
        w, c = fold_platt(model.head.weight.detach().numpy(), model.head.bias.detach().numpy(), a, b)
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            model.head.bias.copy_(torch.from_numpy(c.astype(np.float32)))
        model.set_temperature(1.0)
        return {"method": "platt", "a": a, "b": b, "temperature": 1.0, "fitted_on": "val", "n": int(len(y_val)),
                "note": "folded into the head's weights"}
    raise ConfigError(f"unknown calibration {method!r}: choose temperature, platt or none")


def _counts(classes: list[str], splits: dict) -> dict[str, dict[str, int]]:
    return {sp: {c: int((v[1] == i).sum()) for i, c in enumerate(classes)} for sp, v in splits.items()}


def _skipped(splits: dict) -> tuple[dict[str, dict[str, int]], list[dict[str, str]]]:
    per: dict[str, dict[str, int]] = {}
    examples: list[dict[str, str]] = []
    for sp, (_, _, cs) in splits.items():
        if cs.skipped:
            per[sp] = dict(cs.skipped)
        examples.extend({"split": sp, "photo": w, "reason": r} for w, r in cs.skipped_items)
    return per, examples[:50]


def run_training(cfg: TrainConfig) -> TrainOutcome:
    """Train, calibrate, measure and save one model; see the module docstring for the steps."""
    from training.seeding import seed_everything
    from training.strategies import STRATEGIES, SplitData, StrategyInput, get_strategy

    t0 = time.monotonic()
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {cfg.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if cfg.calibration not in ("temperature", "platt", "none"):
        raise ConfigError(f"unknown calibration {cfg.calibration!r}: choose temperature, platt or none")
    seed_everything(cfg.seed, cfg.threads)
    ds = load_dataset(
        data_dir=cfg.data_dir, csv_path=cfg.csv_path, images_dir=cfg.images_dir, keep_classes=cfg.keep_classes,
        healthy=cfg.healthy, val_fraction=cfg.val_fraction, seed=cfg.seed,
    )
    if cfg.strategy == "dsift":
        contract = DSIFT_CONTRACT
    else:
        from training.backbones import backbone_contract

        contract = backbone_contract(cfg.backbone)
    weights_info = _weights_source(cfg.backbone, cfg.weights, cfg.strategy)
    train_fn = get_strategy(cfg.strategy)  # fail early (e.g. dsift missing) before the slow cropping

    splits, detector_name = _crop_splits(ds, contract, cfg)
    _check_after_crops(ds.classes, splits)
    skipped, skipped_examples = _skipped(splits)
    if skipped:
        log.warning("photos skipped (no usable face): %s", skipped)
    empty = np.zeros((0, contract.height, contract.width, 3), np.uint8)
    get = lambda sp: splits.get(sp, (empty, np.zeros(0, np.int64), None))  # noqa: E731

    hyper = {
        "epochs": cfg.epochs, "lr": cfg.lr, "unfreeze": cfg.unfreeze, "batch_size": cfg.batch_size,
        "patience": cfg.patience, "svm_c": cfg.svm_c, "head_lr_mult": cfg.head_lr_mult,
    }
    data_info = {
        "source": str(cfg.csv_path or cfg.data_dir),
        "images": str(cfg.images_dir) if cfg.images_dir else None,
        "classes_kept": cfg.keep_classes,
        "val_fraction": cfg.val_fraction,
        "counts_used": _counts(ds.classes, splits),
        "detector": detector_name,
    }

    if cfg.strategy == "dsift":
        return _run_dsift(cfg, ds, contract, get, hyper, data_info, skipped, skipped_examples, t0)

    from training.backbones import get_backbone

    def make_backbone(pretrained: bool):
        if pretrained:
            return get_backbone(cfg.backbone, weights=cfg.weights, pretrained=True)
        return get_backbone(cfg.backbone, weights=None, pretrained=False)

    inp = StrategyInput(
        classes=ds.classes, contract=contract, train=SplitData(*get("train")[:2]), val=SplitData(*get("val")[:2]),
        seed=cfg.seed, hyperparameters=hyper, make_backbone=make_backbone, backbone_name=cfg.backbone,
        progress=cfg.progress,
    )
    result = train_fn(inp)
    model = result.model
    model.eval()

    from training.strategies import batched

    logits = {
        sp: batched(model.logits, get(sp)[0], contract, 64, f"scoring ({sp})", cfg.progress)
        for sp in SPLITS if sp in splits
    }
    calib = _calibrate(model, cfg.calibration, logits.get("val", np.zeros((0, 2))), get("val")[1], len(ds.classes))
    if calib["method"] == "platt":  # the head changed: rescore
        calibrated = {sp: batched(model.logits, get(sp)[0], contract, 64) for sp in logits}
    else:
        calibrated = {sp: z / float(model.temperature) for sp, z in logits.items()}
    metrics: dict[str, Any] = {sp: _split_metrics(logits[sp], calibrated[sp], get(sp)[1]) for sp in logits}
    metrics["skipped_photos"] = skipped
    metrics["skipped_total"] = int(sum(sum(v.values()) for v in skipped.values()))
    metrics["skipped_examples"] = skipped_examples
    metrics["history"] = result.history
    metrics["seconds"] = round(time.monotonic() - t0, 1)

    meta = {
        "backbone": result.backbone,
        "backbone_weights": weights_info,
        "classes": ds.classes,
        "healthy_class": ds.healthy_class,
        "contract": contract.to_dict(),
        "strategy": cfg.strategy,
        "hyperparameters": {k: v for k, v in result.hyperparameters.items()},
        "calibration": calib,
        "seed": cfg.seed,
        "data": data_info,
        "metrics": metrics,
        "head": {"l2_normalize": bool(getattr(model, "l2_normalize", True))},
    }
    from training.checkpoint import save_checkpoint

    save_checkpoint(cfg.out, model, meta)
    from training.checkpoint import read_meta

    full = read_meta(cfg.out)
    return TrainOutcome(out_dir=Path(cfg.out), meta=full, rows=_rows(metrics))


def _rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for sp in SPLITS:
        m = metrics.get(sp)
        if m and m.get("n"):
            rows.append({"split": sp, **{k: m.get(k) for k in (
                "n", "accuracy", "accuracy_uncalibrated", "loss_uncalibrated", "loss", "ece_uncalibrated", "ece")}})
    return rows


def _run_dsift(cfg, ds, contract, get, hyper, data_info, skipped, skipped_examples, t0) -> TrainOutcome:
    """Dense SIFT: the other engineer's numpy model; trained, measured here and saved in its own format."""
    from training.checkpoint import read_meta
    from training.strategies.dsift import train_dsift

    kwargs = {} if cfg.svm_c is None else {"svm_c": cfg.svm_c}
    x_tr, y_tr = get("train")[:2]
    x_va, y_va = get("val")[:2]
    model = train_dsift(
        x_tr, y_tr, ds.classes, cfg.seed, val_crops=x_va, val_labels=y_va, healthy_class=ds.healthy_class,
        contract=contract, **kwargs,
    )
    metrics: dict[str, Any] = dict(model.metrics)
    for sp in SPLITS:
        x, y = get(sp)[:2]
        if len(y) == 0:
            continue
        scores = model.decision_function(x)
        metrics[sp] = _split_metrics(scores, scores / float(model.temperature), y)
    metrics["skipped_photos"] = skipped
    metrics["skipped_total"] = int(sum(sum(v.values()) for v in skipped.values()))
    metrics["skipped_examples"] = skipped_examples
    metrics["seconds"] = round(time.monotonic() - t0, 1)
    model.metrics = metrics
    model.hyperparameters = {**model.hyperparameters, "data": data_info}
    model.save(cfg.out)
    return TrainOutcome(out_dir=Path(cfg.out), meta=read_meta(cfg.out), rows=_rows(metrics))


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}

