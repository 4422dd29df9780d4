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

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from facediag.converters.tensorrt_cache import (
    attach_timing_cache,
    default_cache_dir,
    save_timing_cache,
    timing_cache_path,
)
from facediag.converters.tensorrt_calibrator import build_with_calibrator, calibration_batches
from facediag.converters.tensorrt_output import _builder_options, _engine_bytes, _write_engine
from facediag.converters.tensorrt_plan import (
    BuildPlan,
    TrtApi,
    _has,
    check_dla_core,
    detect_api,
    network_flag_bits,
    plan_build,
    profile_shapes,
)
from facediag.edge.engine.manifest import (
    DeviceInfo,
    EngineManifest,
    engine_file_name,
    manifest_path_for,
    normalize_precision,
    short_precision,
)
from facediag.edge.errors import ConfigError, ModelFileError

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_OPT_BATCH",
    "DEFAULT_WORKSPACE_MIB",
    "BuildPlan",
    "BuildResult",
    "TrtApi",
    "attach_timing_cache",
    "build_engine",
    "calibration_batches",
    "check_dla_core",
    "default_cache_dir",
    "detect_api",
    "import_tensorrt",
    "network_flag_bits",
    "plan_build",
    "profile_shapes",
    "save_timing_cache",
    "timing_cache_path",
    "_builder_options",
    "_engine_bytes",
    "_has",
    "_write_engine",
]

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MIB = 1024
DEFAULT_OPT_BATCH = 1
DEFAULT_MAX_BATCH = 8


# --------------------------------------------------------------------------- TensorRT side (thin)


def import_tensorrt() -> ModuleType:
    """The real ``tensorrt`` module; TensorRTUnavailable (a ConfigError) saying what to do when it is absent."""
    from facediag.edge.engine.tensorrt import import_tensorrt as _import

    return _import()


@dataclass
class BuildResult:
    engine_path: Path
    manifest_path: Path
    manifest: EngineManifest
    plan: BuildPlan
    timing_cache_path: Path | None


def _cuda_and_device(trt: Any, cuda: Any, device_info: DeviceInfo | None, legacy: bool) -> tuple[Any, DeviceInfo]:
    """pycuda (needed to probe the device, and by the legacy calibrator) and this device's description."""
    from facediag.edge.engine.tensorrt import import_pycuda, probe_device

    if cuda is None and (device_info is None or legacy):
        cuda = import_pycuda()
    if device_info is None:
        device_info = probe_device(trt, cuda)
    return cuda, device_info


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


def _log_start(key: str, onnx_name: str, api: TrtApi, plan: BuildPlan) -> None:
    log.info(
        "building %s engine from %s with TensorRT %s (network flags %s, builder flags %s); this can take minutes",
        short_precision(key), onnx_name, api.version, list(plan.network_flags) or "none",
        list(plan.builder_flags) or "none",
    )


@dataclass
class _Network:
    """A parsed network and what the build needs of it (the parser must outlive the build)."""

    builder: Any
    network: Any
    parser: Any
    input_name: str
    shapes: dict[str, list[int]]


def _create_network(
    trt: Any, api: TrtApi, plan: BuildPlan, onnx_path: Path, contract: Any, opt_batch: int, max_batch: int
) -> _Network:
    """Builder, network parsed from the ONNX file, its checked input and the optimisation-profile shapes."""
    from facediag.edge.engine.tensorrt import create_builder

    logger = trt.Logger(trt.Logger.WARNING)
    builder = create_builder(trt, logger)
    if plan.dla_core is not None:
        check_dla_core(api, plan.dla_core, int(builder.num_DLA_cores))
    network = builder.create_network(network_flag_bits(trt, plan.network_flags))
    parser = _parse_onnx(trt, network, logger, onnx_path)
    input_name, input_shape = _check_input(network, contract)
    shapes = profile_shapes(input_shape, opt_batch, max_batch, static=plan.dla_core is not None)
    return _Network(builder, network, parser, input_name, shapes)


def _calibration_cache(
    calibration_cache: str | Path | None, caches: Path, bundle_path: Path, onnx_sha: str,
    legacy_calibrator: bool, calibration: np.ndarray | None,
) -> Path:
    """Where the legacy calibrator's cache lives; ConfigError when that path needs crops and has none."""
    calib_cache = Path(calibration_cache) if calibration_cache else (
        caches / f"calibration.{bundle_path.resolve().name}.{onnx_sha[:12]}.cache"
    )
    if legacy_calibrator and calibration is None and not calib_cache.is_file():
        raise ConfigError(f"--legacy-calibrator needs calibration crops (--calibration DIR_OR_NPY) or an "
                          f"existing calibration cache ({calib_cache})")
    return calib_cache


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
    from facediag.edge.bundle import load_bundle

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

    cuda, device_info = _cuda_and_device(trt, cuda_module, device_info, legacy_calibrator)
    calib_cache = _calibration_cache(calibration_cache, caches, bundle_path, onnx_sha, legacy_calibrator,
                                     calibration)
    net = _create_network(trt, api, plan, onnx_path, bundle.contract, opt_batch, max_batch)
    workspace_bytes = int(workspace_mib) << 20
    config = _configure(trt, net.builder, plan, workspace_bytes, net.input_name, net.shapes)

    tc_path: Path | None = None
    if api.has_timing_cache:
        tc_path = timing_cache_path(caches, api.version, device_info.compute_capability)
        attach_timing_cache(config, tc_path)

    _log_start(key, onnx_name, api, plan)
    if legacy_calibrator:
        batches = calibration_batches(calibration, calibration_batch) if calibration is not None else []
        serialized = build_with_calibrator(trt, cuda, net.builder, net.network, config, api, net.input_name,
                                           net.shapes, batches, calib_cache)
    else:
        serialized = net.builder.build_serialized_network(net.network, config)
    data = _engine_bytes(serialized, onnx_name)
    net.parser = None  # the parser holds the weights until the build is done
    if tc_path is not None:
        save_timing_cache(config, tc_path)

    engine_path = out_dir / engine_file_name(key)
    manifest = _write_engine(engine_path, data, onnx_name, onnx_sha, key, api, device_info, net.input_name,
                             net.shapes, dla_core, _builder_options(plan, workspace_bytes, tc_path))
    return BuildResult(engine_path, manifest_path_for(engine_path), manifest, plan, tc_path)


def _configure(trt: Any, builder: Any, plan: BuildPlan, workspace_bytes: int, input_name: str,
               shapes: dict[str, list[int]]) -> Any:
    """The builder config: workspace, the plan's flags, the DLA core, one optimisation profile."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan.dla_core)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    return config
