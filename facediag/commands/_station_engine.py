"""What `facediag build/verify --config station.toml` should do on this host (the engine-build unit)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StationEnginePlan:
    bundle: Path
    precision: str | None  # None: nothing to build here
    reason: str
    verify_inputs: Path | None


def plan_from_config(config_path: Path) -> StationEnginePlan:
    """Which engine the station config asks for, or why none is needed on this host."""
    from edge.config import load_config

    cfg = load_config(config_path).engine
    bundle = Path(cfg.bundle)
    inputs = Path(cfg.verify_inputs) if cfg.verify_inputs else None
    if cfg.backend == "onnxruntime":
        return StationEnginePlan(bundle, None, "engine.backend is onnxruntime: no TensorRT engine is used", inputs)
    if cfg.precision == "int8-cpu":
        return StationEnginePlan(bundle, None, "engine.precision int8-cpu runs on ONNX Runtime only", inputs)
    precision = "fp16" if cfg.precision == "auto" else cfg.precision
    if cfg.backend == "auto":
        try:
            import tensorrt  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            return StationEnginePlan(
                bundle, None, "TensorRT is not installed on this host: the daemon will use ONNX Runtime", inputs
            )
    return StationEnginePlan(bundle, precision, f"engine.backend {cfg.backend}, precision {precision}", inputs)
