"""Frame capture: URI parsing, real sources (MJPEG over HTTP, video file, image folder),
the latest-frame hand-off under a fast producer, and the reconnecting supervisor."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from facediag.edge.capture import (  # noqa: E402
    BackoffPolicy,
    CaptureSupervisor,
    EndOfStream,
    LatestFrame,
    SourceError,
    make_source,
    parse_source_uri,
)
from facediag.edge.capture import supervisor as sup_mod  # noqa: E402
from facediag.edge.compat import zip_strict  # noqa: E402 - zip(strict=True), also on 3.8
from facediag.edge.errors import ConfigError  # noqa: E402
from tests.conftest import fixture_path  # noqa: E402

PHOTOS = ["faces/wild/img1.jpg", "faces/wild/img2.jpg", "faces/wild/img3.jpg"]
SIZE = (160, 120)  # w, h


def _photos() -> list[np.ndarray]:
    """Real fixture photos, resized small so encoding and decoding stay quick."""
    out = []
    for rel in PHOTOS:
        img = cv2.imread(str(fixture_path(rel)))
        assert img is not None
        out.append(cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA))
    return out


def _close(a: np.ndarray, b: np.ndarray, tol: float = 12.0) -> bool:
    """Same picture up to JPEG/MJPG compression noise."""
    return a.shape == b.shape and float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)))) < tol


def _closest(frame: np.ndarray, refs: list[np.ndarray]) -> int:
    return int(np.argmin([np.mean(np.abs(frame.astype(np.int16) - r.astype(np.int16))) for r in refs]))


# ---------------------------------------------------------------------------------------- URIs
@pytest.mark.parametrize(
    ("uri", "kind", "target", "options"),
    [
        ("picamera2:0", "picamera2", "0", {}),
        ("picamera2:1?fps=30", "picamera2", "1", {"fps": "30"}),
        ("v4l2:/dev/video2", "v4l2", "/dev/video2", {}),
        ("v4l2:0", "v4l2", "/dev/video0", {}),
        ("/dev/video1", "v4l2", "/dev/video1", {}),
        ("gst:videotestsrc ! videoconvert ! appsink", "gst", "videotestsrc ! videoconvert ! appsink", {}),
        ("rtsp://cam.local:554/s1", "url", "rtsp://cam.local:554/s1", {}),
        ("http://127.0.0.1:8080/video.mjpg?x=1", "url", "http://127.0.0.1:8080/video.mjpg?x=1", {}),
        ("file:/data/clip.mp4?loop=1&fps=5", "file", "/data/clip.mp4", {"loop": "1", "fps": "5"}),
        ("file:///data/clip.mp4", "file", "/data/clip.mp4", {}),
        ("/data/clip.avi", "file", "/data/clip.avi", {}),
        ("folder:/data/photos?loop=1", "folder", "/data/photos", {"loop": "1"}),
    ],
)
def test_parse_source_uri(uri, kind, target, options):
    spec = parse_source_uri(uri)
    assert (spec.kind, spec.target, spec.options) == (kind, target, options)


def test_parse_plain_directory_is_a_folder(tmp_path):
    assert parse_source_uri(str(tmp_path)).kind == "folder"


@pytest.mark.parametrize("uri", ["", "   ", "webcam", "/no/such/file.txt", "gst:"])
def test_parse_rejects_unknown_forms(uri):
    with pytest.raises(ConfigError):
        parse_source_uri(uri)


def test_make_source_options_and_overrides(tmp_path):
    src = make_source(f"file:{tmp_path}/clip.avi?loop=1&fps=7")
    assert (src.loop, src.requested_fps) == (True, 7.0)
    src = make_source(f"file:{tmp_path}/clip.avi?loop=1", loop=False, fps=0)
    assert (src.loop, src.effective_fps) == (False, None)
    with pytest.raises(ConfigError, match="unknown option"):
        make_source(f"file:{tmp_path}/clip.avi?lop=1")
    with pytest.raises(ConfigError, match="fps"):
        make_source(f"file:{tmp_path}/clip.avi?fps=fast")


# ---------------------------------------------------------------------------- latest-frame box
def test_latest_frame_fast_producer_slow_consumer_counts_drops():
    box = LatestFrame()
    n = 300
    got: list[int] = []
    done = threading.Event()

    def produce():
        for i in range(n):
            box.put(np.full((2, 2, 3), i % 256, np.uint8))
            if i % 10 == 0:
                time.sleep(0.001)
        done.set()

    def consume():
        while True:
            frame = box.get(timeout=0.05)
            if frame is None:
                if done.is_set():
                    return
                continue
            got.append(frame.seq)
            time.sleep(0.003)  # slower than the producer

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert box.put_count == n
    assert got == sorted(set(got)), "a frame was returned twice or out of order"
    assert got[-1] == n, "the newest frame must always be delivered"
    assert box.dropped > 0, "a slow consumer must cause drops"
    # Every frame is either taken or dropped, and the sequence gaps are exactly the drops.
    assert box.taken + box.dropped == n
    gaps = sum(b - a - 1 for a, b in zip_strict([0, *got][:-1], got))
    assert gaps == box.dropped


def test_latest_frame_get_waits_for_a_new_frame_and_close_wakes():
    box = LatestFrame()
    assert box.get(timeout=0.01) is None
    first = box.put(np.zeros((1, 1, 3), np.uint8), captured_at=123.0)
    assert (first.seq, first.captured_at) == (1, 123.0)
    assert box.get(timeout=0.01) is first
    assert box.get(timeout=0.01) is None, "get() must not return the same frame twice"
    assert box.peek() is first
    result: list = []
    t = threading.Thread(target=lambda: result.append(box.get(timeout=10)))
    t.start()
    time.sleep(0.05)
    box.close()
    t.join(5)
    assert not t.is_alive() and result == [None]


# ----------------------------------------------------------------------------------- file source
@pytest.fixture
def video_file(tmp_path) -> tuple[Path, list[np.ndarray]]:
    """A 6-frame MJPG .avi made from real photos (pip's OpenCV writes MJPG/AVI without FFmpeg encoders)."""
    photos = _photos()
    frames = photos + photos[::-1]
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, SIZE)
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path, frames


