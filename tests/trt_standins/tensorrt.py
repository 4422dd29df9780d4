"""A stand-in module shaped like ``tensorrt`` of one generation (see generations.py). Not TensorRT.

Every generation shares this core (Logger, Builder, OnnxParser, Runtime, enums); the
generation decides which APIs exist. Rules it enforces, as the real bindings do:

* removed APIs are absent (AttributeError); objects refuse unknown attributes;
  deprecated APIs work and each use is appended to ``module.deprecated_used``;
* ``Logger`` takes a ``Logger.Severity`` (``Logger(2)`` is a TypeError), ``set_flag``
  a ``BuilderFlag``, ``set_memory_pool_limit`` a ``MemoryPoolType``;
* ``Builder(logger)`` / ``Runtime(logger)`` raise TypeError ("factory function returned
  nullptr") when CUDA cannot start (``module.cuda_broken = True``);
* ``create_timing_cache`` returns None for bytes that are not this version's cache, and
  ``set_timing_cache(None, ...)`` is a TypeError;
* the 8.x parser needs an EXPLICIT_BATCH network; an ONNX input type the version has no
  DataType for is a parse error (never silently FLOAT);
* a strongly typed network refuses FP16/INT8 builder flags; a DLA build needs a static
  profile (min = opt = max) and falls back to the GPU otherwise (only with GPU_FALLBACK);
  a version without DLA support reports 0 DLA cores and cannot build for DLA;
* an engine deserializes only in the version that built it; ``execute_async_v3`` needs a
  current CUDA context and live tensor addresses, and ``module.fail_async_next = True``
  makes it return True and fail later, at the stream's synchronisation.

The "engine" is a small JSON blob naming the ONNX file; executing it runs that file with
ONNX Runtime on the stand-in device memory, so buffer handling is exercised end to end.
"""

from __future__ import annotations

import json
import types
from typing import Any

import numpy as np

from facediag.edge.compat import zip_strict  # zip(strict=True) on Python 3.8 too (.ci/py38)
from tests.trt_standins._common import (
    DeviceFault,
    DeviceMemory,
    Member,
    Strict,
    enum_members,
    make_enum,
    require_member,
)
from tests.trt_standins.generations import GENERATIONS, Generation

ENGINE_MAGIC = b"STANDIN-TRT-ENGINE\n"
TIMING_MAGIC = b"STANDIN-TIMING-CACHE:"
NULLPTR = "pybind11::init(): factory function returned nullptr"
# ONNX TensorProto element type -> DataType member name
_ONNX_TYPES = {1: "FLOAT", 10: "FLOAT16", 3: "INT8", 2: "UINT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32,
       "INT64": np.int64, "BOOL": np.bool_}


def _enums(mod: types.ModuleType, gen: Generation) -> None:
    def status(s: str | None) -> bool:
        return s == "deprecated"

    ndcf: dict[str, tuple[int, bool]] = {}
    if gen.explicit_batch:
        ndcf["EXPLICIT_BATCH"] = (0, status(gen.explicit_batch))
    if gen.strongly_typed:
        ndcf["STRONGLY_TYPED"] = (1, status(gen.strongly_typed))
    mod.NetworkDefinitionCreationFlag = make_enum("NetworkDefinitionCreationFlag", ndcf)
    bflags: dict[str, tuple[int, bool]] = {"GPU_FALLBACK": (2, False), "REFIT": (3, False)}
    if gen.precision_flags:
        bflags.update({"FP16": (0, status(gen.precision_flags)), "INT8": (1, status(gen.precision_flags))})
    mod.BuilderFlag = make_enum("BuilderFlag", bflags)
    mod.MemoryPoolType = make_enum("MemoryPoolType", {"WORKSPACE": (0, False), "DLA_MANAGED_SRAM": (1, False)})
    mod.DeviceType = make_enum("DeviceType", {"GPU": (0, False), "DLA": (1, False)})
    mod.TensorIOMode = make_enum("TensorIOMode", {"NONE": (0, False), "INPUT": (1, False), "OUTPUT": (2, False)})
    types_ = {"FLOAT": (0, False), "HALF": (1, False), "INT8": (2, False), "INT32": (3, False), "BOOL": (4, False)}
    if gen.wide_types:
        types_.update({"UINT8": (5, False), "INT64": (8, False)})
    mod.DataType = make_enum("DataType", types_)

    severity = make_enum("Severity", {"INTERNAL_ERROR": (0, False), "ERROR": (1, False), "WARNING": (2, False),
                                      "INFO": (3, False), "VERBOSE": (4, False)})

    class Logger(Strict):
        Severity = severity
        INTERNAL_ERROR, ERROR, WARNING = severity.INTERNAL_ERROR, severity.ERROR, severity.WARNING  # type: ignore[attr-defined]
        INFO, VERBOSE = severity.INFO, severity.VERBOSE  # type: ignore[attr-defined]

        def __init__(self, min_severity: Any = severity.WARNING) -> None:  # type: ignore[attr-defined]
            self._min = require_member(min_severity, "Severity", "Logger.__init__")

    mod.Logger = Logger


