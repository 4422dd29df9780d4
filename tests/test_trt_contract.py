"""The contract facediag relies on from TensorRT and pycuda, run on the stand-ins AND on the real libraries.

Every test here is parametrised over the stand-ins of tests/trt_standins/ (one per
TensorRT generation, plus the strict pycuda stand-in) and over the real ``tensorrt``
and ``pycuda`` where they import and a GPU answers; elsewhere the ``real`` cases skip
and say why. So the stand-ins that the rest of the suite trusts cannot drift from the
real libraries: on a Jetson or any machine with an NVIDIA GPU, TensorRT and pycuda,
run (in the venv that sees them, with pytest and hypothesis installed: the ``dev`` extra)

    python -m pytest tests/test_trt_contract.py -v -rs

The real cases need neither ``onnx`` nor ONNX Runtime: their models are the small files
in tests/data/contract/.

and every ``real`` case must pass. Expectations are derived from the version the module
reports (DESIGN.md's table, checked against NVIDIA's binding sources), never from
the stand-in itself.
"""

from __future__ import annotations

import builtins
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.colour_model import H, W, reference_probs
from tests.trt_standins import ALL_VERSIONS, DeviceMemory, make_pycuda_standin, make_tensorrt_standin

MODELS = Path(__file__).resolve().parent / "data" / "contract"  # tiny ONNX files (make_models.py there)

TRT_CASES = [pytest.param(v, id=f"standin-{v}") for v in ALL_VERSIONS] + [pytest.param("real", id="real")]
CUDA_CASES = [pytest.param("standin", id="standin"), pytest.param("real", id="real")]


def _real_tensorrt() -> Any:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        pytest.skip(f"real TensorRT is not importable here ({exc}); run this file on a Jetson or a GPU machine "
                    "with TensorRT: python -m pytest tests/test_trt_contract.py -v -rs")
    return trt


def _real_pycuda() -> Any:
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found]

        cuda.init()
        if cuda.Device.count() < 1:
            pytest.skip("pycuda imports but sees no GPU")
    except ImportError as exc:
        pytest.skip(f"real pycuda is not importable here ({exc}); run this file on a machine with a GPU, the CUDA "
                    "driver and pycuda: python -m pytest tests/test_trt_contract.py -v -rs")
    except Exception as exc:  # noqa: BLE001 - pycuda's own errors: no driver / no device
        pytest.skip(f"pycuda imports but CUDA cannot start here ({type(exc).__name__}: {exc})")
    return cuda


@dataclass
class Env:
    trt: Any
    cuda: Any
    version: tuple[int, int]
    real: bool


def _version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()  # type: ignore[union-attr]
    return int(major), int(minor)


@pytest.fixture(params=TRT_CASES)
def env(request: pytest.FixtureRequest) -> Env:
    if request.param == "real":
        trt, cuda = _real_tensorrt(), _real_pycuda()
        return Env(trt, cuda, _version(trt.__version__), True)
    # The stand-in parser reads the model with onnx and its engines run on ONNX Runtime.
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    memory = DeviceMemory()
    trt = make_tensorrt_standin(request.param, memory, num_dla_cores=2)
    cuda = make_pycuda_standin(memory)
    cuda.init()
    return Env(trt, cuda, _version(trt.__version__), False)


@pytest.fixture(params=CUDA_CASES)
def cuda(request: pytest.FixtureRequest) -> Any:
    if request.param == "real":
        return _real_pycuda()
    module = make_pycuda_standin()
    module.init()
    return module


@pytest.fixture
def context(cuda: Any) -> Iterator[Any]:
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        yield ctx
    finally:
        cuda.Context.pop()
        ctx.detach()


def _deprecated(enum_cls: Any, name: str) -> bool:
    member = getattr(enum_cls, name)
    if hasattr(member, "deprecated"):  # a stand-in member
        return bool(member.deprecated)
    doc = getattr(enum_cls, "__entries", {}).get(name, (None, ""))[1] or ""  # pybind11 keeps each value's doc
    return "deprecated" in doc.lower()


# --------------------------------------------------------------------------- TensorRT: what exists, per version


def test_version_string_format(env: Env) -> None:
    """8.x reports the build number ("8.5.2.2"); 10.x and later report major.minor.patch only."""
    parts = env.trt.__version__.split(".")
    assert all(p.isdigit() for p in parts), env.trt.__version__
    if env.version[0] >= 10:
        assert len(parts) == 3, env.trt.__version__
    else:  # JetPack's and the tar/deb builds carry the build number; NVIDIA's 8.6 pip wheel does not
        assert len(parts) in (3, 4), env.trt.__version__


