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

from edge.errors import ModelFileError
from edge.face.contract import PreprocessContract

log = logging.getLogger(__name__)

NPZ_NAME = "dsift.npz"
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_FORMAT = "facediag-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
SIFT_DIM = 128


@dataclass(frozen=True)
class GridParams:
    """Where descriptors are taken: working image size, grid step, patch sizes, pyramid grid sizes."""

    image_size: tuple[int, int] = (64, 64)  # (height, width) every crop is resized to
    step: int = 4
    patch_sizes: tuple[int, ...] = (8, 16)
    pyramid: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        h, w = self.image_size
        if min(h, w) < 16 or self.step < 1 or not self.patch_sizes or not self.pyramid:
            raise ValueError(f"bad dense-SIFT grid: {self}")
        if max(self.patch_sizes) >= min(h, w):
            raise ValueError(f"patch sizes {self.patch_sizes} must be smaller than the image {self.image_size}")

    def keypoints_xy(self) -> np.ndarray:
        """(K, 3) float32 rows of (x, y, patch size): the fixed keypoints, each patch fully inside the image."""
        h, w = self.image_size
        rows = []
        for size in self.patch_sizes:
            half = size / 2.0
            xs = np.arange(half, w - half + 1e-6, self.step)
            ys = np.arange(half, h - half + 1e-6, self.step)
            gx, gy = np.meshgrid(xs, ys)
            rows.append(np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, float(size))], axis=1))
        return np.concatenate(rows).astype(np.float32)

    def cell_index(self) -> np.ndarray:
        """(L, K) int: for each pyramid level, the cell (row-major in a g x g grid) that each keypoint falls in."""
        h, w = self.image_size
        kp = self.keypoints_xy()
        out = []
        for g in self.pyramid:
            cx = np.minimum((kp[:, 0] * g / w).astype(np.int64), g - 1)
            cy = np.minimum((kp[:, 1] * g / h).astype(np.int64), g - 1)
            out.append(cy * g + cx)
        return np.stack(out)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "grid_image_size": np.asarray(self.image_size, dtype=np.int64),
            "grid_step": np.asarray(self.step, dtype=np.int64),
            "grid_patch_sizes": np.asarray(self.patch_sizes, dtype=np.int64),
            "grid_pyramid": np.asarray(self.pyramid, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, data: Any) -> GridParams:
        return cls(
            image_size=tuple(int(v) for v in data["grid_image_size"]),  # type: ignore[arg-type]
            step=int(data["grid_step"]),
            patch_sizes=tuple(int(v) for v in data["grid_patch_sizes"]),
            pyramid=tuple(int(v) for v in data["grid_pyramid"]),
        )


