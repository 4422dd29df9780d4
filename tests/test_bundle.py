"""Model bundle format, file hashing and the ONNX Runtime engine (no torch needed).

The ONNX files here are small real graphs built with onnx.helper and run by a
real ONNX Runtime session: mean colour per channel -> linear layer -> softmax.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from facediag.edge.bundle import (  # noqa: E402
    BUNDLE_JSON,
    SCHEMA_VERSION,
    SELF_HASH_FIELD,
    canonical_json,
    create_bundle,
    load_bundle,
    serialise,
)
from facediag.edge.engine.base import Engine  # noqa: E402
from facediag.edge.engine.onnxruntime import OrtEngine  # noqa: E402
from facediag.edge.errors import BundleError, ConfigError  # noqa: E402
from facediag.edge.face.contract import PreprocessContract  # noqa: E402
from facediag.edge.hashing import sha256_file  # noqa: E402

CONTRACT = PreprocessContract("sphereface_112x96")
CLASSES = ["healthy", "pale_skin", "rosy_cheeks"]


def tiny_classifier(path: Path, weights: np.ndarray) -> Path:
    """input [N,3,112,96] -> channel means (N,3) -> MatMul (3,C) -> Softmax -> probabilities [N,C]."""
    c = weights.shape[1]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["means"], axis=1),
        helper.make_node("MatMul", ["means", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 112, 96])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", c])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir()
    rng = np.random.default_rng(0)
    tiny_classifier(folder / "model.onnx", rng.normal(size=(3, 3)) / 50)
    tiny_classifier(folder / "model.fp16.onnx", rng.normal(size=(3, 3)) / 50)
    bundle = create_bundle(
        folder,
        classes=CLASSES,
        healthy_class="healthy",
        contract=CONTRACT,
        thresholds={"pale_skin": 0.4, "rosy_cheeks": 0.6},
        fp32_file="model.onnx",
        fp32_gate={"reference": "pytorch", "max_abs_diff": 1e-7},
        source_checkpoint={"path": "/x/ckpt", "sha256": "0" * 64},
        creator="facediag test",
    )
    bundle.add_precision("fp16", "model.fp16.onnx", {"passed": True, "top1_agreement": 1.0})
    return folder


def _rewrite(folder: Path, mutate) -> None:
    """Change bundle.json's content and re-sign it (so only the change under test is wrong)."""
    doc = json.loads((folder / BUNDLE_JSON).read_text())
    mutate(doc)
    (folder / BUNDLE_JSON).write_bytes(serialise(doc))


