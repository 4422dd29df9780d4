"""Helpers for the daemon's end-to-end tests: a real bundle, a real face video, a systemd notify
socket, a station config, and the daemon as a subprocess.

Nothing here stands in for the daemon's parts: the bundle is a real MobileFaceNet (fixture
weights) with a logistic-regression head fitted on real aligned Yale crops, exported through the
project's exporter; the video is written with cv2.VideoWriter from fixture photos; the notify
socket is a real AF_UNIX datagram socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOKEN = "daemon-test-token-" + "k" * 20
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".npy", ".npz", ".pgm", ".ppm"}


# ------------------------------------------------------------------ bundle
def yale_photo(name: str) -> np.ndarray:
    from facediag.edge.face.imageio import load_image
    from tests.conftest import fixture_path

    return load_image(fixture_path(f"faces/yale/{name}"))


_BUILT_BUNDLE: list[Path] = []  # the one real build of this test process (see build_test_bundle)


def build_test_bundle(out_dir: Path) -> Path:
    """MobileFaceNet (fixture checkpoint) + a 2-class head (glasses vs healthy) fitted on Yale crops.

    Built once per test process (cropping, fitting and the export's parity check take 20-50 s) and copied
    into ``out_dir`` for every caller, so a test that changes its bundle never touches another's.
    """
    import shutil
    import tempfile

    prebuilt = os.environ.get("FACEDIAG_TEST_BUNDLE")  # built by another interpreter: .ci/py38 (3.8 has no torch)
    if not _BUILT_BUNDLE and prebuilt:
        _BUILT_BUNDLE.append(Path(prebuilt))
    if not _BUILT_BUNDLE:
        from tests.conftest import fixture_path

        fixture_path("models/mobilefacenet_112x96_casia.ckpt")  # skips, saying why, without the fixtures
        cache = Path(tempfile.mkdtemp(prefix="fd-test-bundle-"))
        import atexit

        atexit.register(shutil.rmtree, cache, True)
        _BUILT_BUNDLE.append(_build_test_bundle(cache))
    dest = Path(out_dir) / "bundle"
    shutil.copytree(_BUILT_BUNDLE[0], dest)
    return dest


def _build_test_bundle(out_dir: Path) -> Path:
    import torch
    from sklearn.linear_model import LogisticRegression

    from facediag.demo.bundle import build_head_bundle
    from facediag.edge.face.detector import make_detector
    from facediag.edge.face.pipeline import FaceFrontEnd
    from facediag.training.backbones import get_backbone
    from tests.conftest import fixture_path

    backbone = get_backbone("mobilefacenet", weights=fixture_path("models/mobilefacenet_112x96_casia.ckpt"))
    front = FaceFrontEnd(make_detector("yunet", fixture_path("models/face_detection_yunet_2026may.onnx")),
                         backbone.contract)
    crops, labels = [], []
    for subject in range(1, 16):
        for condition, label in (("glasses", 1), ("noglasses", 0)):
            result = front.process(yale_photo(f"subject{subject:02d}.{condition}"))
            if result.crop is not None:
                crops.append(result.crop)
                labels.append(label)
    from facediag.edge.face.contract import crops_to_input

    x = crops_to_input(crops, backbone.contract)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(backbone(torch.from_numpy(x)), dim=1).numpy()
    y = np.asarray(labels)
    assert len(set(y)) == 2, "the Yale fixture should give crops of both classes"
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(emb, y)
    # sklearn's binary model has one row (class 1 vs 0); a 2-row softmax head with rows (0, w) is the same model.
    w1, b1 = clf.coef_[0].astype(np.float32), float(clf.intercept_[0])
    weight = np.stack([np.zeros_like(w1), w1])
    bias = np.array([0.0, b1], dtype=np.float32)
    bundle = build_head_bundle(
        backbone, weight, bias, temperature=1.0, classes=["healthy", "glasses"], healthy_class="healthy",
        parity_inputs=x[:16], out_dir=out_dir, strategy="logistic-regression-test-head",
    )
    return Path(bundle.path)


# ------------------------------------------------------------------ video
def face_frame(photo: np.ndarray | None, size: tuple[int, int] = (640, 480), scale: float = 1.6,
               dx: int = 0, background: int = 70) -> np.ndarray:
    """A size[0] x size[1] frame: a flat background, with ``photo`` scaled and centred (+dx) when given."""
    import cv2

    w, h = size
    frame = np.full((h, w, 3), background, np.uint8)
    if photo is None:
        return frame
    img = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    ih, iw = img.shape[:2]
    ih, iw = min(ih, h), min(iw, w)
    y0 = (h - ih) // 2
    x0 = max(0, min(w - iw, (w - iw) // 2 + dx))
    frame[y0:y0 + ih, x0:x0 + iw] = img[:ih, :iw]
    return frame


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "cv2.VideoWriter could not open an MJPG .avi"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def visits_video(path: Path, photos: list[np.ndarray], hold: int = 45, gap: int = 40, fps: float = 30.0) -> Path:
    """Each photo held for ``hold`` frames, each followed by ``gap`` empty frames (the person left)."""
    empty = face_frame(None)
    frames: list[np.ndarray] = []
    for p in photos:
        shown = face_frame(p)
        frames += [shown] * hold + [empty] * gap
    return write_video(path, frames, fps)


# ------------------------------------------------------------------ systemd notify socket
class NotifyListener:
    """A real AF_UNIX datagram socket standing where systemd's would; records (time, message)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fdn", dir="/tmp")  # AF_UNIX paths must be short
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:  # noqa: UP041 - on Python 3.8 (.ci/py38) it is not TimeoutError
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def lines(self, since: float = 0.0) -> list[tuple[float, str]]:
        with self._lock:
            return [(t, line) for t, msg in self.messages if t >= since for line in msg.split("\n")]

    def wait_for(self, prefix: str, timeout: float, since: float = 0.0) -> tuple[float, str] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in self.lines(since):
                if line.startswith(prefix):
                    return t, line
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass


# ------------------------------------------------------------------ config and process
def write_station_config(tmp: Path, *, uri: str, bundle: Path, yunet: Path, port: int, loop: bool = True,
                         extra: str = "", service: str = "", source_extra: str = "",
                         trust: str = "allow_unsigned = true", trigger: str = "auto",
                         screening: str = "") -> Path:
    """A station config for the tests. ``trust`` is the body of its [trust] section: by default the tests'
    unsigned bundles are allowed explicitly (tests/test_signing.py checks signed and refused ones)."""
    token_file = tmp / "api.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    state = tmp / "state"
    text = f"""
[source]
uri = "{uri}"
loop = {"true" if loop else "false"}
{source_extra}

[detector]
name = "yunet"
model_path = "{yunet}"

[quality]
min_face_px = 40.0
min_sharpness = 5.0

[engine]
bundle = "{bundle}"
backend = "auto"
threads = 1

[screening]
good_frames = 5
window_s = 5.0
face_lost_s = 0.5
trigger = "{trigger}"
{screening}

[results]
path = "{state / 'results.jsonl'}"

[api]
port = {port}
token_file = "{token_file}"

[service]
{service}

[trust]
{trust}
{extra}
"""
    path = tmp / "station.toml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(config: Path, cwd: Path, notify: NotifyListener | None, watchdog_usec: int | None = None,
                 log_path: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.pop("WATCHDOG_PID", None)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.path
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    cwd.mkdir(parents=True, exist_ok=True)
    err = open(log_path or (cwd / "daemon.log"), "wb")
    return subprocess.Popen([sys.executable, "-m", "facediag", "run", "--config", str(config)], cwd=cwd, env=env,
                            stdout=err, stderr=subprocess.STDOUT)


def stop_daemon(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise


def api_get(port: int, path: str, token: str | None = None, host: str = "127.0.0.1") -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://{host}:{port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def api_json(port: int, path: str) -> dict:
    code, body = api_get(port, path, TOKEN)
    assert code == 200, (path, code, body)
    return json.loads(body)


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    return [json.loads(line) for line in raw.split(b"\n") if line.strip()]


def wait_until(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def snapshot(*roots: Path) -> set[Path]:
    out: set[Path] = set()
    for root in roots:
        if root.exists():
            out |= {p for p in root.rglob("*") if p.is_file()}
    return out


def new_image_files(before: set[Path], after: set[Path]) -> list[Path]:
    return sorted(p for p in after - before if p.suffix.lower() in IMAGE_SUFFIXES)
