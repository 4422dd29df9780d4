"""TensorRT build/runtime decisions, engine manifests, atomic writes and `facediag verify`.

TensorRT and pycuda cannot be installed here, so the TensorRT-facing code runs
against the stand-in modules of tests/trt_standins/ (one per TensorRT generation:
8.5/8.6, 10.3, 10.16, 11.x, and a strict pycuda; they are not TensorRT), whose
behaviour tests/test_trt_contract.py holds against the real libraries where present. Everything else is real: real ONNX files
made with onnx.helper, real ONNX Runtime sessions, real bundles, real CelebA
photos as inputs, a real process killed with SIGKILL, the real `facediag` CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facediag.converters.compare import Criteria, compare
from facediag.converters.tensorrt_build import (
    build_engine,
    calibration_batches,
    detect_api,
    plan_build,
    profile_shapes,
    timing_cache_path,
)
from facediag.converters.verify import load_inputs, verify_bundle
from facediag.edge.atomicio import (
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temporaries,
    stale_temporaries,
)
from facediag.edge.engine.manifest import DeviceInfo, EngineManifest, compare_manifest, manifest_path_for
from facediag.edge.engine.tensorrt import (
    BufferPlan,
    TensorRTEngine,
    TensorSpec,
    numpy_dtype,
    open_bundle_engine,
    plan_buffers,
    split_batch,
)
from facediag.edge.errors import ConfigError, ModelFileError
from tests.colour_model import reference_probs, write_colour_classifier
from tests.conftest import REPO, fixture_path
from tests.trt_standins import (
    ALL_VERSIONS,
    V11,
    V85,
    V86,
    V103,
    V1016,
    DeviceMemory,
    make_pycuda_standin,
    make_tensorrt_standin,
    was_called,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

H, W = 112, 96  # sphereface_112x96: the smallest contract template
CLASSES = ["healthy", "pale_skin", "round_face"]
GPU = "Stand-in Orin"
CC = (8, 7)


# --------------------------------------------------------------------------- helpers: real ONNX models


def make_bundle(folder: Path, fp16_shift: float = 0.0, int8_shift: float = 0.0, batch: int | str = "N") -> Path:
    """A real bundle: fp32 model plus 'fp16' and 'int8-tensorrt' files (float32 graphs with shifted weights)."""
    from facediag.edge.bundle import create_bundle
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.hashing import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    write_colour_classifier(folder / "model.onnx", batch=batch)
    write_colour_classifier(folder / "model.fp16.onnx", shift=fp16_shift, batch=batch)
    write_colour_classifier(folder / "model.int8-tensorrt.onnx", shift=int8_shift, batch=batch)
    ckpt = folder.parent / "ckpt.bin"
    ckpt.write_bytes(b"checkpoint stand-in bytes")
    bundle = create_bundle(
        folder,
        classes=CLASSES,
        healthy_class="healthy",
        contract=PreprocessContract(template="sphereface_112x96"),
        thresholds={"pale_skin": 0.5, "round_face": 0.5},
        fp32_file="model.onnx",
        fp32_gate={"passed": True},
        source_checkpoint={"path": str(ckpt), "sha256": sha256_file(ckpt)},
        creator="facediag 0.1.0",
    )
    bundle.add_precision("fp16", "model.fp16.onnx", {"passed": True})
    bundle.add_precision("int8-tensorrt", "model.int8-tensorrt.onnx", {"passed": True}, target="tensorrt")
    return folder


def celeba_crops(n: int = 40) -> np.ndarray:
    """Real CelebA faces resized to the 112x96 crop size, as crops_to_input output (RGB, NCHW, 0..255)."""
    import cv2

    from facediag.edge.face.contract import PreprocessContract, crops_to_input

    folder = fixture_path("faces/celeba")
    files = sorted(folder.glob("*.jpg"))[:n]
    crops = np.stack([cv2.resize(cv2.imread(str(f)), (W, H), interpolation=cv2.INTER_AREA) for f in files])
    return crops_to_input(crops, PreprocessContract(template="sphereface_112x96"))


def standins(version: str, num_dla_cores: int = 0):
    """A TensorRT stand-in, a pycuda stand-in sharing its device memory (initialised, as import_pycuda does)."""
    memory = DeviceMemory()
    trt = make_tensorrt_standin(version, memory, num_dla_cores=num_dla_cores)
    cuda = make_pycuda_standin(memory, GPU, CC)
    cuda.init()
    return trt, cuda, DeviceInfo(version, GPU, CC, trt.Builder(trt.Logger()).num_DLA_cores)


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle", fp16_shift=0.5)


# --------------------------------------------------------------------------- feature detection and plans


def test_detect_api_reads_each_version_by_feature() -> None:
    a85, a103, a11 = (detect_api(make_tensorrt_standin(v)) for v in (V85, V103, V11))
    assert detect_api(make_tensorrt_standin(V86)) == dataclasses.replace(a85, version=V86)
    assert detect_api(make_tensorrt_standin(V1016)) == dataclasses.replace(a103, version=V1016)
    assert (a85.typing_mode, a103.typing_mode, a11.typing_mode) == ("weak", "opt-in", "always")
    assert a85.binding_era and not a103.binding_era and not a11.binding_era
    assert a85.has_legacy_calibrator and a103.has_legacy_calibrator and not a11.has_legacy_calibrator
    assert a85.has_explicit_batch_flag and a103.has_explicit_batch_flag and not a11.has_explicit_batch_flag
    assert a11.version == V11  # recorded, not used to decide


# (version, precision) -> (network flags, builder flags): DESIGN.md's "Precision path", written out by hand.
EXPECTED_PLANS_BY_GENERATION = {
    (V85, "fp32"): (("EXPLICIT_BATCH",), ()),
    (V85, "fp16"): (("EXPLICIT_BATCH",), ("FP16",)),
    (V85, "int8"): (("EXPLICIT_BATCH",), ("INT8",)),
    (V103, "fp32"): (("STRONGLY_TYPED",), ()),
    (V103, "fp16"): (("STRONGLY_TYPED",), ()),
    (V103, "int8"): (("STRONGLY_TYPED",), ()),
    (V11, "fp32"): ((), ()),
    (V11, "fp16"): ((), ()),
    (V11, "int8"): ((), ()),
}
# 8.6 decides like 8.5 and 10.16 like 10.3 (same features; 10.16 only deprecates the precision flags, unused here).
EXPECTED_PLANS = {
    **EXPECTED_PLANS_BY_GENERATION,
    **{(V86, p): EXPECTED_PLANS_BY_GENERATION[(V85, p)] for p in ("fp32", "fp16", "int8")},
    **{(V1016, p): EXPECTED_PLANS_BY_GENERATION[(V103, p)] for p in ("fp32", "fp16", "int8")},
}


@pytest.mark.parametrize("version,precision", sorted(EXPECTED_PLANS))
def test_plan_flags_per_version_and_precision(version: str, precision: str) -> None:
    plan = plan_build(detect_api(make_tensorrt_standin(version)), precision)
    assert (plan.network_flags, plan.builder_flags) == EXPECTED_PLANS[(version, precision)]
    assert plan.source_precision == {"fp32": "fp32", "fp16": "fp16", "int8": "int8-tensorrt"}[precision]
    assert not plan.legacy_calibrator


def test_legacy_calibrator_plans_and_refusal() -> None:
    p85 = plan_build(detect_api(make_tensorrt_standin(V85)), "int8", legacy_calibrator=True)
    assert p85.builder_flags == ("INT8",) and p85.network_flags == ("EXPLICIT_BATCH",) and p85.source_precision == "fp32"
    p103 = plan_build(detect_api(make_tensorrt_standin(V103)), "int8", legacy_calibrator=True)
    assert p103.network_flags == () and p103.builder_flags == ("INT8",) and not p103.strongly_typed
    with pytest.raises(ConfigError) as err:
        plan_build(detect_api(make_tensorrt_standin(V11)), "int8", legacy_calibrator=True)
    msg = str(err.value)
    assert "removed in 11" in msg and "--precision int8" in msg and "without --legacy-calibrator" in msg
    with pytest.raises(ConfigError, match="only applies to --precision int8"):
        plan_build(detect_api(make_tensorrt_standin(V85)), "fp16", legacy_calibrator=True)


def test_dla_plan_adds_gpu_fallback_and_refuses_fp32() -> None:
    api = detect_api(make_tensorrt_standin(V103))
    assert "GPU_FALLBACK" in plan_build(api, "fp16", dla_core=0).builder_flags
    with pytest.raises(ConfigError, match="DLA runs only FP16 and INT8"):
        plan_build(api, "fp32", dla_core=0)


def test_standins_refuse_removed_apis() -> None:
    """The guarantee the build tests rely on: touching a removed API raises."""
    trt = make_tensorrt_standin(V103)
    config = trt.Builder(trt.Logger()).create_builder_config()
    with pytest.raises(AttributeError):
        config.max_workspace_size = 1 << 20
    with pytest.raises(AttributeError):
        _ = make_tensorrt_standin(V11).NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # plain absent member
    assert not hasattr(make_tensorrt_standin(V11).BuilderFlag, "FP16")
    assert not hasattr(make_tensorrt_standin(V11), "IInt8EntropyCalibrator2")


# --------------------------------------------------------------------------- shapes and buffers


def test_profile_shapes() -> None:
    assert profile_shapes((-1, 3, H, W), 2, 16) == {"min": [1, 3, H, W], "opt": [2, 3, H, W], "max": [16, 3, H, W]}
    assert profile_shapes((4, 3, H, W), 1, 8)["max"] == [4, 3, H, W]  # a fixed batch is kept
    with pytest.raises(ConfigError):
        profile_shapes((-1, 3, H, W), 9, 8)
    with pytest.raises(ModelFileError, match="only the batch may be dynamic"):
        profile_shapes((-1, 3, -1, W), 1, 8)


def test_plan_buffers_sizes_from_shapes_and_dtypes() -> None:
    plans = plan_buffers(
        [
            TensorSpec("input", True, (-1, 3, H, W), "float32", (8, 3, H, W)),
            TensorSpec("probabilities", False, (-1, 5), "float16", (8, 5)),
            TensorSpec("extra", False, (2, 4), "int8"),
        ]
    )
    assert plans[0] == BufferPlan("input", True, (8, 3, H, W), "float32", 8 * 3 * H * W * 4)
    assert plans[1].shape == (8, 5) and plans[1].nbytes == 8 * 5 * 2
    assert plans[2].nbytes == 8
    with pytest.raises(ModelFileError, match="dynamic dimension"):
        plan_buffers([TensorSpec("input", True, (-1, 3, H, W), "float32")])
    with pytest.raises(ModelFileError, match="static dimension"):
        plan_buffers([TensorSpec("input", True, (-1, 3, H, W), "float32", (8, 3, H, 32))])
    trt = make_tensorrt_standin(V11)
    assert numpy_dtype(trt.DataType.HALF) == np.float16 and numpy_dtype(trt.DataType.FLOAT) == np.float32
    with pytest.raises(ModelFileError):
        numpy_dtype("FP8")
    assert split_batch(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_calibration_batches_drop_short_tail() -> None:
    x = np.zeros((10, 3, H, W), np.float32)
    assert [b.shape[0] for b in calibration_batches(x, 4)] == [4, 4]
    with pytest.raises(ConfigError):
        calibration_batches(x[:2], 4)


# --------------------------------------------------------------------------- manifest


def _manifest(**over) -> EngineManifest:
    base = EngineManifest(
        engine_file="model.fp16.engine",
        engine_sha256="e" * 64,
        onnx_file="model.fp16.onnx",
        onnx_sha256="a" * 64,
        precision="fp16",
        tensorrt_version="10.3.0.30",
        gpu_name="Orin",
        compute_capability=(8, 7),
        input_name="input",
        input_shapes={"min": [1, 3, H, W], "opt": [1, 3, H, W], "max": [8, 3, H, W]},
        dla_core=None,
        builder_options={"network_flags": ["STRONGLY_TYPED"]},
        package_version="0.1.0",
    )
    return dataclasses.replace(base, **over)


DEVICE = DeviceInfo("10.3.0.30", "Orin", (8, 7), 2)


def test_manifest_exact_match_gives_no_messages() -> None:
    assert compare_manifest(_manifest(), DEVICE, "a" * 64, "fp16") == []
    assert compare_manifest(_manifest(dla_core=1), DEVICE, "a" * 64, "fp16") == []


@pytest.mark.parametrize(
    "field,manifest_over,device_over,sha,precision",
    [
        ("tensorrt_version", {"tensorrt_version": "8.5.2.2"}, {}, None, None),
        ("gpu_name", {"gpu_name": "Xavier"}, {}, None, None),
        ("compute_capability", {"compute_capability": (7, 2)}, {}, None, None),
        ("dla_core", {"dla_core": 2}, {}, None, None),
        ("onnx_sha256", {}, {}, "b" * 64, None),
        ("precision", {}, {}, None, "int8"),
    ],
)
def test_each_manifest_mismatch_gives_its_own_message(field, manifest_over, device_over, sha, precision) -> None:
    msgs = compare_manifest(
        _manifest(**manifest_over), dataclasses.replace(DEVICE, **device_over), sha or "a" * 64, precision or "fp16",
        bundle="/srv/bundle",
    )
    assert len(msgs) == 1
    assert msgs[0].startswith(field + ":")
    assert "facediag build /srv/bundle --precision " in msgs[0]


def test_several_mismatches_give_several_messages() -> None:
    msgs = compare_manifest(_manifest(tensorrt_version="8.5.2.2", gpu_name="Xavier"), DEVICE, "b" * 64, "fp16")
    assert sorted(m.split(":")[0] for m in msgs) == ["gpu_name", "onnx_sha256", "tensorrt_version"]
    assert "8.5.2.2" in next(m for m in msgs if m.startswith("tensorrt_version"))


def test_manifest_json_round_trip(tmp_path: Path) -> None:
    m = _manifest(dla_core=0, verify={"passed": True, "top1_agreement": 1.0})
    path = tmp_path / "model.fp16.engine.json"
    m.save(path)
    back = EngineManifest.load(path)
    assert back == m and isinstance(back.compute_capability, tuple)
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="format_version"):
        EngineManifest.load(path)
    with pytest.raises(ModelFileError, match="missing"):
        EngineManifest.load(tmp_path / "absent.json")


# --------------------------------------------------------------------------- atomic writes


_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from facediag.edge.atomicio import atomic_writer
with atomic_writer(sys.argv[1]) as fh:
    fh.write(b"N" * 65536)
    fh.flush()
    print("writing", flush=True)
    for _ in range(600):
        fh.write(b"N" * 65536)
        time.sleep(0.05)
"""


