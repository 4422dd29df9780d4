"""The systemd units: the settings the daemon relies on, `systemd-analyze verify`, and the
hardening score from `systemd-analyze security --offline=true` (must be 1.5 or lower for every unit).

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
BUNDLE_PATH = UNITS / "facediag-bundle.path"
BUNDLE_CHANGED = UNITS / "facediag-bundle-changed.service"
SERVICES = (DAEMON, BUILD, BUNDLE_CHANGED)
MAX_EXPOSURE = 1.5


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


def test_api_token_comes_as_a_credential_and_mounts_are_private():
    u = parse_unit(DAEMON)
    assert one(u, "Service", "LoadCredential") == "api.token:/etc/facediag/api.token"
    for unit in SERVICES:
        assert one(parse_unit(unit), "Service", "PrivateMounts") == "yes", unit.name


def test_a_changed_bundle_reruns_the_engine_build_before_the_daemon():
    """No silent CPU fallback after a bundle update: the path unit restarts the daemon, and the engine build is
    PartOf= the daemon and ordered before it, so every daemon restart re-runs build + verify first."""
    path = parse_unit(BUNDLE_PATH)
    watched = path["Path"]["PathChanged"]
    assert "/var/lib/facediag/bundle/bundle.json" in watched
    assert one(path, "Path", "Unit") == BUNDLE_CHANGED.name
    assert one(path, "Install", "WantedBy") == "multi-user.target"
    changed = parse_unit(BUNDLE_CHANGED)
    cmd = one(changed, "Service", "ExecStart").split()
    assert cmd[0] == "/usr/bin/systemctl" and "try-restart" in cmd and cmd[-1] == "facediag.service"
    build = parse_unit(BUILD)
    assert "facediag.service" in one(build, "Unit", "PartOf").split()
    assert "facediag.service" in one(build, "Unit", "Before").split()
    assert one(build, "Service", "RemainAfterExit") == "yes"


def _run_module(*args: str) -> subprocess.CompletedProcess:
    import os
    import sys

    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "facediag", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_station_install_keeps_config_and_token_and_sets_modes(tmp_path):
    import stat

    root = tmp_path / "root"
    assert _run_module("station", "install", "--root", str(root)).returncode == 0
    token = root / "etc/facediag/api.token"
    config = root / "etc/facediag/station.toml"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) >= 32
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert config.read_bytes() == (UNITS / "station.toml").read_bytes()
    for unit in (*SERVICES, BUNDLE_PATH):
        assert (root / "etc/systemd/system" / unit.name).read_bytes() == unit.read_bytes()
    wrapper = root / "usr/local/bin/facediag"
    assert wrapper.stat().st_mode & 0o111
    version = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, timeout=60,
                             env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert version.returncode == 0 and version.stdout.startswith("facediag "), version.stderr
    # a second install never overwrites what the operator edited
    config.write_text("[station]\nid = \"edited\"\n")
    old_token = token.read_text()
    assert _run_module("station", "install", "--root", str(root)).returncode == 0
    assert config.read_text() == "[station]\nid = \"edited\"\n" and token.read_text() == old_token


def test_sysusers_and_tmpfiles_files_apply_to_a_root(tmp_path):
    import os

    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --root sets owners: needs root (a container is fine)")
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    root = tmp_path / "root"
    assert _run_module("station", "install", "--root", str(root)).returncode == 0
    res = subprocess.run(["systemd-sysusers", f"--root={root}"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    passwd = (root / "etc/passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("facediag:"))
    assert entry.endswith(":/var/lib/facediag:/usr/sbin/nologin")
    res = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", "facediag.conf"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    uid = int(entry.split(":")[2])
    state = root / "var/lib/facediag"
    assert state.is_dir() and state.stat().st_uid == uid and (state.stat().st_mode & 0o777) == 0o750
    assert ((root / "etc/facediag").stat().st_mode & 0o777) == 0o750


@pytest.mark.slow
def test_the_wheel_carries_units_config_and_system_files(tmp_path):
    import sys
    import zipfile

    setuptools = pytest.importorskip("setuptools", reason="building a wheel here needs setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject's build-system floor (SPDX licence field)
        pytest.skip(f"setuptools {setuptools.__version__} here; the build needs >= 77 (pyproject build-system)")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    wheel = next(tmp_path.glob("facediag-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("facediag.service", "facediag-engine-build.service", "facediag-bundle.path",
              "facediag-bundle-changed.service", "facediag-sysusers.conf", "facediag-tmpfiles.conf", "station.toml",
              "facediag-kiosk.service", "facediag-kiosk-proxy.service", "facediag-kiosk-proxy.socket"):
        assert f"facediag/station_files/{f}" in names, f
    assert "facediag/commands/station.py" in names


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
    """A root laid out by the real `facediag station install`, plus the host's unit search path and systemctl."""
    import os
    import sys

    root = tmp_path / ("root" if with_executable else "root-no-exe")
    shutil.copytree(_unit_search_dir(), root / "usr/lib/systemd/system", symlinks=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "facediag", "station", "install", "--root", str(root)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    systemctl = shutil.which("systemctl")
    assert systemctl, "systemctl is needed for the bundle-changed unit"
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(systemctl, root / "usr/bin/systemctl")
    if not with_executable:
        (root / "usr/local/bin/facediag").unlink()
    return root


def test_units_pass_systemd_analyze_verify(tmp_path):
    exe = _systemd_analyze()
    root = _make_root(tmp_path, with_executable=True)
    installed = root / "etc/systemd/system"
    units = sorted(str(p) for p in installed.iterdir())
    assert {Path(u).name for u in units} == {p.name for p in (*SERVICES, BUNDLE_PATH)}
    res = subprocess.run([exe, "verify", f"--root={root}", *units], capture_output=True, text=True, timeout=120)
    # Unknown or misspelt keys are only warnings (exit 0), so the output must be empty too.
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr

    bare = _make_root(tmp_path, with_executable=False)
    res = subprocess.run([exe, "verify", f"--root={bare}", str(bare / "etc/systemd/system" / DAEMON.name)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "/usr/local/bin/facediag" in res.stdout + res.stderr


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_security_exposure_is_at_most_1_5(unit):
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
from facediag.edge.capture import open_source
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


# ------------------------------------------------------------------ the kiosk display unit (issue 9)
KIOSK = UNITS / "facediag-kiosk.service"
KIOSK_PROXY = UNITS / "facediag-kiosk-proxy.service"
KIOSK_SOCKET = UNITS / "facediag-kiosk-proxy.socket"


def test_kiosk_display_unit_settings():
    u = parse_unit(KIOSK)
    s = "Service"
    cmd = " ".join(u[s]["ExecStart"])
    assert cmd.startswith("/usr/bin/cage ") and " -- /usr/bin/chromium " in cmd
    assert "--kiosk" in cmd and "--app=http://127.0.0.1:8787/kiosk" in cmd, "the screening page, on loopback"
    assert "--user-data-dir=/run/facediag-kiosk/" in cmd, "the browser profile lives in a tmpfs"
    assert one(u, s, "RuntimeDirectory") == "facediag-kiosk"
    assert one(u, s, "User") == "facediag-kiosk" != "root", "an unprivileged user of its own"
    assert one(u, s, "Restart") in ("always", "on-failure"), "a browser that dies is restarted"
    assert "facediag.service" in one(u, "Unit", "After").split()
    assert "facediag.service" in one(u, "Unit", "Wants").split()
    assert one(u, s, "NoNewPrivileges") == "yes" and one(u, s, "CapabilityBoundingSet") == ""
    assert one(u, s, "ProtectSystem") == "strict" and one(u, s, "DevicePolicy") == "closed"
    assert one(u, s, "IPAddressDeny") == "any" and one(u, s, "IPAddressAllow") == "localhost"
    assert one(u, "Install", "WantedBy") == "graphical.target"


@pytest.mark.parametrize("unit", (KIOSK, KIOSK_PROXY), ids=lambda p: p.name)
def test_kiosk_units_security_exposure_is_at_most_1_5(unit):
    exe = _systemd_analyze()
    if _systemd_version(exe) < 252:
        pytest.skip("systemd-analyze security --offline needs systemd 252 or newer")
    res = subprocess.run([exe, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    assert m, res.stdout[-2000:] + res.stderr
    print(f"{unit.name}: systemd-analyze security exposure {m.group(1)}")
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout[-3000:]


def test_the_kiosk_browser_has_no_network_but_the_proxied_page():
    """Chromium runs in a private network namespace; the socket unit binds the page's address inside that
    namespace, and the proxy (host namespace, loopback only) forwards to the daemon's address."""
    kiosk, sock, proxy = parse_unit(KIOSK), parse_unit(KIOSK_SOCKET), parse_unit(KIOSK_PROXY)
    assert one(kiosk, "Service", "PrivateNetwork") == "yes"
    assert one(kiosk, "Unit", "Requires") == KIOSK_SOCKET.name and KIOSK_SOCKET.name in one(kiosk, "Unit", "After")
    assert one(sock, "Unit", "JoinsNamespaceOf") == KIOSK.name and one(sock, "Socket", "PrivateNetwork") == "yes"
    page = re.search(r"--app=http://([\d.]+:\d+)/kiosk", " ".join(kiosk["Service"]["ExecStart"]))
    assert page and one(sock, "Socket", "ListenStream") == page.group(1), "the socket must be the page's address"
    daemon_default = re.search(r'^port\s*=\s*(\d+)', (UNITS / "station.toml").read_text(), re.M)
    assert daemon_default, "station.toml names the API port"
    assert one(proxy, "Service", "ExecStart").split()[-1] == f"127.0.0.1:{daemon_default.group(1)}"
    assert "PrivateNetwork" not in proxy["Service"], "the proxy must reach the daemon on the host's loopback"
    assert one(proxy, "Service", "IPAddressDeny") == "any" and one(proxy, "Service", "IPAddressAllow") == "localhost"


def test_kiosk_units_pass_systemd_analyze_verify(tmp_path):
    """The three kiosk units in a root with the daemon's unit, the host's unit path and executable stand-ins
    for cage and chromium (the real proxy binary is copied in)."""
    exe = _systemd_analyze()
    proxyd = Path("/usr/lib/systemd/systemd-socket-proxyd")
    if not proxyd.exists():
        pytest.skip("systemd-socket-proxyd is not installed (apt-get install systemd)")
    root = tmp_path / "root"
    shutil.copytree(_unit_search_dir(), root / "usr/lib/systemd/system", symlinks=True)
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True)
    for unit in (KIOSK, KIOSK_PROXY, KIOSK_SOCKET, DAEMON):
        shutil.copy(unit, installed / unit.name)
    for program in ("usr/bin/cage", "usr/bin/chromium", "usr/local/bin/facediag"):
        (root / program).parent.mkdir(parents=True, exist_ok=True)
        (root / program).write_text("#!/bin/sh\n")
        (root / program).chmod(0o755)
    shutil.copy(proxyd, root / "usr/lib/systemd" / proxyd.name)
    units = [str(installed / u.name) for u in (KIOSK, KIOSK_PROXY, KIOSK_SOCKET)]
    res = subprocess.run([exe, "verify", f"--root={root}", *units], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr
