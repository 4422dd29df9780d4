"""Dense SIFT + bag of visual words + linear SVM: the seed study's handcrafted baseline.

Why it is here: the study compares deep transfer learning against this classic
pipeline (68-72% binary, 49-54% five-class on its data), so a proxy benchmark
needs it to show that the deep strategies' ordering holds.

Pipeline (inference needs only numpy + OpenCV; no pickle anywhere):
1. Each crop (any size, BGR or grey uint8) is turned grey and resized to a
   fixed ``image_size`` (the crops are used directly, no further alignment).
2. SIFT descriptors are computed at fixed keypoints on a regular grid
   (``step`` pixels apart, one keypoint per ``patch_sizes`` entry per grid
   point) with ``cv2.SIFT_create().compute`` and made RootSIFT (L1-normalise,
   square root), which suits Euclidean k-means.
3. Each descriptor is assigned to its nearest visual word (vocabulary from
   seeded ``MiniBatchKMeans``); word counts are pooled over a spatial pyramid
   (``pyramid`` grid sizes, default 1x1 + 2x2: a plain bag of words throws
   away *where* a feature is, which matters on aligned faces), normalised per
   image, square-rooted (Hellinger kernel) and L2-normalised.
4. A linear SVM (sklearn ``LinearSVC``, one-vs-rest) gives a score per class;
   probabilities are ``softmax(scores / T)`` with T fitted by minimum
   negative log-likelihood on validation data, or on 3-fold out-of-fold scores
   of the training data when no validation data is given. C is chosen by
   cross-validation on the training crops unless given.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.errors import ModelFileError
from facediag.edge.face.contract import PreprocessContract
from facediag.training.strategies import (
    STRATEGIES,
    FittedModel,
    LoadedCheckpoint,
    SplitData,
    StrategyInput,
    StrategySpec,
)
from facediag.training.strategies.dsift_features import (  # noqa: F401 - re-exported
    SIFT_DIM,
    GridParams,
    bow_features,
    dense_descriptors,
    encode,
    nearest_word,
)

log = logging.getLogger(__name__)

NPZ_NAME = "dsift.npz"
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_FORMAT = "facediag-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(scores / temperature) per row (the shared definition in facediag.training.calibrate_probs)."""
    from facediag.training.calibrate_probs import softmax as _softmax

    return _softmax(np.asarray(scores, dtype=np.float64) / float(temperature))


