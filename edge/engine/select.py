"""Which engine runs the bundle on this station: TensorRT when proven here, ONNX Runtime otherwise.

The choice is made in two steps so that the decision is testable without a GPU:

1. ``plan_engine`` looks at files and facts only (the bundle, the engine manifests
   beside it, a device description) and returns an ``EnginePlan`` with the backend,
   the precision, the file and a one-line *reason*, which the daemon logs and shows
   in ``/status``.
2. ``open_engine`` turns the plan into a loaded ``Engine``.

Rules for ``backend``:

* ``auto``: TensorRT only for an engine that was built for this very device *and*
  proved itself with ``facediag verify`` (its manifest matches the device, the
  bundle's model hash and the precision, and records a passing verify result).
  Anything short of that (no TensorRT installed, no engine, a mismatch, no verify
  result) falls back to ONNX Runtime on the CPU, and the reason says which.
* ``tensorrt``: the operator insists; anything unusable is a ``ConfigError`` that
  says what is missing and how to fix it (never a silent fallback).
* ``onnxruntime``: the bundle's ONNX file; ``OrtEngine`` refuses to start when the
  first configured provider is not the one the session really uses.

Precision ``auto`` means: for TensorRT the most compact verified engine
(int8, then fp16, then fp32); for ONNX Runtime the FP32 model (INT8 on the CPU is
an explicit choice, ``int8-cpu``, because its accuracy gate is a trade-off the
operator should make knowingly).
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facediag.edge import precision as precision_table
from facediag.edge.bundle import Bundle
from facediag.edge.engine.backends import backend_names, get_backend, ort_providers
from facediag.edge.engine.base import Engine
from facediag.edge.errors import ConfigError, FacediagError, ModelFileError

log = logging.getLogger(__name__)

__all__ = ["EnginePlan", "engine_is_current", "open_engine", "ort_providers", "plan_engine", "select_engine"]

# Kept for readers of the old names; the engine-backend registry and the precision table are the truth.
BACKENDS = backend_names()
TENSORRT_PRECISIONS = precision_table.auto_order(precision_table.TENSORRT)  # preference order for "auto"
ORT_PRECISIONS = precision_table.for_runtime(precision_table.ONNXRUNTIME)


@dataclass(frozen=True)
class EnginePlan:
    """The engine the station will run, and why (``reason`` is shown to operators)."""

    backend: str  # "tensorrt" | "onnxruntime"
    precision: str  # a bundle precision name
    path: Path  # the .engine or .onnx file
    reason: str
    expected_onnx_sha256: str | None = None  # TensorRT: the bundle's hash of the model the engine came from


DeviceProbe = typing.Callable[[], Any]  # -> facediag.edge.engine.manifest.DeviceInfo; raises when TensorRT/CUDA is unusable


def probe_tensorrt_device() -> Any:
    """This machine's TensorRT version and GPU (imports tensorrt and pycuda). TensorRTUnavailable (a
    ConfigError) when either is absent or CUDA cannot start: tensorrt.py knows which exceptions mean that
    (pycuda's own ``pycuda.driver.Error`` classes, TensorRT's TypeError from ``Runtime()``)."""
    from facediag.edge.engine.tensorrt import probe_this_device

    return probe_this_device()


def _tensorrt_candidates(bundle: Bundle, precision: str) -> list[str]:
    if precision == precision_table.AUTO:
        return list(precision_table.auto_order(precision_table.TENSORRT))
    precision_table.check_runtime(precision, precision_table.TENSORRT)
    return [precision]


def _built_engine(bundle: Bundle, precision: str, device: Any) -> tuple[Any, str, str]:
    """(manifest, expected model sha256, "") when this precision's engine exists and was built for this
    device and bundle, else (None, "", why not). Verification is not looked at here."""
    from facediag.edge.engine.manifest import (
        EngineManifest,
        compare_manifest,
        engine_file_name,
        manifest_path_for,
        short_precision,
        source_precision,
    )

    engine_path = bundle.path / engine_file_name(precision)
    short = short_precision(precision)
    if not engine_path.is_file():
        return None, "", f"no {short} engine ({engine_path.name}; build one with `facediag build {bundle.path} --precision {short}`)"
    try:
        manifest = EngineManifest.load(manifest_path_for(engine_path))
    except ModelFileError as exc:
        return None, "", f"{engine_path.name}: {exc}"
    src = source_precision(precision, bool(manifest.builder_options.get("legacy_calibrator")))
    if src not in bundle.precisions:
        return None, "", f"{engine_path.name}: the bundle has no {src} model to check it against"
    expected = bundle.files[bundle.precisions[src].file]
    problems = compare_manifest(manifest, device, expected, precision, bundle=str(bundle.path))
    if problems:
        return None, "", f"{engine_path.name} was not built for this device/bundle: " + "; ".join(problems)
    return manifest, expected, ""


def engine_is_current(bundle: Bundle, precision: str, device: Any) -> bool:
    """Whether ``facediag build`` can skip: an engine built for this device from this bundle's model exists."""
    return _built_engine(bundle, precision, device)[0] is not None


