"""No silent fallback: is the station running a weaker engine than this host is set up for?

``engine.backend = "auto"`` falls back to ONNX Runtime on the CPU when no TensorRT engine
built and verified on this device exists (see :mod:`facediag.edge.engine.select`). On a
host *without* TensorRT that is the plan, not a fault. On a host *with* TensorRT it means
the engine-build unit did not build or verify the engine for the current bundle (a new
bundle, a failed build, a failed verify): the station still screens, slower, and must say
so loudly -- a journal error line, ``degraded`` in ``/health`` and ``/status``, and the
``facediag_degraded`` metric -- instead of leaving the reason in ``/status`` only.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

log = logging.getLogger(__name__)

ENGINE_FALLBACK = "engine-fallback"


def tensorrt_installed() -> bool:
    """Whether TensorRT's Python module is installed here (found, not imported: importing costs seconds)."""
    try:
        return importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):
        return False


def expects_tensorrt(backend: str, precision: str, tensorrt_present: bool | None = None) -> bool:
    """Whether this config on this host should run a TensorRT engine (what the engine-build unit builds)."""
    from facediag.edge import precision as precision_table

    if backend == precision_table.ONNXRUNTIME:
        return False
    if precision != precision_table.AUTO and not precision_table.get(precision).runs_on(precision_table.TENSORRT):
        return False  # e.g. int8-cpu: an ONNX Runtime model, whatever is installed
    return tensorrt_installed() if tensorrt_present is None else tensorrt_present


def fallback_reason(backend: str, precision: str, plan: Any, tensorrt_present: bool | None = None) -> str | None:
    """A sentence when ``plan`` runs ONNX Runtime although TensorRT was expected here, else None."""
    if getattr(plan, "backend", None) == "tensorrt" or not expects_tensorrt(backend, precision, tensorrt_present):
        return None
    why = str(getattr(plan, "reason", "") or "no reason given")
    return (f"running on the CPU fallback (ONNX Runtime) although TensorRT is installed here: {why}. "
            "Re-run the engine build: `systemctl restart facediag` (it restarts facediag-engine-build first), "
            "or see `journalctl -u facediag-engine-build`")
