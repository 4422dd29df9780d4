"""Service plumbing: sd_notify on real sockets, the HTTP API over real TCP and Unix sockets,
Prometheus metrics, the durable results log, and the station config schema."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from facediag.edge.config import load_config, parse_config, parse_config_text
from facediag.edge.errors import ConfigError
from facediag.edge.results import ResultsError, ResultsWriter, latest_results, read_results
from facediag.edge.service.api import ApiHandlers, ApiServer, is_loopback, load_token
from facediag.edge.service.sdnotify import Notifier, notify, watchdog_interval

REPO = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-" + "x" * 26


# ------------------------------------------------------------------------------------ sd_notify
@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def test_sdnotify_sends_exact_datagrams(notify_socket):
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("streaming v4l2:/dev/video0, onnxruntime fp32, 14.8 fps")
    assert sock.recv(4096) == b"READY=1\nSTATUS=streaming v4l2:/dev/video0, onnxruntime fp32, 14.8 fps"
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert n.status("stalled\nreconnecting")  # a newline would start a new key: it becomes a space
    assert sock.recv(4096) == b"STATUS=stalled reconnecting"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.close()


def test_sdnotify_abstract_namespace():
    name = f"facediag-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_sdnotify_is_a_noop_without_systemd_and_survives_a_dead_socket(tmp_path):
    assert not Notifier({}).enabled
    assert Notifier({}).ready() is False
    dead = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert dead.enabled and dead.watchdog() is False  # logged, not raised


def test_watchdog_interval_from_environment():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    n = Notifier({"WATCHDOG_USEC": "20000000", "NOTIFY_SOCKET": "/run/x"})
    assert n.watchdog_s == 20.0 and n.watchdog_period == 10.0


# -------------------------------------------------------------------------------------- results
def test_results_one_write_and_one_fsync_per_line(tmp_path, monkeypatch):
    path = tmp_path / "state" / "results.jsonl"
    writes: list[int] = []
    syncs: list[int] = []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(fd) or real_write(fd, data))
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append(fd) or real_fsync(fd))
    records = [
        {"session": "a", "decision": "refer", "probabilities": {"healthy": 0.1, "pale_skin": np.float32(0.9)}},
        {"session": "b", "decision": "no_finding", "good_frames": np.int64(8)},
        {"session": "c", "decision": "retake", "reasons": ["blurred", "face too small"], "note": "ünïcode"},
    ]
    with ResultsWriter(path) as writer:
        fd = writer._fd
        for r in records:
            writer.write(r)
    assert writes.count(fd) == 3, "each record must be a single write()"
    assert syncs.count(fd) == 3, "each record must be fsynced"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = read_results(path)
    assert [r["session"] for r in back] == ["a", "b", "c"]
    assert back[0]["probabilities"]["pale_skin"] == pytest.approx(0.9)
    assert back[1]["good_frames"] == 8 and back[2]["note"] == "ünïcode"
    assert path.read_bytes().count(b"\n") == 3


def test_results_refuse_images_and_non_json(tmp_path):
    with ResultsWriter(tmp_path / "r.jsonl") as writer:
        with pytest.raises(ValueError, match="never contain"):
            writer.write({"crop": np.zeros((112, 112, 3), np.uint8)})
        with pytest.raises(ValueError, match="bytes"):
            writer.write({"jpeg": b"\xff\xd8\xff"})
        with pytest.raises(ValueError, match="finite"):
            writer.write({"p": float("nan")})
    assert read_results(tmp_path / "r.jsonl") == []


def test_results_torn_last_line_is_tolerated_and_repaired(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as writer:
        for i in range(5):
            writer.write({"i": i})
    with open(path, "ab") as fh:  # what a power cut in the middle of write() leaves
        fh.write(b'{"i": 5, "decis')
    assert [r["i"] for r in read_results(path)] == [0, 1, 2, 3, 4]
    assert [r["i"] for r in latest_results(path, 2)] == [3, 4]
    with ResultsWriter(path) as writer:
        assert writer.repaired_bytes == len(b'{"i": 5, "decis')
        writer.write({"i": 6})
    assert [r["i"] for r in read_results(path)] == [0, 1, 2, 3, 4, 6]


def test_results_complete_record_missing_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"i":0}\n{"i":1}')
    with ResultsWriter(path) as writer:
        assert writer.repaired_bytes == 0
        writer.write({"i": 2})
    assert [r["i"] for r in read_results(path)] == [0, 1, 2]


def test_results_damage_in_the_middle_is_reported(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"i":0}\nGARBAGE\n{"i":2}\n')
    with pytest.raises(ResultsError, match="line 2"):
        read_results(path)
    assert [r["i"] for r in read_results(path, strict=False)] == [0, 2]


def test_latest_results_reads_from_the_end_of_a_long_file(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path, fsync=False) as writer:
        for i in range(3000):
            writer.write({"i": i, "pad": "x" * 40})
    assert [r["i"] for r in latest_results(path, 3)] == [2997, 2998, 2999]
    assert len(latest_results(path, 1000)) == 1000
    assert latest_results(tmp_path / "missing.jsonl", 5) == []


# -------------------------------------------------------------------------------------- metrics
def _parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_station_metrics_render_parseable_text():
    pytest.importorskip("prometheus_client")
    from facediag.edge.capture.supervisor import CaptureStats
    from facediag.edge.service.metrics import StationMetrics

    m = StationMetrics()
    m.fps.set(12.5)
    for s in (0.010, 0.020, 0.030):
        m.observe_stage("detect", s)
    with m.time_stage("infer"):
        pass
    m.record_decision("refer")
    m.record_decision("refer")
    m.record_decision("retake")
    m.sessions.labels(outcome="decided").inc()
    m.set_engine("onnxruntime", "fp32")
    stats = CaptureStats("v4l2:/dev/video0", "v4l2 /dev/video0", "streaming", 120, 7, 2, 3, 1, 1.0, 0.2, None, None)
    m.bind_capture(lambda: stats)
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    s = _parse_metrics(body.decode())
    assert s[("facediag_fps", ())] == 12.5
    assert s[("facediag_stage_latency_seconds_count", (("stage", "detect"),))] == 3
    assert s[("facediag_stage_latency_seconds_sum", (("stage", "detect"),))] == pytest.approx(0.06)
    assert s[("facediag_stage_latency_seconds_count", (("stage", "infer"),))] == 1
    assert s[("facediag_stage_latency_seconds_count", (("stage", "align"),))] == 0
    assert s[("facediag_decisions_total", (("kind", "refer"),))] == 2
    assert s[("facediag_decisions_total", (("kind", "no_finding"),))] == 0
    assert s[("facediag_frames_captured_total", (("source", "v4l2:/dev/video0"),))] == 120
    assert s[("facediag_frames_dropped_total", (("source", "v4l2:/dev/video0"),))] == 7
    assert s[("facediag_source_reconnects_total", (("source", "v4l2:/dev/video0"),))] == 2
    assert s[("facediag_source_state", (("source", "v4l2:/dev/video0"), ("state", "streaming")))] == 1
    assert s[("facediag_source_state", (("source", "v4l2:/dev/video0"), ("state", "stalled")))] == 0
    assert s[("facediag_engine_info", (("backend", "onnxruntime"), ("precision", "fp32")))] == 1
    with pytest.raises(ValueError):
        m.observe_stage("paint", 1.0)
    # A dedicated registry: a second station's metrics do not collide with the first.
    StationMetrics().fps.set(1)


# ------------------------------------------------------------------------------------------ API
@pytest.fixture
def api_parts(tmp_path):
    pytest.importorskip("prometheus_client")
    from facediag.edge.service.metrics import StationMetrics

    results = tmp_path / "results.jsonl"
    with ResultsWriter(results) as w:
        for i in range(4):
            w.write({"session": f"s{i}", "decision": "no_finding"})
    metrics = StationMetrics()
    metrics.record_decision("no_finding")
    state = {"health": "ok"}

    def boom():
        raise RuntimeError("status callback failed")

    handlers = ApiHandlers(
        health=lambda: {"status": state["health"], "detail": "not shown on the open endpoint"},
        status=lambda: {"source": {"state": "streaming"}, "engine": "onnxruntime fp32"},
        latest_results=lambda n: latest_results(results, n),
        metrics=metrics.render,
    )
    return handlers, state, boom


def _get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_api_tokens_endpoints_and_errors(api_parts):
    handlers, state, boom = api_parts
    with ApiServer(handlers, TOKEN, port=0) as api:
        base = api.url
        code, _, body = _get(base + "/health")
        assert code == 200 and json.loads(body) == {"status": "ok"}, "health is open and says nothing else"
        state["health"] = "starting"
        assert _get(base + "/health")[0] == 503

        for path in ("/status", "/results/latest", "/metrics"):
            code, headers, _ = _get(base + path)
            assert code == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer"), path
            assert _get(base + path, token=TOKEN[:-1] + "y")[0] == 401, path
            assert _get(base + path, token="")[0] == 401, path

        code, _, body = _get(base + "/status", TOKEN)
        assert code == 200 and json.loads(body)["source"]["state"] == "streaming"
        code, _, body = _get(base + "/results/latest?n=2", TOKEN)
        assert code == 200 and [r["session"] for r in json.loads(body)["results"]] == ["s2", "s3"]
        assert _get(base + "/results/latest?n=0", TOKEN)[0] == 400
        assert _get(base + "/results/latest?n=many", TOKEN)[0] == 400
        code, headers, body = _get(base + "/metrics", TOKEN)
        assert code == 200 and headers["Content-Type"].startswith("text/plain")
        assert _parse_metrics(body.decode())[("facediag_decisions_total", (("kind", "no_finding"),))] == 1
        assert _get(base + "/nothing", TOKEN)[0] == 404
        assert _get(base + "/status", TOKEN, method="POST")[0] == 405

        handlers.status = boom
        code, _, body = _get(base + "/status", TOKEN)
        assert code == 500 and b"status callback failed" not in body


def test_api_unix_socket(api_parts, tmp_path):
    handlers, _, _ = api_parts
    sock_path = tmp_path / "api.sock"
    with ApiServer(handlers, TOKEN, unix_socket=sock_path):
        assert sock_path.is_socket()
        for token, expected in ((TOKEN, b"200"), ("wrong-token-wrong-token", b"401")):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(sock_path))
                s.sendall(f"GET /status HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            assert data.split(b" ")[1] == expected
    assert not sock_path.exists()


def _non_loopback_address() -> str | None:
    candidates = []
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
        candidates += out.split()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        candidates += [i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    for addr in candidates:
        if ":" not in addr and not is_loopback(addr):
            return addr
    return None


def test_api_is_not_reachable_from_a_non_loopback_address(api_parts):
    handlers, _, _ = api_parts
    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with pytest.raises(ConfigError, match="not a loopback"):
        ApiServer(handlers, TOKEN, bind=addr, port=0)
    with ApiServer(handlers, TOKEN, port=0) as api:
        port = api.address[1]
        assert _get(f"http://127.0.0.1:{port}/health")[0] == 200
        with pytest.raises(OSError):
            socket.create_connection((addr, port), timeout=3).close()


def test_api_refuses_weak_tokens_and_reads_token_files(api_parts, tmp_path):
    handlers, _, _ = api_parts
    with pytest.raises(ConfigError, match="at least"):
        ApiServer(handlers, "short", port=0)
    with pytest.raises(ConfigError, match="does not exist"):
        load_token(tmp_path / "absent.token")
    weak = tmp_path / "weak.token"
    weak.write_text("abc\n")
    with pytest.raises(ConfigError, match="at least"):
        load_token(weak)
    good = tmp_path / "api.token"
    good.write_text(TOKEN + "\n")
    assert load_token(good) == TOKEN


# --------------------------------------------------------------------------------------- config
def test_example_station_toml_is_valid():
    cfg = load_config(REPO / "systemd" / "station.toml")
    assert cfg.screening.good_frames == 8
    assert cfg.results.debug_capture_dir is None, "debug capture must be off in the example"
    assert cfg.api.bind == "127.0.0.1" and cfg.api.unix_socket is None
    assert cfg.source.fps is None
    assert cfg.quality.to_gates().min_face_px == cfg.quality.min_face_px


def test_defaults_match_the_session_defaults():
    from facediag.edge.screening.session import SessionConfig

    assert parse_config({}).screening.to_session_config() == SessionConfig()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[screening]\ngood_frame = 8", "screening.good_frame is not a known key; did you mean screening.good_frames"),
        ("[screening]\ngood_frames = 'eight'", "screening.good_frames must be an integer"),
        ("[screening]\ngood_frames = 0", "screening.good_frames must be >= 1"),
        ("[screening]\nwindow_s = 0", "screening.window_s must be > 0"),
        ("[source]\nloop = 'yes'", "source.loop must be a boolean"),
        ("[engine]\nbackend = 'cuda'", "engine.backend must be one of 'auto', 'tensorrt', 'onnxruntime'"),
        ("[engine]\nproviders = 'CUDAExecutionProvider'", "engine.providers must be a list of strings"),
        ("[detector]\nscore_threshold = 1.5", "detector.score_threshold must be <= 1"),
        ("[quality]\nmin_face_px = true", "quality.min_face_px must be a number or false"),
        ("[quality]\nmin_brightness = 200\nmax_brightness = 100", "quality.min_brightness"),
        ("[api]\nport = 70000", "api.port must be <= 65535"),
        ("[api]\nport = 8787.5", "api.port must be an integer"),
        ("[sreening]\ngood_frames = 8", "[sreening] is not a known section; did you mean screening"),
        ("screening = 3", "[screening] must be a table"),
        ("[source]\nuri = 'webcam'", "source.uri 'webcam'"),
        ("[screening\ngood_frames = 8", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(toml, message):
    with pytest.raises(ConfigError) as info:
        parse_config_text(toml)
    assert message in str(info.value)


def test_config_paths_and_switches(tmp_path):
    (tmp_path / "station.toml").write_text(
        '[engine]\nbundle = "bundle"\nthreads = 2\nproviders = ["CPUExecutionProvider"]\n'
        '[results]\npath = "/data/r.jsonl"\ndebug_capture_dir = "debug"\n'
        '[quality]\nmax_yaw = false\n[source]\nfps = 0\n'
    )
    cfg = load_config(tmp_path / "station.toml")
    assert cfg.engine.bundle == str(tmp_path / "bundle")
    assert cfg.results.path == "/data/r.jsonl"
    assert cfg.results.debug_capture_dir == str(tmp_path / "debug")
    assert cfg.engine.threads == 2 and cfg.engine.providers == ("CPUExecutionProvider",)
    assert cfg.quality.max_yaw is None and cfg.quality.to_gates().max_yaw is None
    assert cfg.source.fps == 0.0
    assert cfg.to_dict()["engine"]["providers"] == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")