def _check_logger(mod: types.ModuleType, logger: Any, what: str) -> None:
    if not isinstance(logger, mod.Logger):
        raise TypeError(f"{what}.__init__(): incompatible function arguments; expected tensorrt.ILogger")
    if mod.cuda_broken:
        raise TypeError(NULLPTR)


def _network_and_parser(mod: types.ModuleType, gen: Generation) -> None:
    class ITensor(Strict):
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Member) -> None:
            self._name, self._shape, self._dtype = name, shape, dtype

        name = property(lambda self: self._name)
        shape = property(lambda self: self._shape)
        dtype = property(lambda self: self._dtype)

    class INetworkDefinition(Strict):
        def __init__(self, flags: list[str]) -> None:
            self._flags = flags
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self._onnx: str | None = None

        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_input(self, i: int) -> ITensor:
            return self._inputs[i]

        def get_output(self, i: int) -> ITensor:
            return self._outputs[i]

    class OnnxParser(Strict):
        def __init__(self, network: INetworkDefinition, logger: Any) -> None:
            _check_logger(mod, logger, "OnnxParser")
            self._network = network
            self._errors: list[str] = []

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, i: int) -> str:
            return self._errors[i]

        def _tensor(self, vi: Any) -> ITensor | None:
            onnx_type = vi.type.tensor_type.elem_type
            name = _ONNX_TYPES.get(onnx_type)
            name = "HALF" if name == "FLOAT16" else name
            if name is None or not hasattr(mod.DataType, name):
                self._errors.append(f"{vi.name}: ONNX data type {onnx_type} is not supported by TensorRT {gen.version}")
                return None
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
            return ITensor(vi.name, dims, getattr(mod.DataType, name))

        def parse_from_file(self, path: str) -> bool:
            import onnx

            if gen.binding_api and "EXPLICIT_BATCH" not in self._network._flags:
                self._errors.append("ONNX networks need the EXPLICIT_BATCH flag in this version")
                return False
            model = onnx.load(path)
            inputs = [self._tensor(v) for v in model.graph.input]
            outputs = [self._tensor(v) for v in model.graph.output]
            if self._errors:
                return False
            self._network._inputs = [t for t in inputs if t is not None]
            self._network._outputs = [t for t in outputs if t is not None]
            self._network._onnx = str(path)
            mod.calls.append(("parse", str(path)))
            return True

    mod.INetworkDefinition = INetworkDefinition
    mod.OnnxParser = OnnxParser


