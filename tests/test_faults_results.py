"""Issue 11, the results file under faults: a full disk (the kernel's own ENOSPC, from /dev/full), a
file deleted or rotated under the writer, SIGHUP, and a torn tail longer than a line may be.

Nothing here stands in for the file system: the ENOSPC comes from writing to /dev/full (the results
path is a symlink to it until "space returns", when the symlink is replaced by a real file)."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from facediag.edge.results import ResultsWriter, latest_results, read_results
from facediag.edge.screening.record import QualitySummary, ScreeningResult
from facediag.edge.station.faults import StationFaults
from facediag.edge.station.holding import PendingFile
from facediag.edge.station.sinks import ResultRecorder

pytestmark = pytest.mark.faults

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


def _result(**changes: object) -> ScreeningResult:
    base = ScreeningResult(
        session_id=uuid.uuid4().hex, started_at="2026-12-01T00:36:40.248Z",
        decided_at="2026-12-01T00:36:40.533Z", decision="no_finding", condition=None, probability=None,
        probabilities={"healthy": 0.76655, "glasses": 0.23345}, reason="no condition reached its threshold",
        frames_used=5, quality=QualitySummary(7, 5, 2, {"blurred": 2}), bundle_id="b" * 64, model_sha256="m" * 64,
        precision="fp32", backend="onnxruntime", notice="screening aid, not a diagnosis",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _full_disk_results(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "results.jsonl"
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/full")  # every write: ENOSPC from the kernel
    return path


def _recorder(path: Path, sink: list | None = None, **kw) -> ResultRecorder:
    return ResultRecorder(ResultsWriter(path), [sink.append] if sink is not None else [],
                          faults=kw.pop("faults", StationFaults()), pending_file=PendingFile(path), **kw)


@needs_dev_full
def test_a_full_disk_holds_results_degrades_and_writes_them_when_space_returns(tmp_path):
    path = _full_disk_results(tmp_path)
    seen: list = []
    rec = _recorder(path, seen)
    first, second = _result(), _result(decision="refer", condition="glasses", probability=0.9)
    rec(first)  # used to raise ResultsError: the station stopped and the person was lost
    rec(second)
    assert [r.session_id for r in seen] == [first.session_id, second.session_id]  # the kiosk still hears of them
    assert "results-disk" in rec.faults.active() and "No space left" in rec.faults.active()["results-disk"]
    assert [r["session_id"] for r in rec.pending_file.records()] == [first.session_id, second.session_id]
    rec.housekeeping(time.monotonic())  # still full: still held, nothing lost
    assert len(rec.pending) == 2
    path.unlink()  # space returns (a real file will be created at the path)
    rec.housekeeping(time.monotonic() + 10)
    assert not rec.pending and not rec.faults
    assert [r["session_id"] for r in read_results(path)] == [first.session_id, second.session_id]
    assert rec.pending_file.records() == []
    third = _result()
    rec(third)
    assert [r["session_id"] for r in read_results(path)][-1] == third.session_id


@needs_dev_full
def test_held_results_survive_a_restart_and_are_written_once(tmp_path):
    path = _full_disk_results(tmp_path)
    rec = _recorder(path)
    held = [_result(), _result(), _result()]
    for r in held:
        rec(r)
    # the process dies here (no close): a restart while still full must lose nothing either
    again = _recorder(path)
    assert again.recover() == 3 and len(again.pending) == 3 and "results-disk" in again.faults.active()
    path.unlink()  # space returns; the next start writes what was held, in order, once
    final = _recorder(path)
    assert final.recover() == 3
    assert [r["session_id"] for r in read_results(path)] == [r.session_id for r in held]
    assert _recorder(path).recover() == 0  # emptied: no duplicate at the next start
    assert len(read_results(path)) == 3


def test_disk_low_is_reported_below_the_free_space_floor(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    rec = _recorder(path, min_free_bytes=2**62)
    with caplog.at_level(logging.ERROR):
        rec.housekeeping(time.monotonic())
    assert "disk-low" in rec.faults.active()
    assert any("DEGRADED (disk-low)" in r.getMessage() for r in caplog.records)
    rec.min_free_bytes = 1
    rec.housekeeping(time.monotonic() + 60)
    assert not rec.faults


@pytest.mark.parametrize("how", ["deleted", "rotated"])
def test_a_results_file_deleted_or_rotated_under_the_writer_is_reopened(tmp_path, caplog, how):
    path = tmp_path / "results.jsonl"
    writer = ResultsWriter(path)
    a, b = _result(), _result()
    writer.write(a)
    if how == "deleted":
        path.unlink()
    else:
        path.rename(tmp_path / "results.jsonl.1")
    with caplog.at_level(logging.WARNING):
        writer.write(b)
    writer.close()
    assert [r["session_id"] for r in read_results(path)] == [b.session_id]  # not into the unlinked/renamed file
    assert [r["session_id"] for r in latest_results(path, 5)] == [b.session_id]
    assert writer.reopens == 1
    assert any("reopened" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    if how == "rotated":
        assert [r["session_id"] for r in read_results(tmp_path / "results.jsonl.1")] == [a.session_id]


def test_rotating_writer_also_reopens_after_an_outside_rename(tmp_path):
    from facediag.edge.results_rotation import RotatingResultsWriter, RotationPolicy

    path = tmp_path / "results.jsonl"
    writer = RotatingResultsWriter(path, RotationPolicy(rotate_bytes=10**6))
    writer.write(_result())
    path.rename(tmp_path / "results.jsonl.old")
    last = _result()
    writer.write(last)
    writer.close()
    assert [r["session_id"] for r in read_results(path)] == [last.session_id]


def test_sighup_reopens_the_results_file(tmp_path, caplog):
    """The station's SIGHUP handler (logrotate's postrotate) asks the loop to reopen the file."""
    from facediag.edge.station.station import Station

    class Parts:  # only what the handler and _housekeeping's reopen touch
        def __init__(self) -> None:
            self.results = ResultsWriter(tmp_path / "results.jsonl")

    station = Station.__new__(Station)
    station.parts = Parts()  # type: ignore[assignment]
    import threading

    station._hangup = threading.Event()
    previous = signal.getsignal(signal.SIGHUP)
    try:
        station._install_hangup()
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not station._hangup.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert station._hangup.is_set()
    finally:
        signal.signal(signal.SIGHUP, previous)
    with caplog.at_level(logging.WARNING):
        station._hangup.clear()
        station.parts.results.reopen("asked to reopen (SIGHUP)")
    assert station.parts.results.reopens == 1
    assert any("SIGHUP" in r.getMessage() for r in caplog.records)
    station.parts.results.close()


def test_a_torn_tail_longer_than_a_line_is_repaired_and_read_in_linear_time(tmp_path):
    path = tmp_path / "results.jsonl"
    good = [_result() for _ in range(3)]
    with ResultsWriter(path) as writer:
        for r in good:
            writer.write(r)
    with open(path, "ab") as fh:  # a crash mid-way through 32 MiB of garbage, no newline
        fh.write(b'{"session_id": "' + b"x" * (32 * 2**20))
    t0 = time.perf_counter()
    latest = latest_results(path, 10)
    took = time.perf_counter() - t0
    assert [r["session_id"] for r in latest] == [r.session_id for r in good]
    assert took < 1.0, f"/results/latest took {took:.2f} s on a 32 MiB torn tail"
    with ResultsWriter(path) as writer:  # reopening cuts the torn tail, however long
        assert writer.repaired_bytes > 32 * 2**20
        writer.write(_result())
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(x) for x in lines[:-1]) and len(lines) == 5


def test_sigkill_mid_stream_never_tears_or_duplicates_a_line(tmp_path):
    """A bounded loop of real SIGKILLs against a process appending results as fast as it can."""
    import subprocess
    import sys

    from tests.daemon_helpers import REPO

    path = tmp_path / "results.jsonl"
    writer_code = (
        "import sys, itertools\n"
        "from facediag.edge.results import ResultsWriter\n"
        "w = ResultsWriter(sys.argv[1])\n"
        "for i in itertools.count():\n"
        "    w.write({'run': sys.argv[2], 'i': i, 'pad': 'x' * (i % 700)})\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = np.random.default_rng(11)
    for run in range(8):
        proc = subprocess.Popen([sys.executable, "-c", writer_code, str(path), str(run)], env=env)
        time.sleep(0.4 + float(rng.uniform(0, 0.4)))
        proc.kill()
        proc.wait(10)
    with ResultsWriter(path):  # what the next start does: cut a torn tail
        pass
    records = read_results(path)  # strict: a torn or garbled line in the middle would raise
    keys = [(r["run"], r["i"]) for r in records]
    assert len(keys) == len(set(keys)) and len(records) > 8
    for run in {r["run"] for r in records}:
        seq = [i for rr, i in keys if rr == run]
        assert seq == list(range(len(seq))), "a line went missing in the middle of a run"


def test_a_second_daemon_does_not_steal_a_live_unix_socket_but_replaces_a_stale_one(tmp_path):
    import socket

    from facediag.edge.errors import ConfigError
    from facediag.edge.service.api import ApiHandlers, ApiServer

    handlers = ApiHandlers(health=lambda: {"status": "ok"}, status=lambda: {}, latest_results=lambda n: [],
                           metrics=lambda: (b"", "text/plain"))
    token = "t" * 40
    path = tmp_path / "api.sock"
    with ApiServer(handlers, token, unix_socket=path) as first:
        inode = path.stat().st_ino
        with pytest.raises(ConfigError, match="another process"):
            ApiServer(handlers, token, unix_socket=path)
        assert path.stat().st_ino == inode  # still the first daemon's socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            assert s.recv(64).split(b" ")[1] == b"200"
        assert first is not None
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket file nobody listens on (a crashed run)
    stale.close()
    with ApiServer(handlers, token, unix_socket=path):
        assert path.is_socket()
