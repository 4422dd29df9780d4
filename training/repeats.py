"""``facediag train --repeats K``: K stratified random train/test splits, per-split scores, mean and 95% interval.

One 30-photo-per-class test split says little (a 95% Wilson interval on 150
photos is about +-8 points). The seed study's protocol repeats random splits
with fixed per-class counts; this module does the same:

- the labelled photos (all splits pooled) are re-split K times, each class
  drawing as many training photos as the dataset's train (+ val) split holds for
  it and as many test photos as its test split (the proxy CSV: 40 / 30); split
  ``i`` uses the seeded generator ``default_rng([seed, i])``;
- every photo is cropped once (crop cache) and, for DTL2, its frozen features
  are extracted once (optionally cached on disk by crop), so K splits cost little
  more than one run; other strategies train once per split (``strategy.fit``);
- per split: top-1 accuracy, NLL and ECE of the calibrated probabilities on the
  test photos, and for two classes the ROC AUC of the non-healthy class;
- over splits: mean, sample standard deviation and a 95% **t-interval over
  splits** (mean +- t(0.975, K-1) * sd / sqrt(K)). The splits share photos, so
  the interval describes split-to-split variation of this pool, not a population.

``run_repeats(cfg, k)`` returns the summary and writes ``repeats.json`` and
``repeats.md`` into ``cfg.out``; no checkpoint is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.atomicio import atomic_write_bytes, atomic_write_text
from facediag.edge.errors import ConfigError

log = logging.getLogger(__name__)

VAL_FRACTION = 0.2


@dataclass
class Pool:
    """Every labelled photo with a crop: crops (N, H, W, 3), labels (N,), names, and per-class split counts."""

    crops: np.ndarray
    labels: np.ndarray
    names: list[str]
    classes: list[str]
    n_train: dict[str, int]
    n_test: dict[str, int]
    skipped: dict[str, int]
    positive: int | None  # class index whose AUC is reported (two classes only)


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``values`` (None for fewer than two)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return None
    half = float(stats.t.ppf(0.5 + level / 2.0, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean() - half), float(v.mean() + half)


def draw_splits(
    labels: np.ndarray, n_train: list[int], n_test: list[int], k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, test) index arrays: class c gets ``n_train[c]`` training and ``n_test[c]`` test photos, disjoint.

    A class with fewer photos than ``n_train + n_test`` (faces not found) gives up test photos first.
    """
    out = []
    for i in range(k):
        rng = np.random.default_rng([seed, i])
        tr, te = [], []
        for c in range(len(n_train)):
            idx = np.flatnonzero(labels == c)
            perm = idx[rng.permutation(len(idx))]
            a = min(n_train[c], len(perm))
            tr.append(perm[:a])
            te.append(perm[a : a + n_test[c]])
        out.append((np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))))
    return out


