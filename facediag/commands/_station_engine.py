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
    from facediag.edge import precision as precision_table
    from facediag.edge.config import load_config

    cfg = load_config(config_path).engine
    bundle = Path(cfg.bundle)
    inputs = Path(cfg.verify_inputs) if cfg.verify_inputs else None
    if cfg.backend == precision_table.ONNXRUNTIME:
        return StationEnginePlan(bundle, None, "engine.backend is onnxruntime: no TensorRT engine is used", inputs)
    if cfg.precision != precision_table.AUTO and not precision_table.get(cfg.precision).runs_on(precision_table.TENSORRT):
        return StationEnginePlan(bundle, None, f"engine.precision {cfg.precision} runs on ONNX Runtime only", inputs)
    precision = precision_table.ENGINE_DEFAULT if cfg.precision == precision_table.AUTO else cfg.precision
    if cfg.backend == precision_table.AUTO:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return StationEnginePlan(
                bundle, None, "TensorRT is not installed on this host: the daemon will use ONNX Runtime", inputs
            )
    return StationEnginePlan(bundle, precision, f"engine.backend {cfg.backend}, precision {precision}", inputs)