@pytest.mark.parametrize("had_old_file", [False, True])
def test_sigkill_mid_write_leaves_no_partial_file(tmp_path: Path, had_old_file: bool) -> None:
    final = tmp_path / "model.fp16.engine"
    if had_old_file:
        final.write_bytes(b"old complete engine")
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(final), "x", str(REPO)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"writing"
        temps = list(tmp_path.glob(".model.fp16.engine.*.tmp"))
        assert len(temps) == 1 and temps[0].stat().st_size >= 65536  # the data really is being written
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if had_old_file:
        assert final.read_bytes() == b"old complete engine"
    else:
        assert not final.exists()
    assert stale_temporaries(final) == temps
    assert remove_stale_temporaries(final) == 1
    assert list(tmp_path.glob(".model.fp16.engine.*")) == []


def test_atomic_write_replaces_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "no-such-dir" / "x", b"")


# --------------------------------------------------------------------------- building on stand-ins


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_writes_engine_and_manifest(tmp_path: Path, bundle_dir: Path, version: str, precision: str) -> None:
    trt, cuda, device = standins(version)
    result = build_engine(
        bundle_dir, precision, opt_batch=2, max_batch=4, workspace_mib=64, cache_dir=tmp_path / "cache",
        trt_module=trt, cuda_module=cuda, device_info=device,
    )
    net_flags, builder_flags = EXPECTED_PLANS[(version, precision)]
    build_call = next(c[1] for c in trt.calls if c[0] == "build")
    assert tuple(build_call["network_flags"]) == net_flags
    assert set(build_call["builder_flags"]) == set(builder_flags)
    assert build_call["pools"] == {"WORKSPACE": 64 << 20}
    assert trt.deprecated_used == []  # the default path uses no deprecated API on any version
    engine = result.engine_path
    assert engine.name == f"model.{precision}.engine" and engine.read_bytes().startswith(b"STANDIN-TRT-ENGINE")
    m = EngineManifest.load(manifest_path_for(engine))
    source = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8-tensorrt.onnx"}[precision]
    from facediag.edge.hashing import sha256_file

    assert m.onnx_file == source and m.onnx_sha256 == sha256_file(bundle_dir / source)
    assert m.engine_sha256 == sha256_file(engine)
    assert (m.tensorrt_version, m.gpu_name, m.compute_capability) == (version, GPU, CC)
    assert m.input_shapes == {"min": [1, 3, H, W], "opt": [2, 3, H, W], "max": [4, 3, H, W]}
    assert m.verify is None
    assert result.timing_cache_path == timing_cache_path(tmp_path / "cache", version, CC)
    assert version in result.timing_cache_path.name and result.timing_cache_path.is_file()