@dataclass
class DsiftModel:
    """A trained dense-SIFT classifier: vocabulary, pyramid grid, linear SVM (C rows even for 2 classes)."""

    vocabulary: np.ndarray  # (V, 128) float32
    coef: np.ndarray  # (C, D) float64
    intercept: np.ndarray  # (C,) float64
    grid: GridParams
    classes: list[str]
    temperature: float = 1.0
    seed: int = 0
    healthy_class: str | None = None
    contract: PreprocessContract = field(default_factory=lambda: PreprocessContract("arcface_112x112", colour_order="BGR"))
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] | None = None

    def features(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        return bow_features(crops, self.vocabulary, self.grid)

    def decision_function(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """(N, C) SVM scores."""
        return self.features(crops) @ self.coef.T + self.intercept

    def predict_proba(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """(N, C) calibrated class probabilities: softmax(scores / temperature)."""
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)))
        return softmax(self.decision_function(crops), self.temperature)

    def predict(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        return self.predict_proba(crops).argmax(axis=1)

    def checkpoint_meta(self) -> dict[str, Any]:
        from facediag.training.checkpoint import package_versions

        versions = package_versions()
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "backbone": "dsift",
            "classes": list(self.classes),
            "healthy_class": self.healthy_class,
            "contract": self.contract.to_dict(),
            "strategy": "dsift",
            "hyperparameters": {**self.hyperparameters, "grid": asdict(self.grid)},
            "seed": int(self.seed),
            "versions": versions,
            "metrics": self.metrics,
            "temperature": float(self.temperature),
            "thresholds": self.thresholds,
            "files": {"weights": NPZ_NAME},
        }

    def save(self, directory: str | Path) -> Path:
        """Write dsift.npz (arrays only, loadable without pickle) and checkpoint.json into ``directory``."""
        from facediag.edge.atomicio import atomic_write_bytes, atomic_writer
        from facediag.training.report import json_safe

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "vocabulary": self.vocabulary.astype(np.float32),
            "coef": self.coef.astype(np.float64),
            "intercept": self.intercept.astype(np.float64),
            **self.grid.to_arrays(),
        }
        with atomic_writer(out / NPZ_NAME) as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        meta = json_safe(self.checkpoint_meta())  # strict JSON: a NaN metric becomes null
        atomic_write_bytes(out / CHECKPOINT_JSON, (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode("utf-8"))
        log.info("saved dense-SIFT checkpoint to %s", out)
        return out


def is_dsift_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a dense-SIFT checkpoint (checkpoint.json says strategy dsift)."""
    meta_path = Path(directory) / CHECKPOINT_JSON
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("strategy") == "dsift"


def load_dsift(directory: str | Path) -> DsiftModel:
    """Read a checkpoint written by ``DsiftModel.save``; raises ModelFileError with what is wrong."""
    d = Path(directory)
    meta_path, npz_path = d / CHECKPOINT_JSON, d / NPZ_NAME
    if not meta_path.is_file() or not npz_path.is_file():
        raise ModelFileError(
            f"{d} is not a dense-SIFT checkpoint: it needs {CHECKPOINT_JSON} and {NPZ_NAME} "
            "(train one with `facediag train --strategy dsift`)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelFileError(f"{meta_path} is not valid JSON ({exc}): the checkpoint is damaged, train again") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("strategy") != "dsift":
        raise ModelFileError(f"{meta_path} is not a facediag dense-SIFT checkpoint (format/strategy fields)")
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ModelFileError(
            f"{meta_path} has format_version {meta.get('format_version')!r}; this facediag reads "
            f"{CHECKPOINT_FORMAT_VERSION}: use the facediag version that wrote it"
        )
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read {npz_path}: {exc}") from exc
    needed = {"vocabulary", "coef", "intercept", "grid_image_size", "grid_step", "grid_patch_sizes", "grid_pyramid"}
    missing = needed - set(arrays)
    if missing:
        raise ModelFileError(f"{npz_path} lacks array(s) {', '.join(sorted(missing))}: the checkpoint is damaged")
    grid = GridParams.from_arrays(arrays)
    classes = list(meta["classes"])
    vocab = arrays["vocabulary"]
    n_cells = sum(g * g for g in grid.pyramid)
    expected = (len(classes), n_cells * vocab.shape[0])
    if vocab.ndim != 2 or vocab.shape[1] != SIFT_DIM or arrays["coef"].shape != expected:
        raise ModelFileError(
            f"{npz_path}: vocabulary {vocab.shape} / SVM weights {arrays['coef'].shape} do not match "
            f"{len(classes)} classes and the grid (expected weights {expected})"
        )
    hyper = dict(meta.get("hyperparameters") or {})
    hyper.pop("grid", None)
    return DsiftModel(
        vocabulary=vocab,
        coef=arrays["coef"],
        intercept=arrays["intercept"],
        grid=grid,
        classes=classes,
        temperature=float(meta.get("temperature", 1.0)),
        seed=int(meta.get("seed", 0)),
        healthy_class=meta.get("healthy_class"),
        contract=PreprocessContract.from_dict(meta["contract"]),
        hyperparameters=hyper,
        metrics=dict(meta.get("metrics") or {}),
        thresholds=meta.get("thresholds"),
    )


def _fit_vocabulary(
    crops: np.ndarray | list[np.ndarray], grid: GridParams, vocab_size: int, seed: int, max_descriptors: int
) -> np.ndarray:
    """k-means words from at most ``max_descriptors`` descriptors, drawn (seeded) from a random subset of crops."""
    from sklearn.cluster import MiniBatchKMeans

    from facediag.training.seeding import numpy_rng

    rng = numpy_rng(seed, stream=11)
    per_crop = len(grid.keypoints_xy())
    n_crops = min(len(crops), 2 * -(-max_descriptors // per_crop))  # twice what is needed, for variety
    chosen = np.sort(rng.choice(len(crops), size=n_crops, replace=False))
    flat = dense_descriptors([crops[i] for i in chosen], grid).reshape(-1, SIFT_DIM)
    if flat.shape[0] < vocab_size:
        raise ValueError(f"only {flat.shape[0]} descriptors for a vocabulary of {vocab_size}: use fewer words")
    if flat.shape[0] > max_descriptors:
        flat = flat[np.sort(rng.choice(flat.shape[0], size=max_descriptors, replace=False))]
    km = MiniBatchKMeans(
        n_clusters=vocab_size, random_state=seed, batch_size=4096, n_init=1, max_iter=100, compute_labels=False
    )
    km.fit(flat)
    return km.cluster_centers_.astype(np.float32)


def _fit_svm(feats: np.ndarray, labels: np.ndarray, n_classes: int, c: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear SVM -> (C, D) coef and (C,) intercept; the binary case is split into +/- half-scores."""
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=c, class_weight="balanced", random_state=seed, max_iter=20000, dual="auto")
    svm.fit(feats, labels)
    coef = np.asarray(svm.coef_, dtype=np.float64)
    intercept = np.asarray(svm.intercept_, dtype=np.float64)
    present = list(svm.classes_)
    if n_classes == 2 and coef.shape[0] == 1:
        # sklearn gives one score d for "class 1"; scores (-d/2, d/2) give the same softmax as a 2-class model.
        return np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    full_coef = np.zeros((n_classes, feats.shape[1]))
    full_int = np.full(n_classes, -1e3)  # a class absent from training never wins
    for row, cls in enumerate(present):
        full_coef[int(cls)] = coef[row]
        full_int[int(cls)] = intercept[row]
    return full_coef, full_int


