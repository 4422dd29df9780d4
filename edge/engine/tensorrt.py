"""TensorRT runtime for the station: load a prebuilt engine, check it first, run it.

Order matters. The manifest beside the engine is compared with this device (TensorRT
version, GPU, compute capability, DLA core), with the bundle (model hash, precision)
and with the engine file itself (its hash) *before* the bytes reach
``deserialize_cuda_engine``, because a foreign engine can crash the process instead of
raising. Then the engine must deserialize to something non-null, buffers are
planned from the engine's own tensor shapes and types (pure :func:`plan_buffers`),
pinned host and device memory is allocated once for the largest batch, and a
warm-up inference must return finite probabilities before the engine is handed out.

Only the name-based tensor API (``num_io_tensors``, ``get_tensor_*``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) is used: it is
the one common to TensorRT 8.5, 10.x and 11.x. TensorRT and pycuda are imported
only when an engine is opened; stand-in modules can be passed for tests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.compat import zip_strict
from facediag.edge.engine.manifest import (
    DeviceInfo,
    EngineManifest,
    compare_manifest,
    engine_file_name,
    manifest_path_for,
    normalize_precision,
    rebuild_hint,
    source_precision,
)
from facediag.edge.engine.trt_device import (
    TensorRTUnavailable,
    create_builder,
    create_runtime,
    cuda_errors,
    import_pycuda,
    import_tensorrt,
    init_cuda,
    probe_device,
    probe_this_device,
)
from facediag.edge.errors import ModelFileError
from facediag.edge.hashing import sha256_bytes

log = logging.getLogger(__name__)

# The device-probe helpers live in trt_device.py and are re-exported from here.
__all__ = [
    "BufferPlan", "TensorRTEngine", "TensorRTUnavailable", "TensorSpec", "create_builder", "create_runtime",
    "cuda_errors", "device_from_mapping", "import_pycuda", "import_tensorrt", "init_cuda", "numpy_dtype",
    "open_bundle_engine", "plan_buffers", "probe_device", "probe_this_device", "split_batch",
]

# TensorRT DataType member name -> numpy dtype (types a classifier's IO can have).
_TRT_TO_NUMPY: dict[str, str] = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """numpy dtype for a TensorRT ``DataType`` (or its member name); clear error for exotic types."""
    name = trt_dtype if isinstance(trt_dtype, str) else getattr(trt_dtype, "name", str(trt_dtype))
    name = str(name).rsplit(".", 1)[-1].upper()
    if name not in _TRT_TO_NUMPY:
        raise ModelFileError(
            f"engine tensor type {name} has no numpy equivalent here (supported: {', '.join(_TRT_TO_NUMPY)}); "
            "re-export the model with float32 input and output"
        )
    return np.dtype(_TRT_TO_NUMPY[name])


@dataclass(frozen=True)
class TensorSpec:
    """One engine IO tensor as TensorRT describes it; ``-1`` marks a dynamic dimension."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name
    max_shape: tuple[int, ...] | None = None  # the optimisation profile's max (inputs) / the shape at max input (outputs)