def test_timing_cache_is_reused_per_version(tmp_path: Path, bundle_dir: Path) -> None:
    caches = tmp_path / "cache"
    for version in (V85, V103, V103):
        trt, cuda, device = standins(version)
        build_engine(bundle_dir, "fp16", cache_dir=caches, trt_module=trt, cuda_module=cuda, device_info=device)
    names = sorted(p.name for p in caches.iterdir())
    assert len(names) == 2 and any(V85 in n for n in names) and any(V103 in n for n in names)
    assert (caches / timing_cache_path(caches, V103, CC).name).read_bytes().count(b"entry;") >= 1


def test_legacy_calibrator_build_on_8_5_and_10_3(tmp_path: Path, bundle_dir: Path) -> None:
    x = celeba_crops(16)
    for version in (V85, V103):
        trt, cuda, device = standins(version)
        cache = tmp_path / f"calib-{version}.cache"
        result = build_engine(
            bundle_dir, "int8", legacy_calibrator=True, calibration=x, calibration_batch=4,
            calibration_cache=cache, cache_dir=tmp_path / "c", trt_module=trt, cuda_module=cuda, device_info=device,
        )
        assert cache.read_bytes() == b"stand-in calibration table: 4 batches"
        assert cuda.context_depth() == 0 and cuda.memory.blocks == {}  # calibrator buffer freed, context popped
        assert result.manifest.onnx_file == "model.onnx" and result.manifest.builder_options["legacy_calibrator"]
        build_call = next(c[1] for c in trt.calls if c[0] == "build")
        assert build_call["builder_flags"] == ["INT8"]
        if version == V103:
            # Implicit calibration is deprecated from 10.1; BuilderFlag.INT8 itself only from 10.12.
            assert {"IInt8EntropyCalibrator2", "IBuilderConfig.int8_calibrator"} <= set(trt.deprecated_used)
            assert "BuilderFlag.INT8" not in trt.deprecated_used
        else:
            assert trt.deprecated_used == []
    # The cache alone (no crops) is enough for a rebuild.
    trt, cuda, device = standins(V85)
    build_engine(bundle_dir, "int8", legacy_calibrator=True, calibration_cache=tmp_path / f"calib-{V85}.cache",
                 cache_dir=tmp_path / "c", trt_module=trt, cuda_module=cuda, device_info=device)
    assert ("calibrated", True) in trt.calls
    with pytest.raises(ConfigError, match="needs calibration crops"):
        build_engine(bundle_dir, "int8", legacy_calibrator=True, cache_dir=tmp_path / "empty",
                     trt_module=trt, cuda_module=cuda, device_info=device)


