"""Measure a checkpoint or a model bundle on one split of labelled photos: the library behind ``facediag evaluate``.

Photos go through the same face front-end (and crop cache) as training, with
the model's own preprocessing contract, so the figures describe what a station
would do. Decision thresholds for a target sensitivity are chosen on the
validation split, never on the split being evaluated: thresholds tuned on the
test photos make the test figures optimistic.

Use: ``model = load_model(path)``, ``options = EvaluationOptions(...).checked()``,
``report = evaluate(model, photos, cache, options)``, then
``facediag.training.report.write_report(out, report)``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facediag.edge.errors import ConfigError, FacediagError, ModelFileError
from facediag.edge.face.contract import PreprocessContract
from facediag.edge.photos import SPLITS, LabelledPhoto

if TYPE_CHECKING:
    from facediag.training.crop_cache import CropCache, CropSet

log = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.2

Predict = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) uint8 BGR crops -> (N, C) probabilities


@dataclass
class LoadedModel:
    """What evaluation needs from any model: classes, contract, and crops -> probabilities."""

    kind: str  # "checkpoint" or "bundle"
    path: Path
    model_id: str
    classes: list[str]
    healthy_class: str | None
    contract: PreprocessContract
    predict: Predict
    info: dict[str, Any]


@dataclass(frozen=True)
class EvaluationOptions:
    """How to evaluate. ``val_split`` None: no thresholds are chosen."""

    split: str = "test"
    val_split: str | None = "val"
    val_fraction: float | None = None  # default: the checkpoint's, else 0.2
    seed: int | None = None  # default: the checkpoint's, else 0
    sensitivity: float = 0.9
    ece_bins: int = 15
    batch_size: int = 32
    progress: bool = False

    def checked(self) -> EvaluationOptions:
        """Refuse impossible values; thresholds may never be chosen on the evaluated split."""
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.val_split is not None and self.val_split not in SPLITS:
            raise ConfigError(f"--val-split must be one of {', '.join(SPLITS)} or none, got {self.val_split!r}")
        if not 0.0 < self.sensitivity <= 1.0:
            raise ConfigError(f"--sensitivity must be in (0, 1], got {self.sensitivity}")
        if self.ece_bins < 1:
            raise ConfigError(f"--ece-bins must be >= 1, got {self.ece_bins}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.val_split is not None and self.val_split == self.split:
            if self.split == "val":
                log.warning("evaluating the val split: no thresholds (they are chosen on val); use --val-split to pick another")
                return replace(self, val_split=None)
            raise ConfigError(
                f"--val-split {self.val_split} is the split being evaluated: thresholds chosen on it would make its "
                "figures optimistic; pick another split or --val-split none"
            )
        return self


# --- models ------------------------------------------------------------------------------------


def _short_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _load_bundle_model(path: Path, precision: str, threads: int) -> LoadedModel:
    """A bundle, verified (every file's hash) by facediag.edge.bundle and run with ONNX Runtime on the CPU."""
    from facediag.edge.bundle import load_bundle
    from facediag.edge.engine.onnxruntime import OrtEngine
    from facediag.edge.face.contract import crops_to_input

    bundle = load_bundle(path)
    onnx_path = bundle.model_path(precision)
    contract = bundle.contract
    engine = OrtEngine(onnx_path, threads=threads, precision=precision)
    info = {
        "precision": precision,
        "onnx_file": onnx_path.name,
        "thresholds_in_bundle": dict(bundle.thresholds),
        "creator": bundle.creator,
        "source_checkpoint": bundle.source_checkpoint,
    }
    return LoadedModel(
        kind="bundle", path=path, model_id=f"{path.name}@{_short_sha(path / 'bundle.json')}",
        classes=list(bundle.classes), healthy_class=bundle.healthy_class, contract=contract,
        predict=lambda crops: np.asarray(engine.infer(crops_to_input(crops, contract))), info=info,
    )


def _checkpoint_predictor(
    path: Path, meta: dict[str, Any], contract: PreprocessContract, threads: int
) -> tuple[Predict, dict[str, Any]]:
    """The checkpoint's crops -> probabilities function, and its metadata as the loader read it."""
    from facediag.training.strategies import load_checkpoint

    # the strategy that wrote the checkpoint loads it (facediag.training.strategies.Strategy.load)
    loaded = load_checkpoint(path, threads=threads)
    return loaded.predict_proba, loaded.meta


def _load_checkpoint_model(path: Path, threads: int) -> LoadedModel:
    from facediag.training.checkpoint import read_meta

    meta = read_meta(path)
    contract = PreprocessContract.from_dict(meta["contract"])
    predict, meta = _checkpoint_predictor(path, meta, contract, threads)
    data = meta.get("data") or (meta.get("hyperparameters") or {}).get("data") or {}
    info = {
        "strategy": meta.get("strategy"),
        "backbone": meta.get("backbone"),
        "temperature": meta.get("temperature"),
        "seed": meta.get("seed"),
        "val_fraction": data.get("val_fraction"),
        "thresholds_in_checkpoint": meta.get("thresholds"),
    }
    return LoadedModel(
        kind="checkpoint", path=path, model_id=f"{path.name}@{_short_sha(path / 'checkpoint.json')}",
        classes=list(meta["classes"]), healthy_class=meta.get("healthy_class"), contract=contract,
        predict=predict, info=info,
    )


def load_model(path: Path, precision: str = "fp32", threads: int = 2) -> LoadedModel:
    """A checkpoint folder (checkpoint.json) or a bundle folder (bundle.json); clear errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such folder; give a checkpoint folder (from `facediag train`) or a bundle folder")
    if not path.is_dir():
        raise ModelFileError(f"{path} is a file; give the checkpoint or bundle FOLDER that contains it")
    if (path / "bundle.json").is_file():
        return _load_bundle_model(path, precision, threads)
    if (path / "checkpoint.json").is_file():
        return _load_checkpoint_model(path, threads)
    raise ModelFileError(
        f"{path} is neither a checkpoint (no checkpoint.json) nor a model bundle (no bundle.json); "
        "train one with `facediag train` or export one with `facediag export`"
    )


# --- evaluation --------------------------------------------------------------------------------


def split_counts(photos: list[LabelledPhoto]) -> str:
    """"train (80), test (60)": the splits present, for messages."""
    c = Counter(s.split for s in photos)
    return ", ".join(f"{k} ({c[k]})" for k in SPLITS if c.get(k)) or "none"


@dataclass
class _Prepared:
    photos: list[LabelledPhoto]
    left_out: dict[str, int]  # class not in the model -> photos of the evaluated split left out
    val_split: str | None
    carved: bool
    fraction: float
    seed: int


def _prepare(model: LoadedModel, photos: list[LabelledPhoto], opts: EvaluationOptions) -> _Prepared:
    """Leave out classes the model does not know; find or carve the split thresholds are chosen on."""
    from facediag.training.data import carve_validation

    unknown = sorted({s.label for s in photos} - set(model.classes))
    left_out = {lab: sum(1 for s in photos if s.label == lab and s.split == opts.split) for lab in unknown}
    if unknown:
        log.warning("leaving out photos of class(es) the model does not have: %s", ", ".join(unknown))
        photos = [s for s in photos if s.label in model.classes]
    if not any(s.split == opts.split for s in photos):
        raise FacediagError(
            f"no images of the model's classes ({', '.join(model.classes)}) in split {opts.split!r}; "
            f"splits present: {split_counts(photos)}. Use --split, or check the data's class names"
        )
    seed = opts.seed if opts.seed is not None else int(model.info.get("seed") or 0)
    fraction = opts.val_fraction if opts.val_fraction is not None else float(
        model.info.get("val_fraction") or DEFAULT_VAL_FRACTION
    )
    val_split, carved = opts.val_split, False
    if val_split == "val" and not any(s.split == "val" for s in photos):
        if any(s.split == "train" for s in photos):
            photos = carve_validation(photos, fraction, seed)
            carved = True
            log.info("no val split: thresholds chosen on %.0f%% of train carved with seed %d", fraction * 100, seed)
        else:
            log.warning("no val or train photos: no thresholds are chosen")
            val_split = None
    elif val_split is not None and not any(s.split == val_split for s in photos):
        raise FacediagError(f"no images in --val-split {val_split!r}; splits present: {split_counts(photos)}")
    return _Prepared(photos, left_out, val_split, carved, fraction, seed)


def predict_in_batches(predict: Predict, crops: np.ndarray, batch_size: int, desc: str = "inference",
                       progress: bool = False) -> np.ndarray:
    """``predict`` over ``crops`` in batches, as float64 (N, C)."""
    from tqdm import tqdm

    outs = []
    for s in tqdm(range(0, len(crops), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        outs.append(np.asarray(predict(crops[s : s + batch_size]), dtype=np.float64))
    return np.concatenate(outs) if outs else np.zeros((0, 0))


def score_split(
    model: LoadedModel, photos: list[LabelledPhoto], split: str, cache: CropCache, opts: EvaluationOptions
) -> tuple[np.ndarray, np.ndarray, CropSet]:
    """(class indices, probabilities, crops) for the photos of ``split`` in which a face was found."""
    index = {c: i for i, c in enumerate(model.classes)}
    part = [s for s in photos if s.split == split]
    cs = cache.crop_all([s.path for s in part], [s.where for s in part], desc=f"crops ({split})", progress=opts.progress)
    labels = np.array([index[part[i].label] for i in cs.kept], dtype=np.int64)
    probs = predict_in_batches(model.predict, cs.crops, opts.batch_size, f"inference ({split})", opts.progress)
    if len(labels) and probs.shape != (len(labels), len(model.classes)):
        raise FacediagError(
            f"the model returned probabilities of shape {probs.shape} for {len(labels)} crops and "
            f"{len(model.classes)} classes: the model file does not match its metadata"
        )
    return labels, probs, cs


def _out_of_fold(model: LoadedModel) -> tuple[np.ndarray, np.ndarray] | None:
    """A checkpoint's stored out-of-fold (labels, probabilities) when it was calibrated on them (dtl2 cv)."""
    if model.kind != "checkpoint":
        return None
    from facediag.training.checkpoint import read_meta
    from facediag.training.strategies.dtl2 import out_of_fold_probabilities

    return out_of_fold_probabilities(read_meta(model.path))


def _choose_thresholds(
    model: LoadedModel, prep: _Prepared, cache: CropCache, opts: EvaluationOptions
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-class thresholds reaching the target sensitivity on the validation split, and how they were chosen."""
    from facediag.training.metrics import sensitivity_specificity_at, thresholds_at_sensitivity

    selection: dict[str, Any] = {"split": prep.val_split, "target_sensitivity": opts.sensitivity}
    if prep.val_split is None:
        return {}, selection
    # A DTL2 checkpoint fitted on every training photo (val included): the val photos were training photos,
    # so thresholds come from its stored out-of-fold predictions instead (--calibration-data cv).
    oof = _out_of_fold(model) if prep.val_split == "val" else None
    if oof is not None:
        y_val, p_val = oof
        n_skipped = 0
        selection["split"] = "out-of-fold"
        selection["source"] = "out-of-fold predictions of the checkpoint's training photos (checkpoint.json)"
        log.info("thresholds chosen on the checkpoint's out-of-fold predictions of its %d training photos", len(y_val))
    else:
        y_val, p_val, val_crops = score_split(model, prep.photos, prep.val_split, cache, opts)
        n_skipped = int(sum(val_crops.skipped.values()))
    skip = (model.healthy_class,) if model.healthy_class else ()
    thresholds = thresholds_at_sensitivity(y_val, p_val, model.classes, opts.sensitivity, skip=skip)
    missing = [c for c in model.classes if c not in thresholds and c not in skip]
    if missing:
        log.warning("no validation photo of %s: no threshold for it", ", ".join(missing))

    def on_val(c: str, t: float) -> dict[str, Any]:
        i = model.classes.index(c)
        figures = sensitivity_specificity_at(y_val == i, p_val[:, i], t)
        return dict(zip(("sensitivity", "specificity"), figures, strict=True))

    selection.update({
        "carved_from_train": prep.carved and oof is None,
        "val_fraction": prep.fraction if prep.carved and oof is None else None,
        "seed": prep.seed if prep.carved and oof is None else None,
        "n": int(len(y_val)),
        "skipped": n_skipped,
        "on_val": {c: on_val(c, t) for c, t in thresholds.items()},
        "refer_on_val": refer_on_val(y_val, p_val, model.classes, model.healthy_class, thresholds),
    })
    return thresholds, selection


def refer_on_val(y: np.ndarray, probs: np.ndarray, classes: list[str], healthy_class: str | None,
                 thresholds: dict[str, float]) -> dict[str, Any] | None:
    """Sensitivity and specificity of the station's "refer" (any condition reaching its threshold) on the
    validation photos, decided by the station's own rule with ``min_confidence`` 0: the per-class figures
    cannot show it, since every condition's threshold adds its own false referrals of healthy people."""
    from facediag.edge.screening.decision import REFER, decide

    if not healthy_class or healthy_class not in classes or not thresholds or len(y) == 0:
        return None
    h = classes.index(healthy_class)
    referred = np.array([decide(p, classes, healthy_class, thresholds, min_confidence=0.0).kind == REFER
                         for p in probs], dtype=bool)
    healthy = np.asarray(y) == h
    n_healthy, n_condition = int(healthy.sum()), int((~healthy).sum())
    return {
        "sensitivity": float(referred[~healthy].mean()) if n_condition else None,
        "specificity": float((~referred[healthy]).mean()) if n_healthy else None,
        "n_condition": n_condition, "n_healthy": n_healthy,
        "rule": "refer when any condition reaches its threshold (min_confidence 0)",
    }


def evaluate(
    model: LoadedModel,
    photos: list[LabelledPhoto],
    cache: CropCache,
    options: EvaluationOptions | None = None,
    data_source: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """The evaluation report (``report.json``'s content) of ``model`` on ``photos``.

    ``cache`` crops the photos with the model's contract; ``data_source`` says where the photos
    came from (recorded as is). Thresholds are chosen on ``options.val_split``, never on the
    evaluated split.
    """
    from facediag.edge.version import __version__
    from facediag.training.averages import add_average_intervals
    from facediag.training.metrics import summarize
    from facediag.training.stats import DEFAULT_SEED, summary_intervals

    opts = (options or EvaluationOptions()).checked()
    if cache.cropper.contract != model.contract:
        raise ConfigError("the crop cache's cropper must use the model's preprocessing contract")
    prep = _prepare(model, photos, opts)
    y, probs, crops = score_split(model, prep.photos, opts.split, cache, opts)
    if len(y) == 0:
        raise FacediagError(
            f"no face found in any of the {len(crops.kept) + sum(crops.skipped.values())} photos of split "
            f"{opts.split!r} ({dict(crops.skipped)}); check the photos or try another --detector"
        )
    thresholds, selection = _choose_thresholds(model, prep, cache, opts)
    metrics = summarize(y, probs, model.classes, n_bins=opts.ece_bins, thresholds=thresholds)
    seed = opts.seed if opts.seed is not None else DEFAULT_SEED
    summary_intervals(metrics, y, probs, seed=seed)
    add_average_intervals(metrics, y, probs, seed=seed)
    part = [s for s in prep.photos if s.split == opts.split]
    names = [part[i].name or part[i].path.as_posix() for i in crops.kept]
    return {
        "facediag_version": __version__,
        "model_id": model.model_id,
        "model": {"kind": model.kind, "path": str(model.path), "classes": model.classes,
                  "healthy_class": model.healthy_class, "contract": model.contract.to_dict(), **model.info},
        "split": opts.split,
        "data": dict(data_source or {}),
        "front_end": _front_end_info(cache),
        "counts": {c: int((y == i).sum()) for i, c in enumerate(model.classes)},
        "skipped": {
            "total": int(sum(crops.skipped.values())),  # photos of the split the model could not score
            "no_usable_face": dict(crops.skipped),
            "label_not_in_model": prep.left_out,  # left out on purpose, not counted in total
            "examples": [{"photo": w, "reason": r} for w, r in crops.skipped_items[:50]],
        },
        "thresholds": thresholds,
        "threshold_selection": selection,
        "metrics": metrics,
        "predictions": prediction_rows(names, y, probs, model.classes),
    }


def _front_end_info(cache: CropCache) -> dict[str, Any]:
    """How the photos became crops: detected and aligned, or taken as the aligned crops of a `facediag crop` folder."""
    cropper = cache.cropper
    if cropper.aligned == "no":
        return {"detector": cropper.detector_name}
    return {"aligned_input": cropper.aligned, "aligned_crops": cropper.description.get("aligned_crops")}


def prediction_rows(names: list[str], y: np.ndarray, probs: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """One row per scored photo: its path relative to the data root, true and predicted class, probabilities."""
    return [
        {"photo": name, "true": classes[int(t)], "predicted": classes[int(np.argmax(p))],
         "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)}}
        for name, t, p in zip(names, y, probs, strict=True)
    ]