def test_round_trip_keeps_every_field(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.classes == CLASSES and b.healthy_class == "healthy"
    assert b.contract == CONTRACT
    assert b.thresholds == {"pale_skin": 0.4, "rosy_cheeks": 0.6}
    assert set(b.precisions) == {"fp32", "fp16"}
    assert b.model_path("fp16") == bundle_dir / "model.fp16.onnx"
    assert b.files["model.onnx"] == hashlib.sha256((bundle_dir / "model.onnx").read_bytes()).hexdigest()
    assert b.schema_version == SCHEMA_VERSION
    # bundle.json is exactly its canonical form, and its self-hash covers everything else.
    raw = (bundle_dir / BUNDLE_JSON).read_bytes()
    assert raw == canonical_json(json.loads(raw))
    # Nothing but the bundle's own files (no temp files from the atomic writes).
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["bundle.json", "model.fp16.onnx", "model.onnx"]


def test_missing_precision_says_how_to_make_it(bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="facediag quantize.*--target cpu"):
        load_bundle(bundle_dir).model_path("int8-cpu")


@pytest.mark.parametrize("name", ["bundle.json", "model.onnx", "model.fp16.onnx"])
def test_one_flipped_byte_anywhere_is_detected_and_named(bundle_dir: Path, name: str) -> None:
    path = bundle_dir / name
    original = path.read_bytes()
    # First, middle and last byte, and (for bundle.json) a byte inside its own hash and a whitespace byte.
    positions = {0, len(original) // 2, len(original) - 1}
    if name == BUNDLE_JSON:
        positions.add(original.index(SELF_HASH_FIELD.encode()) + len(SELF_HASH_FIELD) + 5)
        positions.add(original.index(b"\n  "))
    for pos in sorted(positions):
        data = bytearray(original)
        data[pos] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(BundleError) as info:
            load_bundle(bundle_dir)
        assert name in str(info.value), f"flip at byte {pos}: message does not name {name}: {info.value}"
        path.write_bytes(original)
    load_bundle(bundle_dir)  # restored: loads again


def test_whitespace_only_edit_is_refused(bundle_dir: Path) -> None:
    path = bundle_dir / BUNDLE_JSON
    path.write_text(path.read_text().replace('\n  "classes"', '\n   "classes"', 1))
    with pytest.raises(BundleError, match="bundle.json was modified"):
        load_bundle(bundle_dir)


def test_unknown_schema_version_is_refused_with_upgrade_hint(bundle_dir: Path) -> None:
    _rewrite(bundle_dir, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match=r"schema_version 2 .*upgrade facediag"):
        load_bundle(bundle_dir)
    _rewrite(bundle_dir, lambda d: d.pop("schema_version"))
    with pytest.raises(BundleError, match="schema_version None"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("field", ["classes", "contract", "files", "source_checkpoint", "thresholds"])
def test_missing_required_field_is_named(bundle_dir: Path, field: str) -> None:
    _rewrite(bundle_dir, lambda d: d.pop(field))
    with pytest.raises(BundleError, match=f"missing: {field}.*facediag export"):
        load_bundle(bundle_dir)


def test_bad_field_values_are_named(bundle_dir: Path) -> None:
    _rewrite(bundle_dir, lambda d: d.update(healthy_class="nobody"))
    with pytest.raises(BundleError, match="healthy_class"):
        load_bundle(bundle_dir)
    _rewrite(bundle_dir, lambda d: d.update(healthy_class="healthy", thresholds={"pale_skin": 1.5}))
    with pytest.raises(BundleError, match="threshold for 'pale_skin'"):
        load_bundle(bundle_dir)
    _rewrite(bundle_dir, lambda d: (d.update(thresholds={}), d["files"].update({"../escape.onnx": "0" * 64})))
    with pytest.raises(BundleError, match="not a plain file name"):
        load_bundle(bundle_dir)


def test_missing_model_file_is_named(bundle_dir: Path) -> None:
    (bundle_dir / "model.fp16.onnx").unlink()
    with pytest.raises(BundleError, match="model.fp16.onnx is missing"):
        load_bundle(bundle_dir)


def test_add_precision_and_save_rewrite_a_loadable_bundle(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    shutil.copy(bundle_dir / "model.onnx", bundle_dir / "model.int8-cpu.onnx")
    b.add_precision("int8-cpu", "model.int8-cpu.onnx", {"passed": True}, target="cpu")
    b.thresholds["pale_skin"] = 0.3
    b.save()
    again = load_bundle(bundle_dir)
    assert again.precisions["int8-cpu"].target == "cpu"
    assert again.thresholds["pale_skin"] == 0.3
    assert again.files["model.int8-cpu.onnx"] == sha256_file(bundle_dir / "model.int8-cpu.onnx")
    again.remove_precision("int8-cpu")
    assert "model.int8-cpu.onnx" not in load_bundle(bundle_dir).files
    with pytest.raises(BundleError, match="cannot be removed"):
        again.remove_precision("fp32")


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(tmp_path)
    (tmp_path / BUNDLE_JSON).write_text("{not json")
    with pytest.raises(BundleError, match="bundle.json is corrupted"):
        load_bundle(tmp_path)


def test_sha256_file_streams_in_chunks(tmp_path: Path) -> None:
    data = np.random.default_rng(1).bytes(10_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=777) == hashlib.sha256(data).hexdigest()


def test_ort_engine_runs_any_batch_size(bundle_dir: Path) -> None:
    engine = OrtEngine(bundle_dir / "model.onnx", threads=1)
    assert isinstance(engine, Engine)
    assert (engine.backend, engine.precision, engine.provider) == ("onnxruntime", "fp32", "CPUExecutionProvider")
    batch = np.random.default_rng(2).uniform(0, 255, size=(5, 3, 112, 96)).astype(np.float32)
    five = engine.infer(batch)
    one = np.concatenate([engine.infer(batch[i : i + 1]) for i in range(5)])
    assert five.shape == (5, 3) and five.dtype == np.float32
    np.testing.assert_allclose(five.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(five, one, atol=1e-6)
    with pytest.raises(ValueError, match="axis 2 must be 112"):
        engine.infer(np.zeros((1, 3, 96, 112), np.float32))
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.infer(batch)


def test_ort_engine_refuses_silent_provider_fallback(bundle_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the fallback cannot be provoked here")
    with pytest.raises(ConfigError, match="asked for CUDAExecutionProvider but is running CPUExecutionProvider"):
        OrtEngine(bundle_dir / "model.onnx", providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