def test_legacy_calibrator_refused_on_11_before_any_build(tmp_path: Path, bundle_dir: Path) -> None:
    trt, cuda, device = standins(V11)
    with pytest.raises(ConfigError, match="removed in 11"):
        build_engine(bundle_dir, "int8", legacy_calibrator=True, calibration=celeba_crops(8),
                     cache_dir=tmp_path / "c", trt_module=trt, cuda_module=cuda, device_info=device)
    assert trt.calls == [] and not (bundle_dir / "model.int8.engine").exists()


def test_dla_build_and_missing_core(tmp_path: Path, bundle_dir: Path) -> None:
    trt, cuda, device = standins(V103, num_dla_cores=2)
    result = build_engine(bundle_dir, "fp16", dla_core=1, cache_dir=tmp_path / "c",
                          trt_module=trt, cuda_module=cuda, device_info=device)
    call = next(c[1] for c in trt.calls if c[0] == "build")
    assert call["device"] == "DLA" and call["dla_core"] == 1 and "GPU_FALLBACK" in call["builder_flags"]
    assert result.manifest.dla_core == 1
    trt0, cuda0, device0 = standins(V103, num_dla_cores=0)
    with pytest.raises(ConfigError, match="--dla-core 0 does not exist"):
        build_engine(bundle_dir, "fp16", dla_core=0, cache_dir=tmp_path / "c",
                     trt_module=trt0, cuda_module=cuda0, device_info=device0)


