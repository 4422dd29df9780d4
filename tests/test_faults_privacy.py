"""Issue 11 item 2: a station sends nothing anywhere. The real daemon runs on a real bundle and video
under a fresh, empty HOME; afterwards HOME must still be empty (ONNX Runtime's telemetry database
and device id are written there unless its telemetry is off) and, where strace is installed, the
process tree must have made no DNS lookup and no connection off the loopback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fixture_path
from tests.daemon_helpers import REPO, free_port, visits_video, write_station_config, yale_photo

pytestmark = pytest.mark.faults


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "XDG_CACHE_HOME", "XDG_DATA_HOME",
                        "XDG_CONFIG_HOME", "ORT_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    return env


def test_a_daemon_run_writes_no_telemetry_and_looks_nothing_up(tmp_path, bundle_dir):
    video = visits_video(tmp_path / "visit.avi", [yale_photo("subject02.glasses")], hold=20, gap=20)
    config = write_station_config(tmp_path, uri=f"file:{video}", bundle=bundle_dir,
                                  yunet=fixture_path("models/face_detection_yunet_2026may.onnx"),
                                  port=free_port(), loop=False)
    home = tmp_path / "home"
    home.mkdir()
    cmd = [sys.executable, "-m", "facediag", "run", "--config", str(config)]
    trace = tmp_path / "strace.txt"
    strace = shutil.which("strace")
    if strace:
        cmd = [strace, "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace), *cmd]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_clean_env(home), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert (tmp_path / "state" / "results.jsonl").read_text().strip(), "the run screened nobody"
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert written == [], f"the daemon wrote under HOME: {written}"
    if not strace:
        pytest.skip("strace is not installed: HOME was checked, DNS lookups were not")
    calls = trace.read_text()
    dns = [line for line in calls.splitlines() if "htons(53)" in line or "resolve" in line or "nscd" in line]
    assert not dns, f"DNS lookups: {dns[:5]}"
    off_loopback = [line for line in calls.splitlines() if re.search(r"sin6?_addr", line)
                    and "127.0.0.1" not in line and '"::1"' not in line]
    assert not off_loopback, f"connections off the loopback: {off_loopback[:5]}"


def test_telemetry_opt_outs_are_set_on_import_and_an_explicit_choice_wins():
    code = ("import os, facediag.edge; print(os.environ.get('ORT_DISABLE_TELEMETRY'), "
            "os.environ.get('DO_NOT_TRACK'))")
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["1", "1"], out.stderr
    env["ORT_DISABLE_TELEMETRY"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["0", "1"], out.stderr
