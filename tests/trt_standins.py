"""Stand-in modules shaped like TensorRT's Python API (8.5, 10.3, 11.x) and like pycuda.

These are stand-ins, NOT TensorRT or pycuda: neither can be installed on development
or CI machines, so the code that talks to them is tested against these shapes. Each
TensorRT stand-in carries exactly the API of DESIGN.md's table for its version, plus
the core every version shares (Logger, Builder, OnnxParser, Runtime, enums):

- an API the version removed is *absent*: reading it raises AttributeError, and
  stand-in objects refuse to have unknown attributes set (as pybind11 objects do);
- an API the version deprecated is *present*, and every use of it (calling it,
  setting it, passing a deprecated flag) is appended to ``module.deprecated_used``.

Behaviour is kept to what the tests need and mirrors documented TensorRT rules:
the 8.x ONNX parser needs an EXPLICIT_BATCH network; a strongly typed network
refuses FP16/INT8 builder flags; an engine deserializes only in the version that
built it. The "engine" is a small JSON blob naming the ONNX file; executing it runs
that file with ONNX Runtime on the stand-in device memory, so the runtime's buffer
handling is exercised end to end.
"""

from __future__ import annotations

import itertools
import json
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ENGINE_MAGIC = b"STANDIN-TRT-ENGINE\n"
TIMING_MAGIC = b"STANDIN-TIMING-CACHE:"

# version -> status of each feature row of DESIGN.md's table ("yes", "deprecated", None = removed/absent)
VERSIONS: dict[str, dict[str, str | None]] = {
    "8.5.2.2": {
        "binding_api": "yes",  # execute_async_v2, num_bindings, build_engine, max_workspace_size
        "explicit_batch": "yes",
        "strongly_typed": None,
        "precision_flags": "yes",  # BuilderFlag.FP16/INT8, int8_calibrator, IInt8*Calibrator
    },
    "10.3.0.30": {
        "binding_api": None,
        "explicit_batch": "deprecated",  # "ignored"
        "strongly_typed": "yes",
        "precision_flags": "deprecated",
    },
    # TensorRT 11.0: strong typing is always on; its docs keep STRONGLY_TYPED as a deprecated, ignored flag.
    "11.0.0.114": {
        "binding_api": None,
        "explicit_batch": None,
        "strongly_typed": "deprecated",
        "precision_flags": None,
    },
}
V85, V103, V11 = "8.5.2.2", "10.3.0.30", "11.0.0.114"


# --------------------------------------------------------------------------- shared helpers


class Member(int):
    """An enum member (int-valued like pybind11's), knowing its name and whether it is deprecated."""

    def __new__(cls, enum: str, name: str, value: int, deprecated: bool = False) -> Member:
        obj = int.__new__(cls, value)
        obj.enum = enum  # type: ignore[attr-defined]
        obj.name = name  # type: ignore[attr-defined]
        obj.deprecated = deprecated  # type: ignore[attr-defined]
        return obj

    def __repr__(self) -> str:
        return f"{self.enum}.{self.name}"  # type: ignore[attr-defined]

    __str__ = __repr__

    def __hash__(self) -> int:
        return int.__hash__(self)


def make_enum(enum: str, members: dict[str, tuple[int, bool]]) -> type:
    return type(enum, (), {name: Member(enum, name, value, dep) for name, (value, dep) in members.items()})


def enum_members(enum_cls: type) -> list[Member]:
    return [v for v in vars(enum_cls).values() if isinstance(v, Member)]


