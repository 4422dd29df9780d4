"""The station built in one step (`build_station`) and run in-process (`Station(parts).run()`), with a
real bundle, real YuNet, real ONNX Runtime, a real video file, a real results file and real sockets."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from facediag.edge.config import parse_config
from facediag.edge.errors import ConfigError
from tests.conftest import fixture_path
from tests.daemon_helpers import (
    TOKEN,
    NotifyListener,
    api_get,
    face_frame,
    free_port,
    visits_video,
    yale_photo,
)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    photos = [yale_photo("subject02.glasses"), yale_photo("subject01.normal")]
    return visits_video(tmp_path_factory.mktemp("builder_video") / "visits.avi", photos, hold=30, gap=30)


def _cfg(tmp: Path, bundle: Path, uri: str, *, api: bool = False, port: int = 0, fps: float = 0.0):
    token = tmp / "api.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return parse_config({
        "source": {"uri": uri, "loop": False, "fps": fps, "stall_s": 10.0},
        "detector": {"name": "yunet", "model_path": str(fixture_path("models/face_detection_yunet_2026may.onnx"))},
        "quality": {"min_face_px": 40.0, "min_sharpness": 5.0},
        "engine": {"bundle": str(bundle), "backend": "auto", "threads": 1},
        "screening": {"good_frames": 4, "window_s": 5.0, "face_lost_s": 0.5, "trigger": "auto"},
        "results": {"path": str(tmp / "state" / "results.jsonl")},
        "api": {"enabled": api, "port": port or free_port(), "token_file": str(token)},
        "trust": {"allow_unsigned": True},
    })


def _open_fds_to(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                n += 1
        except OSError:
            pass
    return n


def test_build_returns_every_part_built_and_nothing_running(tmp_path, bundle_dir, video):
    from facediag.edge.engine.base import Engine
    from facediag.edge.station.builder import build_station

    seen: list = []
    cfg = _cfg(tmp_path, bundle_dir, f"file:{video}", api=True)
    results_path = tmp_path / "state" / "results.jsonl"
    parts = build_station(cfg, result_sinks=[lambda r: seen.append((r, results_path.read_text()))])
    try:
        assert isinstance(parts.engine, Engine) and parts.engine.backend == "onnxruntime"
        assert parts.plan.backend == "onnxruntime" and parts.plan.precision == "fp32"
        assert parts.warmup_s > 0 and parts.bundle.classes == ["healthy", "glasses"]
        assert not parts.signature.signed  # allowed unsigned by [trust], and the parts say so
        assert parts.pipeline.on_result is parts.recorder and parts.recorder.writer is parts.results
        assert not parts.capture.supervisor.running, "the capture thread starts in Station.run, not in the build"
        assert parts.api is not None and isinstance(parts.api.address, tuple)
        assert not parts.liveness.ready and parts.status.health() == {"status": "starting"}
        assert results_path.exists() and _open_fds_to(results_path) == 1

        # the parts screen a face: the sink sees each result after its line is on disk
        shown, empty = face_frame(yale_photo("subject02.glasses")), face_frame(None)
        t = 0.0
        for frame in [shown] * 6 + [empty] * 20:
            parts.pipeline.process(frame, t)
            t += 1 / 30
        assert len(seen) == 1
        result, on_disk = seen[0]
        assert result.decision == "refer" and result.condition == "glasses"
        assert json.loads(on_disk.splitlines()[-1]) == result.to_json()
        assert result.station_id == cfg.station.id
        status = parts.status.status()
        assert status["results"] == 1 and status["decisions"] == {"refer": 1} and status["inferences"] == 1
        assert status["engine"]["bundle_id"] == result.bundle_id
        # /results/latest validates what it reads: a line that is not a result of a known schema is skipped
        with open(results_path, "a") as fh:
            fh.write(json.dumps({**result.to_json(), "schema": 99}) + "\n")
        assert parts.status.latest_results(5) == [result.to_json()]
    finally:
        parts.close()
    assert _open_fds_to(results_path) == 0, "close() closes the results file"
    with socket.socket() as s:  # the API's port is free again
        s.bind(parts.api.address)


def test_a_failing_sink_is_counted_and_does_not_stop_the_others(tmp_path, bundle_dir, video):
    from facediag.edge.station.builder import build_station

    got: list = []

    def broken(result):
        raise RuntimeError("broker unreachable")

    parts = build_station(_cfg(tmp_path, bundle_dir, f"file:{video}"), result_sinks=[broken, got.append])
    try:
        shown, empty = face_frame(yale_photo("subject01.normal")), face_frame(None)
        t = 0.0
        for frame in [shown] * 6 + [empty] * 20:
            parts.pipeline.process(frame, t)
            t += 1 / 30
    finally:
        parts.close()
    lines = (tmp_path / "state" / "results.jsonl").read_text().splitlines()
    assert len(got) == 1 and len(lines) == 1 and json.loads(lines[0])["session_id"] == got[0].session_id
    assert parts.recorder.sink_errors == 1 and parts.status.status()["result_sink_errors"] == 1


def test_a_failed_build_closes_what_it_had_opened(tmp_path, bundle_dir, video):
    from facediag.edge.station.builder import build_station

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot listen"):
            build_station(_cfg(tmp_path, bundle_dir, f"file:{video}", api=True, port=port))
    results_path = tmp_path / "state" / "results.jsonl"
    assert results_path.exists(), "the API is bound after the results file was opened"
    assert _open_fds_to(results_path) == 0


def test_config_errors_come_before_the_model_is_loaded(tmp_path, bundle_dir, video):
    from facediag.edge.station.builder import build_station

    cfg = _cfg(tmp_path, bundle_dir, f"file:{video}", api=True)
    (tmp_path / "api.token").unlink()
    progress: list[str] = []
    with pytest.raises(ConfigError, match="token_file"):
        build_station(cfg, on_progress=progress.append)
    assert progress == [], "the token is checked before 'loading the model bundle'"
    assert not (tmp_path / "state").exists()


def test_station_runs_built_parts_to_the_end_of_a_file(tmp_path, bundle_dir, video):
    from facediag.edge.results import read_screening_results
    from facediag.edge.station.builder import build_station
    from facediag.edge.station.station import Station

    notify = NotifyListener()
    got: list = []
    stages: list[str] = []
    try:
        parts = build_station(_cfg(tmp_path, bundle_dir, f"file:{video}", api=True, fps=60.0),
                              result_sinks=[got.append], stage_sinks=[lambda s, v: stages.append(s)])
        port = parts.api.address[1]
        station = Station(parts, env={"NOTIFY_SOCKET": notify.path}, install_signal_handlers=False)
        assert station.run() == 0
        assert station.exit_reason == "the source ended"
        lines = [line for _, line in notify.lines()]
    finally:
        notify.close()
    on_disk = read_screening_results(tmp_path / "state" / "results.jsonl").results
    assert on_disk == got and len(got) == parts.pipeline.counters.results >= 1
    assert {"capture", "detect", "align"} <= set(stages)
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    assert any(line.startswith("STATUS=source") and "onnxruntime fp32" in line for line in lines)
    assert parts.liveness.ready and parts.status.ready_after_s is not None and parts.status.ready_after_s > 0
    with pytest.raises(OSError):  # the API was stopped with the station
        api_get(port, "/health")
