"""Build a TensorRT engine from a bundle's ONNX model, on the station that will run it.

Three TensorRT generations are in the field (JetPack 5: 8.5, JetPack 6: 10.3,
PyPI: 11.x) and they disagree on how a network is declared and how precision is
chosen (see DESIGN.md, "TensorRT API across versions"). The rule here: detect
features with ``hasattr`` (never by parsing version strings), turn them into a
:class:`TrtApi`, and make every decision in the pure function :func:`plan_build`,
which is tested against stand-in modules shaped like each version. The code that
then talks to TensorRT is a thin, straight-line translation of the plan.

Precision comes from the model, not from builder flags, wherever TensorRT allows:
FP16 is an FP16 ONNX, INT8 a Q/DQ ONNX. On TensorRT >= 10 the network is built
strongly typed with no precision flags; on 8.5/8.6 (no strong typing) the FP16 or
INT8 builder flag lets TensorRT honour the model's types. Implicit INT8
calibration (entropy calibrator + calibration cache) exists only as an opt-in
legacy path, and only where the API still has it (removed in TensorRT 11).

The engine and its manifest are written atomically, engine first: a crash between
the two leaves a manifest whose engine hash does not match, which the station
refuses with a rebuild message rather than loading a wrong engine.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge.atomicio import atomic_write_bytes, remove_stale_temporaries
from edge.engine.manifest import (
    DeviceInfo,
    EngineManifest,
    engine_file_name,
    manifest_path_for,
    normalize_precision,
    short_precision,
    source_precision,
)
from edge.errors import ConfigError, FacediagError, ModelFileError
from edge.hashing import sha256_bytes

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MIB = 1024
DEFAULT_OPT_BATCH = 1
DEFAULT_MAX_BATCH = 8


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
        if key == "fp16":
            builder_flags.append("FP16")  # lets TensorRT keep the FP16 ONNX's half-precision layers
        elif key == "int8-tensorrt":
            builder_flags.append("INT8")  # lets TensorRT run the Q/DQ model's quantized layers in INT8
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


def profile_shapes(input_shape: Sequence[int], opt_batch: int, max_batch: int) -> dict[str, list[int]]:
    """Optimisation-profile shapes for an NCHW input: batch min 1, opt/max as asked.

    A model exported with a fixed batch gets that batch everywhere (TensorRT refuses a
    profile that contradicts a static dimension); only the batch may be dynamic.
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
    return {"min": [1, *rest], "opt": [opt_batch, *rest], "max": [max_batch, *rest]}


def network_flag_bits(trt: Any, names: Iterable[str]) -> int:
    """``create_network`` takes a bit mask: 1 << int(flag) for each flag."""
    bits = 0
    for name in names:
        bits |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return bits


def _version_tag(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z.]+", "_", text) or "unknown"


def timing_cache_path(cache_dir: str | Path, tensorrt_version: str, compute_capability: Sequence[int]) -> Path:
    """One timing cache per TensorRT version and GPU generation (a cache from another version is useless)."""
    cc = "".join(str(int(v)) for v in compute_capability)
    return Path(cache_dir) / f"timing-cache.trt-{_version_tag(tensorrt_version)}.sm{cc}.bin"


def default_cache_dir() -> Path:
    """$FACEDIAG_CACHE, else $XDG_CACHE_HOME/facediag/tensorrt, else ~/.cache/facediag/tensorrt."""
    if os.environ.get("FACEDIAG_CACHE"):
        return Path(os.environ["FACEDIAG_CACHE"]) / "tensorrt"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facediag" / "tensorrt"