class Strict:
    """Refuses to set attributes the class does not define (pybind11 objects behave like this)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"stand-in {type(self).__name__} has no attribute {name!r}")


@dataclass
class DeviceMemory:
    """The stand-in GPU: allocations by integer address."""

    blocks: dict[int, bytearray] = field(default_factory=dict)
    _next: itertools.count = field(default_factory=lambda: itertools.count(0x1000, 0x1000))
    freed: list[int] = field(default_factory=list)

    def alloc(self, nbytes: int) -> int:
        ptr = next(self._next) * 0x100000
        self.blocks[ptr] = bytearray(int(nbytes))
        return ptr

    def write(self, ptr: int, data: np.ndarray) -> None:
        raw = np.ascontiguousarray(data).tobytes()
        block = self.blocks[int(ptr)]
        if len(raw) > len(block):
            raise ValueError(f"stand-in device: {len(raw)} bytes do not fit a {len(block)}-byte allocation")
        block[: len(raw)] = raw

    def read(self, ptr: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        block = self.blocks[int(ptr)]
        if count * np.dtype(dtype).itemsize > len(block):
            raise ValueError("stand-in device: read past the end of an allocation")
        return np.frombuffer(bytes(block), dtype=dtype, count=count).reshape(shape)


# --------------------------------------------------------------------------- pycuda stand-in


def make_pycuda_standin(
    memory: DeviceMemory | None = None, gpu_name: str = "Stand-in Orin", compute_capability: tuple[int, int] = (8, 7)
) -> types.ModuleType:
    """A module shaped like ``pycuda.driver`` (the parts the runtime and the calibrator use)."""
    mod = types.ModuleType("pycuda_driver_standin")
    mem = memory or DeviceMemory()
    mod.memory = mem
    mod.context_depth = 0
    mod.detached = 0

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.ptr = mem.alloc(nbytes)
            self.nbytes = nbytes

        def __int__(self) -> int:
            return self.ptr

        def free(self) -> None:
            mem.blocks.pop(self.ptr, None)
            mem.freed.append(self.ptr)

    class Context:
        def push(self) -> None:
            mod.context_depth += 1

        def pop(self) -> None:
            if mod.context_depth <= 0:
                raise RuntimeError("stand-in pycuda: pop without push")
            mod.context_depth -= 1

        def detach(self) -> None:
            mod.detached += 1

    class Device:
        def __init__(self, index: int) -> None:
            if index != 0:
                raise RuntimeError("stand-in pycuda: one device")

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return gpu_name

        def compute_capability(self) -> tuple[int, int]:
            return compute_capability

        def retain_primary_context(self) -> Context:
            return Context()

    class Stream:
        handle = 0xABC

        def synchronize(self) -> None:
            pass

    def _need_context() -> None:
        if mod.context_depth <= 0:
            raise RuntimeError("stand-in pycuda: no current CUDA context")

    def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        _need_context()
        return DeviceAllocation(int(nbytes))

    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Any = None) -> None:
        _need_context()
        mem.write(int(dest), src)

    def memcpy_htod(dest: Any, src: np.ndarray) -> None:
        _need_context()
        mem.write(int(dest), src)

    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Any = None) -> None:
        _need_context()
        dest[...] = mem.read(int(src), dest.dtype, dest.shape)

    mod.init = lambda: None
    mod.Device = Device
    mod.Stream = Stream
    mod.pagelocked_empty = pagelocked_empty
    mod.mem_alloc = mem_alloc
    mod.memcpy_htod_async = memcpy_htod_async
    mod.memcpy_htod = memcpy_htod
    mod.memcpy_dtoh_async = memcpy_dtoh_async
    return mod


# --------------------------------------------------------------------------- TensorRT stand-ins


def make_tensorrt_standin(
    version: str, memory: DeviceMemory | None = None, num_dla_cores: int = 0
) -> types.ModuleType:
    """A module shaped like ``tensorrt`` of ``version`` (one of VERSIONS)."""
    feat = VERSIONS[version]
    mod = types.ModuleType(f"tensorrt_standin_{version.replace('.', '_')}")
    mod.__version__ = version
    mod.deprecated_used = []  # names of deprecated APIs the code under test used
    mod.calls = []  # (what, detail) of interesting calls, for assertions
    mod.num_dla_cores = num_dla_cores
    mem = memory or DeviceMemory()
    mod.memory = mem

    def record_deprecated(what: str) -> None:
        mod.deprecated_used.append(what)

    # -- enums -------------------------------------------------------------------------------
    ndcf: dict[str, tuple[int, bool]] = {}
    if feat["explicit_batch"]:
        ndcf["EXPLICIT_BATCH"] = (0, feat["explicit_batch"] == "deprecated")
    if feat["strongly_typed"]:
        ndcf["STRONGLY_TYPED"] = (1, feat["strongly_typed"] == "deprecated")
    mod.NetworkDefinitionCreationFlag = make_enum("NetworkDefinitionCreationFlag", ndcf)
    bflags: dict[str, tuple[int, bool]] = {"GPU_FALLBACK": (2, False), "REFIT": (3, False)}
    if feat["precision_flags"]:
        dep = feat["precision_flags"] == "deprecated"
        bflags.update({"FP16": (0, dep), "INT8": (1, dep)})
    mod.BuilderFlag = make_enum("BuilderFlag", bflags)
    mod.MemoryPoolType = make_enum("MemoryPoolType", {"WORKSPACE": (0, False), "DLA_MANAGED_SRAM": (1, False)})
    mod.DeviceType = make_enum("DeviceType", {"GPU": (0, False), "DLA": (1, False)})
    mod.TensorIOMode = make_enum("TensorIOMode", {"NONE": (0, False), "INPUT": (1, False), "OUTPUT": (2, False)})
    mod.DataType = make_enum(
        "DataType", {"FLOAT": (0, False), "HALF": (1, False), "INT8": (2, False), "INT32": (3, False), "BOOL": (4, False)}
    )
    np_of = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_}

    class Logger(Strict):
        VERBOSE, INFO, WARNING, ERROR = 0, 1, 2, 3

        def __init__(self, min_severity: int = 2) -> None:
            self._min = min_severity

    mod.Logger = Logger

    # -- network + parser --------------------------------------------------------------------
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

    mod.INetworkDefinition = INetworkDefinition

    class OnnxParser(Strict):
        def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
            self._network = network
            self._errors: list[str] = []

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, i: int) -> str:
            return self._errors[i]

        def parse_from_file(self, path: str) -> bool:
            import onnx

            if feat["binding_api"] and "EXPLICIT_BATCH" not in self._network._flags:
                self._errors.append("stand-in parser: ONNX networks need the EXPLICIT_BATCH flag in this version")
                return False
            model = onnx.load(path)
            tmap = {1: mod.DataType.FLOAT, 10: mod.DataType.HALF, 6: mod.DataType.INT32}

            def to_tensor(vi: Any) -> ITensor:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
                return ITensor(vi.name, dims, tmap.get(vi.type.tensor_type.elem_type, mod.DataType.FLOAT))

            self._network._inputs = [to_tensor(v) for v in model.graph.input]
            self._network._outputs = [to_tensor(v) for v in model.graph.output]
            self._network._onnx = str(path)
            mod.calls.append(("parse", str(path)))
            return True

    mod.OnnxParser = OnnxParser

    # -- builder config ----------------------------------------------------------------------
    class IOptimizationProfile(Strict):
        def __init__(self) -> None:
            self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
            lo, mid, hi = (tuple(int(v) for v in s) for s in (min, opt, max))
            if not all(a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)):
                raise ValueError(f"stand-in profile: need min <= opt <= max, got {lo} {mid} {hi}")
            self._shapes[name] = (lo, mid, hi)

    class ITimingCache(Strict):
        def __init__(self, data: bytes) -> None:
            self._data = bytes(data)

        def serialize(self) -> bytes:
            return TIMING_MAGIC + version.encode() + b"\n" + self._data[-64:]

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

        def set_memory_pool_limit(self, pool: Member, size: int) -> None:
            if not isinstance(pool, Member) or pool.enum != "MemoryPoolType":
                raise TypeError("stand-in: pool must be a MemoryPoolType")
            self._pools[pool.name] = int(size)

        def set_flag(self, flag: Member) -> None:
            if not isinstance(flag, Member) or flag.enum != "BuilderFlag":
                raise TypeError("stand-in: set_flag takes a BuilderFlag")
            if flag.deprecated:
                record_deprecated(f"BuilderFlag.{flag.name}")
            self._flags.add(flag.name)

        def get_flag(self, flag: Member) -> bool:
            return flag.name in self._flags

        def _get_dt(self) -> Member:
            return self._device_type

        def _set_dt(self, v: Member) -> None:
            self._device_type = v

        default_device_type = property(_get_dt, _set_dt)
        DLA_core = property(lambda self: self._dla_core, lambda self, v: object.__setattr__(self, "_dla_core", int(v)))

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, data: bytes) -> ITimingCache:
            return ITimingCache(data)

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            if cache._data and not cache._data.startswith(TIMING_MAGIC + version.encode()):
                return False
            self._timing = cache
            return True

        def get_timing_cache(self) -> ITimingCache:
            return self._timing or ITimingCache(b"")

    if feat["precision_flags"]:
        dep = feat["precision_flags"] == "deprecated"

        def _set_calibrator(self: IBuilderConfig, value: Any) -> None:
            if dep:
                record_deprecated("IBuilderConfig.int8_calibrator")
            self._calibrator = value

        IBuilderConfig.int8_calibrator = property(lambda self: self._calibrator, _set_calibrator)

        def set_calibration_profile(self: IBuilderConfig, profile: Any) -> bool:
            if dep:
                record_deprecated("IBuilderConfig.set_calibration_profile")
            self._calibration_profile = profile
            return True

        IBuilderConfig.set_calibration_profile = set_calibration_profile

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                if dep:
                    record_deprecated("IInt8EntropyCalibrator2")

        mod.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    if feat["binding_api"]:
        IBuilderConfig.max_workspace_size = property(
            lambda self: self._pools.get("WORKSPACE", 0),
            lambda self, v: record_deprecated("IBuilderConfig.max_workspace_size"),
        )
    mod.IBuilderConfig = IBuilderConfig

    # -- builder -----------------------------------------------------------------------------
    class Builder(Strict):
        def __init__(self, logger: Logger) -> None:
            self._logger = logger

        num_DLA_cores = property(lambda self: mod.num_dla_cores)

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            names = []
            known = {int(m): m for m in enum_members(mod.NetworkDefinitionCreationFlag)}
            for bit in range(32):
                if flags >> bit & 1:
                    if bit not in known:
                        raise ValueError(f"stand-in: network flag bit {bit} does not exist in TensorRT {version}")
                    if known[bit].deprecated:
                        record_deprecated(f"NetworkDefinitionCreationFlag.{known[bit].name}")
                    names.append(known[bit].name)
            mod.calls.append(("create_network", tuple(names)))
            return INetworkDefinition(names)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
            strongly = "STRONGLY_TYPED" in network._flags or feat["strongly_typed"] == "deprecated"
            weak_flags = config._flags & {"FP16", "INT8"}
            mod.calls.append(("build", {"network_flags": list(network._flags), "builder_flags": sorted(config._flags),
                                        "pools": dict(config._pools), "device": config._device_type.name,
                                        "dla_core": config._dla_core}))
            if network._onnx is None or not config._profiles:
                return None
            if strongly and weak_flags:
                return None  # TensorRT: precision flags are not allowed on a strongly typed network
            if config._calibrator is not None:
                cal = config._calibrator
                cache = cal.read_calibration_cache()
                if cache is None:
                    batches = 0
                    while cal.get_batch([network.get_input(0).name]) is not None:
                        batches += 1
                    if batches == 0:
                        return None
                    cal.write_calibration_cache(b"stand-in calibration table: %d batches" % batches)
                mod.calls.append(("calibrated", cache is not None))
            if config._timing is None:
                config._timing = ITimingCache(b"")
            config._timing._data += b"entry;"
            profile = config._profiles[0]._shapes
            blob = {
                "version": version,
                "onnx": network._onnx,
                "inputs": [(t.name, list(t.shape), t.dtype.name) for t in network._inputs],
                "outputs": [(t.name, list(t.shape), t.dtype.name) for t in network._outputs],
                "profile": {k: [list(s) for s in v] for k, v in profile.items()},
                "flags": sorted(config._flags),
                "dla_core": config._dla_core if config._device_type.name == "DLA" else None,
            }
            return ENGINE_MAGIC + json.dumps(blob).encode()

    if feat["binding_api"]:

        def build_engine(self: Builder, network: Any, config: Any) -> Any:
            record_deprecated("Builder.build_engine")
            return None

        Builder.build_engine = build_engine
    mod.Builder = Builder

    # -- runtime -----------------------------------------------------------------------------
    class IExecutionContext(Strict):
        def __init__(self, engine: ICudaEngine) -> None:
            self._engine = engine
            self._shapes: dict[str, tuple[int, ...]] = {}
            self._addresses: dict[str, int] = {}
            self._session: Any = None

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = tuple(int(v) for v in shape)
            lo, _, hi = self._engine._blob["profile"][name]
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return False
            self._shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in self._shapes:
                return self._shapes[name]
            shape = list(self._engine.get_tensor_shape(name))
            if not self._engine._is_input(name) and shape and shape[0] < 0 and self._shapes:
                shape[0] = next(iter(self._shapes.values()))[0]
            return tuple(shape)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if name not in self._engine._names:
                return False
            self._addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            import onnxruntime as ort

            blob = self._engine._blob
            missing = [n for n in self._engine._names if n not in self._addresses]
            if missing or not self._shapes:
                return False
            if self._session is None:
                self._session = ort.InferenceSession(blob["onnx"], providers=["CPUExecutionProvider"])
            feeds = {}
            for name, _, dt in blob["inputs"]:
                feeds[name] = mem.read(self._addresses[name], np_of[dt], self._shapes[name])
            outs = self._session.run([o[0] for o in blob["outputs"]], feeds)
            for (name, _, dt), value in zip(blob["outputs"], outs, strict=True):
                mem.write(self._addresses[name], np.asarray(value, dtype=np_of[dt]))
            mod.calls.append(("execute_async_v3", self._shapes[blob["inputs"][0][0]]))
            return True

    if feat["binding_api"]:

        def execute_async_v2(self: IExecutionContext, bindings: Any, stream_handle: int) -> bool:
            record_deprecated("IExecutionContext.execute_async_v2")
            return False

        IExecutionContext.execute_async_v2 = execute_async_v2
    mod.IExecutionContext = IExecutionContext

    class ICudaEngine(Strict):
        def __init__(self, blob: dict[str, Any]) -> None:
            self._blob = blob
            self._names = [t[0] for t in blob["inputs"]] + [t[0] for t in blob["outputs"]]

        def _is_input(self, name: str) -> bool:
            return any(t[0] == name for t in self._blob["inputs"])

        def _tensor(self, name: str) -> list[Any]:
            for t in self._blob["inputs"] + self._blob["outputs"]:
                if t[0] == name:
                    return t
            raise KeyError(name)

        num_io_tensors = property(lambda self: len(self._names))

        def get_tensor_name(self, i: int) -> str:
            return self._names[i]

        def get_tensor_mode(self, name: str) -> Member:
            return mod.TensorIOMode.INPUT if self._is_input(name) else mod.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return tuple(self._tensor(name)[1])

        def get_tensor_dtype(self, name: str) -> Member:
            return getattr(mod.DataType, self._tensor(name)[2])

        def create_execution_context(self) -> IExecutionContext:
            return IExecutionContext(self)

    if feat["binding_api"]:
        ICudaEngine.num_bindings = property(lambda self: len(self._names))
    mod.ICudaEngine = ICudaEngine

    class Runtime(Strict):
        def __init__(self, logger: Logger) -> None:
            self._dla = -1

        num_DLA_cores = property(lambda self: mod.num_dla_cores)
        DLA_core = property(lambda self: self._dla, lambda self, v: object.__setattr__(self, "_dla", int(v)))

        def deserialize_cuda_engine(self, data: bytes) -> ICudaEngine | None:
            mod.calls.append(("deserialize", len(data)))
            if not bytes(data).startswith(ENGINE_MAGIC):
                return None
            blob = json.loads(bytes(data)[len(ENGINE_MAGIC) :])
            if blob["version"] != version:
                return None  # "Version tag does not match"
            return ICudaEngine(blob)

    mod.Runtime = Runtime
    return mod


def was_called(mod: types.ModuleType, what: str) -> bool:
    return any(c[0] == what for c in mod.calls)