def carve_val(train_idx: np.ndarray, labels: np.ndarray, seed: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified ``VAL_FRACTION`` of ``train_idx`` held out (at least one per class, at least one left)."""
    rng = np.random.default_rng([seed, split, 7])
    keep, val = [], []
    for c in np.unique(labels[train_idx]):
        idx = train_idx[labels[train_idx] == c]
        n_val = min(len(idx) - 1, max(1, int(round(VAL_FRACTION * len(idx))))) if len(idx) > 1 else 0
        perm = idx[rng.permutation(len(idx))]
        val.append(perm[:n_val])
        keep.append(perm[n_val:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(val))


def load_pool(cfg: Any, contract: Any) -> Pool:
    """Read the labelled photos (every split), crop them once, and record the per-class split counts."""
    from facediag.edge.photos import read_labelled
    from facediag.training.crop_cache import CropCache, make_cropper
    from facediag.training.data import resolve_healthy, restrict_to

    samples = read_labelled(folder=cfg.data_dir, csv_path=cfg.csv_path, images_dir=cfg.images_dir)
    if cfg.keep_classes:
        samples = restrict_to(samples, cfg.keep_classes)
    classes = sorted({s.label for s in samples})
    n_train = {c: sum(1 for s in samples if s.label == c and s.split in ("train", "val")) for c in classes}
    n_test = {c: sum(1 for s in samples if s.label == c and s.split == "test") for c in classes}
    if len(classes) < 2 or not all(n_test.values()) or not all(v >= 2 for v in n_train.values()):
        raise ConfigError(
            f"--repeats needs at least 2 classes, each with >= 2 training and >= 1 test photo to copy the split sizes "
            f"from (train+val {n_train}, test {n_test}): use a CSV with a split column or DIR/train, DIR/test"
        )
    detector = cfg.detector if cfg.detector not in (None, "auto") else None
    cache = CropCache(cfg.cache, make_cropper(detector, cfg.detector_model, contract))
    cs = cache.crop_all([s.path for s in samples], [s.where for s in samples], desc="crops", progress=cfg.progress)
    kept = [samples[i] for i in cs.kept]
    labels = np.array([classes.index(s.label) for s in kept], dtype=np.int64)
    healthy = resolve_healthy(classes, cfg.healthy)
    positive = None
    if len(classes) == 2:
        positive = 1 - classes.index(healthy) if healthy in classes else 1
    return Pool(cs.crops, labels, [s.name or s.where for s in kept], classes, n_train, n_test, dict(cs.skipped), positive)


def _crop_key(crop: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(crop).tobytes()).hexdigest()[:24]


def extract_features(backbone: Any, crops: np.ndarray, cache_file: Path | None, batch_size: int = 32,
                     progress: bool = False) -> np.ndarray:
    """L2-normalised backbone features of every crop (what the DTL2 head sees), reusing ``cache_file`` by crop."""
    from facediag.training.classifier import FaceClassifier
    from facediag.training.strategies import batched

    keys = [_crop_key(c) for c in crops]
    known: dict[str, np.ndarray] = {}
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            known = {str(k): v for k, v in zip(z["keys"], z["features"], strict=True)}
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        model = FaceClassifier(backbone, 2, l2_normalize=True).eval()
        feats = batched(model.embed, crops[todo], backbone.contract, batch_size, "features", progress)
        known.update({keys[i]: f for i, f in zip(todo, feats, strict=True)})
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            buf = io.BytesIO()
            ks = sorted(known)
            np.savez(buf, keys=np.array(ks), features=np.stack([known[k] for k in ks]).astype(np.float32))
            atomic_write_bytes(cache_file, buf.getvalue(), mode=0o600)
    log.info("features: %d computed, %d from cache", len(todo), len(keys) - len(todo))
    return np.stack([known[k] for k in keys]).astype(np.float32)


def split_scores(probs: np.ndarray, labels: np.ndarray, positive: int | None) -> dict[str, Any]:
    """Top-1, NLL and ECE of calibrated probabilities; ROC AUC of ``positive`` for two classes."""
    from sklearn.metrics import roc_auc_score

    from facediag.training.calibrate_probs import ece

    p = np.clip(probs, 1e-12, 1.0)
    out: dict[str, Any] = {
        "n_test": int(len(labels)),
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "nll": float(-np.log(p[np.arange(len(labels)), labels]).mean()),
        "ece": ece(probs, labels),
    }
    if positive is not None and len(np.unique(labels)) == 2:
        out["auc"] = float(roc_auc_score(labels == positive, probs[:, positive]))
    return out


def dtl2_split(x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, n_classes: int, seed: int, split: int,
               calibration: str, calibration_data: str, svm_c: float | None) -> tuple[np.ndarray, dict[str, Any]]:
    """One DTL2 split on precomputed features: (calibrated test probabilities, what was chosen)."""
    from facediag.training.calibrate_probs import apply_calibration, fit_calibration, softmax
    from facediag.training.strategies.dtl2 import fit_linear

    if calibration_data == "cv":
        fit = fit_linear(x[tr], y[tr], n_classes, seed, svm_c, oof=True)
        z_cal, y_cal = (fit.oof_logits, y[tr]) if fit.oof_logits is not None else (np.zeros((0, n_classes)), y[:0])
    else:
        fit_idx, val_idx = carve_val(tr, y, seed, split)
        fit = fit_linear(x[fit_idx], y[fit_idx], n_classes, seed, svm_c, oof=False)
        z_cal, y_cal = fit.logits(x[val_idx]), y[val_idx]
    cal = fit_calibration(calibration, z_cal, y_cal)
    probs = softmax(apply_calibration(cal, fit.logits(x[te])))
    return probs, {"svm_c": fit.c, "calibration": cal, "n_calibration": int(len(y_cal))}


def generic_split(cfg: Any, strategy: Any, pool: Pool, tr: np.ndarray, te: np.ndarray, split: int,
                  hyper: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """One split trained from crops by any strategy (``strategy.fit``): (calibrated test probabilities, info)."""
    from facediag.training.backbones import get_backbone
    from facediag.training.calibrate_probs import softmax
    from facediag.training.strategies import SplitData, StrategyInput

    fit_idx, val_idx = carve_val(tr, pool.labels, cfg.seed, split)
    part = {name: SplitData(pool.crops[ix], pool.labels[ix]) for name, ix in (("train", fit_idx), ("val", val_idx), ("test", te))}

    def make_backbone(pretrained: bool) -> Any:
        return get_backbone(cfg.backbone, weights=cfg.weights if pretrained else None, pretrained=pretrained)

    inp = StrategyInput(
        classes=pool.classes, contract=strategy.contract(cfg.backbone), train=part["train"], val=part["val"],
        seed=cfg.seed, hyperparameters=hyper, make_backbone=make_backbone, backbone_name=cfg.backbone,
        progress=cfg.progress,
    )
    fitted = strategy.fit(inp, part, cfg.calibration)
    return softmax(fitted.scores["test"][1]), {"calibration": fitted.calibration}


def summarise(per_split: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample sd and 95% t-interval over splits of every per-split figure."""
    out: dict[str, Any] = {}
    for key in ("accuracy", "auc", "nll", "ece"):
        vals = [float(r[key]) for r in per_split if key in r]
        if not vals:
            continue
        ci = t_interval(vals)
        out[key] = {
            "mean": float(np.mean(vals)),
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "ci95": list(ci) if ci else None,
            "values": vals,
        }
    out["interval"] = "95% Student-t interval over splits: mean +- t(0.975, K-1) * sd / sqrt(K)"
    return out


def run_repeats(cfg: Any, k: int, feature_cache: Path | None = None,
                features_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """K stratified splits of ``cfg``'s labelled photos (see the module docstring); writes repeats.json/.md.

    numpy's BLAS is held to ``cfg.threads`` threads, like torch (many BLAS threads on a busy
    machine made the SVM fits tens of times slower).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=max(1, int(cfg.threads or 1))):
        return _run_repeats(cfg, k, feature_cache, features_fn)


def _run_repeats(cfg: Any, k: int, feature_cache: Path | None,
                 features_fn: Callable[[np.ndarray], np.ndarray] | None) -> dict[str, Any]:
    from facediag.training.seeding import seed_everything
    from facediag.training.strategies import get_strategy
    from facediag.training.train import _hyperparameters, config_dict, with_defaults

    if k < 1:
        raise ConfigError(f"--repeats must be >= 1, got {k}")
    t0 = time.monotonic()
    strategy = get_strategy(cfg.strategy)
    cfg = with_defaults(cfg)
    seed_everything(cfg.seed, cfg.threads)
    contract = strategy.contract(cfg.backbone)
    pool = load_pool(cfg, contract)
    n_tr = [pool.n_train[c] for c in pool.classes]
    n_te = [pool.n_test[c] for c in pool.classes]
    splits = draw_splits(pool.labels, n_tr, n_te, k, cfg.seed)
    hyper = _hyperparameters(cfg, strategy)
    calibration_data = getattr(cfg, "calibration_data", None) or "cv"
    x = None
    if cfg.strategy == "dtl2" and features_fn is not None:  # crops -> the head's features, computed elsewhere
        x = features_fn(pool.crops)
    elif cfg.strategy == "dtl2":
        from facediag.training.backbones import get_backbone

        backbone = get_backbone(cfg.backbone, weights=cfg.weights, pretrained=True)
        cache_file = None
        if feature_cache is not None:
            tag = hashlib.sha256(f"{cfg.backbone}|{cfg.weights}".encode()).hexdigest()[:12]
            cache_file = Path(feature_cache) / f"{cfg.backbone.replace(':', '_').replace('+', '-')}-{tag}.npz"
        x = extract_features(backbone, pool.crops, cache_file, progress=cfg.progress)
    t_feat = time.monotonic() - t0
    per_split = []
    for i, (tr, te) in enumerate(splits):
        ts = time.monotonic()
        if x is not None:
            probs, info = dtl2_split(x, pool.labels, tr, te, len(pool.classes), cfg.seed, i, cfg.calibration,
                                     calibration_data, cfg.svm_c)
        else:
            probs, info = generic_split(cfg, strategy, pool, tr, te, i, hyper)
        row = {"split": i, "n_train": int(len(tr)), **split_scores(probs, pool.labels[te], pool.positive), **info,
               "train_per_class": dict(Counter(pool.classes[c] for c in pool.labels[tr])),
               "test_per_class": dict(Counter(pool.classes[c] for c in pool.labels[te])),
               "seconds": round(time.monotonic() - ts, 2),
               "train_photos": [pool.names[j] for j in tr], "test_photos": [pool.names[j] for j in te],
               "test_labels": [pool.classes[c] for c in pool.labels[te]],
               "test_probabilities": np.round(probs, 6).tolist()}
        per_split.append(row)
        log.info("split %d: top-1 %.3f%s", i, row["accuracy"], f", AUC {row['auc']:.3f}" if "auc" in row else "")
    doc = {
        "k": k, "seed": cfg.seed, "classes": pool.classes,
        "positive_class": pool.classes[pool.positive] if pool.positive is not None else None,
        "per_class_train": pool.n_train, "per_class_test": pool.n_test, "skipped_photos": pool.skipped,
        "backbone": cfg.backbone, "strategy": cfg.strategy, "calibration": cfg.calibration,
        "calibration_data": calibration_data if cfg.strategy == "dtl2" else "val",
        "config": config_dict(cfg), "splits": per_split, "summary": summarise(per_split),
        "seconds": {"crops_and_features": round(t_feat, 1), "total": round(time.monotonic() - t0, 1)},
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "repeats.json", json.dumps(doc, indent=2, default=str) + "\n")
    atomic_write_text(out / "repeats.md", markdown(doc))
    return doc


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown(doc: dict[str, Any]) -> str:
    """The repeats table: one row per split, then mean, sd and the 95% t-interval."""
    s = doc["summary"]
    has_auc = "auc" in s
    lines = [
        f"# {doc['k']} stratified splits: {doc['backbone']} / {doc['strategy']} (calibration {doc['calibration']} "
        f"on {doc['calibration_data']})", "",
        f"Per class: train {doc['per_class_train']}, test {doc['per_class_test']}; seed {doc['seed']}; "
        f"skipped (no face) {doc['skipped_photos'] or 0}.", "",
        "| split | n test | top-1 |" + (" AUC |" if has_auc else "") + " NLL | ECE |",
        "|---|---|---|" + ("---|" if has_auc else "") + "---|---|",
    ]
    for r in doc["splits"]:
        lines.append(f"| {r['split']} | {r['n_test']} | {_pct(r['accuracy'])} |"
                     + (f" {r.get('auc', float('nan')):.3f} |" if has_auc else "") + f" {r['nll']:.3f} | {r['ece']:.3f} |")
    for key, label in (("accuracy", "top-1"), ("auc", "AUC")):
        if key in s:
            ci = s[key]["ci95"]
            lines.append("")
            sd = s[key]["sd"]
            lines.append(f"{label}: mean {s[key]['mean']:.4f}, sd {'-' if sd is None else f'{sd:.4f}'}"
                         + (f", 95% interval [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""))
    lines += ["", f"Interval: {s['interval']}. The splits re-use one photo pool, so it shows split-to-split "
              "variation, not the spread over new photos.", ""]
    return "\n".join(lines)
