"""`facediag build/verify --config station.toml`, as the engine-build systemd unit runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def _facediag(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "facediag", *args], capture_output=True, text=True, env=env, timeout=120)


def _config(tmp_path: Path, engine: str) -> Path:
    p = tmp_path / "station.toml"
    p.write_text(f"[engine]\nbundle = \"bundle\"\n{engine}\n")
    return p


def test_cpu_only_station_builds_nothing_and_exits_0(tmp_path: Path) -> None:
    for engine in ('backend = "auto"', 'backend = "onnxruntime"', 'precision = "int8-cpu"'):
        cfg = _config(tmp_path, engine)
        for cmd in ("build", "verify"):
            proc = _facediag(cmd, "--config", str(cfg))
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.startswith(f"nothing to {cmd}:")


def test_tensorrt_requested_but_missing_is_a_configuration_error(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 'backend = "tensorrt"')
    proc = _facediag("verify", "--config", str(cfg))
    assert proc.returncode == 78
    assert "engine.verify_inputs is not set" in proc.stderr


def test_unknown_engine_key_is_named(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 'precison = "fp16"')
    proc = _facediag("build", "--config", str(cfg))
    assert proc.returncode == 78
    assert "engine.precison" in proc.stderr