# --------------------------------------------------------------------------- runtime on stand-ins


def _built(tmp_path: Path, bundle_dir: Path, version: str, precision: str = "fp32"):
    trt, cuda, device = standins(version)
    build_engine(bundle_dir, precision, max_batch=4, cache_dir=tmp_path / "c", trt_module=trt, cuda_module=cuda,
                 device_info=device)
    trt.calls.clear()
    return trt, cuda, device


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_runtime_runs_engine_through_buffers(tmp_path: Path, bundle_dir: Path, version: str) -> None:
    trt, cuda, device = _built(tmp_path, bundle_dir, version)
    x = celeba_crops(10)
    engine = open_bundle_engine(bundle_dir, "fp32", trt_module=trt, cuda_module=cuda, device_info=device)
    assert (engine.backend, engine.precision) == ("tensorrt", "fp32")
    [inp, out] = engine.plans
    assert inp.nbytes == 4 * 3 * H * W * 4 and out.shape == (4, 3)
    probs = engine.infer(x)  # 10 rows through a max-batch-4 engine: three passes
    np.testing.assert_allclose(probs, reference_probs(x), atol=1e-4)  # float32 vs float64
    shapes = [c[1] for c in trt.calls if c[0] == "execute_async_v3"]
    assert shapes[-3:] == [(4, 3, H, W), (4, 3, H, W), (2, 3, H, W)] and shapes[0] == (1, 3, H, W)  # warm-up first
    assert cuda.context_depth() == 0  # context pushed only around work
    engine.close()
    assert cuda.memory.blocks == {} and cuda.detached == 1
    assert cuda.live() == {"device": 0, "host": 0, "stream": 0} and cuda.leaks == []
    with pytest.raises(RuntimeError, match="closed"):
        engine.infer(x)
    assert trt.deprecated_used == []


