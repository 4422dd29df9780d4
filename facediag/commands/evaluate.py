"""``facediag evaluate``: measure a checkpoint or a model bundle on labelled photos.

Photos go through the same face front-end (and crop cache) as training, with
the model's own preprocessing contract, so the figures describe what a station
would do. Decision thresholds for a target sensitivity are chosen on the
validation split, never on the split being evaluated: thresholds tuned on the
test photos make the test figures optimistic.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME = "evaluate"
HELP = "measure a checkpoint or bundle on labelled photos: report.json, plots, thresholds at a sensitivity"
DESCRIPTION = """\
Evaluate a model on one split of labelled photos and write a report.

MODEL is a checkpoint folder written by `facediag train` (deep or dense-SIFT) or a
model bundle folder (bundle.json + ONNX, run through ONNX Runtime on the CPU).

Data: --data DIR (class sub-folders, optionally DIR/train|val|test/<class>/) or
--csv CSV --images DIR (columns image,label,split). Photos whose label is not
one of the model's classes are left out and counted.

Per class (except the healthy class) a probability threshold that reaches
--sensitivity is chosen on the validation split (--val-split; without one, the
same stratified share of train that `facediag train` held out, from the
checkpoint's seed), then applied to the evaluated split.

Output (--out, default MODEL/eval-SPLIT): report.json (top-1, per-class
precision / sensitivity / specificity / F1, ROC AUC, ECE, confusion matrix,
thresholds, skipped photos), confusion_matrix.png, roc.png, reliability.png,
and a table on stdout.
"""

log = logging.getLogger("facediag.evaluate")

_SPLITS = ("train", "val", "test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", type=Path, metavar="MODEL", help="checkpoint folder or model bundle folder")
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, metavar="DIR", help="folder of class sub-folders")
    data.add_argument("--csv", type=Path, metavar="CSV", help="CSV with columns image,label,split")
    data.add_argument("--images", type=Path, metavar="DIR", help="folder the CSV's image paths are relative to")
    data.add_argument("--split", default="test", choices=_SPLITS, help="split to evaluate (default test)")
    data.add_argument(
        "--val-split",
        default="val",
        choices=(*_SPLITS, "none"),
        help="split the thresholds are chosen on (default val, carved from train as in training when absent; "
        "none: no thresholds)",
    )
    data.add_argument("--val-fraction", type=float, default=None,
                      help="share of train held out as val when there is no val split (default: as in training, else 0.2)")
    data.add_argument("--seed", type=int, default=None,
                      help="seed of that hold-out (default: the checkpoint's seed, else 0)")

    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--sensitivity", type=float, default=0.9,
                    help="target sensitivity for the per-class thresholds (default 0.9)")
    ev.add_argument("--ece-bins", type=int, default=15, help="equal-width bins of the calibration error (default 15)")
    ev.add_argument("--precision", default="fp32",
                    help="bundle only: which model file to run (fp32, fp16, int8-cpu; default fp32)")
    ev.add_argument("--batch-size", type=int, default=32, help="crops per inference batch (default 32)")
    ev.add_argument("--threads", type=int, default=2, help="CPU threads for inference (default 2)")
    ev.add_argument("--out", type=Path, metavar="DIR", help="report folder (default MODEL/eval-SPLIT)")

    from facediag.commands._front_end_args import add_photo_front_end_arguments

    add_photo_front_end_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


@dataclass
class LoadedModel:
    """What evaluation needs from any model: classes, contract, and crops -> probabilities."""

    kind: str  # "checkpoint" or "bundle"
    path: Path
    model_id: str
    classes: list[str]
    healthy_class: str | None
    contract: Any  # PreprocessContract
    predict: Callable[[Any], Any]  # (N, H, W, 3) uint8 BGR crops -> (N, C) probabilities
    info: dict[str, Any]


def _short_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _batches(fn: Callable[[Any], Any], crops: Any, batch_size: int, desc: str, progress: bool) -> Any:
    import numpy as np
    from tqdm import tqdm

    outs = []
    for s in tqdm(range(0, len(crops), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        outs.append(np.asarray(fn(crops[s : s + batch_size]), dtype=np.float64))
    return np.concatenate(outs) if outs else np.zeros((0, 0))


def _load_bundle_model(path: Path, precision: str, threads: int) -> LoadedModel:
    """A bundle, verified (every file's hash) by edge.bundle and run with ONNX Runtime on the CPU."""
    from edge.bundle import load_bundle
    from edge.engine.onnxruntime import OrtEngine
    from edge.face.contract import crops_to_input

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
        predict=lambda crops: engine.infer(crops_to_input(crops, contract)), info=info,
    )


def _load_checkpoint_model(path: Path, threads: int) -> LoadedModel:
    from edge.face.contract import PreprocessContract, crops_to_input
    from training.checkpoint import read_meta

    meta = read_meta(path)
    contract = PreprocessContract.from_dict(meta["contract"])
    if meta.get("strategy") == "dsift":
        from training.strategies.dsift import load_dsift

        model = load_dsift(path)
        predict = model.predict_proba
    else:
        import torch

        from training.checkpoint import load_classifier

        torch.set_num_threads(max(1, threads))
        net, meta = load_classifier(path)

        def predict(crops: Any) -> Any:
            with torch.no_grad():
                return net(torch.from_numpy(crops_to_input(crops, contract))).numpy()

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
    from edge.errors import ModelFileError

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


def _read_samples(args: argparse.Namespace) -> list[Any]:
    from edge.errors import ConfigError
    from training.data import read_csv, read_folder

    if (args.data is None) == (args.csv is None):
        raise ConfigError("give the photos: either --data DIR or --csv CSV --images DIR")
    if args.csv is not None:
        if args.images is None:
            raise ConfigError("--csv needs --images DIR (the folder the CSV's image paths are relative to)")
        return read_csv(args.csv, args.images)
    return read_folder(args.data)


def _split_counts(samples: list[Any]) -> str:
    from collections import Counter

    c = Counter(s.split for s in samples)
    return ", ".join(f"{k} ({c[k]})" for k in _SPLITS if c.get(k)) or "none"


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edge.errors import ConfigError, FacediagError
    from training.crop_cache import DEFAULT_CACHE, CropCache, make_cropper
    from training.data import carve_validation
    from training.metrics import sensitivity_specificity_at, summarize, thresholds_at_sensitivity
    from training.report import format_table, write_report

    if not 0.0 < args.sensitivity <= 1.0:
        raise ConfigError(f"--sensitivity must be in (0, 1], got {args.sensitivity}")
    if args.ece_bins < 1:
        raise ConfigError(f"--ece-bins must be >= 1, got {args.ece_bins}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    val_split = None if args.val_split == "none" else args.val_split
    if val_split == args.split:
        if args.val_split == "val" and args.split == "val":
            log.warning("evaluating the val split: no thresholds (they are chosen on val); use --val-split to pick another")
            val_split = None
        else:
            raise ConfigError(
                f"--val-split {val_split} is the split being evaluated: thresholds chosen on it would make its "
                "figures optimistic; pick another split or --val-split none"
            )

    model = load_model(args.model, args.precision, args.threads)
    samples = _read_samples(args)
    # Photos of classes the model does not know cannot be scored: leave them out, count them.
    unknown_labels = sorted({s.label for s in samples} - set(model.classes))
    n_unknown = {lab: sum(1 for s in samples if s.label == lab and s.split == args.split) for lab in unknown_labels}
    if unknown_labels:
        log.warning("leaving out photos of class(es) the model does not have: %s", ", ".join(unknown_labels))
        samples = [s for s in samples if s.label in model.classes]
    if not any(s.split == args.split for s in samples):
        raise FacediagError(
            f"no images of the model's classes ({', '.join(model.classes)}) in split {args.split!r}; "
            f"splits present: {_split_counts(samples)}. Use --split, or check the data's class names"
        )
    seed = args.seed if args.seed is not None else int(model.info.get("seed") or 0)
    fraction = args.val_fraction if args.val_fraction is not None else float(model.info.get("val_fraction") or 0.2)
    carved = False
    if val_split == "val" and not any(s.split == "val" for s in samples):
        if any(s.split == "train" for s in samples):
            samples = carve_validation(samples, fraction, seed)
            carved = True
            log.info("no val split: thresholds chosen on %.0f%% of train carved with seed %d", fraction * 100, seed)
        else:
            log.warning("no val or train photos: no thresholds are chosen")
            val_split = None
    elif val_split is not None and not any(s.split == val_split for s in samples):
        raise FacediagError(f"no images in --val-split {val_split!r}; splits present: {_split_counts(samples)}")

    cache_root = None if args.no_cache else (args.cache or DEFAULT_CACHE)
    detector = None if args.detector == "auto" else args.detector
    cache = CropCache(cache_root, make_cropper(detector, args.detector_model, model.contract))
    index = {c: i for i, c in enumerate(model.classes)}
    progress = not args.no_progress

    def score(split: str) -> tuple[Any, Any, Any]:
        part = [s for s in samples if s.split == split]
        cs = cache.crop_all([s.path for s in part], [s.where for s in part], desc=f"crops ({split})", progress=progress)
        labels = np.array([index[part[i].label] for i in cs.kept], dtype=np.int64)
        probs = _batches(model.predict, cs.crops, args.batch_size, f"inference ({split})", progress)
        if len(labels) and probs.shape != (len(labels), len(model.classes)):
            raise FacediagError(
                f"the model returned probabilities of shape {probs.shape} for {len(labels)} crops and "
                f"{len(model.classes)} classes: the model file does not match its metadata"
            )
        return labels, probs, cs

    y, probs, crops = score(args.split)
    if len(y) == 0:
        raise FacediagError(
            f"no face found in any of the {len(crops.kept) + sum(crops.skipped.values())} photos of split "
            f"{args.split!r} ({dict(crops.skipped)}); check the photos or try another --detector"
        )

    thresholds: dict[str, float] = {}
    selection: dict[str, Any] = {"split": val_split, "target_sensitivity": args.sensitivity}
    if val_split is not None:
        y_val, p_val, val_crops = score(val_split)
        skip = (model.healthy_class,) if model.healthy_class else ()
        thresholds = thresholds_at_sensitivity(y_val, p_val, model.classes, args.sensitivity, skip=skip)
        missing = [c for c in model.classes if c not in thresholds and c not in skip]
        if missing:
            log.warning("no validation photo of %s: no threshold for it", ", ".join(missing))
        selection.update({
            "carved_from_train": carved,
            "val_fraction": fraction if carved else None,
            "seed": seed if carved else None,
            "n": int(len(y_val)),
            "skipped": int(sum(val_crops.skipped.values())),
            "on_val": {
                c: dict(zip(("sensitivity", "specificity"),
                            sensitivity_specificity_at(y_val == model.classes.index(c), p_val[:, model.classes.index(c)], t),
                            strict=True))
                for c, t in thresholds.items()
            },
        })

    metrics = summarize(y, probs, model.classes, n_bins=args.ece_bins, thresholds=thresholds)
    from facediag import __version__

    report = {
        "facediag_version": __version__,
        "model_id": model.model_id,
        "model": {"kind": model.kind, "path": str(model.path), "classes": model.classes,
                  "healthy_class": model.healthy_class, "contract": model.contract.to_dict(), **model.info},
        "split": args.split,
        "data": {"csv": str(args.csv) if args.csv else None, "images": str(args.images) if args.images else None,
                 "folder": str(args.data) if args.data else None},
        "counts": {c: int((y == i).sum()) for i, c in enumerate(model.classes)},
        "skipped": {
            "total": int(sum(crops.skipped.values())),  # photos of the split the model could not score
            "no_usable_face": dict(crops.skipped),
            "label_not_in_model": n_unknown,  # left out on purpose, not counted in total
            "examples": [{"photo": w, "reason": r} for w, r in crops.skipped_items[:50]],
        },
        "thresholds": thresholds,
        "threshold_selection": selection,
        "metrics": metrics,
    }
    out = args.out or (args.model / f"eval-{args.split}")
    paths = write_report(out, report)
    print(format_table(report))
    print(f"report: {paths['report.json']}")
    for name in ("confusion_matrix.png", "roc.png", "reliability.png"):
        if name in paths:
            print(f"plot:   {paths[name]}")
    return 0