def _config(mod: types.ModuleType, gen: Generation) -> None:
    cache_magic = TIMING_MAGIC + gen.version.encode() + b"\n"

    class IOptimizationProfile(Strict):
        def __init__(self) -> None:
            self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
            lo, mid, hi = (tuple(int(v) for v in s) for s in (min, opt, max))
            if not all(a <= b <= c for a, b, c in zip_strict(lo, mid, hi)):
                raise ValueError(f"stand-in profile: need min <= opt <= max, got {lo} {mid} {hi}")
            self._shapes[input] = (lo, mid, hi)

    class ITimingCache(Strict):
        def __init__(self, entries: bytes) -> None:
            self._entries = bytes(entries)

        def serialize(self) -> bytes:
            return cache_magic + self._entries

    class IBuilderConfig(Strict):
        def __init__(self) -> None:
            self._flags: set[str] = set()
            self._pools: dict[str, int] = {}
            self._profiles: list[IOptimizationProfile] = []
            self._device_type = mod.DeviceType.GPU
            self._dla_core = -1
            self._calibrator: Any = None
            self._timing: ITimingCache | None = None
            self._calibration_profile: Any = None

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            self._pools[require_member(pool, "MemoryPoolType", "set_memory_pool_limit").name] = int(pool_size)

        def set_flag(self, flag: Any) -> None:
            member = require_member(flag, "BuilderFlag", "set_flag")
            if member.deprecated:  # type: ignore[attr-defined]
                mod.deprecated_used.append(f"BuilderFlag.{member.name}")  # type: ignore[attr-defined]
            self._flags.add(member.name)  # type: ignore[attr-defined]

        def get_flag(self, flag: Any) -> bool:
            return require_member(flag, "BuilderFlag", "get_flag").name in self._flags  # type: ignore[attr-defined]

        def _set_dt(self, v: Any) -> None:
            self._device_type = require_member(v, "DeviceType", "default_device_type")

        default_device_type = property(lambda self: self._device_type, _set_dt)
        DLA_core = property(lambda self: self._dla_core, lambda self, v: object.__setattr__(self, "_dla_core", int(v)))

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: Any) -> ITimingCache | None:
            data = bytes(memoryview(serialized_timing_cache))
            if not data:
                return ITimingCache(b"")
            if not data.startswith(cache_magic):
                return None  # TensorRT logs an error and returns nullptr for a corrupt or foreign cache
            return ITimingCache(data[len(cache_magic):])

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            if not isinstance(cache, ITimingCache):
                raise TypeError("set_timing_cache(): incompatible function arguments; expected tensorrt.ITimingCache")
            self._timing = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self._timing

    if gen.calibrator:
        dep = gen.calibrator == "deprecated"

        def _set_calibrator(self: IBuilderConfig, value: Any) -> None:
            if dep:
                mod.deprecated_used.append("IBuilderConfig.int8_calibrator")
            self._calibrator = value

        IBuilderConfig.int8_calibrator = property(lambda self: self._calibrator, _set_calibrator)

        def set_calibration_profile(self: IBuilderConfig, profile: Any) -> bool:
            if dep:
                mod.deprecated_used.append("IBuilderConfig.set_calibration_profile")
            self._calibration_profile = profile
            return True

        IBuilderConfig.set_calibration_profile = set_calibration_profile

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                if dep:
                    mod.deprecated_used.append("IInt8EntropyCalibrator2")

        mod.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    if gen.binding_api:
        IBuilderConfig.max_workspace_size = property(
            lambda self: self._pools.get("WORKSPACE", 0),
            lambda self, v: mod.deprecated_used.append("IBuilderConfig.max_workspace_size"),
        )
    mod.IOptimizationProfile = IOptimizationProfile
    mod.ITimingCache = ITimingCache
    mod.IBuilderConfig = IBuilderConfig


def _calibrate(config: Any, network: Any) -> bool:
    cal = config._calibrator
    cache = cal.read_calibration_cache()
    if cache is None:
        batches = 0
        while cal.get_batch([network.get_input(0).name]) is not None:
            batches += 1
        if batches == 0:
            return False
        cal.write_calibration_cache(b"stand-in calibration table: %d batches" % batches)
    config._calibrated_from_cache = cache is not None
    return True


