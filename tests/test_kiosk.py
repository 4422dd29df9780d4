"""The kiosk end to end: the real daemon (`facediag run`) screening a fixture video, and a real headless
Chromium on /kiosk and /staff (Selenium, Debian's chromium + chromium-driver; skipped without them).

idle (no screening without Start) -> Start -> instructions and progress -> an outcome card; the staff page
shows that result with the visit id it set; screenshots at 800x480 and 1920x1080; axe-core finds no serious
or critical violation; a cross-site POST is refused; no image file appears on disk. A second daemon booted
without its camera is READY, keeps the watchdog fed, and its page says "camera missing", then "stopping" and
"loading" when it goes away.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.daemon_helpers import (
    TOKEN,
    NotifyListener,
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
from tests.kiosk_browser import Browser, require_browser

pytestmark = pytest.mark.slow
DECISIONS = {"refer", "no_finding", "retake"}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    from tests.daemon_helpers import build_test_bundle

    require_browser()  # skip before the (slow) bundle build when there is no browser
    return build_test_bundle(tmp_path_factory.mktemp("kiosk_bundle"))


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> Path:
    photos = [yale_photo("subject01.normal"), yale_photo("subject02.glasses")]
    return visits_video(tmp_path_factory.mktemp("kiosk_video") / "visits.avi", photos, hold=60, gap=20)


def post(port: int, path: str, *, headers: dict[str, str], body: bytes = b"{}") -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def page_key(port: int) -> str:
    html = urllib.request.urlopen(f"http://127.0.0.1:{port}/kiosk", timeout=10).read().decode()
    marker = 'name="facediag-page-key" content="'
    return html.split(marker, 1)[1].split('"', 1)[0]


def check_cross_site_refused(port: int) -> None:
    origin = f"http://127.0.0.1:{port}"
    key = page_key(port)
    json_type = {"Content-Type": "application/json"}
    # a foreign page: its Origin, with or without the key (it cannot read the key, but even so)
    assert post(port, "/kiosk/session/start", headers={**json_type, "Origin": "http://evil.example"}) == 403
    assert post(port, "/kiosk/session/start",
                headers={**json_type, "Origin": "http://evil.example", "X-Kiosk-Key": key}) == 403
    # a simple (no-preflight) form POST from another site carries its Origin and no key
    assert post(port, "/kiosk/session/start", body=b"a=1",
                headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "null"}) == 403
    # same origin but no key; the key but Sec-Fetch-Site cross-site; DNS rebinding (a foreign Host)
    assert post(port, "/kiosk/session/start", headers={**json_type, "Origin": origin}) == 403
    assert post(port, "/kiosk/session/start",
                headers={**json_type, "Origin": origin, "X-Kiosk-Key": key, "Sec-Fetch-Site": "cross-site"}) == 403
    assert post(port, "/kiosk/session/start", headers={**json_type, "Host": "evil.example",
                                                       "Origin": "http://evil.example", "X-Kiosk-Key": key}) == 403
    # staff actions: no cookie, foreign origin
    assert post(port, "/staff/api/visit", headers={**json_type, "Origin": "http://evil.example"},
                body=b'{"visit_id": "X"}') == 403
    assert post(port, "/staff/login", headers={**json_type, "Origin": "http://evil.example"},
                body=json.dumps({"token": TOKEN}).encode()) == 403
    # a preflight gets no CORS permission
    req = urllib.request.Request(f"http://127.0.0.1:{port}/kiosk/session/start", method="OPTIONS",
                                 headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert not any(h.lower().startswith("access-control-allow") for h in resp.headers)


def staff_login_and_set_visit(browser: Browser, port: int, visit: str) -> None:
    from selenium.webdriver.common.by import By

    d = browser.driver
    d.get(f"http://127.0.0.1:{port}/staff")
    browser.wait(lambda: d.find_elements(By.ID, "token"), 15, what="the staff log-in form")
    d.find_element(By.ID, "token").send_keys(TOKEN[:-1] + "x")
    d.find_element(By.CSS_SELECTOR, "#login button").click()
    browser.wait(lambda: d.find_element(By.ID, "login-error").text, 10, what="a refused log-in")
    assert d.find_elements(By.ID, "token"), "a wrong token must not log in"
    field = d.find_element(By.ID, "token")
    field.clear()
    field.send_keys(TOKEN)
    d.find_element(By.CSS_SELECTOR, "#login button").click()
    browser.wait(lambda: d.find_elements(By.ID, "visit"), 15, what="the staff page after log-in")
    cookie = d.get_cookie("facediag_staff")
    assert cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict"
    d.find_element(By.ID, "visit").send_keys(visit)
    d.find_element(By.CSS_SELECTOR, "#visit-form button").click()
    browser.wait(lambda: visit in d.find_element(By.ID, "visit-pending").text, 10, what="the visit id accepted")


def test_kiosk_screening_flow_in_a_real_browser(tmp_path, bundle_dir, yunet, face_video):
    port = free_port()
    config = write_station_config(tmp_path, uri=f"file:{face_video}", bundle=bundle_dir, yunet=yunet, port=port,
                                  loop=True, trigger="button", screening="result_hold_s = 6.0",
                                  extra='[station]\nid = "kiosk-test-1"')
    cwd = tmp_path / "cwd"
    watched = (tmp_path, cwd, face_video.parent, bundle_dir)
    before = snapshot(*watched)
    results = tmp_path / "state" / "results.jsonl"
    notify = NotifyListener()
    proc = start_daemon(config, cwd, notify, log_path=tmp_path / "daemon.log")
    browser = None
    try:
        assert notify.wait_for("READY=1", 120), (tmp_path / "daemon.log").read_text()
        browser = Browser(800, 480)
        d = browser.driver
        staff_login_and_set_visit(browser, port, "V-2026-0042")

        d.get(f"http://127.0.0.1:{port}/kiosk")
        browser.wait_state("idle", 20)
        browser.screenshot("kiosk-idle-800x480")
        # consent: faces pass the camera, but nothing is screened before Start
        time.sleep(2.5)
        status = api_json(port, "/status")
        assert status["frames_processed"] > 20 and status["faces"] == 0 and status["results"] == 0, status
        assert status["kiosk"]["session_state"] == "idle" and not status["kiosk"]["armed"]
        assert read_lines(results) == []
        check_cross_site_refused(port)
        assert api_json(port, "/status")["kiosk"]["number"] == 0, "a refused POST must not start a session"
        violations = browser.axe()
        assert not violations, json.dumps(violations, indent=1)[:3000]

        from selenium.webdriver.common.by import By

        d.find_element(By.ID, "start").click()
        browser.wait_state("screening", 5)
        seen_keys, seen_good = set(), set()

        def watch() -> str | None:
            state, key, good = browser.js("return [document.body.dataset.state,"
                                          " document.getElementById('instruction').dataset.key,"
                                          " document.getElementById('progress-text').dataset.good]")
            seen_keys.add(key)
            seen_good.add(int(good))
            if len(seen_good) == 2 and not (tmp_path / "shot").exists():
                (tmp_path / "shot").touch()
                browser.screenshot("kiosk-screening-800x480")
            return state if state == "result" else None

        browser.wait(watch, 60, interval=0.03, what="an outcome after Start")
        assert len(seen_good) >= 2, f"progress never moved: {seen_good}"
        assert seen_keys - {None}, "no instruction shown"
        decision = browser.js("return document.getElementById('outcome').dataset.decision")
        assert decision in DECISIONS
        title = browser.js("return document.getElementById('outcome-title').textContent")
        assert title and browser.js("return document.querySelector('#s-result .notice').textContent")
        browser.screenshot("kiosk-result-800x480")
        browser.viewport(1920, 1080)
        browser.screenshot("kiosk-result-1920x1080")

        lines = wait_until(lambda: read_lines(results), 10)
        assert len(lines) == 1, lines  # one Start, one screening
        record = lines[0]
        assert record["decision"] == decision and record["visit_id"] == "V-2026-0042"
        assert record["station_id"] == "kiosk-test-1"
        # after the outcome the station is disarmed again; back to idle after result_hold_s
        browser.wait_state("idle", 15)
        browser.screenshot("kiosk-idle-1920x1080")
        time.sleep(1.5)
        assert len(read_lines(results)) == 1

        d.get(f"http://127.0.0.1:{port}/staff")
        row = f'tr[data-session-id="{record["session_id"]}"]'  # the table is re-rendered on events: read it in one go
        visit_id, shown_decision, text = browser.wait(
            lambda: browser.js("const r = document.querySelector(arguments[0]);"
                               " return r && [r.dataset.visitId, r.dataset.decision, r.textContent]", row),
            15, what="the result on the staff page")
        assert visit_id == "V-2026-0042" and "V-2026-0042" in text and shown_decision == decision
        health = browser.wait(lambda: browser.js(
            "const out = {}; document.querySelectorAll('#health dt').forEach("
            "dt => { out[dt.textContent] = dt.nextElementSibling.textContent; }); return out.uplink ? out : null"),
            15, what="the station health on the staff page")
        assert health["uplink"] == "off" and health["results"] == "1", health  # no [uplink] in this config
        browser.screenshot("staff-1920x1080")
        violations = browser.axe()
        assert not violations, json.dumps(violations, indent=1)[:3000]
        # acknowledge (the table is re-rendered on events: look the button up at the moment of the click)
        browser.js("document.querySelector(arguments[0]).click()", row + " button")
        browser.wait(lambda: "✓" in str(browser.js("const r = document.querySelector(arguments[0]);"
                                                    " return r ? r.textContent : ''", row)), 10, what="acknowledged")
        browser.viewport(800, 480)
        browser.screenshot("staff-800x480")
    finally:
        if browser is not None:
            browser.close()
        code = stop_daemon(proc)
        notify.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert new_image_files(before, snapshot(*watched)) == [], "an image file was written"


def test_kiosk_shows_camera_missing_then_stopping_and_loading(tmp_path, bundle_dir, yunet):
    port = free_port()
    dead_camera = f"http://127.0.0.1:{free_port()}/stream.mjpg"  # nothing listens: the camera is missing
    config = write_station_config(tmp_path, uri=dead_camera, bundle=bundle_dir, yunet=yunet, port=port, loop=False,
                                  trigger="button", source_extra="stall_s = 1.0\nreconnect_max_s = 1.0",
                                  service="max_frame_age_s = 1.0\nmax_processing_age_s = 2.0")
    notify = NotifyListener()
    proc = start_daemon(config, tmp_path / "cwd", notify, watchdog_usec=1_000_000, log_path=tmp_path / "daemon.log")
    browser = None
    try:
        ready = notify.wait_for("READY=1", 120)
        assert ready, "a station without its camera must still become READY: " + (tmp_path / "daemon.log").read_text()
        browser = Browser(800, 480)
        browser.driver.get(f"http://127.0.0.1:{port}/kiosk")
        browser.wait_state("camera-missing", 20)
        assert browser.js("return document.getElementById('camera-reason').textContent")
        browser.screenshot("kiosk-camera-missing-800x480")
        time.sleep(3.0)
        assert proc.poll() is None
        fed = [t for t, line in notify.lines(since=ready[0] + 1.0) if line == "WATCHDOG=1"]
        assert len(fed) >= 3, "the watchdog must be fed while capture retries"
        key = page_key(port)
        refused = post(port, "/kiosk/session/start", headers={"Content-Type": "application/json",
                                                              "Origin": f"http://127.0.0.1:{port}", "X-Kiosk-Key": key})
        assert refused == 409, "no screening can start without a camera"
        assert stop_daemon(proc) == 0
        browser.wait(lambda: "stopping" in [e["state"] for e in browser.js("return window.facediagKiosk.log")], 10,
                     what="the stopping state")
        browser.wait_state("loading", 15)  # the daemon is gone: the page waits for the station to come back
        browser.screenshot("kiosk-loading-800x480")
    finally:
        if browser is not None:
            browser.close()
        if proc.poll() is None:
            stop_daemon(proc)
        notify.close()


def test_kiosk_shows_a_degraded_station_that_still_screens(tmp_path, bundle_dir, yunet, face_video):
    """TensorRT "installed" (a package of that name on the path) but the bundle has no engine: the station runs
    on the CPU fallback, /health says degraded (facediag.edge.fallback), and the kiosk shows it, Start included."""
    import os
    import subprocess
    import sys

    from tests.daemon_helpers import REPO

    stub = tmp_path / "site" / "tensorrt"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('stand-in: only its presence is used')\n")
    port = free_port()
    config = write_station_config(tmp_path, uri=f"file:{face_video}", bundle=bundle_dir, yunet=yunet, port=port,
                                  trigger="button")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = f"{stub.parent}{os.pathsep}{REPO}"
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "facediag", "run", "--config", str(config)], cwd=tmp_path,
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    browser = None
    try:
        assert wait_until(lambda: proc.poll() is None and api_json(port, "/status")["ready"]
                          if _answers(port) else False, 120), log.read_text()
        assert api_json(port, "/status")["degraded"] is True
        browser = Browser(800, 480)
        browser.driver.get(f"http://127.0.0.1:{port}/kiosk")
        browser.wait_state("degraded", 20)
        assert "CPU fallback" in str(browser.js("return document.getElementById('degraded-detail').textContent"))
        assert browser.js("return getComputedStyle(document.getElementById('start-degraded')).display") != "none"
        browser.screenshot("kiosk-degraded-800x480")
    finally:
        if browser is not None:
            browser.close()
        stop_daemon(proc)


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        return True
    except urllib.error.HTTPError:
        return True  # 503 while starting or degraded: it answers
    except OSError:
        return False


# ------------------------------------------------------------------ the browser's private network (issue 12)
PROXYD = Path("/usr/lib/systemd/systemd-socket-proxyd")
SOCKET_ACTIVATE = "systemd-socket-activate"


def _proxy_command(daemon_port: int) -> list[str]:
    """facediag-kiosk-proxy.service's ExecStart, as written in the unit, aimed at the test daemon's port."""
    from tests.test_systemd_units import UNITS, one, parse_unit

    argv = one(parse_unit(UNITS / "facediag-kiosk-proxy.service"), "Service", "ExecStart").split()
    assert argv[0] == str(PROXYD) and argv[-1] == "127.0.0.1:8787", argv
    return [*argv[:-1], f"127.0.0.1:{daemon_port}"]


def test_kiosk_page_works_through_the_units_socket_proxy(tmp_path, bundle_dir, yunet, face_video):
    """The kiosk unit runs Chromium with PrivateNetwork=yes: its 127.0.0.1:8787 is facediag-kiosk-proxy.socket,
    and the real systemd-socket-proxyd (the unit's own command line) carries the page, the event stream, the
    preview and the Start POST to the daemon. Here the socket is passed by systemd-socket-activate, as systemd
    passes it (one listening socket, Accept=no); the namespaces themselves need systemd as PID 1."""
    import shutil
    import subprocess

    if not PROXYD.exists() or shutil.which(SOCKET_ACTIVATE) is None:
        pytest.skip("systemd-socket-proxyd / systemd-socket-activate not installed (apt-get install systemd)")
    port, front = free_port(), free_port()
    config = write_station_config(tmp_path, uri=f"file:{face_video}", bundle=bundle_dir, yunet=yunet, port=port,
                                  loop=True, trigger="button", screening="result_hold_s = 3.0")
    notify = NotifyListener()
    proc = start_daemon(config, tmp_path / "cwd", notify, log_path=tmp_path / "daemon.log")
    proxy = subprocess.Popen([SOCKET_ACTIVATE, "-l", f"127.0.0.1:{front}", *_proxy_command(port)],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "proxy.log", "wb"))
    browser = None
    try:
        assert notify.wait_for("READY=1", 120), (tmp_path / "daemon.log").read_text()
        browser = Browser(800, 480)
        browser.driver.get(f"http://127.0.0.1:{front}/kiosk")
        browser.wait_state("idle", 20)
        from selenium.webdriver.common.by import By

        browser.driver.find_element(By.ID, "start").click()  # a same-origin POST through the proxy
        browser.wait_state("screening", 10)
        browser.wait(lambda: browser.state() == "result", 60, what="an outcome through the proxy")
        assert browser.js("return document.getElementById('outcome').dataset.decision") in DECISIONS
        assert api_json(port, "/status")["results"] == 1
    finally:
        if browser is not None:
            browser.close()
        proxy.terminate()
        proxy.wait(10)
        code = stop_daemon(proc)
        notify.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert "Failed" not in (tmp_path / "proxy.log").read_text()
