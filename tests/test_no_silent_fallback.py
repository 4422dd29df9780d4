"""No silent fallback (issue 12): journald priorities under systemd, and a CPU fallback where TensorRT is
expected reported loudly (journal error line, /health, /status, metric) by the real daemon."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO


# ------------------------------------------------------------------ journald priorities
def _run_with_stderr_file(args: list[str], err: Path, journal: bool, cwd: Path) -> int:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(REPO)
    with open(err, "wb") as fh:
        if journal:
            st = os.fstat(fh.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        return subprocess.run([sys.executable, "-m", "facediag", *args], stdout=subprocess.DEVNULL, stderr=fh,
                              env=env, cwd=cwd, timeout=60).returncode


def test_errors_carry_journal_priority_only_when_stderr_is_the_journal(tmp_path):
    cfg = tmp_path / "station.toml"
    cfg.write_text('[source]\nuri = "file:/nonexistent.avi"\n\n[screening]\ngood_frame = 3\n')
    err = tmp_path / "stderr.txt"
    assert _run_with_stderr_file(["run", "--config", str(cfg)], err, journal=True, cwd=tmp_path) == 78
    lines = err.read_text().splitlines()
    assert lines and all(line.startswith("<") for line in lines), lines
    assert any(line.startswith("<3>ERROR") and "screening.good_frame" in line for line in lines), lines
    # the same run with stderr not the journal stream (a terminal, a file, an inherited variable): plain lines
    assert _run_with_stderr_file(["run", "--config", str(cfg)], err, journal=False, cwd=tmp_path) == 78
    text = err.read_text()
    assert "screening.good_frame" in text and not re.search(r"^<\d>", text, re.M)


def test_journal_formatter_prefixes_every_line_with_the_level_priority():
    from facediag.edge.service.journal import JournalFormatter, syslog_priority

    assert [syslog_priority(v) for v in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO,
                                         logging.DEBUG)] == [2, 3, 4, 6, 7]
    fmt = JournalFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    out = fmt.format(rec).split("\n")
    assert len(out) > 3 and all(line.startswith("<3>") for line in out)
    assert out[0] == "<3>ERROR failed" and out[-1] == "<3>ValueError: boom"
    warn = logging.LogRecord("x", logging.WARNING, __file__, 1, "careful", None, None)
    assert fmt.format(warn) == "<4>WARNING careful"


def test_journal_stream_must_match_stderr(tmp_path):
    from facediag.edge.service.journal import stream_is_journal

    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(a, env)
        assert not stream_is_journal(b, env)
        assert not stream_is_journal(a, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(a, {})


# ------------------------------------------------------------------ fallback detection
@pytest.mark.parametrize("backend, precision, present, plan_backend, degraded", [
    ("auto", "auto", True, "onnxruntime", True),     # TensorRT here, no engine used: degraded
    ("auto", "fp16", True, "onnxruntime", True),
    ("auto", "auto", True, "tensorrt", False),       # the expected engine runs
    ("auto", "auto", False, "onnxruntime", False),   # a CPU-only host: ONNX Runtime is the plan
    ("onnxruntime", "auto", True, "onnxruntime", False),  # the operator chose the CPU
    ("auto", "int8-cpu", True, "onnxruntime", False),     # an ONNX Runtime-only model
])
def test_fallback_reason(backend, precision, present, plan_backend, degraded):
    from facediag.edge.fallback import fallback_reason

    plan = SimpleNamespace(backend=plan_backend, reason="no fp16 engine (model.fp16.engine)")
    reason = fallback_reason(backend, precision, plan, tensorrt_present=present)
    assert bool(reason) is degraded
    if degraded:
        assert "no fp16 engine" in reason and "facediag-engine-build" in reason


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def _daemon(tmp_path: Path, pythonpath: str, bundle: Path, video: Path):
    from tests.conftest import fixture_path
    from tests.daemon_helpers import free_port, write_station_config

    port = free_port()
    config = write_station_config(tmp_path, uri=f"file:{video}", bundle=bundle,
                                  yunet=fixture_path("models/face_detection_yunet_2026may.onnx"), port=port)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = pythonpath
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "facediag", "run", "--config", str(config)], cwd=tmp_path,
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    return proc, port, log


def _health_when_ready(port: int, proc, log: Path) -> tuple[int, dict]:
    from tests.daemon_helpers import api_get

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            code, body = api_get(port, "/health")
        except OSError:
            time.sleep(0.2)
            continue
        doc = json.loads(body)
        if doc["status"] != "starting":
            return code, doc
        time.sleep(0.2)
    raise AssertionError("the daemon did not become ready: " + log.read_text())


@pytest.mark.parametrize("tensorrt_here", [True, False], ids=["tensorrt-installed", "cpu-only-host"])
def test_daemon_reports_a_cpu_fallback_loudly_only_where_tensorrt_is_expected(tmp_path, tensorrt_here):
    import importlib.util

    from tests.daemon_helpers import TOKEN, api_get, stop_daemon, visits_video, yale_photo
    from tests.test_signing import make_bundle

    if not tensorrt_here and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is really installed here: no CPU-only host to check")
    bundle = make_bundle(tmp_path / "bundle")
    video = visits_video(tmp_path / "v.avi", [yale_photo("subject01.normal")], hold=20, gap=5)
    path = str(REPO)
    if tensorrt_here:
        # TensorRT "installed": a package named tensorrt on the path. The fallback check only looks it up (the
        # planner never imports it: the bundle holds no engine), so importing it would fail loudly.
        stub = tmp_path / "site" / "tensorrt"
        stub.mkdir(parents=True)
        (stub / "__init__.py").write_text("raise ImportError('stand-in: only its presence is used')\n")
        path = f"{stub.parent}{os.pathsep}{REPO}"
    proc, port, log = _daemon(tmp_path, path, bundle, video)
    try:
        code, health = _health_when_ready(port, proc, log)
        status = json.loads(api_get(port, "/status", TOKEN)[1])
        metrics = api_get(port, "/metrics", TOKEN)[1].decode()
    finally:
        stop_daemon(proc)
    text = log.read_text()
    assert status["engine"]["backend"] == "onnxruntime"
    if tensorrt_here:
        assert code == 503 and health == {"status": "degraded", "degraded": "engine-fallback"}
        assert status["degraded"] is True and "no TensorRT engine" in status["degraded_reason"]
        assert _metric(metrics, "facediag_degraded") == 1
        assert re.search(r"^ERROR \S+: DEGRADED: running on the CPU fallback", text, re.M), text
    else:
        assert code == 200 and health == {"status": "ok"}
        assert status["degraded"] is False and status["degraded_reason"] is None
        assert _metric(metrics, "facediag_degraded") == 0
        assert "DEGRADED" not in text
