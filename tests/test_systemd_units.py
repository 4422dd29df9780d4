"""The systemd units: the settings the daemon relies on, `systemd-analyze verify`, and the
hardening score from `systemd-analyze security --offline=true` (must be 2.0 or lower).

`verify` checks that ExecStart's program exists. The units run /usr/local/bin/facediag
(the console script that `pip install` puts in the venv, symlinked there by the README's
install steps). The test builds a throw-away root: the host's unit search path (for
sysinit.target, network-online.target...), our two units, and an executable stand-in at
/usr/local/bin/facediag; a second run without the stand-in must fail, which shows that
the check is real and that the path is the one the units use.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
DAEMON = UNITS / "facediag.service"
BUILD = UNITS / "facediag-engine-build.service"
MAX_EXPOSURE = 2.0


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd allows repeated keys), comments dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: key outside a section: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


def test_daemon_unit_settings():
    u = parse_unit(DAEMON)
    s = "Service"
    assert one(u, s, "Type") == "notify"
    assert one(u, s, "NotifyAccess") == "main"
    assert int(one(u, s, "WatchdogSec")) > 0
    assert one(u, s, "Restart") == "on-failure"
    assert "78" in one(u, s, "RestartPreventExitStatus").split()
    assert one(u, s, "User") == "facediag" and one(u, s, "Group") == "facediag"
    assert one(u, s, "StateDirectory") == "facediag"
    assert one(u, s, "UMask") == "0077"
    assert one(u, s, "NoNewPrivileges") == "yes"
    assert one(u, s, "ProtectSystem") == "strict"
    assert one(u, s, "CapabilityBoundingSet") == ""
    assert one(u, s, "DevicePolicy") == "closed"
    devices = [v.split()[0] for v in u[s]["DeviceAllow"]]
    for needed in ("char-video4linux", "/dev/nvmap", "/dev/nvhost-ctrl-gpu", "/dev/nvidiactl", "/dev/nvidia0"):
        assert needed in devices, needed
    assert one(u, s, "IPAddressDeny") == "any"
    assert one(u, s, "IPAddressAllow") == "localhost"
    assert one(u, s, "MemoryMax")
    assert "video" in one(u, s, "SupplementaryGroups").split()
    exec_start = one(u, s, "ExecStart").split()
    assert exec_start[:2] == ["/usr/local/bin/facediag", "run"]
    assert exec_start[exec_start.index("--config") + 1] == "/etc/facediag/station.toml"
    assert "facediag-engine-build.service" in one(u, "Unit", "After").split()
    assert "facediag-engine-build.service" in one(u, "Unit", "Wants").split()
    assert one(u, "Install", "WantedBy") == "multi-user.target"


def test_engine_build_unit_runs_build_then_verify_before_the_daemon():
    u = parse_unit(BUILD)
    s = "Service"
    assert one(u, s, "Type") == "oneshot"
    assert "facediag.service" in one(u, "Unit", "Before").split()
    commands = [v.split()[:2] for v in u[s]["ExecStart"]]
    assert commands == [["/usr/local/bin/facediag", "build"], ["/usr/local/bin/facediag", "verify"]]
    timeout = one(u, s, "TimeoutStartSec")
    assert timeout == "infinity" or re.fullmatch(r"\d+min", timeout) and int(timeout[:-3]) >= 30
    assert one(u, s, "User") == "facediag"
    assert one(u, s, "PrivateNetwork") == "yes", "building an engine needs no network"


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return exe


def _systemd_version(exe: str) -> int:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.match(r"systemd (\d+)", out)
    return int(m.group(1)) if m else 0


def _unit_search_dir() -> Path:
    for d in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (d / "sysinit.target").exists():
            return d
    pytest.skip("no systemd unit directory with sysinit.target on this machine")


def _make_root(tmp_path: Path, with_executable: bool) -> Path:
    root = tmp_path / ("root" if with_executable else "root-no-exe")
    shutil.copytree(_unit_search_dir(), root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in (DAEMON, BUILD):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    if with_executable:
        exe = root / "usr/local/bin/facediag"
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\n# stand-in for the pip-installed facediag console script\nexit 0\n")
        exe.chmod(0o755)
    return root


def test_units_pass_systemd_analyze_verify(tmp_path):
    exe = _systemd_analyze()
    root = _make_root(tmp_path, with_executable=True)
    units = [str(root / "etc/systemd/system" / u.name) for u in (DAEMON, BUILD)]
    res = subprocess.run([exe, "verify", f"--root={root}", *units], capture_output=True, text=True, timeout=120)
    # Unknown or misspelt keys are only warnings (exit 0), so the output must be empty too.
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr

    bare = _make_root(tmp_path, with_executable=False)
    res = subprocess.run([exe, "verify", f"--root={bare}", str(bare / "etc/systemd/system" / DAEMON.name)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "/usr/local/bin/facediag" in res.stdout + res.stderr


@pytest.mark.parametrize("unit", [DAEMON, BUILD], ids=lambda p: p.name)
def test_security_exposure_is_at_most_two(unit):
    exe = _systemd_analyze()
    if _systemd_version(exe) < 252:
        pytest.skip("systemd-analyze security --offline needs systemd 252 or newer")
    res = subprocess.run([exe, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    assert m, res.stdout[-2000:] + res.stderr
    score = float(m.group(1))
    print(f"{unit.name}: systemd-analyze security exposure {score}")
    assert score <= MAX_EXPOSURE, res.stdout


MDWE_PROBE = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(3)  # kernel older than 6.3: cannot emulate MemoryDenyWriteExecute here
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(4)  # the restriction is not in force
except OSError:
    pass
import cv2, numpy as np, onnxruntime as ort
model, detector, photo, video = sys.argv[1:5]
img = cv2.imread(photo)
img = cv2.resize(img, (640, int(640 * img.shape[0] / img.shape[1])))  # YuNet's working scale
h, w = img.shape[:2]
det = cv2.FaceDetectorYN.create(detector, "", (w, h))
_, faces = det.detect(img)
assert faces is not None and len(faces) >= 1
writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w // 4, h // 4))
writer.write(cv2.resize(img, (w // 4, h // 4)))
writer.release()
from edge.capture import open_source
src = open_source("file:" + video, fps=0)
assert src.read().shape == (h // 4, w // 4, 3)
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
out = sess.run(None, {sess.get_inputs()[0].name: np.random.rand(2, 3, 112, 112).astype(np.float32)})
assert out[0].shape == (2, 128)
print("ok")
"""


def test_cpu_station_path_runs_without_writable_executable_memory(tmp_path):
    """MemoryDenyWriteExecute=yes is set in the units. Emulate it with the kernel's PR_SET_MDWE
    (the same refusal of W+X mappings, Linux >= 6.3) and run OpenCV decode + YuNet + the video
    source + ONNX Runtime CPU inference. CUDA/TensorRT cannot be checked here (see README)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("cv2")
    from tests.conftest import fixture_path

    model = fixture_path("models/mobilefacenet_112x112.onnx")
    detector = fixture_path("models/face_detection_yunet_2026may.onnx")
    photo = fixture_path("faces/wild/img1.jpg")
    import os
    import sys

    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", MDWE_PROBE, str(model), str(detector), str(photo),
                          str(tmp_path / "clip.avi")], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    if res.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3); cannot emulate MemoryDenyWriteExecute")
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr
