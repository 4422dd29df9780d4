"""TensorRT and CUDA on this machine: importing them, their start-up failures, the device probe.

Which exceptions mean "CUDA or TensorRT cannot start here" is known in one place, this
module: pycuda raises its own ``pycuda.driver.Error`` classes (not the builtin
``RuntimeError``), and ``trt.Runtime()`` / ``trt.Builder()`` raise ``TypeError``
("factory function returned nullptr") when CUDA cannot start. Each becomes a
:class:`TensorRTUnavailable` (a ``ConfigError``), which ``backend = auto`` turns into a
fallback to ONNX Runtime with the reason, and ``backend = tensorrt`` into a clear refusal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from facediag.edge.engine.manifest import DeviceInfo
from facediag.edge.errors import ConfigError


class TensorRTUnavailable(ConfigError):
    """TensorRT or CUDA cannot start on this machine (``backend = auto`` falls back to ONNX Runtime)."""


def _jetpack_release() -> str | None:
    """The L4T release line of a Jetson ("R35 (release), REVISION: 4.1, ..."), None elsewhere."""
    try:
        return Path("/etc/nv_tegra_release").read_text(encoding="utf-8", errors="replace").strip() or None
    except OSError:
        return None


def _jetpack5_hint(python: tuple[int, int]) -> str:
    """What to do on JetPack 5 (L4T R35) when ``import tensorrt`` fails under this Python."""
    if python != (3, 8):
        return (
            f"this Jetson runs JetPack 5, whose TensorRT 8.5 has Python bindings for Python 3.8 only, and this is "
            f"Python {python[0]}.{python[1]}: run facediag in a venv made from JetPack's /usr/bin/python3 (3.8) with "
            "--system-site-packages, upgrade the station to JetPack 6 (TensorRT 10.3, Python 3.10), or set the "
            "engine backend to onnxruntime"
        )
    return (
        "this Jetson runs JetPack 5 and this is Python 3.8, but TensorRT's Python module does not import: install "
        "JetPack's bindings (apt install python3-libnvinfer) and make the venv with --system-site-packages, or "
        "set the engine backend to onnxruntime"
    )


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt as trt  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        release = _jetpack_release() or ""
        if release.startswith("# R35") or release.startswith("R35"):
            raise TensorRTUnavailable(_jetpack5_hint(sys.version_info[:2])) from exc
        raise TensorRTUnavailable(
            "backend tensorrt needs TensorRT's Python module, which is not installed here. On a Jetson it comes "
            "with JetPack (use a venv made with --system-site-packages). Otherwise set the engine backend to "
            "onnxruntime"
        ) from exc
    module: ModuleType = trt
    return module


def cuda_errors(cuda: Any) -> tuple[type[BaseException], ...]:
    """pycuda's own exception base class (``pycuda.driver.Error``; not the builtin RuntimeError)."""
    base = getattr(cuda, "Error", None)
    return (base,) if isinstance(base, type) and issubclass(base, BaseException) else ()


def init_cuda(cuda: Any) -> None:
    """``cuda.init()``, with pycuda's start-up failures (no GPU, no driver) turned into TensorRTUnavailable."""
    try:
        cuda.init()
    except cuda_errors(cuda) as exc:
        raise TensorRTUnavailable(
            f"CUDA cannot start on this machine ({type(exc).__name__}: {exc}); check the NVIDIA driver "
            "(nvidia-smi, or tegrastats on a Jetson) and that the service user may open /dev/nvidia* "
            "(the video/render group), or set the engine backend to onnxruntime"
        ) from exc


def import_pycuda() -> ModuleType:
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found, unused-ignore]
    except (ImportError, OSError) as exc:
        raise TensorRTUnavailable(
            f"backend tensorrt needs pycuda, which cannot be imported here ({exc}): pip install 'facediag[jetson]' "
            "on a machine with the CUDA toolkit and driver, or set the engine backend to onnxruntime"
        ) from exc
    init_cuda(cuda)
    module: ModuleType = cuda
    return module


def _started(trt: Any, what: str, logger: Any) -> Any:
    """``trt.Runtime(logger)`` / ``trt.Builder(logger)``: TensorRT raises TypeError ("factory function returned
    nullptr") when it cannot start CUDA; that becomes TensorRTUnavailable with what to do."""
    try:
        return getattr(trt, what)(logger)
    except TypeError as exc:
        raise TensorRTUnavailable(
            f"TensorRT could not create its {what} ({exc}): CUDA cannot start on this machine (no GPU visible, "
            "driver and TensorRT not matching, or out of GPU memory). Check nvidia-smi / tegrastats, or set the "
            "engine backend to onnxruntime"
        ) from exc


def create_runtime(trt: Any, logger: Any) -> Any:
    return _started(trt, "Runtime", logger)


def create_builder(trt: Any, logger: Any) -> Any:
    return _started(trt, "Builder", logger)


def probe_device(trt: Any, cuda: Any, device_index: int = 0) -> DeviceInfo:
    """TensorRT version, GPU name, compute capability and DLA cores of this machine.

    CUDA start-up failures (pycuda's errors, TensorRT's TypeError) raise TensorRTUnavailable.
    """
    try:
        count = int(cuda.Device.count())
        if count <= device_index:
            raise TensorRTUnavailable(f"no CUDA GPU number {device_index} on this machine (CUDA sees {count})")
        device = cuda.Device(device_index)
        major, minor = device.compute_capability()
        name = str(device.name())
    except cuda_errors(cuda) as exc:
        raise TensorRTUnavailable(f"CUDA cannot use GPU {device_index} ({type(exc).__name__}: {exc})") from exc
    runtime = create_runtime(trt, trt.Logger(trt.Logger.WARNING))
    return DeviceInfo(
        tensorrt_version=str(trt.__version__),
        gpu_name=name,
        compute_capability=(int(major), int(minor)),
        num_dla_cores=int(getattr(runtime, "num_DLA_cores", 0) or 0),
    )


def probe_this_device(device_index: int = 0) -> DeviceInfo:
    """Import TensorRT and pycuda and describe this machine; TensorRTUnavailable when either cannot start."""
    trt = import_tensorrt()
    cuda = import_pycuda()
    return probe_device(trt, cuda, device_index)
