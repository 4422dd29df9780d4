"""Issue 11 items 8 and 9: every input error is a clean message (ConfigError: exit 78 for the daemon)
and the bundle's integrity has no gaps. Real files throughout: real ONNX graphs (tests/test_bundle.py's
tiny classifier) with external data saved by onnx itself, real FIFOs and /dev/zero, real TOML text.
Plus a bounded Hypothesis fuzz of bundle.json values (re-hashed, so only the value is wrong)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facediag.edge.bundle import BUNDLE_JSON, load_bundle, serialise
from facediag.edge.config import parse_config_text
from facediag.edge.errors import BundleError, ConfigError
from tests.test_bundle import bundle_dir, tiny_classifier  # noqa: F401 - the fixture is used by name

pytestmark = pytest.mark.faults


def _rewrite(folder: Path, mutate) -> None:
    doc = json.loads((folder / BUNDLE_JSON).read_text())
    mutate(doc)
    (folder / BUNDLE_JSON).write_bytes(serialise(doc))


# ------------------------------------------------------------------ item 9: bundle integrity
def test_external_data_must_be_hashed(bundle_dir):  # noqa: F811
    import onnx

    model = onnx.load(str(bundle_dir / "model.onnx"))
    onnx.save(model, str(bundle_dir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    from facediag.edge.hashing import sha256_file

    _rewrite(bundle_dir, lambda d: d["files"].__setitem__("model.onnx", sha256_file(bundle_dir / "model.onnx")))
    with pytest.raises(BundleError, match="external data model.onnx.data"):
        load_bundle(bundle_dir)
    # once the data file is hashed too, it loads, and swapping the data is caught
    _rewrite(bundle_dir, lambda d: d["files"].__setitem__("model.onnx.data",
                                                          sha256_file(bundle_dir / "model.onnx.data")))
    assert load_bundle(bundle_dir).files["model.onnx.data"]
    data = bytearray((bundle_dir / "model.onnx.data").read_bytes())
    data[0] ^= 0xFF
    (bundle_dir / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx.data is corrupted"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["thresholds"].__setitem__("pale_skin", 0), r"in \(0, 1\)"),
    (lambda d: d["thresholds"].__setitem__("pale_skin", 1.0), r"in \(0, 1\)"),
    (lambda d: d["precisions"]["fp32"]["gate"].__setitem__("passed", False), "gate is marked failed"),
    (lambda d: d.__setitem__("healthy_class", {"a": 1}), "wrong type|not one of the classes"),
    (lambda d: d["precisions"]["fp32"].__setitem__("file", ["model.onnx"]), "wrong type|file"),
    (lambda d: d.__setitem__("contract", {"template": 7}), "contract|wrong type"),
])
def test_rehashed_bundle_json_with_bad_values_is_refused(bundle_dir, mutate, match):  # noqa: F811
    _rewrite(bundle_dir, mutate)
    with pytest.raises(BundleError, match=match):
        load_bundle(bundle_dir)


def test_non_integer_schema_version_is_refused(bundle_dir):  # noqa: F811
    doc = json.loads((bundle_dir / BUNDLE_JSON).read_text())
    doc["schema_version"] = float(doc["schema_version"])
    (bundle_dir / BUNDLE_JSON).write_bytes(serialise(doc))
    with pytest.raises(BundleError, match="schema_version"):
        load_bundle(bundle_dir)


def test_a_symlinked_model_is_refused(bundle_dir, tmp_path):  # noqa: F811
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle_dir / "model.onnx", outside)
    (bundle_dir / "model.onnx").symlink_to(outside)  # same bytes, so the hash would match
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', '{"a": ' + "9" * 5000 + "}",
                                  "[" * 100_000 + "]" * 100_000])
def test_hostile_bundle_json_is_a_bundle_error(bundle_dir, text):  # noqa: F811
    (bundle_dir / BUNDLE_JSON).write_text(text)
    with pytest.raises(BundleError):
        load_bundle(bundle_dir)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["classes", "healthy_class", "thresholds", "files", "precisions", "contract",
                              "creator", "source_checkpoint"]),
       value=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                          lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids,
                                                                                   max_size=3),
                          max_leaves=6))
def test_fuzzed_bundle_json_values_are_bundle_errors_never_tracebacks(bundle_dir, tmp_path_factory, field, value):  # noqa: F811
    folder = tmp_path_factory.mktemp("fuzzed") / "bundle"
    shutil.copytree(bundle_dir, folder)
    _rewrite(folder, lambda d: d.__setitem__(field, value))
    try:
        load_bundle(folder)
    except BundleError:
        pass


# ------------------------------------------------------------------ item 8: clean config errors
@pytest.mark.parametrize("toml, match", [
    ('[source]\nuri = "file:/x\\u0000.avi"\n', "NUL"),
    ('[source]\nuri = "' + "a" * 5000 + '"\n', "characters long"),
    ("[source]\nuri = \"file:/x.avi\"\nfps = 1e-300\n", "source.fps"),
    ("a = " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply|not valid TOML"),
])
def test_hostile_config_values_are_config_errors(toml, match):
    with pytest.raises(ConfigError, match=match):
        parse_config_text(toml)


@pytest.mark.parametrize("kind", ["not-utf8", "dev-zero", "fifo", "folder"])
def test_token_files_that_are_not_small_text_files_are_config_errors(tmp_path, kind):
    from facediag.edge.service.api import load_token

    path = tmp_path / "api.token"
    if kind == "not-utf8":
        path.write_bytes(b"\xff\xfe" + b"k" * 40)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    result: list = []

    def attempt():
        try:
            load_token(path, env={})
        except ConfigError as exc:
            result.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading the token file hung"
    assert result and isinstance(result[0], ConfigError)


def test_a_model_that_does_not_match_its_contract_fails_the_warm_up_cleanly(tmp_path):
    # a model for 3x112x96 crops; the contract below says 112x112 and a fixed input of 96 wide refuses it
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from facediag.edge.engine.onnxruntime import OrtEngine
    from facediag.edge.errors import ModelFileError
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.station.pipeline import warm_up

    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Flatten", ["p"], ["m"], axis=1),
             helper.make_node("MatMul", ["m", "w"], ["l"]), helper.make_node("Softmax", ["l"], ["probabilities"], axis=1)]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [5, 3, 112, 96])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [5, 2])],
                              initializer=[numpy_helper.from_array(np.ones((3, 2), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    engine = OrtEngine(tmp_path / "m.onnx", threads=1)
    with pytest.raises(ModelFileError, match="warm-up inference failed"):
        warm_up(engine, PreprocessContract("arcface_112x112"), 5, 2)


def test_a_detector_path_pointing_at_the_wrong_model_is_a_config_error_before_ready():
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.face.detector import make_detector
    from facediag.edge.face.pipeline import FaceFrontEnd
    from facediag.edge.station.pipeline import check_detector
    from tests.conftest import fixture_path

    wrong = fixture_path("models/mobilefacenet_112x112.onnx")
    front = FaceFrontEnd(make_detector("yunet", wrong), PreprocessContract("arcface_112x112"))
    with pytest.raises(ConfigError, match="detector.model_path"):
        check_detector(front, "yunet", str(wrong))
    right = fixture_path("models/face_detection_yunet_2026may.onnx")
    check_detector(FaceFrontEnd(make_detector("yunet", right), PreprocessContract("arcface_112x112")), "yunet",
                   str(right))


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_verify_refuses_a_non_finite_max_prob_diff(value, capsys):
    from facediag.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["verify", "/nonexistent-bundle", "--max-prob-diff", value])
    assert exit_.value.code == 2 and "--max-prob-diff" in capsys.readouterr().err


@pytest.mark.parametrize("fault", ["bundle-nan", "token-fifo", "token-not-utf8", "fps-tiny", "nul-in-path"])
def test_the_daemon_exits_78_with_a_message_not_a_traceback(tmp_path, fault):
    import subprocess
    import sys

    from tests.daemon_helpers import REPO, TOKEN

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / BUNDLE_JSON).write_text('{"schema_version": NaN}' if fault == "bundle-nan" else "{}")
    token = tmp_path / "api.token"
    if fault == "token-fifo":
        os.mkfifo(token)
    elif fault == "token-not-utf8":
        token.write_bytes(b"\xff" * 40)
    else:
        token.write_text(TOKEN)
    token_line = f'token_file = "{token}"'
    uri = "file:/nowhere/x.avi"
    fps = "fps = 1e-300" if fault == "fps-tiny" else ""
    model = "/models/yu\\u0000net.onnx" if fault == "nul-in-path" else "/models/yunet.onnx"
    config = tmp_path / "station.toml"
    config.write_text(f'[source]\nuri = "{uri}"\n{fps}\n[detector]\nname = "yunet"\nmodel_path = "{model}"\n'
                      f'[engine]\nbundle = "{bundle}"\n[api]\n{token_line}\n[trust]\nallow_unsigned = true\n')
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "facediag", "run", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