DEFAULT_C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def _oof_scores(
    feats: np.ndarray, labels: np.ndarray, n_classes: int, cs: tuple[float, ...], seed: int, folds: int
) -> dict[float, np.ndarray]:
    """Out-of-fold SVM scores (N, C) of the training set for each C in ``cs`` (stratified, seeded folds)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=n_classes)
    folds = int(min(folds, counts[counts > 0].min()))
    if folds < 2:
        raise ValueError("every class needs at least 2 training crops to choose C and fit the temperature")
    out = {c: np.zeros((len(labels), n_classes)) for c in cs}
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(feats, labels):
        for c in cs:
            coef, inter = _fit_svm(feats[tr], labels[tr], n_classes, c, seed)
            out[c][te] = feats[te] @ coef.T + inter
    return out


def _checked_labels(train_crops: np.ndarray, train_labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """The training labels as int64; ValueError unless they match the crops and span at least two classes."""
    labels = np.asarray(train_labels, dtype=np.int64)
    if len(train_crops) != len(labels):
        raise ValueError(f"{len(train_crops)} crops but {len(labels)} labels")
    if len(classes) < 2:
        raise ValueError("need at least two classes")
    if labels.size == 0 or labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"labels must be in 0..{len(classes) - 1}")
    if len(np.unique(labels)) < 2:
        raise ValueError("the training labels hold only one class")
    return labels


def train_dsift(
    train_crops: np.ndarray,
    train_labels: np.ndarray,
    classes: list[str],
    seed: int,
    vocab_size: int = 256,
    *,
    val_crops: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    svm_c: float | None = None,
    c_grid: tuple[float, ...] = DEFAULT_C_GRID,
    grid: GridParams | None = None,
    max_vocab_descriptors: int = 50_000,
    folds: int = 3,
    healthy_class: str | None = None,
    contract: PreprocessContract | None = None,
    **_ignored: Any,
) -> DsiftModel:
    """Fit vocabulary, SVM and probability temperature on crops (N, H, W, 3) uint8 BGR with int labels.

    C: ``svm_c`` when given, else the value of ``c_grid`` with the best
    ``folds``-fold cross-validated accuracy on the training crops (ties go to the
    smaller C, the simpler model). Temperature: fitted (minimum NLL,
    ``facediag.training.calibrate_probs.fit_temperature``) on ``val_crops``/``val_labels``
    when given, else on the out-of-fold scores of the training crops. The
    validation crops never choose C, so the temperature is fitted on data the
    model has not been tuned on. Unknown keyword arguments are ignored (logged).
    """
    from facediag.training.calibrate_probs import fit_temperature

    if _ignored:
        log.debug("train_dsift ignores %s", ", ".join(sorted(_ignored)))
    labels = _checked_labels(train_crops, train_labels, classes)
    grid = grid or GridParams()
    log.info("dense SIFT on %d training crops (%d keypoints each)", len(labels), len(grid.keypoints_xy()))
    vocabulary = _fit_vocabulary(train_crops, grid, vocab_size, seed, max_vocab_descriptors)
    feats = bow_features(train_crops, vocabulary, grid)
    cs = (float(svm_c),) if svm_c is not None else tuple(float(c) for c in c_grid)
    oof = _oof_scores(feats, labels, len(classes), cs, seed, folds)
    cv_acc = {c: float(np.mean(oof[c].argmax(axis=1) == labels)) for c in cs}
    best_c = min(cs, key=lambda c: (-round(cv_acc[c], 9), c))
    log.info("dense SIFT: C=%g (cross-validated accuracy %s)", best_c, {k: round(v, 3) for k, v in cv_acc.items()})
    coef, intercept = _fit_svm(feats, labels, len(classes), best_c, seed)
    if val_crops is not None and val_labels is not None and len(val_crops) > 0:
        val_scores = bow_features(val_crops, vocabulary, grid) @ coef.T + intercept
        temperature, calib_on = fit_temperature(val_scores, np.asarray(val_labels, dtype=np.int64)), "val"
    else:
        temperature = fit_temperature(oof[best_c], labels)
        calib_on = f"{folds}-fold out-of-fold training scores"
    log.info("dense SIFT: temperature %.4g fitted on %s", temperature, calib_on)
    train_acc = float(np.mean((feats @ coef.T + intercept).argmax(axis=1) == labels))
    return DsiftModel(
        vocabulary=vocabulary,
        coef=coef,
        intercept=intercept,
        grid=grid,
        classes=list(classes),
        temperature=temperature,
        seed=seed,
        healthy_class=healthy_class,
        contract=contract or PreprocessContract("arcface_112x112", colour_order="BGR"),
        hyperparameters={
            "vocab_size": int(vocab_size),
            "svm_c": best_c,
            "svm_c_chosen_by": "given" if svm_c is not None else f"{folds}-fold CV accuracy on train",
            "cv_accuracy": {str(k): v for k, v in cv_acc.items()},
            "svm": "LinearSVC one-vs-rest, class_weight=balanced",
            "descriptor": "RootSIFT at fixed dense keypoints, spatial-pyramid Hellinger histograms",
            "max_vocab_descriptors": int(max_vocab_descriptors),
            "temperature_fitted_on": calib_on,
        },
        metrics={"train_top1": train_acc, "cv_top1": cv_acc[best_c], "n_train": int(len(labels))},
    )


# --- the strategy interface (facediag.training.strategies.Strategy) ---------------------------------

DSIFT_CONTRACT = PreprocessContract("arcface_112x112", colour_order="BGR")


class DsiftFit(FittedModel):
    """A trained DsiftModel; saved as dsift.npz + checkpoint.json (``DsiftModel.save``)."""

    def save(self, out: Path, run_meta: dict[str, Any]) -> None:
        model: DsiftModel = self.model
        model.metrics = run_meta["metrics"]
        model.hyperparameters = {**model.hyperparameters, "data": run_meta["data"]}
        model.save(out)


@dataclass
class DsiftStrategy:
    """Dense SIFT behind the common strategy interface: no backbone, its own contract and checkpoint format.

    The probability temperature is always fitted by ``train_dsift`` (on val, or on out-of-fold
    training scores), so ``--calibration`` does not apply.
    """

    spec: StrategySpec

    def contract(self, backbone: str) -> PreprocessContract:
        return DSIFT_CONTRACT

    def weights_info(self, backbone: str, weights: Path | None) -> dict[str, Any]:
        return {"kind": "none (handcrafted features)", "path": None, "sha256": None}

    def fit(self, inp: StrategyInput, splits: dict[str, SplitData], calibration: str) -> FittedModel:
        if calibration != "temperature":
            log.info("dense SIFT fits its own temperature; --calibration %s does not apply", calibration)
        svm_c = inp.hyperparameters.get("svm_c")
        kwargs = {} if svm_c is None else {"svm_c": svm_c}
        model = train_dsift(
            inp.train.crops, inp.train.labels, inp.classes, inp.seed, val_crops=inp.val.crops,
            val_labels=inp.val.labels, healthy_class=inp.healthy_class, contract=inp.contract, **kwargs,
        )
        scores = {}
        for sp, data in splits.items():
            if len(data.labels) == 0:
                continue
            raw = model.decision_function(data.crops)
            scores[sp] = (raw, raw / float(model.temperature))
        return DsiftFit(
            model=model, backbone=self.spec.name, hyperparameters=dict(model.hyperparameters), scores=scores,
            base_metrics=dict(model.metrics),
        )

    def load(self, ckpt_dir: Path, threads: int = 2) -> LoadedCheckpoint:
        from facediag.training.checkpoint import read_meta

        model = load_dsift(ckpt_dir)
        return LoadedCheckpoint(
            path=Path(ckpt_dir), meta=read_meta(ckpt_dir), contract=model.contract, model=model,
            predict_proba=model.predict_proba,
        )


STRATEGIES.register(
    StrategySpec(
        name="dsift",
        summary="dense SIFT + bag of words + linear SVM (classical baseline; no backbone)",
        factory=DsiftStrategy,
        options=("svm_c",),
        uses_backbone=False,
        pretrained=False,
        torch_checkpoint=False,
    )
)