def _check_tensorrt(bundle: Bundle, precision: str, device: Any) -> tuple[EnginePlan | None, str]:
    """(plan, "") when this precision's engine is usable here, else (None, why not)."""
    from facediag.edge.engine.manifest import engine_file_name, short_precision

    manifest, expected, why = _built_engine(bundle, precision, device)
    if manifest is None:
        return None, why
    engine_path = bundle.path / engine_file_name(precision)
    short = short_precision(precision)
    verify = manifest.verify or {}
    if not verify.get("passed"):
        return None, (
            f"{engine_path.name} has no passing verification on record "
            f"(prove it with `facediag verify {bundle.path} --precision {short}`)"
        )
    plan = EnginePlan(
        "tensorrt", precision, engine_path,
        f"TensorRT {short} engine built and verified on this device ({device.gpu_name}, TensorRT {device.tensorrt_version})",
        expected_onnx_sha256=expected,
    )
    return plan, ""


def _ort_plan(bundle: Bundle, precision: str, why: str) -> EnginePlan:
    chosen = precision_table.auto_order(precision_table.ONNXRUNTIME)[0] if precision == precision_table.AUTO else precision
    precision_table.check_runtime(chosen, precision_table.ONNXRUNTIME)
    if chosen not in bundle.precisions:
        have = ", ".join(sorted(bundle.precisions))
        raise ConfigError(
            f"engine.precision {chosen!r}: bundle {bundle.path} has no such model (it has: {have}); "
            "choose one of those or add it with `facediag quantize` / `facediag fp16`"
        )
    return EnginePlan("onnxruntime", chosen, bundle.model_path(chosen), why)


def plan_engine(
    bundle: Bundle,
    backend: str = "auto",
    precision: str = "auto",
    *,
    device_probe: DeviceProbe | None = None,
) -> EnginePlan:
    """Decide backend, precision and file for ``bundle`` on this machine (see the module docstring).

    ``device_probe`` returns this machine's ``DeviceInfo`` (default: ask TensorRT and CUDA);
    it is only called when a TensorRT engine file exists, so CPU-only stations never import
    TensorRT. ConfigError when the request cannot be met.
    """
    get_backend(backend).check_precision(precision)
    probe = device_probe or probe_tensorrt_device
    if backend == precision_table.ONNXRUNTIME:
        return _ort_plan(bundle, precision, "engine.backend = onnxruntime")

    from facediag.edge.engine.manifest import engine_file_name

    if precision != precision_table.AUTO and not precision_table.get(precision).runs_on(precision_table.TENSORRT):
        return _ort_plan(bundle, precision, f"engine.precision = {precision} is an ONNX Runtime model")
    candidates = _tensorrt_candidates(bundle, precision)
    present = [p for p in candidates if (bundle.path / engine_file_name(p)).is_file()]
    reasons: list[str] = []
    if not present:
        reasons.append("no TensorRT engine in the bundle (build one on this device with `facediag build`)")
    else:
        try:
            device = probe()
        except (FacediagError, ImportError, OSError, RuntimeError) as exc:
            device = None
            reasons.append(f"TensorRT is not usable here ({exc})")
        if device is not None:
            for p in candidates:
                plan, why = _check_tensorrt(bundle, p, device)
                if plan is not None:
                    return plan
                reasons.append(why)
    why = "; ".join(reasons)
    if backend == precision_table.TENSORRT:
        raise ConfigError(
            f"engine.backend = tensorrt, but no usable TensorRT engine for precision {precision!r}: {why}. "
            "Build and verify one on this device (`facediag build`, `facediag verify`) or set engine.backend = auto"
        )
    return _ort_plan(bundle, precision, f"ONNX Runtime on the CPU: {why}")


def open_engine(plan: EnginePlan, *, threads: int | None = None, providers: Sequence[str] = ()) -> Engine:
    """Load the engine a plan names, with the opener its backend registered."""
    spec = get_backend(plan.backend)
    if spec.open is None:
        raise ConfigError(f"engine backend {plan.backend!r} chooses another backend and opens nothing itself")
    return spec.open(plan, threads, providers)


def select_engine(
    bundle: Bundle,
    backend: str = "auto",
    precision: str = "auto",
    *,
    threads: int | None = None,
    providers: Sequence[str] = (),
    device_probe: DeviceProbe | None = None,
) -> tuple[Engine, EnginePlan]:
    """Plan and open the engine; logs which backend runs and why. Returns (engine, plan)."""
    plan = plan_engine(bundle, backend, precision, device_probe=device_probe)
    log.info("engine: %s %s (%s): %s", plan.backend, plan.precision, plan.path.name, plan.reason)
    engine = open_engine(plan, threads=threads, providers=providers)
    return engine, plan