def _to_grey(crops: np.ndarray | list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    import cv2

    out = []
    for i, img in enumerate(crops):
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise ValueError(f"crop {i} is {img.dtype}: dense SIFT needs uint8 crops")
        if img.ndim == 3 and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif img.ndim != 2:
            raise ValueError(f"crop {i} has shape {img.shape}: expected (H, W, 3) BGR or (H, W) grey")
        h, w = size
        if img.shape != (h, w):
            interp = cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR
            img = cv2.resize(img, (w, h), interpolation=interp)
        out.append(img)
    return out


def dense_descriptors(crops: np.ndarray | list[np.ndarray], grid: GridParams) -> np.ndarray:
    """(N, K, 128) float32 RootSIFT descriptors at the grid's fixed keypoints."""
    import cv2

    kp_arr = grid.keypoints_xy()
    keypoints = [cv2.KeyPoint(float(x), float(y), float(s)) for x, y, s in kp_arr]
    sift = cv2.SIFT_create()  # type: ignore[attr-defined]
    greys = _to_grey(crops, grid.image_size)
    out = np.empty((len(greys), len(keypoints), SIFT_DIM), dtype=np.float32)
    for i, img in enumerate(greys):
        kps, desc = sift.compute(img, keypoints)
        if desc is None or len(kps) != len(keypoints):
            # compute() drops keypoints it cannot describe; the grid keeps every patch inside, so this is a bug.
            raise RuntimeError(f"SIFT returned {0 if desc is None else len(kps)} of {len(keypoints)} descriptors")
        out[i] = desc
    # RootSIFT: Hellinger kernel on descriptors becomes Euclidean distance.
    out /= np.maximum(out.sum(axis=2, keepdims=True), 1e-7)
    np.sqrt(out, out=out)
    return out


def nearest_word(desc: np.ndarray, vocabulary: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest vocabulary row (Euclidean) for each descriptor row."""
    voc = vocabulary.astype(np.float32)
    voc_sq = (voc**2).sum(axis=1)
    out = np.empty(desc.shape[0], dtype=np.int64)
    for start in range(0, desc.shape[0], chunk):
        d = desc[start:start + chunk].astype(np.float32)
        # ||d||^2 is the same for every word, so it does not change the argmin.
        dist = voc_sq[None, :] - 2.0 * d @ voc.T
        out[start:start + chunk] = dist.argmin(axis=1)
    return out


def encode(desc: np.ndarray, vocabulary: np.ndarray, grid: GridParams) -> np.ndarray:
    """(N, K, 128) descriptors -> (N, sum(g*g) * V) pyramid Hellinger histograms, L2-normalised."""
    n, k, _ = desc.shape
    v = vocabulary.shape[0]
    words = nearest_word(desc.reshape(n * k, -1), vocabulary).reshape(n, k)
    cells = grid.cell_index()
    parts = []
    for level, g in enumerate(grid.pyramid):
        idx = cells[level][None, :] * v + words  # (N, K) bin index within this level
        flat = idx + (np.arange(n)[:, None] * g * g * v)
        hist = np.bincount(flat.ravel(), minlength=n * g * g * v).reshape(n, g * g * v).astype(np.float64)
        parts.append(hist / float(k))  # every level sums to 1 per image
    feats = np.sqrt(np.concatenate(parts, axis=1))
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return feats


def bow_features(
    crops: np.ndarray | list[np.ndarray], vocabulary: np.ndarray, grid: GridParams, chunk: int = 256
) -> np.ndarray:
    """Crops -> pyramid histograms, ``chunk`` crops at a time (descriptors of a whole set would not fit in memory)."""
    n_cells = sum(g * g for g in grid.pyramid)
    parts = [encode(dense_descriptors(crops[s : s + chunk], grid), vocabulary, grid) for s in range(0, len(crops), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, n_cells * vocabulary.shape[0]))


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(scores / temperature) per row (the shared definition in training.calibrate_probs)."""
    from training.calibrate_probs import softmax as _softmax

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
        from training.checkpoint import package_versions

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
        from training.report import json_safe

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "vocabulary": self.vocabulary.astype(np.float32),
            "coef": self.coef.astype(np.float64),
            "intercept": self.intercept.astype(np.float64),
            **self.grid.to_arrays(),
        }
        tmp = out / (NPZ_NAME + ".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(out / NPZ_NAME)
        meta_tmp = out / (CHECKPOINT_JSON + ".tmp")
        meta = json_safe(self.checkpoint_meta())  # strict JSON: a NaN metric becomes null
        meta_tmp.write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        meta_tmp.replace(out / CHECKPOINT_JSON)
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

    from training.seeding import numpy_rng

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
    ``training.calibrate_probs.fit_temperature``) on ``val_crops``/``val_labels``
    when given, else on the out-of-fold scores of the training crops. The
    validation crops never choose C, so the temperature is fitted on data the
    model has not been tuned on. Unknown keyword arguments are ignored (logged).
    """
    from training.calibrate_probs import fit_temperature

    if _ignored:
        log.debug("train_dsift ignores %s", ", ".join(sorted(_ignored)))
    labels = np.asarray(train_labels, dtype=np.int64)
    if len(train_crops) != len(labels):
        raise ValueError(f"{len(train_crops)} crops but {len(labels)} labels")
    if len(classes) < 2:
        raise ValueError("need at least two classes")
    if labels.size == 0 or labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"labels must be in 0..{len(classes) - 1}")
    if len(np.unique(labels)) < 2:
        raise ValueError("the training labels hold only one class")
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
        temperature = fit_temperature(val_scores, np.asarray(val_labels, dtype=np.int64))
        calib_on = "val"
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
