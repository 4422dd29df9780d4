"""Issue 12, device path: CUDA that cannot start, Python 3.8 (JetPack 5), a stalled picamera2 camera.

The libraries are stand-ins (tests/trt_standins/: not TensorRT, pycuda or picamera2),
installed into ``sys.modules`` so that the real import paths of facediag run; the
bundles, the ONNX models, the supervisor thread and the Python 3.8 interpreter are real.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from facediag.edge.errors import ConfigError
from tests.trt_standins import (
    V103,
    DeviceMemory,
    make_picamera2_standin,
    make_pycuda_standin,
    make_tensorrt_standin,
)

pytest.importorskip("onnxruntime")


# --------------------------------------------------------------------------- backend auto when CUDA cannot start


def _install(monkeypatch: pytest.MonkeyPatch, trt: types.ModuleType, cuda: types.ModuleType) -> None:
    """Make `import tensorrt` and `import pycuda.driver` find the stand-ins."""
    package = types.ModuleType("pycuda")
    package.driver = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)


@pytest.fixture
def bundle_with_engine(tmp_path: Path):
    from facediag.converters.tensorrt_build import build_engine
    from facediag.edge.bundle import load_bundle
    from tests.test_tensorrt_decisions import make_bundle, standins

    folder = make_bundle(tmp_path / "bundle")
    trt, cuda, device = standins(V103)
    build_engine(folder, "fp32", cache_dir=tmp_path / "c", trt_module=trt, cuda_module=cuda, device_info=device)
    return load_bundle(folder)


@pytest.mark.parametrize("failure", ["cuinit", "runtime"])
def test_auto_falls_back_to_onnxruntime_when_cuda_cannot_start(monkeypatch, bundle_with_engine, failure) -> None:
    from facediag.edge.engine.select import plan_engine, probe_tensorrt_device

    memory = DeviceMemory()
    trt = make_tensorrt_standin(V103, memory)
    if failure == "cuinit":  # pycuda raises its own pycuda._driver.RuntimeError, not the builtin one
        cuda = make_pycuda_standin(memory, init_error="no CUDA-capable device is detected")
        expected = "CUDA cannot start"
    else:  # TensorRT's Runtime() raises TypeError ("factory function returned nullptr")
        cuda = make_pycuda_standin(memory)
        trt.cuda_broken = True
        expected = "could not create its Runtime"
    _install(monkeypatch, trt, cuda)
    plan = plan_engine(bundle_with_engine, "auto", "auto", device_probe=probe_tensorrt_device)
    assert plan.backend == "onnxruntime" and plan.path.name == "model.onnx"
    assert expected in plan.reason
    with pytest.raises(ConfigError, match=expected):  # the operator insisted on TensorRT: say why not
        plan_engine(bundle_with_engine, "tensorrt", "fp32", device_probe=probe_tensorrt_device)


def test_auto_probe_reaches_the_manifest_when_cuda_starts(monkeypatch, bundle_with_engine) -> None:
    """Control for the test above: with CUDA working, the same path probes the device and reads the engine."""
    from facediag.edge.engine.select import plan_engine, probe_tensorrt_device

    memory = DeviceMemory()
    _install(monkeypatch, make_tensorrt_standin(V103, memory), make_pycuda_standin(memory))
    plan = plan_engine(bundle_with_engine, "auto", "auto", device_probe=probe_tensorrt_device)
    assert plan.backend == "onnxruntime" and "no passing verification" in plan.reason


# --------------------------------------------------------------------------- Python 3.8 (JetPack 5)


def test_jetpack_5_without_tensorrt_bindings_names_the_upgrade(monkeypatch) -> None:
    from facediag.edge.engine import trt_device as rt

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, as on JetPack 5 under 3.10
    monkeypatch.setattr(rt, "_jetpack_release", lambda: "# R35 (release), REVISION: 4.1, GCID: 33958178")
    with pytest.raises(rt.TensorRTUnavailable) as refused:
        rt.import_tensorrt()
    assert str(refused.value) == rt._jetpack5_hint(sys.version_info[:2])  # this interpreter's advice
    # Python 3.10 (JetPack 6's, or one installed by hand): JetPack 5's bindings cannot load there.
    assert re.search("JetPack 5.*Python 3.8 only.*this is Python 3.10.*python3.*--system-site-packages.*JetPack 6",
                     rt._jetpack5_hint((3, 10)))
    # JetPack's own Python 3.8 (facediag runs there; .ci/py38): the bindings package is what is missing.
    assert re.search("Python 3.8.*apt install python3-libnvinfer.*--system-site-packages", rt._jetpack5_hint((3, 8)))
    monkeypatch.setattr(rt, "_jetpack_release", lambda: None)
    with pytest.raises(rt.TensorRTUnavailable, match="not installed here"):
        rt.import_tensorrt()


# --------------------------------------------------------------------------- picamera2: a stalled camera


@pytest.fixture
def picamera2_module(monkeypatch):
    module = make_picamera2_standin("0.3.20")
    monkeypatch.setitem(sys.modules, "picamera2", module)
    yield module
    module.release_blocked()  # a capture thread blocked without a timeout must not outlive the test


def test_picamera2_read_times_out_on_a_stalled_camera(picamera2_module) -> None:
    from facediag.edge.capture import SourceError, make_source

    src = make_source("picamera2:0?width=64&height=48")
    src.capture_timeout_s = 0.2
    src.open()
    assert src.read().shape == (48, 64, 3)
    picamera2_module.instances[0].stall()
    outcome: list[BaseException | object] = []

    def read() -> None:
        try:
            outcome.append(src.read())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)  # without a timeout the read would never return
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "read() of a stalled camera did not return within 5 s"
    assert isinstance(outcome[0], SourceError) and "no frame within 0.2 s" in str(outcome[0])
    assert picamera2_module.instances[0].calls[-1] == ("capture_array", "main", 0.2)
    src.close()


def test_supervisor_reconnects_a_stalled_picamera2(picamera2_module) -> None:
    from facediag.edge.capture import BackoffPolicy, CaptureSupervisor, make_source

    src = make_source("picamera2:0?width=64&height=48")
    src.capture_timeout_s = 0.2
    sup = CaptureSupervisor(src, stall_s=1.0, backoff=BackoffPolicy(initial_s=0.05, jitter=0.0)).start()
    try:
        assert sup.wait_for("streaming", 5)
        deadline = time.monotonic() + 5
        while picamera2_module.instances[0].frames < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        picamera2_module.instances[0].stall()
        deadline = time.monotonic() + 10
        while sup.stats().reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = sup.stats()
        assert stats.reconnects >= 1 and stats.stalls >= 1, stats
        assert "camera stalled" in (stats.last_error or "")
        assert len(picamera2_module.instances) >= 2 and picamera2_module.instances[0].calls[-1] == ("close",)
        fresh = picamera2_module.instances[-1]
        deadline = time.monotonic() + 5
        while fresh.frames < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fresh.frames >= 1  # frames flow again from the reopened camera
    finally:
        assert sup.stop(timeout=5)
