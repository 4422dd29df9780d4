"""Probability calibration on held-out scores: temperature scaling and Platt scaling.

A screening threshold ("refer when P(disease) > 0.3") only means something when
probabilities are calibrated. Both methods are fitted on held-out scores only,
never on scores of photos a model was fitted to (it is over-confident on
those): the validation split's logits, or (DTL2's default) the out-of-fold
logits of the training photos, each from an SVM fitted without the photo's fold.

- Temperature scaling (Guo et al. 2017): one scalar T, probabilities
  softmax(z / T); it never changes the predicted class. Works for any number of
  classes.
- Platt scaling (Platt 1999), binary only: P(class 1) = sigmoid(a * m + b) on
  the margin m = z1 - z0. It can move the decision boundary (through b), and is
  folded into the linear head, so the exported graph is unchanged.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("temperature", "platt", "none")


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error (shared definition in facediag.training.metrics)."""
    from facediag.training.metrics import expected_calibration_error

    return float(expected_calibration_error(np.asarray(labels), np.asarray(probs), n_bins=n_bins))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """T minimising validation NLL. NLL is convex in 1/T, so a bounded 1-D search finds the optimum."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        log.warning("no validation samples: temperature left at 1")
        return 1.0
    lo, hi = bounds
    res = minimize_scalar(
        lambda beta: nll(logits, labels, 1.0 / beta), bounds=(1.0 / hi, 1.0 / lo), method="bounded",
        options={"xatol": 1e-6},
    )
    t = float(1.0 / res.x)
    if t >= hi * 0.99 or t <= lo * 1.01:
        log.warning("fitted temperature %.3g is at its bound; the validation set may be too small or separable", t)
    return t


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) of P(y=1) = sigmoid(a * (z1 - z0) + b), maximum likelihood with Platt's smoothed targets."""
    from scipy.optimize import minimize

    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] != 2:
        raise ValueError("Platt scaling is for two classes; use temperature scaling for more")
    y = np.asarray(labels)
    m = logits[:, 1] - logits[:, 0]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        log.warning("validation split has one class only: Platt scaling skipped")
        return 1.0, 0.0
    # Platt's targets keep the fit finite on separable data.
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        s = p[0] * m + p[1]
        log1pexp = np.logaddexp(0.0, s)
        val = float(np.mean(log1pexp - t * s))
        g = 1.0 / (1.0 + np.exp(-s)) - t
        return val, np.array([np.mean(g * m), np.mean(g)])

    res = minimize(loss, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = (float(v) for v in res.x)
    return a, b


def fold_platt(weight: np.ndarray, bias: np.ndarray, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """New (W, b) of a 2-output linear head so that softmax gives sigmoid(a * m + b)."""
    w = a * np.asarray(weight, dtype=np.float64)
    c = a * np.asarray(bias, dtype=np.float64) + np.array([-b / 2.0, b / 2.0])
    return w, c


def fit_calibration(method: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float | str]:
    """The calibration ``method`` (temperature, platt or none) fitted on ``logits``/``labels``, as a dict.

    The numpy twin of ``facediag.training.strategies.neural.calibrate`` (which also folds the result
    into a model); ``apply_calibration`` applies it to other logits.
    """
    if method == "none" or len(labels) == 0:
        return {"method": "none"}
    if method == "temperature":
        return {"method": "temperature", "temperature": fit_temperature(logits, labels)}
    if method == "platt":
        a, b = fit_platt(logits, labels)
        return {"method": "platt", "a": a, "b": b}
    raise ValueError(f"unknown calibration {method!r}: choose one of {', '.join(METHODS)}")


def apply_calibration(cal: dict[str, float | str], logits: np.ndarray) -> np.ndarray:
    """Calibrated logits (softmax of them = calibrated probabilities) under ``fit_calibration``'s result."""
    z = np.asarray(logits, dtype=np.float64)
    if cal["method"] == "temperature":
        return z / float(cal["temperature"])
    if cal["method"] == "platt":
        s = float(cal["a"]) * (z[:, 1] - z[:, 0]) + float(cal["b"])
        return np.stack([-s / 2.0, s / 2.0], axis=1)
    return z
