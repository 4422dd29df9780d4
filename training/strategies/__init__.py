"""Training strategies from the seed study, behind one calling convention.

Every strategy is a function ``train_<name>(inp: StrategyInput) -> StrategyResult``:

- ``inp`` carries the aligned crops and integer labels of the train and val
  splits, the class list, the preprocessing contract, a backbone factory, the
  seed and the hyperparameters from the command line (``None`` = strategy default);
- ``result.model`` is an ``nn.Module`` whose ``forward`` takes ``crops_to_input()``
  output and returns probabilities, with ``logits(x)`` (uncalibrated scores) and
  ``set_temperature(t)``; ``training.train`` calibrates it on val, measures it
  and saves it with ``training.checkpoint.save_checkpoint``. ``result.backbone``
  is the name written into ``checkpoint.json`` (``load_classifier`` rebuilds the
  architecture from it); ``result.hyperparameters`` are the values actually used.

``dsift`` (dense SIFT + SVM baseline) lives in ``training.strategies.dsift`` and
is written separately; it is imported only when asked for.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.errors import ConfigError
from edge.face.contract import PreprocessContract

log = logging.getLogger(__name__)

# name -> (module, function, one-line description)
STRATEGIES: dict[str, tuple[str, str, str]] = {
    "dtl2": ("training.strategies.dtl2", "train_dtl2", "frozen face-recognition features + linear SVM (study's best)"),
    "dtl1": ("training.strategies.dtl1", "train_dtl1", "fine-tune: new last layer, SGD, early stopping"),
    "scratch": ("training.strategies.scratch", "train_scratch", "same architecture from random weights"),
    "dsift": ("training.strategies.dsift", "train_dsift", "dense SIFT + linear SVM (classical baseline)"),
}


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

    def hp(self, key: str, default: Any) -> Any:
        """A hyperparameter from the command line, or the strategy's default when not given."""
        v = self.hyperparameters.get(key)
        return default if v is None else v


@dataclass
class StrategyResult:
    model: Any  # nn.Module: forward -> probabilities, .logits(x), .set_temperature(t)
    backbone: str
    hyperparameters: dict[str, Any]
    history: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def get_strategy(name: str) -> Callable[[StrategyInput], StrategyResult]:
    """The training function for ``name``, imported lazily (``dsift`` may be absent)."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    module_name, func_name, _ = STRATEGIES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(
                f"strategy {name!r} is not available in this installation ({module_name} is missing); "
                f"choose one of {', '.join(k for k in STRATEGIES if k != name)}"
            ) from None
        raise
    func = getattr(module, func_name, None)
    if func is None:
        raise ConfigError(f"{module_name} has no {func_name}(); this installation of facediag is incomplete")
    return func


def batched(model_fn: Callable, crops: np.ndarray, contract: PreprocessContract, batch_size: int = 64,
            desc: str = "", progress: bool = False) -> np.ndarray:
    """Run ``model_fn`` (torch, no grad) over crops in batches; returns a float32 numpy array."""
    import torch
    from tqdm import tqdm

    from edge.face.contract import crops_to_input

    outs = []
    starts = range(0, len(crops), batch_size)
    with torch.no_grad():
        for s in tqdm(starts, desc=desc, unit="batch", disable=not progress or not desc, leave=False):
            x = torch.from_numpy(crops_to_input(crops[s : s + batch_size], contract))
            outs.append(model_fn(x).detach().cpu().numpy().astype(np.float32))
    if not outs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outs, axis=0)