def test_api_surface_matches_the_version_table(env: Env) -> None:
    trt, major = env.trt, env.version[0]
    assert hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") == (major < 11)
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") == (major >= 10)
    assert hasattr(trt.BuilderFlag, "FP16") == hasattr(trt.BuilderFlag, "INT8") == (major < 11)
    assert hasattr(trt.ICudaEngine, "num_bindings") == (major < 10)
    assert hasattr(trt, "IInt8EntropyCalibrator2") == (major < 11)
    assert hasattr(trt.IBuilderConfig, "int8_calibrator") == (major < 11)
    for common in ("execute_async_v3", "set_input_shape", "set_tensor_address", "get_tensor_shape"):
        assert hasattr(trt.IExecutionContext, common), common
    for common in ("build_serialized_network", "create_optimization_profile", "num_DLA_cores"):
        assert hasattr(trt.Builder, common), common
    for common in ("set_memory_pool_limit", "create_timing_cache", "set_timing_cache", "DLA_core"):
        assert hasattr(trt.IBuilderConfig, common), common
    assert hasattr(trt.BuilderFlag, "GPU_FALLBACK") and hasattr(trt.DeviceType, "DLA")


def test_precision_flags_deprecated_from_10_12_only(env: Env) -> None:
    if env.version[0] >= 11:
        pytest.skip("no FP16/INT8 builder flags in TensorRT 11")
    expected = env.version >= (10, 12)
    assert _deprecated(env.trt.BuilderFlag, "FP16") == expected
    assert _deprecated(env.trt.BuilderFlag, "INT8") == expected


def test_logger_takes_a_severity_not_an_int(env: Env) -> None:
    trt = env.trt
    trt.Logger()
    trt.Logger(trt.Logger.WARNING)
    with pytest.raises(TypeError):
        trt.Logger(2)


def test_builder_config_refuses_plain_ints_and_none(env: Env) -> None:
    trt = env.trt
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    assert config.get_flag(trt.BuilderFlag.GPU_FALLBACK)
    with pytest.raises(TypeError):
        config.set_flag(int(trt.BuilderFlag.GPU_FALLBACK))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 24)
    with pytest.raises(TypeError):
        config.set_memory_pool_limit(0, 1 << 24)
    with pytest.raises(AttributeError):
        config.no_such_setting = 1


def test_timing_cache_none_for_foreign_bytes(env: Env) -> None:
    trt = env.trt
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    assert config.create_timing_cache(b"\x00this is not a timing cache, cut short") is None
    fresh = config.create_timing_cache(b"")
    assert fresh is not None and config.set_timing_cache(fresh, False)
    with pytest.raises(TypeError):
        config.set_timing_cache(None, False)
    again = config.create_timing_cache(bytes(fresh.serialize()))
    assert again is not None  # its own serialisation is accepted


def test_dla_cores_absent_in_11_0_to_11_3(env: Env) -> None:
    trt = env.trt
    cores = int(trt.Builder(trt.Logger(trt.Logger.WARNING)).num_DLA_cores)
    assert cores >= 0
    if env.version[0] == 11 and env.version[1] <= 3:
        assert cores == 0


def test_garbage_engine_deserializes_to_none(env: Env, tmp_path: Path) -> None:
    trt = env.trt
    ctx = env.cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        assert runtime.deserialize_cuda_engine(b"not an engine" * 64) is None
    finally:
        env.cuda.Context.pop()
        ctx.detach()


def _network(trt: Any, logger: Any) -> tuple[Any, Any]:
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.ICudaEngine, "num_bindings"):  # 8.x: the ONNX parser needs an explicit-batch network
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return builder, builder.create_network(flags)


def test_parser_types_inputs_as_the_model_does(env: Env, tmp_path: Path) -> None:
    """FLOAT16 inputs come out HALF; an input type TensorRT lacks is a parse error, never silently FLOAT."""
    trt = env.trt
    logger = trt.Logger(trt.Logger.ERROR)
    _, network = _network(trt, logger)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(MODELS / "half_identity.onnx"))
    assert network.get_input(0).dtype == trt.DataType.HALF
    _, network = _network(trt, logger)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(MODELS / "double_identity.onnx"))
    assert not ok and int(parser.num_errors) >= 1


