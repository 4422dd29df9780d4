"""Training strategies from the seed study, behind one interface and one registry.

``get_strategy(name)`` returns a :class:`Strategy` (registered in :data:`STRATEGIES`
by its own module: ``dtl2``, ``dtl1``, ``scratch``, ``dsift``). ``facediag.training.train``
drives every strategy the same way:

- ``strategy.contract(backbone)``: the preprocessing contract its crops are made with;
- ``strategy.weights_info(backbone, weights)``: what the checkpoint records about the
  starting weights (and a ConfigError for a missing ``--weights`` file, before cropping);
- ``strategy.fit(inp, splits, calibration)`` -> :class:`FittedModel`: trains on
  ``inp`` (aligned crops and labels of train and val, classes, contract, a backbone
  factory, seed, hyperparameters from the command line, ``None`` = strategy default),
  calibrates probabilities on val, and returns per-split scores before and after
  calibration; ``fitted.save(out, run_meta)`` writes the checkpoint folder;
- ``strategy.load(ckpt_dir, threads)`` -> :class:`LoadedCheckpoint` with
  ``predict_proba(crops)`` for evaluation (``load_checkpoint(path)`` picks the strategy
  from ``checkpoint.json``).

The neural strategies share ``facediag.training.strategies.neural`` (their training
function returns a :class:`StrategyResult` whose model is a ``FaceClassifier``);
dense SIFT implements the interface in ``facediag.training.strategies.dsift``. Nothing
else needs to know which strategy it runs. Strategy modules are light at import (torch
and sklearn are imported when training starts), so listing the registry stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from facediag.edge.errors import ModelFileError
from facediag.edge.face.contract import PreprocessContract
from facediag.edge.registry import Factory, Registry, load_factory

log = logging.getLogger(__name__)

__all__ = [
    "CALIBRATIONS", "STRATEGIES", "FittedModel", "LoadedCheckpoint", "SplitData", "Strategy", "StrategyInput", "StrategyResult",
    "StrategySpec", "batched", "get_strategy", "load_checkpoint",
]


@dataclass
class SplitData:
    """Aligned BGR uint8 crops (N, H, W, 3) and integer labels (N,) of one split."""

    crops: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(len(self.labels))


@dataclass
class StrategyInput:
    classes: list[str]
    contract: PreprocessContract
    train: SplitData
    val: SplitData
    seed: int
    hyperparameters: dict[str, Any]
    make_backbone: Callable[[bool], Any]  # pretrained: bool -> nn.Module (get_backbone with the run's weights)
    backbone_name: str = ""
    progress: bool = True
    healthy_class: str | None = None

    def hp(self, key: str, default: Any) -> Any:
        """A hyperparameter from the command line, or the strategy's default when not given."""
        v = self.hyperparameters.get(key)
        return default if v is None else v


@dataclass
class StrategyResult:
    """What a neural strategy's training function returns (see ``facediag.training.strategies.neural``)."""

    model: Any  # nn.Module: forward -> probabilities, .logits(x), .set_temperature(t)
    backbone: str
    hyperparameters: dict[str, Any]
    history: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: (logits, labels, what they are) to fit the probability calibration on instead of the val split,
    #: e.g. DTL2's out-of-fold scores of the training photos (``facediag.training.strategies.dtl2``)
    calibration_scores: tuple[np.ndarray, np.ndarray, str] | None = None