def test_runtime_refuses_mismatch_before_deserialising(tmp_path: Path, bundle_dir: Path) -> None:
    trt, cuda, device = _built(tmp_path, bundle_dir, V103)
    other_gpu = dataclasses.replace(device, gpu_name="Xavier", compute_capability=(7, 2))
    with pytest.raises(ModelFileError) as err:
        open_bundle_engine(bundle_dir, "fp32", trt_module=trt, cuda_module=cuda, device_info=other_gpu)
    assert "gpu_name:" in str(err.value) and "compute_capability:" in str(err.value)
    assert "facediag build" in str(err.value)
    assert not was_called(trt, "deserialize")
    # A different TensorRT on the device: refused the same way.
    trt11, cuda11, _ = standins(V11)
    with pytest.raises(ModelFileError, match="tensorrt_version"):
        open_bundle_engine(bundle_dir, "fp32", trt_module=trt11, cuda_module=cuda11,
                           device_info=DeviceInfo(V11, GPU, CC, 0))
    assert not was_called(trt11, "deserialize")


def test_runtime_refuses_replaced_engine_and_null_engine(tmp_path: Path, bundle_dir: Path) -> None:
    trt, cuda, device = _built(tmp_path, bundle_dir, V85)
    engine_path = bundle_dir / "model.fp32.engine"
    engine_path.write_bytes(b"garbage, not an engine")
    with pytest.raises(ModelFileError, match="engine_sha256"):
        open_bundle_engine(bundle_dir, "fp32", trt_module=trt, cuda_module=cuda, device_info=device)
    assert not was_called(trt, "deserialize")
    # Same garbage with a manifest that vouches for it: TensorRT returns None -> refused, not crashed.
    from facediag.edge.hashing import sha256_file

    mpath = manifest_path_for(engine_path)
    m = EngineManifest.load(mpath)
    m.engine_sha256 = sha256_file(engine_path)
    m.save(mpath)
    with pytest.raises(ModelFileError, match="could not deserialize"):
        open_bundle_engine(bundle_dir, "fp32", trt_module=trt, cuda_module=cuda, device_info=device)
    assert was_called(trt, "deserialize") and cuda.context_depth() == 0
    assert cuda.live() == {"device": 0, "host": 0, "stream": 0}


def test_runtime_refuses_missing_manifest(tmp_path: Path, bundle_dir: Path) -> None:
    trt, cuda, device = _built(tmp_path, bundle_dir, V103)
    manifest_path_for(bundle_dir / "model.fp32.engine").unlink()
    with pytest.raises(ModelFileError, match="manifest .* is missing"):
        TensorRTEngine(bundle_dir / "model.fp32.engine", expected_onnx_sha256="a" * 64, precision="fp32",
                       trt_module=trt, cuda_module=cuda, device_info=device)


# --------------------------------------------------------------------------- issue 12: device-path defects


