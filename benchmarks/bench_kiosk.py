"""The kiosk's targets (issue 9), measured on the real daemon and a real headless Chromium:

* daemon CPU (% of one core, from /proc/PID/stat) screening the 640x480 fixture video at 30 fps with YuNet +
  MobileFaceNet: without any page, then with the kiosk page open and its preview streaming (target <= 45 %);
* first paint of /kiosk (the browser's first-contentful-paint; target < 1 s);
* state change latency: the daemon's event time to the page's DOM update, over Start/Cancel cycles (median,
  target < 200 ms).

    .venv/bin/python benchmarks/bench_kiosk.py [--seconds 20] [--cycles 20]

Needs the fixtures (../shared/fixtures), chromium + chromium-driver, selenium. Not a test: prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.daemon_helpers import (  # noqa: E402
    build_test_bundle,
    free_port,
    start_daemon,
    stop_daemon,
    visits_video,
    wait_until,
    write_station_config,
    yale_photo,
)
from tests.kiosk_browser import Browser  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_percent(pid: int, seconds: float) -> float:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def post(port: int, path: str, key: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}", method="POST", headers={
        "Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}", "X-Kiosk-Key": key})
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except urllib.error.HTTPError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--cycles", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-kiosk-"))
    bundle = build_test_bundle(work / "bundle")
    from tests.conftest import fixture_path

    yunet = fixture_path("models/face_detection_yunet_2026may.onnx")
    video = visits_video(work / "visits.avi", [yale_photo("subject01.normal"), yale_photo("subject02.glasses")])
    port = free_port()
    # a long start timeout: the page stays in "screening" (preview on) while the CPU is measured
    config = write_station_config(work, uri=f"file:{video}", bundle=bundle, yunet=yunet, port=port,
                                  trigger="button", extra="", source_extra="fps = 30.0")
    proc = start_daemon(config, work / "cwd", None)
    browser = None
    try:
        assert wait_until(lambda: _ready(port), 120), (work / "cwd" / "daemon.log").read_text()
        time.sleep(3)
        idle = cpu_percent(proc.pid, args.seconds)
        print(f"daemon CPU, no page, waiting for Start (nothing screened): {idle:.1f} % of one core")

        browser = Browser(1280, 720)
        t0 = time.monotonic()
        browser.driver.get(f"http://127.0.0.1:{port}/kiosk")
        browser.wait_state("idle", 20)
        paint = browser.js("const p = performance.getEntriesByName('first-contentful-paint')[0];"
                           " return p ? p.startTime : null")
        print(f"first contentful paint of /kiosk: {paint:.0f} ms (page load wall {1000 * (time.monotonic() - t0):.0f} ms)")
        key = str(browser.js("return document.querySelector('meta[name=facediag-page-key]').content"))

        # state change latency: Start / Cancel from outside, the page's DOM update vs the daemon's event time
        browser.js("window.facediagKiosk.log.length = 0")
        for _ in range(args.cycles):
            post(port, "/kiosk/session/start", key)
            browser.wait(lambda: browser.state() in ("screening", "result"), 10)
            post(port, "/kiosk/session/cancel", key)
            browser.wait(lambda: browser.state() in ("idle", "result"), 10)
            time.sleep(0.1)
        log = browser.js("return window.facediagKiosk.log")
        lat = [e["at"] - e["event_at"] for e in log if e.get("event_at")]
        if lat:
            print(f"state change latency (daemon event -> page DOM): median {statistics.median(lat):.1f} ms, "
                  f"max {max(lat):.1f} ms over {len(lat)} changes")

        # CPU with the page open and its preview streaming: screening, the preview <img> on
        post(port, "/kiosk/session/start", key)
        browser.wait_state("screening", 10)
        screening_cpu = []
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:  # keep the page in "screening": restart after each result
            if browser.state() != "screening":
                post(port, "/kiosk/session/start", key)
            screening_cpu.append(cpu_percent(proc.pid, 2.0))
        print(f"daemon CPU, page open, screening with preview streaming: {statistics.mean(screening_cpu):.1f} % "
              f"of one core (2 s windows: {', '.join(f'{c:.0f}' for c in screening_cpu)})")
        status = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {_token(work)}"})).read())
        print(f"fps {status['fps']}, frames {status['frames_processed']}, results {status['results']}")
    finally:
        if browser is not None:
            browser.close()
        stop_daemon(proc)
    return 0


def _token(work: Path) -> str:
    return (work / "api.token").read_text().strip()


def _ready(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        return True
    except urllib.error.HTTPError:
        return False
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
