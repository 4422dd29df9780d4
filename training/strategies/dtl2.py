"""DTL2: frozen face-recognition features + linear SVM, folded into one ``nn.Linear``.

The seed study's best method. The backbone is used as a fixed feature
extractor (eval mode, no gradients); the L2-normalised embeddings train a
one-vs-rest ``sklearn.svm.LinearSVC``. Its decision function is linear, so it is
written into the classifier's head:

- C > 2 classes: head.weight = coef_, head.bias = intercept_ (one row per class,
  rows in class order, argmax of the scores = SVM's prediction);
- 2 classes: sklearn keeps one score s = w.x + b for class 1; the head gets
  rows [-w/2, w/2] and biases [-b/2, b/2], so the logit difference is s and
  softmax gives sigmoid(s) for class 1.

Predictions are checked to be identical before and after folding. The SVM's C
is chosen from ``C_GRID`` by stratified 5-fold cross-validation on the training
split (best mean accuracy; ties go to the smaller C) unless ``--svm-c`` fixes it;
the validation split is kept for calibration. Classes are weighted "balanced".
"""

from __future__ import annotations

import logging

import numpy as np

from facediag.training.strategies import STRATEGIES, StrategyInput, StrategyResult, StrategySpec, batched
from facediag.training.strategies.neural import neural_strategy

log = logging.getLogger(__name__)

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
CV_FOLDS = 5
MAX_ITER = 20000


def _fit_svm(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=c, class_weight="balanced", random_state=seed, max_iter=MAX_ITER, dual="auto")
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm.fit(x, y)
    return svm


def svm_as_linear(svm, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (C, D), bias (C,)) of the linear layer equivalent to ``svm``'s decisions."""
    coef = np.asarray(svm.coef_, dtype=np.float64)
    intercept = np.asarray(svm.intercept_, dtype=np.float64).reshape(-1)
    if list(svm.classes_) != list(range(n_classes)):
        raise ValueError(f"SVM was fitted on classes {list(svm.classes_)}, expected 0..{n_classes - 1}")
    if n_classes == 2:
        w = coef.reshape(1, -1)
        return np.vstack([-w / 2.0, w / 2.0]), np.array([-intercept[0] / 2.0, intercept[0] / 2.0])
    return coef, intercept


def fold_into_head(model, svm, n_classes: int) -> None:
    import torch

    w, b = svm_as_linear(svm, n_classes)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(w.astype(np.float32)))
        model.head.bias.copy_(torch.from_numpy(b.astype(np.float32)))


def check_folding(model, svm, features: np.ndarray, tolerance: float = 1e-5) -> int:
    """Samples whose folded-head argmax differs from the SVM's prediction (ignoring float ties).

    Returns the count; training fails if it is not 0.
    """
    import torch

    with torch.no_grad():
        logits = model.head(torch.from_numpy(features)).numpy().astype(np.float64)
    folded = logits.argmax(axis=1)
    svm_pred = svm.predict(features)
    differ = folded != svm_pred
    if differ.any():
        srt = np.sort(logits[differ], axis=1)
        real = (srt[:, -1] - srt[:, -2]) > tolerance
        return int(real.sum())
    return 0


def choose_c(x: np.ndarray, y: np.ndarray, seed: int, grid: tuple[float, ...] = C_GRID) -> tuple[float, list[dict]]:
    """C with the best mean accuracy over stratified folds of the training split (ties: smaller C).

    Cross-validation on train rather than the (small) validation split: it uses
    more photos for the choice and leaves val untouched for calibration.
    """
    from sklearn.model_selection import StratifiedKFold

    folds = int(min(CV_FOLDS, np.bincount(y).min()))
    if folds < 2:
        return 1.0, []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    parts = list(splitter.split(x, y))
    scores = []
    for c in grid:
        accs = [float((_fit_svm(x[tr], y[tr], c, seed).predict(x[te]) == y[te]).mean()) for tr, te in parts]
        scores.append({"C": c, "cv_accuracy": float(np.mean(accs)), "folds": folds})
    best = max(scores, key=lambda r: (round(r["cv_accuracy"], 9), -r["C"]))
    return float(best["C"]), scores


def train_dtl2(inp: StrategyInput) -> StrategyResult:
    from facediag.training.classifier import FaceClassifier

    n_classes = len(inp.classes)
    backbone = inp.make_backbone(True)
    model = FaceClassifier(backbone, n_classes, l2_normalize=True)
    model.eval()
    batch_size = int(inp.hp("batch_size", 64))
    x_tr = batched(model.embed, inp.train.crops, inp.contract, batch_size, "embeddings (train)", inp.progress)
    x_va = batched(model.embed, inp.val.crops, inp.contract, batch_size, "embeddings (val)", inp.progress)
    y_tr, y_va = inp.train.labels, inp.val.labels

    fixed_c = inp.hyperparameters.get("svm_c")
    scores: list[dict] = []
    if fixed_c is not None:
        chosen_c = float(fixed_c)
    else:
        chosen_c, scores = choose_c(x_tr, y_tr, inp.seed)
    svm = _fit_svm(x_tr, y_tr, chosen_c, inp.seed)
    log.info("DTL2: linear SVM C=%g (%s)", chosen_c, "fixed" if fixed_c is not None else "chosen by cross-validation")

    fold_into_head(model, svm, n_classes)
    feats = np.concatenate([x_tr, x_va]) if len(y_va) else x_tr
    mismatches = check_folding(model, svm, feats)
    if mismatches:
        raise RuntimeError(f"folding the SVM into a linear layer changed {mismatches} prediction(s); this is a bug")
    return StrategyResult(
        model=model,
        backbone=getattr(backbone, "backbone_name", inp.backbone_name),
        hyperparameters={
            "svm": "sklearn LinearSVC one-vs-rest, squared hinge, class_weight=balanced",
            "svm_c": chosen_c,
            "svm_c_grid": None if fixed_c is not None else list(C_GRID),
            "l2_normalize": True,
            "batch_size": batch_size,
        },
        history={"c_search": scores, "fold_check_samples": int(len(feats)), "fold_mismatches": mismatches},
    )


STRATEGIES.register(
    StrategySpec(
        name="dtl2",
        summary="frozen backbone features + linear SVM, folded into one linear layer (default; the study's best)",
        factory=neural_strategy(train_dtl2),
        options=("svm_c", "batch_size"),
    )
)