@pytest.mark.parametrize("version", [V85, V103, V11])
def test_corrupt_or_foreign_timing_cache_starts_fresh(tmp_path: Path, bundle_dir: Path, version: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """create_timing_cache returns None for such bytes; the build must go on with a fresh cache, not crash."""
    caches = tmp_path / "cache"
    path = timing_cache_path(caches, version, CC)
    path.parent.mkdir(parents=True)
    other = make_tensorrt_standin(V1016)
    foreign = other.Builder(other.Logger()).create_builder_config()
    for previous in (b"\x00garbage, truncated by a power cut", bytes(foreign.create_timing_cache(b"").serialize())):
        path.write_bytes(previous)
        trt, cuda, device = standins(version)
        caplog.clear()
        result = build_engine(bundle_dir, "fp16", cache_dir=caches, trt_module=trt, cuda_module=cuda,
                              device_info=device)
        assert result.engine_path.is_file()
        assert "starting a fresh one" in caplog.text
        fresh = trt.Builder(trt.Logger()).create_builder_config().create_timing_cache(path.read_bytes())
        assert fresh is not None  # the rewritten cache is this version's own


def test_dla_build_uses_a_static_profile_and_records_it(tmp_path: Path, bundle_dir: Path) -> None:
    trt, cuda, device = standins(V103, num_dla_cores=2)
    result = build_engine(bundle_dir, "fp16", dla_core=1, opt_batch=2, max_batch=8, cache_dir=tmp_path / "c",
                          trt_module=trt, cuda_module=cuda, device_info=device)
    call = next(c[1] for c in trt.calls if c[0] == "build")
    assert call["profile"]["input"] == [[2, 3, H, W]] * 3  # min = opt = max
    assert call["layers_on_dla"] is True  # with a dynamic profile every layer would fall back to the GPU
    m = result.manifest
    assert m.dla_core == 1 and m.input_shapes["min"] == m.input_shapes["max"] == [2, 3, H, W]
    assert m.builder_options["dla_static_profile"] is True and m.builder_options["gpu_fallback"] is True


def test_dla_refused_where_tensorrt_has_none(tmp_path: Path, bundle_dir: Path) -> None:
    """TensorRT 11.0-11.3 keep the DLA API but report no DLA cores, even on an Orin."""
    trt, cuda, device = standins(V11, num_dla_cores=2)
    with pytest.raises(ConfigError, match=r"no DLA support .*11\.0-11\.3.*TensorRT 10\.x"):
        build_engine(bundle_dir, "fp16", dla_core=0, cache_dir=tmp_path / "c", trt_module=trt, cuda_module=cuda,
                     device_info=device)
    assert not was_called(trt, "build")


def test_fixed_batch_engine_pads_the_last_partial_batch(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "fixed4", batch=4)
    trt, cuda, device = _built(tmp_path, bundle, V103)
    engine = open_bundle_engine(bundle, "fp32", trt_module=trt, cuda_module=cuda, device_info=device)
    warmup = [c[1] for c in trt.calls if c[0] == "execute_async_v3"]
    assert (engine.min_batch, engine.max_batch) == (4, 4)
    assert len(warmup) == 2 and set(warmup) == {(4, 3, H, W)}  # a full and a padded one-row warm-up
    x = celeba_crops(10)
    probs = engine.infer(x)  # 4 + 4 + 2 rows; the last two are padded to 4 and the padding dropped
    assert probs.shape == (10, 3)
    np.testing.assert_allclose(probs, reference_probs(x), atol=1e-4)
    np.testing.assert_allclose(engine.infer(x[:1]), reference_probs(x[:1]), atol=1e-4)
    engine.close()


def test_open_close_cycles_leak_nothing(tmp_path: Path, bundle_dir: Path) -> None:
    """Device memory, page-locked host buffers and the stream are freed while the context is current."""
    trt, cuda, device = _built(tmp_path, bundle_dir, V103)
    for cycle in range(3):
        engine = open_bundle_engine(bundle_dir, "fp32", trt_module=trt, cuda_module=cuda, device_info=device)
        assert cuda.live()["host"] == 2 and cuda.live()["stream"] == 1
        engine.close()
        engine.close()  # twice is harmless: nothing is freed twice
        assert cuda.live() == {"device": 0, "host": 0, "stream": 0}, cycle
        assert cuda.leaks == [] and cuda.context_depth() == 0 and cuda.detached == cycle + 1


def test_gpu_failure_after_execute_returns_is_an_error(tmp_path: Path, bundle_dir: Path) -> None:
    trt, cuda, device = _built(tmp_path, bundle_dir, V11)
    engine = open_bundle_engine(bundle_dir, "fp32", trt_module=trt, cuda_module=cuda, device_info=device)
    trt.fail_async_next = True
    with pytest.raises(RuntimeError, match="failed on the GPU .*LaunchError.*illegal memory access"):
        engine.infer(celeba_crops(2))
    assert cuda.context_depth() == 0
    engine.close()
    assert cuda.live() == {"device": 0, "host": 0, "stream": 0}


def test_cuda_start_failures_become_tensorrt_unavailable() -> None:
    from facediag.edge.engine.tensorrt import TensorRTUnavailable, init_cuda, probe_device

    broken = make_pycuda_standin(init_error="no CUDA-capable device is detected")
    with pytest.raises(TensorRTUnavailable, match="CUDA cannot start .*no CUDA-capable device"):
        init_cuda(broken)
    trt, cuda, _ = standins(V103)
    trt.cuda_broken = True
    with pytest.raises(TensorRTUnavailable, match="could not create its Runtime .*nullptr"):
        probe_device(trt, cuda)
    uninitialised = make_pycuda_standin()
    with pytest.raises(TensorRTUnavailable, match="LogicError"):
        probe_device(make_tensorrt_standin(V103), uninitialised)
    assert issubclass(TensorRTUnavailable, ConfigError)


# --------------------------------------------------------------------------- verify


def test_verify_math_on_real_onnx_runtime_outputs(tmp_path: Path) -> None:
    from facediag.edge.engine.onnxruntime import OrtEngine

    x = celeba_crops(40)
    ref = OrtEngine(write_colour_classifier(tmp_path / "a.onnx"))
    perturbed = OrtEngine(write_colour_classifier(tmp_path / "b.onnx", shift=0.5))  # the "second backend"
    p, q = ref.infer(x), perturbed.infer(x)
    strict = Criteria("device-verify", min_agreement=0.99, max_prob_diff=0.05)
    c = compare(q, p, strict, candidate="b", reference="a", inputs="celeba")
    expect_p, expect_q = reference_probs(x), reference_probs(x, shift=0.5)
    top2 = np.sort(expect_p, axis=1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] >= 0.01  # the reference's near-ties are left out of agreement
    flips = expect_p.argmax(1) != expect_q.argmax(1)
    expected_agreement = float(np.mean(~flips[decisive]))
    assert 0.0 < expected_agreement < 1.0  # the perturbation really flips some, not all
    assert c.top1_agreement == pytest.approx(expected_agreement)
    assert c.top1_agreement_all == pytest.approx(float(np.mean(~flips)))
    assert c.near_ties == int((~decisive).sum())
    assert c.max_prob_diff == pytest.approx(np.abs(expect_p - expect_q).max(), abs=1e-5)
    assert len(c.disagreements) == int((flips & decisive).sum())
    assert not c.passed
    lenient = Criteria("device-verify", min_agreement=expected_agreement, max_prob_diff=1.0)
    assert compare(q, p, lenient).passed
    same = compare(ref.infer(x), p, strict)
    assert same.top1_agreement == 1.0 and same.max_prob_diff == 0.0 and same.passed
    bad = q.copy()
    bad[3] = np.nan
    nan_result = compare(bad, p, Criteria("device-verify", min_agreement=0.0, max_prob_diff=1.0))
    assert not nan_result.passed and "NaN" in nan_result.failures[0]
    assert json.dumps(nan_result.to_dict())  # infinities never reach JSON


def test_verify_bundle_records_into_manifest(tmp_path: Path, bundle_dir: Path) -> None:
    trt, cuda, device = _built(tmp_path, bundle_dir, V103, "fp16")
    x = celeba_crops(24)
    # 24 crops show at most 88% agreement at 95% confidence (0.05 ** (1 / 24)): 0.85 is what they can prove.
    result = verify_bundle(
        bundle_dir, "fp16", x, inputs_name="celeba", min_agreement=0.85,
        candidate_factory=lambda: open_bundle_engine(bundle_dir, "fp16", trt_module=trt, cuda_module=cuda,
                                                     device_info=device),
    )
    assert result.passed and result.top1_agreement == 1.0 and result.images == 24
    m = EngineManifest.load(bundle_dir / "model.fp16.engine.json")
    assert m.verify["passed"] is True and m.verify["reference"].endswith("model.fp16.onnx (CPU)")
    # Against FP32 the shifted fp16 stand-in model fails the gate, and that is recorded too.
    failed = verify_bundle(
        bundle_dir, "fp16", x, reference="fp32",
        candidate_factory=lambda: open_bundle_engine(bundle_dir, "fp16", trt_module=trt, cuda_module=cuda,
                                                     device_info=device),
    )
    assert not failed.passed
    assert EngineManifest.load(bundle_dir / "model.fp16.engine.json").verify["passed"] is False


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "facediag", *args], capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=120)