@dataclass(frozen=True)
class BufferPlan:
    """The pinned host + device buffer to allocate for one tensor, sized for the largest batch."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


def plan_buffers(tensors: Sequence[TensorSpec]) -> list[BufferPlan]:
    """Concrete buffer shapes and byte sizes: dynamic dims take the profile maximum."""
    plans: list[BufferPlan] = []
    for t in tensors:
        shape = list(t.shape)
        for axis, dim in enumerate(shape):
            if dim >= 0:
                continue
            if t.max_shape is None or axis >= len(t.max_shape) or t.max_shape[axis] < 0:
                raise ModelFileError(
                    f"engine tensor {t.name!r} has a dynamic dimension {axis} ({tuple(t.shape)}) and no profile "
                    "maximum for it; rebuild the engine with `facediag build`"
                )
            shape[axis] = int(t.max_shape[axis])
        if t.max_shape is not None and len(t.max_shape) == len(shape):
            for axis, (dim, top) in enumerate(zip_strict(t.shape, t.max_shape)):
                if dim >= 0 and top >= 0 and dim != top:
                    raise ModelFileError(
                        f"engine tensor {t.name!r}: static dimension {axis} is {dim} but the profile says {top}"
                    )
        if any(d == 0 for d in shape):
            raise ModelFileError(f"engine tensor {t.name!r} has an empty shape {tuple(shape)}")
        dtype = np.dtype(t.dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        plans.append(BufferPlan(t.name, t.is_input, tuple(int(d) for d in shape), dtype.name, nbytes))
    return plans


def split_batch(n: int, max_batch: int) -> list[tuple[int, int]]:
    """[start, stop) chunks of at most ``max_batch`` rows (a larger batch runs in several passes)."""
    if n < 0 or max_batch < 1:
        raise ValueError(f"bad batch split n={n} max={max_batch}")
    return [(i, min(i + max_batch, n)) for i in range(0, n, max_batch)]


# --------------------------------------------------------------------------- the engine


class TensorRTEngine:
    """An ``Engine`` running a TensorRT engine file that ``facediag build`` made on this device.

    ``expected_onnx_sha256``: what the bundle records for the model the engine must be
    built from; ``precision``: the precision asked for (fp32 / fp16 / int8). Refuses,
    with one line per differing field, any engine whose manifest does not match.
    """

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        *,
        expected_onnx_sha256: str,
        precision: str,
        bundle_hint: str = "BUNDLE",
        warmup: bool = True,
        device_index: int = 0,
        trt_module: Any = None,
        cuda_module: Any = None,
        device_info: DeviceInfo | None = None,
    ) -> None:
        self.path = Path(engine_path)
        self.precision = normalize_precision(precision)
        self._lock = threading.Lock()
        self._closed = False
        self._cuda_ctx: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._device_buffers: list[Any] = []
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, Any] = {}
        self._stream: Any = None
        self._runtime: Any = None

        self.manifest = EngineManifest.load(manifest_path_for(self.path))
        if not self.path.is_file():
            raise ModelFileError(
                f"engine {self.path} is missing; {rebuild_hint(bundle_hint, self.precision, self.manifest.dla_core)}"
            )
        trt = trt_module if trt_module is not None else import_tensorrt()
        cuda = cuda_module if cuda_module is not None else import_pycuda()
        self._trt, self._cuda = trt, cuda
        if device_info is None:
            device_info = probe_device(trt, cuda, device_index)
        self.device_info = device_info

        problems = compare_manifest(self.manifest, device_info, expected_onnx_sha256, self.precision, bundle=bundle_hint)
        data = self.path.read_bytes()
        if sha256_bytes(data) != self.manifest.engine_sha256:
            problems.append(
                f"engine_sha256: {self.path.name} is not the file its manifest describes (replaced, truncated or "
                f"corrupted); {rebuild_hint(bundle_hint, self.precision, self.manifest.dla_core)}"
            )
        if problems:
            raise ModelFileError(
                f"refusing TensorRT engine {self.path} (it was not built for this device/bundle):\n  - "
                + "\n  - ".join(problems)
            )
        verify = self.manifest.verify
        if not verify or not verify.get("passed"):
            log.warning(
                "engine %s has no passing verification on record; prove it with `facediag verify %s --precision %s`",
                self.path.name, bundle_hint, self.precision,
            )

        try:
            self._cuda_ctx = cuda.Device(device_index).retain_primary_context()
            self._cuda_ctx.push()
        except cuda_errors(cuda) as exc:
            self._closed = True
            raise TensorRTUnavailable(f"CUDA cannot open GPU {device_index} ({type(exc).__name__}: {exc})") from exc
        failed = True
        try:
            self._load(trt, cuda, data, bundle_hint)
            if warmup:
                self._warmup()
            failed = False
        finally:
            if failed:
                self._release()
            self._cuda_ctx.pop()
            if failed:
                self._closed = True
                self._cuda_ctx.detach()
                self._cuda_ctx = None

    # -- loading ---------------------------------------------------------------------------

    def _load(self, trt: Any, cuda: Any, data: bytes, bundle_hint: str) -> None:
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = create_runtime(trt, logger)
        if self.manifest.dla_core is not None:
            self._runtime.DLA_core = int(self.manifest.dla_core)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ModelFileError(
                f"TensorRT could not deserialize {self.path.name} (see its messages above); "
                f"{rebuild_hint(bundle_hint, self.precision, self.manifest.dla_core)}"
            )
        self._engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise ModelFileError(f"TensorRT could not create an execution context for {self.path.name} (out of GPU memory?)")
        self._context = context

        names = [engine.get_tensor_name(i) for i in range(int(engine.num_io_tensors))]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise ModelFileError(f"{self.path.name}: expected one input and at least one output, got {inputs} / {outputs}")
        self.input_name = inputs[0]
        if self.input_name != self.manifest.input_name:
            raise ModelFileError(f"{self.path.name}: input is {self.input_name!r}, manifest says {self.manifest.input_name!r}")
        self.output_name = "probabilities" if "probabilities" in outputs else outputs[0]
        max_in = tuple(self.manifest.input_shapes["max"])
        if not context.set_input_shape(self.input_name, max_in):
            raise ModelFileError(f"{self.path.name}: the engine rejects its own maximum input shape {max_in}")
        specs = []
        for name in names:
            is_input = name == self.input_name
            static = tuple(int(d) for d in engine.get_tensor_shape(name))
            at_max = max_in if is_input else tuple(int(d) for d in context.get_tensor_shape(name))
            specs.append(TensorSpec(name, is_input, static, numpy_dtype(engine.get_tensor_dtype(name)).name, at_max))
        self.plans = plan_buffers(specs)
        for plan in self.plans:
            self._host[plan.name] = cuda.pagelocked_empty(plan.shape, np.dtype(plan.dtype))
            dev = cuda.mem_alloc(plan.nbytes)
            self._device_buffers.append(dev)
            self._device[plan.name] = dev
            if not context.set_tensor_address(plan.name, int(dev)):
                raise ModelFileError(f"{self.path.name}: TensorRT refused the buffer address for {plan.name!r}")
        self._stream = cuda.Stream()
        self._in_dtype = np.dtype(next(p.dtype for p in self.plans if p.is_input))
        self.input_shape = tuple(self.manifest.input_shapes["max"][1:])
        self.max_batch = self.manifest.max_batch
        self.min_batch = self.manifest.min_batch
        log.info(
            "TensorRT engine %s loaded: %s, batch %d..%d, TensorRT %s on %s",
            self.path.name, self.precision, self.min_batch, self.max_batch,
            self.device_info.tensorrt_version, self.device_info.gpu_name,
        )

    def _warmup(self) -> None:
        """One full batch and one partial batch (a single row, padded where the profile needs more)."""
        for rows in sorted({max(1, self.manifest.opt_batch), 1}, reverse=True):
            probe = np.zeros((rows, *self.input_shape), np.float32)
            out = self._run(probe)
            if out.shape[0] != rows or not np.all(np.isfinite(out)):
                raise ModelFileError(
                    f"warm-up inference of {self.path.name} with {rows} row(s) returned {out.shape} with non-finite "
                    "values; the engine is unusable on this device: rebuild it, then run `facediag verify`"
                )

    # -- inference -------------------------------------------------------------------------

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """Run at most ``max_batch`` rows; fewer than the profile's minimum are padded with zeros and dropped."""
        cuda, ctx = self._cuda, self._context
        n = chunk.shape[0]
        rows = max(n, self.min_batch)
        if not ctx.set_input_shape(self.input_name, (rows, *self.input_shape)):
            raise RuntimeError(f"TensorRT rejected input shape {(rows, *self.input_shape)} for {self.path.name}")
        host_in = self._host[self.input_name][:rows]
        np.copyto(host_in[:n], chunk.astype(self._in_dtype, copy=False))
        if rows > n:
            host_in[n:] = 0
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self.output_name))
        host_out = self._host[self.output_name].reshape(-1)[: int(np.prod(out_shape))].reshape(out_shape)
        try:
            cuda.memcpy_htod_async(self._device[self.input_name], host_in, self._stream)
            if not ctx.execute_async_v3(self._stream.handle):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path.name} (see its messages above)")
            cuda.memcpy_dtoh_async(host_out, self._device[self.output_name], self._stream)
            # A kernel can fail after execute_async_v3 returned: CUDA reports it here.
            self._stream.synchronize()
        except cuda_errors(cuda) as exc:
            raise RuntimeError(
                f"TensorRT inference of {self.path.name} failed on the GPU ({type(exc).__name__}: {exc}); the "
                "CUDA context may be unusable now: restart the service, and run `facediag verify` if it recurs"
            ) from exc
        return np.array(host_out[:n], dtype=np.float32, copy=True)

    def _run(self, x: np.ndarray) -> np.ndarray:
        parts = [self._run_chunk(x[a:b]) for a, b in split_batch(x.shape[0], self.max_batch)]
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0), np.float32)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) float32 for a float32 NCHW batch of ``crops_to_input`` output."""
        x = np.asarray(batch)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"expected a batch N x {'x'.join(map(str, self.input_shape))}, got {x.shape}")
        if x.shape[0] == 0:
            raise ValueError("empty batch")
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is closed")
            self._cuda_ctx.push()
            try:
                return self._run(x)
            finally:
                self._cuda_ctx.pop()

    # -- shutdown --------------------------------------------------------------------------

    def _release(self) -> None:
        """Free everything allocated under the CUDA context; call with that context current.

        Device memory, page-locked host buffers (shared RAM on a Jetson) and the stream are
        freed here, explicitly: left to the garbage collector they would be released after
        the context is detached, which pycuda can only report, not undo.
        """
        for dev in self._device_buffers:
            try:
                dev.free()
            except Exception as exc:  # freeing after a CUDA error can fail; nothing else to do
                log.debug("freeing a device buffer failed: %s", exc)
        self._device_buffers = []
        self._device = {}
        for name, array in self._host.items():
            allocation = getattr(array, "base", None)
            if allocation is not None and hasattr(allocation, "free"):
                try:
                    allocation.free()
                except Exception as exc:
                    log.debug("freeing the page-locked buffer of %s failed: %s", name, exc)
        self._host = {}
        self._stream = None  # pycuda destroys a stream when its last reference goes
        self._context = None
        self._engine = None
        self._runtime = None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._cuda_ctx is not None:
                self._cuda_ctx.push()
                try:
                    self._release()
                finally:
                    self._cuda_ctx.pop()
                    try:
                        self._cuda_ctx.detach()
                    except Exception as exc:
                        log.debug("releasing the CUDA context failed: %s", exc)
                    self._cuda_ctx = None

    def __enter__(self) -> TensorRTEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bundle_engine(
    bundle_dir: str | Path,
    precision: str,
    *,
    engine_dir: str | Path | None = None,
    **kwargs: Any,
) -> TensorRTEngine:
    """Open ``model.<precision>.engine`` for a bundle, checking it against the bundle's model hash."""
    from facediag.edge.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    key = normalize_precision(precision)
    engine_path = Path(engine_dir or bundle.path) / engine_file_name(key)
    manifest = EngineManifest.load(manifest_path_for(engine_path))
    legacy = bool(manifest.builder_options.get("legacy_calibrator"))
    src = source_precision(key, legacy)
    if src not in bundle.precisions:
        raise ModelFileError(f"bundle {bundle.path} has no {src} model to check engine {engine_path.name} against")
    expected = bundle.files[bundle.precisions[src].file]
    return TensorRTEngine(engine_path, expected_onnx_sha256=expected, precision=key, bundle_hint=str(bundle_dir), **kwargs)


def device_from_mapping(data: Mapping[str, Any]) -> DeviceInfo:
    """A ``DeviceInfo`` from a plain mapping (config files, tests)."""
    cc = tuple(int(v) for v in data["compute_capability"])
    return DeviceInfo(str(data["tensorrt_version"]), str(data["gpu_name"]), (cc[0], cc[1]), int(data.get("num_dla_cores", 0)))