def test_build_run_and_read_back_through_pycuda(env: Env, tmp_path: Path) -> None:
    """The whole path facediag uses: parse, profile, build, deserialize, name-based IO, execute_async_v3."""
    trt, cuda = env.trt, env.cuda
    logger = trt.Logger(trt.Logger.WARNING)
    builder, network = _network(trt, logger)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(MODELS / "classifier.onnx"))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 256 << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, H, W), (2, 3, H, W), (4, 3, H, W))
    config.add_optimization_profile(profile)
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        serialized = builder.build_serialized_network(network, config)
        assert serialized is not None
        engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
        assert engine is not None
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        assert names == ["input", "probabilities"]
        assert engine.get_tensor_mode("input") == trt.TensorIOMode.INPUT
        context = engine.create_execution_context()
        assert not context.set_input_shape("input", (5, 3, H, W))  # outside the profile: refused, no exception
        assert context.set_input_shape("input", (3, 3, H, W))
        assert tuple(context.get_tensor_shape("probabilities")) == (3, 3)
        x = np.random.default_rng(0).uniform(0, 255, (3, 3, H, W)).astype(np.float32)
        host_in = cuda.pagelocked_empty((3, 3, H, W), np.float32)
        host_out = cuda.pagelocked_empty((3, 3), np.float32)
        d_in, d_out = cuda.mem_alloc(host_in.nbytes), cuda.mem_alloc(host_out.nbytes)
        stream = cuda.Stream()
        assert context.set_tensor_address("input", int(d_in)) and context.set_tensor_address("probabilities", int(d_out))
        host_in[...] = x
        cuda.memcpy_htod_async(d_in, host_in, stream)
        assert context.execute_async_v3(stream.handle)
        cuda.memcpy_dtoh_async(host_out, d_out, stream)
        stream.synchronize()
        np.testing.assert_allclose(host_out, reference_probs(x), atol=1e-3)
        d_in.free()
        d_out.free()
        host_in.base.free()
        host_out.base.free()
        del stream, context, engine
    finally:
        cuda.Context.pop()
        ctx.detach()


# --------------------------------------------------------------------------- pycuda


def test_pycuda_errors_are_its_own_classes(cuda: Any) -> None:
    assert issubclass(cuda.Error, Exception)
    for name in ("LogicError", "RuntimeError", "MemoryError", "LaunchError"):
        cls = getattr(cuda, name)
        assert issubclass(cls, cuda.Error), name
        assert not issubclass(cls, builtins.RuntimeError), name  # `except RuntimeError` does not catch them


def test_pop_with_an_empty_stack_is_refused(cuda: Any) -> None:
    def pop_in_fresh_thread() -> BaseException | None:
        try:
            cuda.Context.pop()
        except BaseException as exc:  # noqa: BLE001
            return exc
        return None

    result: list[BaseException | None] = []
    worker = threading.Thread(target=lambda: result.append(pop_in_fresh_thread()))
    worker.start()
    worker.join(30)
    assert isinstance(result[0], cuda.Error)


def test_context_is_per_thread(cuda: Any, context: Any) -> None:
    """A context pushed in this thread is not current in another: allocations there are refused."""
    here = cuda.mem_alloc(64)
    errors: list[BaseException] = []

    def elsewhere() -> None:
        for make in (lambda: cuda.mem_alloc(64), cuda.Stream, lambda: cuda.pagelocked_empty((4,), np.float32)):
            try:
                made = make()
            except cuda.Error as exc:
                errors.append(exc)
            else:
                del made
                errors.append(AssertionError("allocated with no current context"))

    worker = threading.Thread(target=elsewhere)
    worker.start()
    worker.join(30)
    assert len(errors) == 3 and all(isinstance(e, cuda.Error) for e in errors), errors
    here.free()


def test_double_free_is_refused(cuda: Any, context: Any) -> None:
    dev = cuda.mem_alloc(256)
    dev.free()
    with pytest.raises(cuda.Error):
        dev.free()
    host = cuda.pagelocked_empty((8,), np.float32)
    host.base.free()
    with pytest.raises(cuda.Error):
        host.base.free()


def test_copies_need_contiguous_host_buffers(cuda: Any, context: Any) -> None:
    dev = cuda.mem_alloc(4 * 16)
    stream = cuda.Stream()
    strided = np.zeros((4, 8), np.float32)[:, ::2]
    with pytest.raises((ValueError, TypeError, BufferError)):
        cuda.memcpy_htod_async(dev, strided, stream)
    cuda.memcpy_htod_async(dev, np.ascontiguousarray(strided), stream)
    out = np.zeros((4, 4), np.float32)
    with pytest.raises((ValueError, TypeError, BufferError)):
        cuda.memcpy_dtoh_async(np.zeros((4, 8), np.float32)[:, ::2], dev, stream)
    cuda.memcpy_dtoh_async(out, dev, stream)
    stream.synchronize()
    dev.free()
    del stream