def _builder(mod: types.ModuleType, gen: Generation) -> None:
    class Builder(Strict):
        def __init__(self, logger: Any) -> None:
            _check_logger(mod, logger, "Builder")
            self._logger = logger

        num_DLA_cores = property(lambda self: mod.num_dla_cores if gen.dla_supported else 0)

        def create_network(self, flags: int = 0) -> Any:
            names = []
            known = {int(m): m for m in enum_members(mod.NetworkDefinitionCreationFlag)}
            for bit in range(32):
                if int(flags) >> bit & 1:
                    if bit not in known:
                        raise ValueError(f"stand-in: network flag bit {bit} does not exist in TensorRT {gen.version}")
                    if known[bit].deprecated:  # type: ignore[attr-defined]
                        mod.deprecated_used.append(f"NetworkDefinitionCreationFlag.{known[bit].name}")  # type: ignore[attr-defined]
                    names.append(known[bit].name)  # type: ignore[attr-defined]
            mod.calls.append(("create_network", tuple(names)))
            return mod.INetworkDefinition(names)

        def create_builder_config(self) -> Any:
            return mod.IBuilderConfig()

        def create_optimization_profile(self) -> Any:
            return mod.IOptimizationProfile()

        def build_serialized_network(self, network: Any, config: Any) -> bytes | None:
            strongly = "STRONGLY_TYPED" in network._flags or gen.strongly_typed == "deprecated"
            profile = config._profiles[0]._shapes if config._profiles else {}
            dla = config._device_type.name == "DLA"
            static = all(lo == hi for lo, _, hi in profile.values())
            call = {"network_flags": list(network._flags), "builder_flags": sorted(config._flags),
                    "pools": dict(config._pools), "device": config._device_type.name,
                    "dla_core": config._dla_core, "profile": {k: [list(s) for s in v] for k, v in profile.items()}}
            mod.calls.append(("build", call))
            if network._onnx is None or not config._profiles:
                return None
            if strongly and config._flags & {"FP16", "INT8"}:
                return None  # precision flags are not allowed on a strongly typed network
            on_dla = dla
            if dla and (not gen.dla_supported or not 0 <= config._dla_core < self.num_DLA_cores):
                return None  # no such DLA core
            if dla and not static:
                if "GPU_FALLBACK" not in config._flags:
                    return None  # DLA needs static shapes
                on_dla = False  # every layer falls back to the GPU
            call["layers_on_dla"] = on_dla
            if config._calibrator is not None:
                if not _calibrate(config, network):
                    return None
                mod.calls.append(("calibrated", config._calibrated_from_cache))
            timing = config._timing or mod.ITimingCache(b"")
            config._timing = mod.ITimingCache(timing._entries + b"entry;")
            blob = {
                "version": gen.version,
                "onnx": network._onnx,
                "inputs": [(t.name, list(t.shape), t.dtype.name) for t in network._inputs],
                "outputs": [(t.name, list(t.shape), t.dtype.name) for t in network._outputs],
                "profile": call["profile"],
                "flags": sorted(config._flags),
                "dla_core": config._dla_core if on_dla else None,
            }
            return ENGINE_MAGIC + json.dumps(blob).encode()

    if gen.binding_api:

        def build_engine(self: Builder, network: Any, config: Any) -> Any:
            mod.deprecated_used.append("Builder.build_engine")
            return None

        Builder.build_engine = build_engine
    mod.Builder = Builder


def make_tensorrt_standin(version: str, memory: DeviceMemory | None = None, num_dla_cores: int = 0) -> types.ModuleType:
    """A module shaped like ``tensorrt`` of ``version`` (a key of GENERATIONS)."""
    from tests.trt_standins.trt_runtime import add_runtime

    gen = GENERATIONS[version]
    mod = types.ModuleType(f"tensorrt_standin_{version.replace('.', '_')}")
    mod.__version__ = gen.version
    mod.generation = gen
    mod.deprecated_used = []  # names of deprecated APIs the code under test used
    mod.calls = []  # (what, detail) of interesting calls, for assertions
    mod.num_dla_cores = num_dla_cores  # the hardware's; a version without DLA support reports 0
    mod.cuda_broken = False  # True: Builder()/Runtime() fail as when CUDA cannot start
    mod.fail_async_next = False  # True: the next execute_async_v3 fails on the GPU after returning
    mod.memory = memory if memory is not None else DeviceMemory()
    _enums(mod, gen)
    _network_and_parser(mod, gen)
    _config(mod, gen)
    _builder(mod, gen)
    add_runtime(mod, gen)
    return mod


def was_called(mod: types.ModuleType, what: str) -> bool:
    return any(c[0] == what for c in mod.calls)


__all__ = ["ENGINE_MAGIC", "DeviceFault", "make_tensorrt_standin", "was_called"]