def test_facediag_verify_exit_codes(tmp_path: Path, bundle_dir: Path) -> None:
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, celeba_crops(40))
    failing = _cli("verify", str(bundle_dir), "--allow-unsigned", "--precision", "fp16", "--backend", "onnxruntime", "--inputs", str(inputs))
    assert failing.returncode == 1, failing.stderr
    assert "FAILED" in failing.stdout and "top-1 agreement" in failing.stdout
    passing = _cli("verify", str(bundle_dir), "--allow-unsigned", "--precision", "fp16", "--backend", "onnxruntime", "--inputs", str(inputs),
                   "--min-agreement", "0.5", "--max-prob-diff", "0.5")
    assert passing.returncode == 0, passing.stderr
    assert json.loads(passing.stdout[passing.stdout.index("{"):])["passed"] is True
    bad_option = _cli("verify", str(bundle_dir), "--allow-unsigned", "--precision", "fp16", "--backend", "onnxruntime",
                      "--inputs", str(inputs), "--reference", "fp16")
    assert bad_option.returncode == 78 and "--reference fp32" in bad_option.stderr


def test_load_inputs_from_crop_folder_and_wrong_size(tmp_path: Path) -> None:
    import cv2

    from facediag.edge.face.contract import PreprocessContract

    contract = PreprocessContract(template="sphereface_112x96")
    crops = tmp_path / "crops" / "healthy"
    crops.mkdir(parents=True)
    x = celeba_crops(3)
    for i, row in enumerate(x):
        cv2.imwrite(str(crops / f"{i}.png"), row.transpose(1, 2, 0)[..., ::-1].astype(np.uint8))
    np.testing.assert_array_equal(load_inputs(tmp_path / "crops", contract), x)
    cv2.imwrite(str(crops / "big.png"), np.zeros((200, 200, 3), np.uint8))
    with pytest.raises(ConfigError, match="facediag crop"):
        load_inputs(tmp_path / "crops", contract)


def test_facediag_build_without_tensorrt_says_what_to_do(bundle_dir: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here; this checks the message on machines without it")
    done = _cli("build", str(bundle_dir), "--allow-unsigned", "--precision", "fp16")
    assert done.returncode == 78
    assert "TensorRT" in done.stderr and "onnxruntime" in done.stderr