def calibration_batches(data: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split calibration inputs into equal batches (TensorRT's calibrator wants a fixed batch size).

    A short last batch is dropped rather than padded with made-up data; fewer inputs
    than one batch is an error.
    """
    x = np.asarray(data, dtype=np.float32)
    if x.ndim != 4:
        raise ConfigError(f"calibration data must be N x C x H x W, got shape {x.shape}")
    if batch_size < 1:
        raise ConfigError(f"calibration batch size must be >= 1, got {batch_size}")
    n = (x.shape[0] // batch_size) * batch_size
    if n == 0:
        raise ConfigError(f"need at least {batch_size} calibration crops, got {x.shape[0]}")
    return [np.ascontiguousarray(x[i : i + batch_size]) for i in range(0, n, batch_size)]


# --------------------------------------------------------------------------- TensorRT side (thin)


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(
            "TensorRT's Python module is not installed here. On a Jetson it comes with JetPack "
            "(python3-libnvinfer; use a venv made with --system-site-packages); on x86 install NVIDIA's "
            "tensorrt wheel. Without a GPU, run the station on ONNX Runtime (backend onnxruntime)"
        ) from exc
    return trt


def _make_entropy_calibrator(
    trt: Any, cuda: Any, batches: list[np.ndarray], cache_path: Path
) -> Any:
    """An ``IInt8EntropyCalibrator2`` fed from host arrays, with its cache on disk (legacy path only)."""
    base = trt.IInt8EntropyCalibrator2

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._batches = batches
            self._index = 0
            self._device = cuda.mem_alloc(batches[0].nbytes) if batches else None

        def get_batch_size(self) -> int:
            return int(self._batches[0].shape[0]) if self._batches else 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._index >= len(self._batches):
                return None
            cuda.memcpy_htod(self._device, self._batches[self._index])
            self._index += 1
            return [int(self._device)]

        def read_calibration_cache(self) -> bytes | None:
            if cache_path.is_file():
                log.info("using INT8 calibration cache %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_path, bytes(cache))
            log.info("wrote INT8 calibration cache %s", cache_path)

    return _Calibrator()


def _build_with_calibrator(
    trt: Any,
    cuda: Any,
    builder: Any,
    network: Any,
    config: Any,
    api: TrtApi,
    input_name: str,
    shapes: dict[str, list[int]],
    batches: list[np.ndarray],
    cache_path: Path,
) -> Any:
    """Legacy implicit INT8: attach an entropy calibrator and build, with a CUDA context current for its buffers."""
    context = cuda.Device(0).retain_primary_context()
    context.push()
    calibrator = None
    try:
        calibrator = _make_entropy_calibrator(trt, cuda, batches, cache_path)
        config.int8_calibrator = calibrator
        if api.has_calibration_profile and shapes["min"][0] != shapes["max"][0]:
            # Dynamic batch: calibration runs at one fixed shape, the calibrator's batch size.
            cal_shape = [calibrator.get_batch_size(), *shapes["max"][1:]]
            cal_profile = builder.create_optimization_profile()
            cal_profile.set_shape(input_name, cal_shape, cal_shape, cal_shape)
            config.set_calibration_profile(cal_profile)
        return builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None and calibrator._device is not None:
            calibrator._device.free()
        context.pop()
        context.detach()


@dataclass
class BuildResult:
    engine_path: Path
    manifest_path: Path
    manifest: EngineManifest
    plan: BuildPlan
    timing_cache_path: Path | None


def _parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> Any:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(int(parser.num_errors))]
        raise ModelFileError(
            f"TensorRT could not parse {onnx_path.name}: {'; '.join(errors) or 'no detail given'}. "
            "Check that this TensorRT supports the model's opset, or re-export the bundle"
        )
    return parser


def _check_input(network: Any, contract: Any) -> tuple[str, tuple[int, ...]]:
    if int(network.num_inputs) != 1:
        raise ModelFileError(f"the model must have one input, it has {network.num_inputs}; re-export the bundle")
    tensor = network.get_input(0)
    shape = tuple(int(d) for d in tensor.shape)
    if contract is not None and len(shape) == 4 and tuple(shape[1:]) != (3, contract.height, contract.width):
        raise ModelFileError(
            f"the model input is {shape}, but the bundle's contract crops are 3x{contract.height}x{contract.width}; "
            "the bundle is inconsistent: re-export it"
        )
    return str(tensor.name), shape


def build_engine(
    bundle_dir: str | Path,
    precision: str,
    *,
    opt_batch: int = DEFAULT_OPT_BATCH,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    dla_core: int | None = None,
    legacy_calibrator: bool = False,
    calibration: np.ndarray | None = None,
    calibration_batch: int = 8,
    calibration_cache: str | Path | None = None,
    output_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    trt_module: Any = None,
    cuda_module: Any = None,
    device_info: DeviceInfo | None = None,
) -> BuildResult:
    """Build ``model.<precision>.engine`` + its manifest from a bundle, on this device.

    ``trt_module`` / ``cuda_module`` / ``device_info`` default to the real TensorRT,
    pycuda and the probed GPU; tests pass stand-ins. ``calibration`` (N x 3 x H x W
    float32 crops) is only used with ``legacy_calibrator``.
    """
    from edge.bundle import load_bundle

    if workspace_mib < 1:
        raise ConfigError(f"--workspace-mib must be >= 1, got {workspace_mib}")
    bundle_path = Path(bundle_dir)
    bundle = load_bundle(bundle_path)
    key = normalize_precision(precision)

    trt = trt_module if trt_module is not None else import_tensorrt()
    api = detect_api(trt)
    plan = plan_build(api, key, legacy_calibrator=legacy_calibrator, dla_core=dla_core)
    for note in plan.notes:
        log.warning("%s", note)

    onnx_path = bundle.model_path(plan.source_precision)
    onnx_name = bundle.precisions[plan.source_precision].file
    onnx_sha = bundle.files[onnx_name]
    out_dir = Path(output_dir) if output_dir is not None else bundle_path
    out_dir.mkdir(parents=True, exist_ok=True)
    caches = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    cuda = cuda_module
    if device_info is None or (legacy_calibrator and cuda is None):
        if cuda is None:
            from edge.engine.tensorrt import import_pycuda

            cuda = import_pycuda()
    if device_info is None:
        from edge.engine.tensorrt import probe_device

        device_info = probe_device(trt, cuda)

    calib_cache = Path(calibration_cache) if calibration_cache else (
        caches / f"calibration.{bundle_path.resolve().name}.{onnx_sha[:12]}.cache"
    )
    if legacy_calibrator and calibration is None and not calib_cache.is_file():
        raise ConfigError(
            "--legacy-calibrator needs calibration crops (--calibration DIR_OR_NPY) or an existing "
            f"calibration cache ({calib_cache})"
        )

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if dla_core is not None and dla_core >= int(builder.num_DLA_cores):
        raise ConfigError(
            f"--dla-core {dla_core} does not exist: this device has {builder.num_DLA_cores} DLA core(s)"
        )
    network = builder.create_network(network_flag_bits(trt, plan.network_flags))
    parser = _parse_onnx(trt, network, logger, onnx_path)
    input_name, input_shape = _check_input(network, bundle.contract)
    shapes = profile_shapes(input_shape, opt_batch, max_batch)

    config = builder.create_builder_config()
    workspace_bytes = int(workspace_mib) << 20
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    tc_path: Path | None = None
    if api.has_timing_cache:
        tc_path = timing_cache_path(caches, api.version, device_info.compute_capability)
        previous = tc_path.read_bytes() if tc_path.is_file() else b""
        cache = config.create_timing_cache(previous)
        if not config.set_timing_cache(cache, False):
            log.warning("timing cache %s does not fit this device; starting a fresh one", tc_path)
            config.set_timing_cache(config.create_timing_cache(b""), False)

    log.info(
        "building %s engine from %s with TensorRT %s (network flags %s, builder flags %s); this can take minutes",
        short_precision(key), onnx_name, api.version, list(plan.network_flags) or "none",
        list(plan.builder_flags) or "none",
    )
    if legacy_calibrator:
        batches = calibration_batches(calibration, calibration_batch) if calibration is not None else []
        serialized = _build_with_calibrator(trt, cuda, builder, network, config, api, input_name, shapes,
                                            batches, calib_cache)
    else:
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FacediagError(
            f"TensorRT could not build an engine from {onnx_name} (see TensorRT's messages above). Try a larger "
            "--workspace-mib, a smaller --max-batch, or another precision"
        )
    data = bytes(serialized)
    if not data:
        raise FacediagError(f"TensorRT returned an empty engine for {onnx_name}; see its messages above")
    del parser

    if tc_path is not None:
        tc_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(tc_path, bytes(config.get_timing_cache().serialize()))

    engine_path = out_dir / engine_file_name(key)
    manifest_path = manifest_path_for(engine_path)
    for target in (engine_path, manifest_path):
        remove_stale_temporaries(target)
    from facediag import __version__

    manifest = EngineManifest(
        engine_file=engine_path.name,
        engine_sha256=sha256_bytes(data),
        onnx_file=onnx_name,
        onnx_sha256=onnx_sha,
        precision=key,
        tensorrt_version=api.version,
        gpu_name=device_info.gpu_name,
        compute_capability=tuple(device_info.compute_capability),  # type: ignore[arg-type]
        input_name=input_name,
        input_shapes=shapes,
        dla_core=dla_core,
        builder_options={
            "network_flags": list(plan.network_flags),
            "builder_flags": list(plan.builder_flags),
            "strongly_typed": plan.strongly_typed,
            "legacy_calibrator": legacy_calibrator,
            "workspace_bytes": workspace_bytes,
            "timing_cache": tc_path.name if tc_path else None,
            "gpu_fallback": "GPU_FALLBACK" in plan.builder_flags,
        },
        package_version=__version__,
        created_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        verify=None,
    )
    atomic_write_bytes(engine_path, data)
    manifest.save(manifest_path)
    log.info("wrote %s (%.1f MiB) and %s", engine_path, len(data) / 2**20, manifest_path.name)
    return BuildResult(engine_path, manifest_path, manifest, plan, tc_path)