def test_video_file_no_loop_reads_every_frame_then_ends(video_file):
    path, frames = video_file
    src = make_source(f"file:{path}", fps=0)
    src.open()
    got = []
    with pytest.raises(EndOfStream):
        for _ in range(100):
            got.append(src.read())
    src.close()
    assert len(got) == len(frames)
    for g, f in zip_strict(got, frames):
        assert g.dtype == np.uint8 and g.shape == (SIZE[1], SIZE[0], 3)
        assert _close(g, f)


def test_video_file_loop_restarts_at_first_frame(video_file):
    path, frames = video_file
    src = make_source(str(path), loop=True, fps=0)
    src.open()
    got = [src.read() for _ in range(2 * len(frames) + 2)]
    src.close()
    assert src.loops_completed == 2
    for i, g in enumerate(got):
        assert _close(g, frames[i % len(frames)]), f"frame {i} is not frame {i % len(frames)} of the file"


def test_video_file_paces_at_file_rate_or_given_rate(video_file):
    from facediag.edge.capture.video_file_source import VideoFileSource

    path, _ = video_file
    fake_now = [0.0]
    sleeps: list[float] = []

    def sleep(s):
        sleeps.append(s)
        fake_now[0] += s

    src = VideoFileSource(path, _clock=lambda: fake_now[0], _sleep=sleep)
    src.open()
    assert src.file_fps == pytest.approx(25.0)
    for _ in range(5):
        src.read()
    assert sleeps and sum(sleeps) == pytest.approx(4 / 25.0)  # 5 frames = 4 periods
    src.close()
    sleeps.clear()
    src = VideoFileSource(path, fps=10, _clock=lambda: fake_now[0], _sleep=sleep)
    src.open()
    for _ in range(3):
        src.read()
    assert sum(sleeps) == pytest.approx(2 / 10.0)
    src.close()
    sleeps.clear()
    src = VideoFileSource(path, fps=0, _clock=lambda: fake_now[0], _sleep=sleep)
    src.open()
    for _ in range(3):
        src.read()
    assert sleeps == []
    src.close()


def test_video_file_missing_is_a_clear_error(tmp_path):
    src = make_source(f"file:{tmp_path}/nope.mp4")
    with pytest.raises(SourceError, match="does not exist"):
        src.open()


# ------------------------------------------------------------------------------- folder source
def test_image_folder_reads_in_name_order_skips_bad_files(tmp_path):
    from facediag.edge.face.imageio import load_image

    names = ["b.jpg", "a.jpg", "c.png"]
    for name, rel in zip_strict(names, PHOTOS):
        img = cv2.imread(str(fixture_path(rel)))
        cv2.imwrite(str(tmp_path / name), cv2.resize(img, SIZE))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "notes.txt").write_text("ignored")
    src = make_source(f"folder:{tmp_path}")
    src.open()
    got = []
    with pytest.raises(EndOfStream):
        for _ in range(10):
            got.append(src.read())
    assert len(got) == 3
    for frame, name in zip_strict(got, ["a.jpg", "b.jpg", "c.png"]):
        assert np.array_equal(frame, load_image(tmp_path / name))
    assert [p.name for p in src.skipped] == ["broken.jpg"]
    looped = make_source(str(tmp_path), loop=True)
    looped.open()
    seq = [looped.read() for _ in range(7)]
    assert np.array_equal(seq[0], seq[3]) and np.array_equal(seq[1], seq[4])


