"""The precision table and the engine-backend registry: consistent rows, one runtime rule, read by config."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from facediag.edge import precision as precision_table
from facediag.edge.errors import ConfigError

ROWS = precision_table.PRECISIONS


def test_every_row_is_consistent() -> None:
    names = [p.name for p in ROWS]
    files = [p.file for p in ROWS]
    assert len(set(names)) == len(names) and len(set(files)) == len(files)
    assert all(f.startswith("model.") and f.endswith(".onnx") for f in files)
    assert precision_table.get(precision_table.REFERENCE).file == "model.onnx"  # what export writes
    for p in ROWS:
        assert p.runtimes and set(p.runtimes) <= set(precision_table.RUNTIMES), p
        assert (p.engine_short is not None) == p.runs_on(precision_table.TENSORRT), p  # an engine iff TensorRT runs it
        assert (p.quantize_target is not None) == (p.maker == "quantize"), p
        assert f"facediag {p.maker}" in p.make, p
        assert 0.0 < p.verify_max_prob_diff <= 1.0, p
        for runtime, _rank in p.auto_rank:
            assert p.runs_on(runtime), p  # auto never picks what the runtime cannot run
    shorts = [p.engine_short for p in ROWS if p.engine_short]
    engine_files = [p.engine_file for p in ROWS if p.engine_file]
    assert len(set(shorts)) == len(shorts) and len(set(engine_files)) == len(engine_files)
    assert all(f.endswith(".engine") for f in engine_files)
    assert [p.maker for p in ROWS].count("export") == 1  # only the reference is exported


def test_the_bundle_and_the_engine_manifest_read_the_table() -> None:
    from facediag.edge.bundle import PRECISION_FILES
    from facediag.edge.engine.manifest import ENGINE_PRECISIONS, engine_file_name, normalize_precision

    assert PRECISION_FILES == {p.name: p.file for p in ROWS}
    assert ENGINE_PRECISIONS == tuple(p.name for p in ROWS if p.engine_short)
    for p in ROWS:
        if p.engine_short:
            assert normalize_precision(p.engine_short) == normalize_precision(p.name) == p.name
            assert engine_file_name(p.engine_short) == p.engine_file == f"model.{p.engine_short}.engine"


def test_the_runtime_rule() -> None:
    # The rule as the operator knows it, written here by hand (not read from the table).
    assert precision_table.for_runtime("onnxruntime") == ("fp32", "fp16", "int8-cpu")
    assert precision_table.for_runtime("tensorrt") == ("fp32", "fp16", "int8-tensorrt")
    with pytest.raises(ConfigError, match="use 'int8-tensorrt' with tensorrt"):
        precision_table.check_runtime("int8-cpu", "tensorrt")
    with pytest.raises(ConfigError, match="use 'int8-cpu' with onnxruntime"):
        precision_table.check_runtime("int8-tensorrt", "onnxruntime")
    assert precision_table.check_runtime("fp16", "tensorrt").name == "fp16"
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        precision_table.check_runtime("int4", "onnxruntime")
    with pytest.raises(ConfigError, match="int8-cpu is for ONNX Runtime only"):
        precision_table.from_engine_name("int8-cpu")
    assert precision_table.cli_name("int8") == "int8-tensorrt" and precision_table.cli_name("int8-cpu") == "int8-cpu"


def test_auto_preference_per_runtime() -> None:
    assert precision_table.auto_order("tensorrt") == ("int8-tensorrt", "fp16", "fp32")  # most compact first
    assert precision_table.auto_order("onnxruntime") == ("fp32",)  # INT8 on the CPU is an explicit choice
    assert precision_table.for_quantize_target("cpu") == "int8-cpu"
    assert precision_table.for_quantize_target("tensorrt") == "int8-tensorrt"
    with pytest.raises(ConfigError, match="--target"):
        precision_table.for_quantize_target("gpu")


def _write_config(tmp_path: Path, backend: str, precision: str) -> Path:
    path = tmp_path / f"{backend}-{precision}.toml"
    path.write_text(f'[engine]\nbackend = "{backend}"\nprecision = "{precision}"\n')
    return path


def test_station_config_accepts_exactly_the_pairs_that_can_run(tmp_path: Path) -> None:
    from facediag.edge.config import load_config
    from facediag.edge.engine.backends import backend_names

    forbidden = {("onnxruntime", "int8-tensorrt"), ("tensorrt", "int8-cpu")}
    for backend, precision in itertools.product(backend_names(), precision_table.config_choices()):
        path = _write_config(tmp_path, backend, precision)
        if (backend, precision) in forbidden:
            with pytest.raises(ConfigError, match=f"engine.precision '{precision}'"):
                load_config(path)
        else:
            cfg = load_config(path).engine
            assert (cfg.backend, cfg.precision) == (backend, precision)


def test_a_registered_backend_is_validated_and_opened_through_its_spec(tmp_path: Path) -> None:
    from facediag.edge.engine.backends import ENGINE_BACKENDS, BackendSpec, backend_names, check_engine_choice
    from facediag.edge.engine.select import EnginePlan, open_engine

    opened: list[EnginePlan] = []

    class Fake:
        backend = "fake-ort"
        precision = "fp32"

        def infer(self, batch):  # pragma: no cover - not run here
            raise NotImplementedError

        def close(self) -> None:
            pass

    def _open(plan, threads, providers):
        opened.append(plan)
        return Fake()

    spec = BackendSpec("fake-ort", "a test backend on ONNX Runtime's precisions", runtime="onnxruntime", open=_open)
    with ENGINE_BACKENDS.registered(spec):
        assert "fake-ort" in backend_names()
        check_engine_choice("fake-ort", "int8-cpu")
        with pytest.raises(ConfigError, match="int8-tensorrt"):
            check_engine_choice("fake-ort", "int8-tensorrt")
        plan = EnginePlan("fake-ort", "fp32", tmp_path / "model.onnx", "test")
        assert isinstance(open_engine(plan), Fake) and opened == [plan]
    assert "fake-ort" not in backend_names()
    with pytest.raises(ConfigError, match="choose one of auto, tensorrt, onnxruntime"):
        check_engine_choice("fake-ort", "fp32")
