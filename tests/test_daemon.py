"""The station daemon end to end: the real `facediag run` as a subprocess, on real face video,
with a real bundle, a real systemd notify socket, the real API and a real MJPEG server.

Plus the engine choice (`facediag.edge.engine.select`) on a real bundle with real engine manifests
(the TensorRT runtime itself cannot run here; the choice is made before it is touched).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from facediag.edge.errors import ConfigError
from tests.daemon_helpers import (
    TOKEN,
    NotifyListener,
    api_get,
    api_json,
    free_port,
    new_image_files,
    read_lines,
    snapshot,
    start_daemon,
    stop_daemon,
    visits_video,
    wait_until,
    write_station_config,
    yale_photo,
)

DECISIONS = {"refer", "no_finding", "retake"}


@pytest.fixture(scope="session")
def face_video(tmp_path_factory) -> Path:
    photos = [yale_photo("subject01.normal"), yale_photo("subject02.glasses"), yale_photo("subject03.happy")]
    return visits_video(tmp_path_factory.mktemp("daemon_video") / "visits.avi", photos)


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else r"(\{[^}]*\})?") + r" ([0-9.e+-]+)"
    m = re.search(r"^" + pattern + r"$", text, re.M)
    assert m, f"metric {name}{{{labels}}} not in /metrics"
    return float(m.group(m.lastindex))


def _non_loopback_address() -> str | None:
    from tests.test_service_infra import _non_loopback_address as find

    return find()


# ------------------------------------------------------------------ the whole station
def test_station_end_to_end(tmp_path, bundle_dir, yunet, face_video):
    port = free_port()
    config = write_station_config(tmp_path, uri=f"file:{face_video}", bundle=bundle_dir, yunet=yunet, port=port,
                                  loop=True, service="status_interval_s = 0.5")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    watched = (tmp_path, cwd, face_video.parent, bundle_dir)
    before = snapshot(*watched)
    notify = NotifyListener()
    started = time.monotonic()
    proc = start_daemon(config, cwd, notify, watchdog_usec=1_000_000, log_path=tmp_path / "daemon.log")
    try:
        ready = notify.wait_for("READY=1", 90)
        assert ready, f"no READY=1; daemon log:\n{(tmp_path / 'daemon.log').read_text()}"
        print(f"READY {ready[0] - started:.2f} s after the process was started")
        results_path = tmp_path / "state" / "results.jsonl"
        lines = wait_until(lambda: len(read_lines(results_path)) >= 3 and read_lines(results_path), 60)
        assert lines, f"fewer than 3 results; log:\n{(tmp_path / 'daemon.log').read_text()}"

        # -- result records
        bundle_doc = json.loads((bundle_dir / "bundle.json").read_text())
        from facediag.edge.hashing import sha256_file

        model_sha = sha256_file(bundle_dir / "model.onnx")
        for r in lines:
            assert r["decision"] in DECISIONS
            assert len(r["session_id"]) == 32 and r["started_at"] <= r["decided_at"]
            assert r["bundle_id"] == bundle_doc["bundle_sha256"] and r["model_sha256"] == model_sha
            assert r["backend"] == "onnxruntime" and r["precision"] == "fp32"
            assert "not a diagnosis" in r["notice"]
            assert r["quality"]["frames_seen"] >= r["quality"]["good_frames"]
            if r["decision"] != "retake":
                assert r["frames_used"] == 5 and set(r["probabilities"]) == {"healthy", "glasses"}
                assert abs(sum(r["probabilities"].values()) - 1.0) < 1e-3
        kinds = {(r["decision"], r["condition"]) for r in lines}
        # subject02 wears glasses: the head was fitted on Yale glasses / no-glasses crops
        assert ("refer", "glasses") in kinds and ("no_finding", None) in kinds, kinds
        assert len({r["session_id"] for r in lines}) == len(lines)

        # -- API: open health, token everywhere else, loopback only
        code, body = api_get(port, "/health")
        assert code == 200 and json.loads(body) == {"status": "ok"}
        for path in ("/status", "/results/latest", "/metrics"):
            assert api_get(port, path)[0] == 401
            assert api_get(port, path, "wrong-" + TOKEN)[0] == 401
        status = api_json(port, "/status")
        assert status["ready"] and status["healthy"]
        assert status["engine"]["backend"] == "onnxruntime" and "no TensorRT engine" in status["engine"]["reason"]
        assert status["source"]["state"] == "streaming" and status["frames_processed"] > 0
        latest = api_json(port, "/results/latest?n=2")["results"]
        on_disk = {r["session_id"] for r in read_lines(results_path)}
        assert 1 <= len(latest) <= 2 and {r["session_id"] for r in latest} <= on_disk
        code, body = api_get(port, "/metrics", TOKEN)
        text = body.decode()
        assert code == 200
        assert _metric(text, "facediag_frames_processed_total") > 0
        assert _metric(text, "facediag_stage_latency_seconds_count", 'stage="detect"') > 0
        assert _metric(text, "facediag_stage_latency_seconds_count", 'stage="infer"') >= 1
        assert _metric(text, "facediag_ready") == 1
        assert _metric(text, "facediag_inferences_total") >= 1
        addr = _non_loopback_address()
        if addr is not None:
            with pytest.raises(OSError):
                socket.create_connection((addr, port), timeout=3).close()

        # -- systemd protocol
        assert notify.wait_for("WATCHDOG=1", 10, since=ready[0])
        statuses = [line for _, line in notify.lines() if line.startswith("STATUS=")]
        assert any("onnxruntime" in s and "fps" in s and "streaming" in s for s in statuses), statuses
    finally:
        code = stop_daemon(proc)
        notify.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert any(line == "STOPPING=1" for _, line in notify.lines())
    raw = results_path.read_bytes()
    assert raw.endswith(b"\n"), "the results file must end with a complete line"
    assert len(read_lines(results_path)) >= 3  # every line parses
    after = snapshot(*watched)
    assert not new_image_files(before, after), new_image_files(before, after)
    new_in_state = {p.relative_to(tmp_path) for p in after - before if (tmp_path / "state") in p.parents}
    # the results and the reserved file for results held on a full disk (issue 11), nothing else
    assert new_in_state == {Path("state/results.jsonl"), Path("state/results.jsonl.pending")}
    assert b"\0" * 16 in (tmp_path / "state" / "results.jsonl.pending").read_bytes()[:64], "nothing held, all zero"
    assert not [p for p in cwd.rglob("*") if p.is_file() and p.name != "daemon.log"]


def test_reconnects_to_a_restarted_stream_and_keeps_the_watchdog_fed_meanwhile(tmp_path, bundle_dir, yunet):
    import cv2

    from tests.daemon_helpers import face_frame
    from tests.test_capture import _free_port, _start_server

    jpegs = []
    for i, name in enumerate(("subject04.normal", "subject05.normal")):
        jpegs.append(tmp_path / f"{i}.jpg")
        cv2.imwrite(str(jpegs[-1]), face_frame(yale_photo(name)))
    stream_port = _free_port()
    server = _start_server(stream_port, jpegs)
    port = free_port()
    config = write_station_config(
        tmp_path, uri=f"http://127.0.0.1:{stream_port}/stream.mjpg", bundle=bundle_dir, yunet=yunet, port=port,
        loop=False, source_extra="stall_s = 1.0\nreconnect_max_s = 1.0",
        service="max_frame_age_s = 1.0\nmax_processing_age_s = 1.0\nstatus_interval_s = 0.5",
    )
    notify = NotifyListener()
    proc = start_daemon(config, tmp_path / "cwd", notify, watchdog_usec=600_000, log_path=tmp_path / "daemon.log")
    try:
        ready = notify.wait_for("READY=1", 90)
        assert ready, (tmp_path / "daemon.log").read_text()
        assert notify.wait_for("WATCHDOG=1", 10, since=ready[0])
        assert api_json(port, "/status")["source"]["reconnects"] == 0

        killed_at = time.monotonic()
        server.kill()
        server.wait(10)
        down = wait_until(lambda: api_json(port, "/status")["source"]["state"] != "streaming", 15)
        assert down
        time.sleep(max(0.0, killed_at + 3.5 - time.monotonic()))
        assert api_get(port, "/health")[0] == 503  # degraded while no frames come
        # issue 11: the loop is alive and the supervisor works through its backoff, so the watchdog stays fed
        # (health says degraded); systemd must not kill a daemon that is waiting for its camera
        late = [t for t, line in notify.lines(since=killed_at + 1.6) if line == "WATCHDOG=1"]
        assert len(late) >= 3, "WATCHDOG=1 stopped during a camera outage: systemd would kill the daemon"

        restarted_at = time.monotonic()
        server = _start_server(stream_port, jpegs)
        assert notify.wait_for("WATCHDOG=1", 30, since=restarted_at), (tmp_path / "daemon.log").read_text()
        status = wait_until(lambda: (st := api_json(port, "/status"))["source"]["state"] == "streaming" and st, 30)
        assert status and status["source"]["reconnects"] >= 1, (tmp_path / "daemon.log").read_text()
        assert wait_until(lambda: api_get(port, "/health")[0] == 200, 10)  # healthy again once frames flow
        text = api_get(port, "/metrics", TOKEN)[1].decode()
        assert _metric(text, "facediag_source_reconnects_total") >= 1
        # STATUS= is refreshed on the source's state change, right after the first fresh frames
        assert wait_until(lambda: any(line.startswith("STATUS=") and "reconnect" in line
                                      for _, line in notify.lines(since=restarted_at)), 10)
    finally:
        code = stop_daemon(proc)
        notify.close()
        server.kill()
        server.wait(10)
    assert code == 0, (tmp_path / "daemon.log").read_text()


@pytest.mark.parametrize(
    "section, line, named",
    [
        ("screening", "good_frame = 3", "screening.good_frame"),
        ("engine", 'backend = "cuda"', "engine.backend"),
    ],
)
def test_config_errors_exit_78_naming_the_key(tmp_path, section, line, named):
    import subprocess
    import sys

    from tests.daemon_helpers import REPO

    (tmp_path / "station.toml").write_text(f'[source]\nuri = "file:/nonexistent.avi"\n\n[{section}]\n{line}\n')
    proc = subprocess.run([sys.executable, "-m", "facediag", "run", "--config", str(tmp_path / "station.toml")],
                          cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert named in proc.stderr


# ------------------------------------------------------------------ engine choice
def _manifest(bundle, engine_path: Path, *, gpu: str = "Orin", verify: dict | None = None):
    from facediag.edge.engine.manifest import EngineManifest, manifest_path_for
    from facediag.edge.hashing import sha256_file

    engine_path.write_bytes(b"not a real engine: the choice is made from the manifest before loading")
    m = EngineManifest(
        engine_file=engine_path.name, engine_sha256=sha256_file(engine_path), onnx_file="model.onnx",
        onnx_sha256=bundle.files["model.onnx"], precision="fp32", tensorrt_version="10.3.0", gpu_name=gpu,
        compute_capability=(8, 7), input_name="input",
        input_shapes={"min": [1, 3, 112, 96], "opt": [5, 3, 112, 96], "max": [16, 3, 112, 96]}, verify=verify,
    )
    m.save(manifest_path_for(engine_path))


@pytest.fixture
def bundle_copy(tmp_path, bundle_dir):
    from facediag.edge.bundle import load_bundle

    shutil.copytree(bundle_dir, tmp_path / "b")
    return load_bundle(tmp_path / "b")


def _device():
    from facediag.edge.engine.manifest import DeviceInfo

    return DeviceInfo("10.3.0", "Orin", (8, 7), 2)


def test_auto_without_engines_uses_onnxruntime_and_says_why(bundle_copy):
    from facediag.edge.engine.select import plan_engine, select_engine

    def probe():
        raise AssertionError("TensorRT must not be probed when the bundle has no engine")

    plan = plan_engine(bundle_copy, "auto", "auto", device_probe=probe)
    assert (plan.backend, plan.precision, plan.path.name) == ("onnxruntime", "fp32", "model.onnx")
    assert "no TensorRT engine" in plan.reason
    engine, plan = select_engine(bundle_copy, "auto", "auto", threads=1, device_probe=probe)
    try:
        assert engine.backend == "onnxruntime" and engine.provider == "CPUExecutionProvider"
    finally:
        engine.close()


def test_auto_picks_a_verified_engine_for_this_device(bundle_copy):
    from facediag.edge.engine.select import plan_engine

    _manifest(bundle_copy, bundle_copy.path / "model.fp32.engine", verify={"passed": True, "top1_agreement": 1.0})
    plan = plan_engine(bundle_copy, "auto", "auto", device_probe=_device)
    assert (plan.backend, plan.precision, plan.path.name) == ("tensorrt", "fp32", "model.fp32.engine")
    assert plan.expected_onnx_sha256 == bundle_copy.files["model.onnx"]


@pytest.mark.parametrize("gpu, verify, why", [
    ("Orin", None, "facediag verify"),
    ("Orin", {"passed": False}, "no passing verification"),
    ("Xavier", {"passed": True}, "gpu_name"),
])
def test_auto_falls_back_when_the_engine_is_not_proven_here(bundle_copy, gpu, verify, why):
    from facediag.edge.engine.select import plan_engine

    _manifest(bundle_copy, bundle_copy.path / "model.fp32.engine", gpu=gpu, verify=verify)
    plan = plan_engine(bundle_copy, "auto", "auto", device_probe=_device)
    assert plan.backend == "onnxruntime" and why in plan.reason
    with pytest.raises(ConfigError, match=re.escape(why)):
        plan_engine(bundle_copy, "tensorrt", "fp32", device_probe=_device)


def test_build_skips_only_an_engine_built_here_from_this_bundle(bundle_copy):
    """`facediag build --config` skips when an engine is current for this device, verified or not yet."""
    from facediag.edge.engine.select import engine_is_current

    assert not engine_is_current(bundle_copy, "fp32", _device())
    _manifest(bundle_copy, bundle_copy.path / "model.fp32.engine", verify=None)
    assert engine_is_current(bundle_copy, "fp32", _device())
    _manifest(bundle_copy, bundle_copy.path / "model.fp32.engine", gpu="Xavier", verify=None)
    assert not engine_is_current(bundle_copy, "fp32", _device())


def test_explicit_tensorrt_fails_clearly_without_tensorrt(bundle_copy):
    from facediag.edge.engine.select import plan_engine, probe_tensorrt_device

    with pytest.raises(ConfigError, match="facediag build"):
        plan_engine(bundle_copy, "tensorrt", "auto", device_probe=probe_tensorrt_device)
    _manifest(bundle_copy, bundle_copy.path / "model.fp32.engine", verify={"passed": True})
    # an engine is there, but this machine has no TensorRT / CUDA: the real probe says so
    with pytest.raises(ConfigError, match="TensorRT is not usable here"):
        plan_engine(bundle_copy, "tensorrt", "fp32", device_probe=probe_tensorrt_device)
    assert plan_engine(bundle_copy, "auto", "auto", device_probe=probe_tensorrt_device).backend == "onnxruntime"


def test_onnxruntime_refuses_a_provider_it_silently_would_not_use(bundle_copy):
    from facediag.edge.engine.select import select_engine

    with pytest.raises(ConfigError, match="CUDAExecutionProvider"):
        select_engine(bundle_copy, "onnxruntime", "fp32", providers=["CUDAExecutionProvider"])
    with pytest.raises(ConfigError, match="int8-cpu"):
        select_engine(bundle_copy, "onnxruntime", "int8-cpu")


# ------------------------------------------------------------------ the pipeline in-process
def _pipeline(bundle_dir: Path, yunet: Path, debug_dir: Path | None, records: list, stages: list):
    from facediag.edge.bundle import load_bundle
    from facediag.edge.config import parse_config
    from facediag.edge.engine.select import select_engine
    from facediag.edge.station.pipeline import ScreeningPipeline, make_front_end

    cfg = parse_config({
        "detector": {"name": "yunet", "model_path": str(yunet)},
        "quality": {"min_face_px": 40.0, "min_sharpness": 5.0},
        "screening": {"good_frames": 4, "face_lost_s": 0.5},
        "source": {"uri": "file:/unused.avi"},
    })
    bundle = load_bundle(bundle_dir)
    engine, plan = select_engine(bundle, "onnxruntime", "fp32", threads=1)
    return ScreeningPipeline(make_front_end(cfg, bundle.contract), engine, bundle, cfg.screening.to_session_config(),
                             precision=plan.precision, on_result=records.append,
                             on_stage=lambda s, v: stages.append((s, v)), debug_capture_dir=debug_dir)


def test_pipeline_writes_crops_only_when_debug_capture_is_on(tmp_path, bundle_dir, yunet):
    from tests.daemon_helpers import face_frame

    shown, empty = face_frame(yale_photo("subject02.glasses")), face_frame(None)
    for debug in (None, tmp_path / "debug"):
        records: list = []
        stages: list = []
        pipe = _pipeline(bundle_dir, yunet, debug, records, stages)
        t = 0.0
        for frame in [shown] * 6 + [empty] * 30:  # 30 fps: the face stays 0.2 s, then leaves for 1 s
            pipe.process(frame, t)
            t += 1 / 30
        assert [r.decision for r in records] == ["refer"] and records[0].condition == "glasses"
        assert records[0].frames_used == 4 and records[0].quality.good_frames == 4
        names = {s for s, _ in stages}
        assert {"detect", "align", "infer", "decide"} <= names
        assert sum(1 for s, _ in stages if s == "infer") == 1
        assert pipe.tracker.current is None or pipe.tracker.current.crops == []
    crops = sorted((tmp_path / "debug").glob("*.png"))
    assert len(crops) == 4 and all(p.name.startswith(records[0].session_id) for p in crops)
    assert [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != tmp_path / "debug"] == []