def test_image_folder_without_images_fails_to_open(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no images"):
        make_source(f"folder:{tmp_path}").open()


# ------------------------------------------------------------- picamera2 (stand-in module)
class _StandInPicamera2:
    """A stand-in for picamera2.Picamera2 with the calls the source uses (not the real library)."""

    cameras: list[str] = ["imx219"]
    instances: list[_StandInPicamera2] = []

    def __init__(self, camera_num=0):
        # The real class indexes its list of detected cameras, hence IndexError with none attached.
        self.model = self.cameras[camera_num]
        self.calls: list[tuple] = []
        self.instances.append(self)

    def create_video_configuration(self, main=None, controls=None, **kw):
        self.calls.append(("create_video_configuration", main, controls))
        return {"main": main, "controls": controls}

    def configure(self, config):
        self.calls.append(("configure", config))

    def start(self):
        self.calls.append(("start",))

    def capture_array(self, name="main", wait=None, signal_function=None):
        self.calls.append(("capture_array", name))
        w, h = self.calls[0][1]["size"]
        frame = np.zeros((h, w, 3), np.uint8)
        frame[..., 0] = 255  # RGB888 in picamera2 = B, G, R byte order: channel 0 is blue
        return frame

    def stop(self):
        self.calls.append(("stop",))

    def close(self):
        self.calls.append(("close",))


@pytest.fixture
def stand_in_picamera2(monkeypatch):
    module = types.ModuleType("picamera2")
    module.Picamera2 = _StandInPicamera2
    _StandInPicamera2.instances = []
    _StandInPicamera2.cameras = ["imx219"]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return _StandInPicamera2


def test_picamera2_configures_bgr_video_and_reads(stand_in_picamera2):
    src = make_source("picamera2:0?width=320&height=240&fps=15")
    src.open()
    frame = src.read()
    src.close()
    cam = stand_in_picamera2.instances[0]
    name, main, controls = cam.calls[0]
    assert name == "create_video_configuration"
    assert main == {"size": (320, 240), "format": "RGB888"}
    assert controls == {"FrameRate": 15.0}
    assert [c[0] for c in cam.calls[1:]] == ["configure", "start", "capture_array", "stop", "close"]
    assert frame.shape == (240, 320, 3) and frame[0, 0].tolist() == [255, 0, 0]


def test_picamera2_no_camera_is_a_clear_source_error(stand_in_picamera2):
    stand_in_picamera2.cameras = []
    with pytest.raises(SourceError, match="no camera number 0"):
        make_source("picamera2:0").open()


def test_picamera2_missing_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` fail
    with pytest.raises(SourceError, match="python3-picamera2"):
        make_source("picamera2:0").open()


# ------------------------------------------------------------------------ GStreamer, V4L2
def test_gstreamer_build_info_detection():
    from facediag.edge.capture.gstreamer_source import build_info_has_gstreamer, jetson_csi_pipeline

    yes = "  Video I/O:\n    FFMPEG:                      YES\n    GStreamer:                   YES (1.20.3)\n"
    no = "  Video I/O:\n    FFMPEG:                      YES\n    GStreamer:                   NO\n"
    assert build_info_has_gstreamer(yes) and not build_info_has_gstreamer(no)
    assert not build_info_has_gstreamer("nothing about it")
    pipeline = jetson_csi_pipeline(sensor_id=1, width=640, height=480, fps=15)
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1") and pipeline.endswith("appsink drop=1 max-buffers=1")
    assert parse_source_uri("gst:" + pipeline).target == pipeline


def test_gstreamer_without_support_explains_pip_opencv():
    from facediag.edge.capture.gstreamer_source import opencv_has_gstreamer

    if opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer; the refusal path cannot be shown here")
    with pytest.raises(SourceError, match="without GStreamer"):
        make_source("gst:videotestsrc ! videoconvert ! appsink").open()


def test_v4l2_missing_device_is_a_clear_error():
    device = next(f"/dev/video{i}" for i in range(60, 100) if not Path(f"/dev/video{i}").exists())
    with pytest.raises(SourceError, match="does not exist"):
        make_source(device).open()


def test_url_source_never_logs_a_password():
    src = make_source("rtsp://admin:secret@10.0.0.5/stream")
    assert "secret" not in src.uri and "secret" not in src.describe()


# ------------------------------------------------------------------------------------ backoff
def test_backoff_is_capped_exponential_with_seeded_jitter():
    policy = BackoffPolicy(initial_s=0.5, factor=2.0, max_s=4.0, jitter=0.2)
    a = [policy.delay(n, random.Random(7)) for n in range(1, 8)]
    b = [policy.delay(n, random.Random(7)) for n in range(1, 8)]
    assert a == b, "the same seed must give the same schedule"
    for n, d in enumerate(a, start=1):
        base = min(4.0, 0.5 * 2 ** (n - 1))
        assert base * 0.8 <= d <= base * 1.2
    assert max(a) <= 4.8
    rng = random.Random(1)
    assert len({policy.delay(3, rng) for _ in range(5)}) > 1, "jitter must vary between attempts"
    assert BackoffPolicy(jitter=0).delay(3, random.Random()) == 2.0


# ------------------------------------------------------------------ supervisor: real MJPEG server
MJPEG_SERVER = r"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port = int(sys.argv[1])
frames = [open(p, "rb").read() for p in sys.argv[2:]]
class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        i = 0
        try:
            while True:
                jpeg = frames[i % len(frames)]
                i += 1
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg))
                self.wfile.write(jpeg + b"\r\n")
                time.sleep(0.03)
        except OSError:
            pass
ThreadingHTTPServer.allow_reuse_address = True
ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int, jpegs: list[Path]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", MJPEG_SERVER, str(port), *map(str, jpegs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"MJPEG test server did not start: {proc.stderr.read()}")
    return proc


def test_supervisor_reconnects_to_a_restarted_mjpeg_server(tmp_path):
    photos = _photos()
    jpegs = []
    for i, p in enumerate(photos):
        jpegs.append(tmp_path / f"{i}.jpg")
        cv2.imwrite(str(jpegs[-1]), p)
    port = _free_port()
    server = _start_server(port, jpegs)
    box = LatestFrame()
    supervisor = CaptureSupervisor(
        make_source(f"http://127.0.0.1:{port}/stream.mjpg"), box,
        stall_s=1.0, backoff=BackoffPolicy(initial_s=0.1, max_s=0.5, jitter=0.1), rng=random.Random(3),
    )
    try:
        supervisor.start()
        assert supervisor.wait_for(sup_mod.STREAMING, 20), supervisor.stats()
        frame = box.get(timeout=10)
        assert frame is not None and frame.image.shape == (SIZE[1], SIZE[0], 3)
        assert _close(frame.image, photos[_closest(frame.image, photos)]), "decoded frame is not one of the photos"
        before = supervisor.stats()
        assert before.reconnects == 0 and before.frames_captured >= 1

        server.kill()
        server.wait(10)
        # The supervisor notices (stall, failed reopen) and keeps retrying with backoff.
        assert supervisor.wait_for((sup_mod.STALLED, sup_mod.BACKOFF), 15), supervisor.stats()
        deadline = time.monotonic() + 15
        while supervisor.stats().open_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        down = supervisor.stats()
        assert down.open_failures >= 2 and down.state != sup_mod.STREAMING
        assert down.last_error

        server = _start_server(port, jpegs)
        assert supervisor.wait_for(sup_mod.STREAMING, 20), supervisor.stats()
        after_seq = box.get(timeout=10)
        assert after_seq is not None and after_seq.seq > frame.seq
        up = supervisor.stats()
        assert up.reconnects >= 1 and up.frames_captured > before.frames_captured
        assert up.stalls >= 1
    finally:
        assert supervisor.stop(timeout=15)
        server.kill()
        server.wait(10)
    assert supervisor.state == sup_mod.STOPPED


def test_supervisor_ends_with_a_finite_file(video_file):
    path, frames = video_file
    box = LatestFrame()
    supervisor = CaptureSupervisor(make_source(f"file:{path}", fps=0), box, stall_s=5).start()
    assert supervisor.wait_for(sup_mod.ENDED, 20), supervisor.stats()
    stats = supervisor.stats()
    assert stats.frames_captured == len(frames)
    assert stats.reconnects == 0 and stats.frames_dropped == box.dropped
    assert box.closed
    supervisor.stop()
    assert supervisor.state == sup_mod.ENDED


def test_supervisor_backs_off_when_a_source_never_opens(tmp_path):
    supervisor = CaptureSupervisor(
        make_source(f"file:{tmp_path}/absent.avi"), stall_s=1,
        backoff=BackoffPolicy(initial_s=0.05, max_s=0.1, jitter=0), rng=random.Random(0),
    ).start()
    try:
        deadline = time.monotonic() + 10
        while supervisor.stats().open_failures < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = supervisor.stats()
        assert stats.open_failures >= 3 and stats.frames_captured == 0
        assert "does not exist" in (stats.last_error or "")
    finally:
        assert supervisor.stop(5)
    assert supervisor.state == sup_mod.STOPPED
