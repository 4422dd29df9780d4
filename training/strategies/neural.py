"""What the neural strategies (dtl2, dtl1, scratch) share: score, calibrate, save and load a ``FaceClassifier``.

Each neural strategy module registers a :class:`~facediag.training.strategies.StrategySpec`
whose factory is :func:`neural_strategy` bound to its training function
(``inp -> StrategyResult``). The rest (scoring every split, fitting the probability
calibration on val, the checkpoint layout, loading for evaluation) is here once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.errors import ConfigError
from facediag.edge.face.contract import PreprocessContract
from facediag.training.strategies import (
    CALIBRATIONS,
    FittedModel,
    LoadedCheckpoint,
    SplitData,
    StrategyInput,
    StrategyResult,
    StrategySpec,
    batched,
)

log = logging.getLogger(__name__)

def calibrate(model: Any, method: str, z_val: np.ndarray, y_val: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Fit the calibration on validation logits and apply it to ``model``; returns what was done."""
    import torch

    from facediag.training.calibrate_probs import fit_platt, fit_temperature, fold_platt

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
    raise ConfigError(f"unknown calibration {method!r}: choose {', '.join(CALIBRATIONS[:-1])} or none")


class NeuralFit(FittedModel):
    """A trained ``FaceClassifier``; saved as model.safetensors + checkpoint.json."""

    def save(self, out: Path, run_meta: dict[str, Any]) -> None:
        from facediag.training.checkpoint import save_checkpoint

        meta = {
            "backbone": self.backbone,
            "backbone_weights": run_meta["backbone_weights"],
            "classes": run_meta["classes"],
            "healthy_class": run_meta["healthy_class"],
            "contract": run_meta["contract"],
            "strategy": run_meta["strategy"],
            "hyperparameters": dict(self.hyperparameters),
            "calibration": self.calibration,
            "seed": run_meta["seed"],
            "data": run_meta["data"],
            "metrics": run_meta["metrics"],
            "head": {"l2_normalize": bool(getattr(self.model, "l2_normalize", True))},
        }
        history = self.history or {}
        if history.get("epochs"):
            from facediag.training.curves import CSV_FILE, PNG_FILE

            meta["curves"] = [CSV_FILE, PNG_FILE]
        save_checkpoint(out, self.model, meta)
        if history.get("epochs"):
            from facediag.training.curves import write_curves

            title = f"{run_meta['strategy']} / {self.backbone}: {', '.join(run_meta['classes'])}"
            written = write_curves(out, history, title)
            log.info("training curves: %s", ", ".join(str(p) for p in written))


@dataclass
class NeuralStrategy:
    """A strategy whose training function returns a ``FaceClassifier`` (in a StrategyResult)."""

    spec: StrategySpec
    train: Callable[[StrategyInput], StrategyResult]

    def contract(self, backbone: str) -> PreprocessContract:
        from facediag.training.backbones import backbone_contract

        return backbone_contract(backbone)

    def weights_info(self, backbone: str, weights: Path | None) -> dict[str, Any]:
        from facediag.edge.hashing import sha256_file
        from facediag.training.backbones import BACKBONES

        if not self.spec.pretrained:
            return {"kind": "random initialisation", "path": None, "sha256": None}
        if weights is not None:
            p = Path(weights)
            if not p.is_file():
                raise ConfigError(f"--weights {p}: no such file")
            return {"kind": "file", "path": str(p.resolve()), "sha256": sha256_file(p)}
        source = BACKBONES.get(backbone).weights_source if backbone in BACKBONES else None
        if source is None and ("+" in backbone or ":" in backbone):  # a feature recipe: every part's source
            from facediag.training.features import parse_recipe

            source = "; ".join(f"{b}: {BACKBONES.get(b).weights_source}" for b in parse_recipe(backbone).backbones)
        return {"kind": "built-in", "source": source, "path": None, "sha256": None}

    def fit(self, inp: StrategyInput, splits: dict[str, SplitData], calibration: str) -> FittedModel:
        """Train, score every split, calibrate on val (rescoring when Platt changed the head)."""
        result = self.train(inp)
        model = result.model
        model.eval()
        logits = {
            sp: batched(model.logits, data.crops, inp.contract, 64, f"scoring ({sp})", inp.progress)
            for sp, data in splits.items()
        }
        if result.calibration_scores is not None:  # e.g. DTL2's out-of-fold scores: calibrate on those
            z_cal, y_cal, fitted_on = result.calibration_scores
            calib = calibrate(model, calibration, z_cal, y_cal, len(inp.classes))
            if calib["method"] != "none":
                calib["fitted_on"] = fitted_on
        else:
            calib = calibrate(model, calibration, logits.get("val", np.zeros((0, 2))), inp.val.labels, len(inp.classes))
        if calib["method"] == "platt":  # the head changed: rescore
            calibrated = {sp: batched(model.logits, splits[sp].crops, inp.contract, 64) for sp in logits}
        else:
            calibrated = {sp: z / float(model.temperature) for sp, z in logits.items()}
        return NeuralFit(
            model=model, backbone=result.backbone, hyperparameters=dict(result.hyperparameters),
            scores={sp: (logits[sp], calibrated[sp]) for sp in logits}, calibration=calib, history=result.history,
        )

    def load(self, ckpt_dir: Path, threads: int = 2) -> LoadedCheckpoint:
        import torch

        from facediag.edge.face.contract import crops_to_input
        from facediag.training.checkpoint import load_classifier

        torch.set_num_threads(max(1, threads))
        net, meta = load_classifier(ckpt_dir)
        contract = PreprocessContract.from_dict(meta["contract"])

        def predict_proba(crops: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return np.asarray(net(torch.from_numpy(crops_to_input(crops, contract))).numpy())

        return LoadedCheckpoint(path=Path(ckpt_dir), meta=meta, contract=contract, model=net, predict_proba=predict_proba)


def neural_strategy(train: Callable[[StrategyInput], StrategyResult]) -> Callable[[StrategySpec], NeuralStrategy]:
    """A StrategySpec factory for a neural training function."""

    def factory(spec: StrategySpec) -> NeuralStrategy:
        return NeuralStrategy(spec, train)

    return factory
