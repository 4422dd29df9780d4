"""TensorRT build decisions, pure: what the installed TensorRT offers and what to ask it for.

Part of ``facediag.converters.tensorrt_build`` (which re-exports these names; its
docstring explains the approach). Features are detected with ``hasattr`` only and
turned into a :class:`TrtApi`; :func:`plan_build`, :func:`profile_shapes` and
:func:`check_dla_core` decide everything without touching TensorRT, so they are
tested against stand-in modules shaped like each TensorRT version.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from facediag.edge import precision as precision_table
from facediag.edge.engine.manifest import normalize_precision, source_precision
from facediag.edge.errors import ConfigError, ModelFileError

# The builder's logger: these warnings were always reported under facediag.converters.tensorrt_build.
log = logging.getLogger("facediag.converters.tensorrt_build")


# --------------------------------------------------------------------------- feature detection


def _has(obj: Any, name: str) -> bool:
    return obj is not None and hasattr(obj, name)


@dataclass(frozen=True)
class TrtApi:
    """What the imported ``tensorrt`` module offers, found by ``hasattr`` only.

    ``version`` is recorded (manifest, timing-cache file name) but never used to decide.
    """

    version: str
    has_explicit_batch_flag: bool
    has_strongly_typed_flag: bool
    binding_era: bool  # pre-10 binding API present: networks can still be implicit-batch
    has_fp16_flag: bool
    has_int8_flag: bool
    has_legacy_calibrator: bool
    has_calibration_profile: bool
    has_gpu_fallback: bool
    has_memory_pool_limit: bool
    has_build_serialized_network: bool
    has_timing_cache: bool
    has_execute_async_v3: bool

    @property
    def typing_mode(self) -> str:
        """``weak`` (8.x: precision via builder flags), ``opt-in`` (10.x: STRONGLY_TYPED flag), ``always`` (11+)."""
        weak_flags = self.has_fp16_flag or self.has_int8_flag
        if weak_flags and not self.has_strongly_typed_flag:
            return "weak"
        if weak_flags and self.has_strongly_typed_flag:
            return "opt-in"
        return "always"


def detect_api(trt: ModuleType | Any) -> TrtApi:
    """Inspect a ``tensorrt`` module (or a stand-in) with ``hasattr`` and describe what it offers."""
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    bflags = getattr(trt, "BuilderFlag", None)
    config_cls = getattr(trt, "IBuilderConfig", None)
    engine_cls = getattr(trt, "ICudaEngine", None)
    builder_cls = getattr(trt, "Builder", None)
    context_cls = getattr(trt, "IExecutionContext", None)
    has_int8 = _has(bflags, "INT8")
    return TrtApi(
        version=str(getattr(trt, "__version__", "unknown")),
        has_explicit_batch_flag=_has(flags, "EXPLICIT_BATCH"),
        has_strongly_typed_flag=_has(flags, "STRONGLY_TYPED"),
        # Implicit batch was removed in TensorRT 10 together with the binding-index API,
        # so the presence of that API tells whether EXPLICIT_BATCH still means anything.
        binding_era=_has(engine_cls, "num_bindings") or _has(builder_cls, "build_engine"),
        has_fp16_flag=_has(bflags, "FP16"),
        has_int8_flag=has_int8,
        has_legacy_calibrator=_has(trt, "IInt8EntropyCalibrator2") and _has(config_cls, "int8_calibrator") and has_int8,
        has_calibration_profile=_has(config_cls, "set_calibration_profile"),
        has_gpu_fallback=_has(bflags, "GPU_FALLBACK"),
        has_memory_pool_limit=_has(config_cls, "set_memory_pool_limit"),
        has_build_serialized_network=_has(builder_cls, "build_serialized_network"),
        has_timing_cache=_has(config_cls, "create_timing_cache") and _has(config_cls, "set_timing_cache"),
        has_execute_async_v3=_has(context_cls, "execute_async_v3"),
    )


# --------------------------------------------------------------------------- decisions (pure)


@dataclass(frozen=True)
class BuildPlan:
    """What to ask TensorRT for; names are members of ``NetworkDefinitionCreationFlag`` / ``BuilderFlag``."""

    precision: str  # bundle precision of the engine: fp32 / fp16 / int8-tensorrt
    source_precision: str  # bundle precision of the ONNX it is built from
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    strongly_typed: bool
    legacy_calibrator: bool
    dla_core: int | None
    notes: tuple[str, ...] = field(default_factory=tuple)


def plan_build(api: TrtApi, precision: str, *, legacy_calibrator: bool = False, dla_core: int | None = None) -> BuildPlan:
    """Decide network flags, builder flags and calibration for ``precision`` on the detected API."""
    key = normalize_precision(precision)
    src = source_precision(key, legacy_calibrator)
    missing = [
        name
        for name, ok in (
            ("Builder.build_serialized_network", api.has_build_serialized_network),
            ("IBuilderConfig.set_memory_pool_limit", api.has_memory_pool_limit),
            ("IExecutionContext.execute_async_v3", api.has_execute_async_v3),
        )
        if not ok
    ]
    if missing:
        raise ConfigError(
            f"this TensorRT ({api.version}) lacks {', '.join(missing)}; facediag needs TensorRT 8.5 or newer "
            "(JetPack 5 or later). Upgrade TensorRT, or run the station on ONNX Runtime (backend onnxruntime)"
        )
    notes: list[str] = []
    if legacy_calibrator and not api.has_legacy_calibrator:
        raise ConfigError(
            f"--legacy-calibrator needs TensorRT's implicit INT8 calibration (IInt8EntropyCalibrator2, "
            f"IBuilderConfig.int8_calibrator, BuilderFlag.INT8), which this TensorRT ({api.version}) does not "
            "have: it was deprecated in 10.1 and removed in 11.0. Build the explicitly quantized model instead: "
            "`facediag build BUNDLE --precision int8` (without --legacy-calibrator), after "
            "`facediag quantize BUNDLE --target tensorrt` made the Q/DQ model"
        )
    if dla_core is not None:
        if dla_core < 0:
            raise ConfigError(f"--dla-core must be 0 or more, got {dla_core}")
        if key == "fp32":
            raise ConfigError("DLA runs only FP16 and INT8 layers: use --precision fp16 or int8 with --dla-core")

    network_flags: list[str] = []
    builder_flags: list[str] = []
    if api.has_explicit_batch_flag and api.binding_era:
        network_flags.append("EXPLICIT_BATCH")  # 8.x: without it the ONNX parser refuses the network

    mode = api.typing_mode
    if legacy_calibrator:
        # Implicit calibration is weakly typed by nature: no strong typing, INT8 flag + calibrator.
        strongly_typed = False
        builder_flags.append("INT8")
        if mode != "weak":
            notes.append("legacy INT8 calibration is deprecated in this TensorRT and gone in 11.0")
    elif mode == "weak":
        strongly_typed = False
        # FP16 lets TensorRT keep the FP16 ONNX's half-precision layers, INT8 run the Q/DQ model's in INT8
        flag = precision_table.get(key).tensorrt_flag
        if flag is not None:
            builder_flags.append(flag)
    elif mode == "opt-in":
        strongly_typed = True
        network_flags.append("STRONGLY_TYPED")
    else:  # always strongly typed; the flag, where still present, is deprecated and ignored
        strongly_typed = True

    if dla_core is not None:
        if api.has_gpu_fallback:
            builder_flags.append("GPU_FALLBACK")
        else:
            notes.append("no GPU_FALLBACK in this TensorRT: every layer must run on the DLA")
    return BuildPlan(
        precision=key,
        source_precision=src,
        network_flags=tuple(network_flags),
        builder_flags=tuple(builder_flags),
        strongly_typed=strongly_typed,
        legacy_calibrator=legacy_calibrator,
        dla_core=dla_core,
        notes=tuple(notes),
    )


def profile_shapes(
    input_shape: Sequence[int], opt_batch: int, max_batch: int, *, static: bool = False
) -> dict[str, list[int]]:
    """Optimisation-profile shapes for an NCHW input: batch min 1, opt/max as asked.

    A model exported with a fixed batch gets that batch everywhere (TensorRT refuses a
    profile that contradicts a static dimension); only the batch may be dynamic.
    ``static`` (DLA builds: the DLA runs static shapes only, otherwise every layer falls
    back to the GPU) makes min = opt = max = ``opt_batch``.
    """
    shape = [int(d) for d in input_shape]
    if len(shape) != 4:
        raise ModelFileError(f"the model input must be NCHW (4 dimensions), got shape {shape}")
    if any(d < 0 for d in shape[1:]):
        raise ModelFileError(
            f"the model input has dynamic channel/height/width {shape}; only the batch may be dynamic. "
            "Re-export the bundle (facediag export fixes the crop size from the contract)"
        )
    if shape[0] >= 0:
        fixed = list(shape)
        if (opt_batch, max_batch) != (shape[0], shape[0]):
            log.warning("model has a fixed batch of %d; ignoring --opt-batch/--max-batch", shape[0])
        return {"min": fixed, "opt": list(fixed), "max": list(fixed)}
    if not 1 <= opt_batch <= max_batch:
        raise ConfigError(f"need 1 <= --opt-batch <= --max-batch, got opt {opt_batch}, max {max_batch}")
    rest = shape[1:]
    if static:
        if max_batch != opt_batch:
            log.warning("DLA needs a static batch: building for batch %d (--opt-batch), not up to %d", opt_batch,
                        max_batch)
        return {"min": [opt_batch, *rest], "opt": [opt_batch, *rest], "max": [opt_batch, *rest]}
    return {"min": [1, *rest], "opt": [opt_batch, *rest], "max": [max_batch, *rest]}


def check_dla_core(api: TrtApi, dla_core: int, num_dla_cores: int) -> None:
    """ConfigError unless ``dla_core`` exists here. TensorRT 11.0-11.3 keep the DLA API but have no DLA at
    all (it reports 0 cores), which gets its own message: the decision is the core count, the version only
    explains it."""
    if 0 <= dla_core < num_dla_cores:
        return
    major_minor = re.match(r"(\d+)\.(\d+)", api.version)
    if num_dla_cores == 0 and major_minor and int(major_minor[1]) == 11 and int(major_minor[2]) <= 3:
        raise ConfigError(
            f"--dla-core {dla_core}: this TensorRT ({api.version}) has no DLA support (TensorRT 11.0-11.3 dropped "
            "it; 11.4.1 restores it on Jetson AGX Orin with JetPack 7.2.2). Build without --dla-core to run on the "
            "GPU, or build DLA engines with TensorRT 10.x (JetPack 6)"
        )
    raise ConfigError(f"--dla-core {dla_core} does not exist: this device has {num_dla_cores} DLA core(s)")


def network_flag_bits(trt: Any, names: Iterable[str]) -> int:
    """``create_network`` takes a bit mask: 1 << int(flag) for each flag."""
    bits = 0
    for name in names:
        bits |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return bits