@dataclass
class FittedModel:
    """A trained, calibrated model and its scores, ready to be measured and saved.

    ``scores``: split -> (uncalibrated scores, calibrated scores), each (N, C), for the
    splits the strategy scored. ``base_metrics``: the strategy's own numbers, listed first
    in the checkpoint's metrics. Subclasses implement ``save``.
    """

    model: Any
    backbone: str
    hyperparameters: dict[str, Any]
    scores: dict[str, tuple[np.ndarray, np.ndarray]]
    calibration: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    base_metrics: dict[str, Any] = field(default_factory=dict)

    def save(self, out: Path, run_meta: dict[str, Any]) -> None:
        """Write the checkpoint folder. ``run_meta``: backbone_weights, classes, healthy_class, contract
        (dict), strategy, seed, data, metrics, as assembled by ``facediag.training.train``."""
        raise NotImplementedError


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready to score crops: ``predict_proba(crops)`` maps aligned BGR uint8 crops
    (N, H, W, 3) made with ``contract`` to calibrated class probabilities (N, C)."""

    path: Path
    meta: dict[str, Any]
    contract: PreprocessContract
    model: Any
    predict_proba: Callable[[np.ndarray], np.ndarray]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def strategy(self) -> str:
        return str(self.meta["strategy"])


class Strategy(Protocol):
    """The interface every training strategy implements (see the module docstring)."""

    spec: StrategySpec

    def contract(self, backbone: str) -> PreprocessContract: ...

    def weights_info(self, backbone: str, weights: Path | None) -> dict[str, Any]: ...

    def fit(self, inp: StrategyInput, splits: dict[str, SplitData], calibration: str) -> FittedModel: ...

    def load(self, ckpt_dir: Path, threads: int = 2) -> LoadedCheckpoint: ...


@dataclass(frozen=True)
class StrategySpec:
    """A registered training strategy.

    ``factory(spec)`` returns the :class:`Strategy`. ``options``: the hyperparameters
    (``TrainConfig`` fields / command-line flags) it reads. ``uses_backbone``: False for
    handcrafted features (``--backbone``/``--weights`` are ignored). ``pretrained``: starts
    from the backbone's pretrained weights (False: random initialisation).
    ``torch_checkpoint``: its checkpoint is a ``FaceClassifier`` that
    ``facediag.training.checkpoint.load_classifier`` (and so ``facediag export``) can load.
    """

    name: str
    summary: str
    factory: Factory
    options: tuple[str, ...] = ()
    uses_backbone: bool = True
    pretrained: bool = True
    torch_checkpoint: bool = True


#: ``--calibration`` methods: what ``FittedModel.calibration`` records (dense SIFT always fits a temperature).
CALIBRATIONS = ("temperature", "platt", "none")

STRATEGIES: Registry[StrategySpec] = Registry(
    "strategy",
    builtin_modules=tuple(f"facediag.training.strategies.{m}" for m in ("dtl2", "dtl1", "scratch", "dsift")),
)


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; an unknown name (or one whose module is not installed) is a
    ConfigError listing the registered strategies."""
    spec = STRATEGIES.get(name)
    strategy: Strategy = load_factory(spec.factory)(spec)
    return strategy


def load_checkpoint(ckpt_dir: str | Path, threads: int = 2) -> LoadedCheckpoint:
    """Any checkpoint folder written by ``facediag train``, loaded by the strategy that wrote it."""
    from facediag.training.checkpoint import read_meta

    path = Path(ckpt_dir)
    meta = read_meta(path)
    name = meta["strategy"]
    if name not in STRATEGIES:
        raise ModelFileError(
            f"{path} was trained with strategy {name!r}, which this installation of facediag does not have "
            f"(it has {', '.join(STRATEGIES.names())})"
        )
    return get_strategy(name).load(path, threads=threads)


def batched(model_fn: Callable[[Any], Any], crops: np.ndarray, contract: PreprocessContract, batch_size: int = 64,
            desc: str = "", progress: bool = False) -> np.ndarray:
    """Run ``model_fn`` (torch, no grad) over crops in batches; returns a float32 numpy array."""
    import torch
    from tqdm import tqdm

    from facediag.edge.face.contract import crops_to_input

    outs = []
    starts = range(0, len(crops), batch_size)
    with torch.no_grad():
        for s in tqdm(starts, desc=desc, unit="batch", disable=not progress or not desc, leave=False):
            x = torch.from_numpy(crops_to_input(crops[s : s + batch_size], contract))
            outs.append(model_fn(x).detach().cpu().numpy().astype(np.float32))
    if not outs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outs, axis=0)
