"""Start-time platform checks (issue 12): a pip OpenCV shadowing the system's GStreamer build, and a numpy
the system OpenCV cannot load, are detected and the fix is named. The pip OpenCV checked is the real one
installed here (no GStreamer); the "system" OpenCV is a stand-in package in a temporary folder, probed by
a real second interpreter, because this machine has no JetPack."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from facediag.edge.errors import ConfigError
from facediag.edge.platform_checks import (
    check_platform,
    enforce_platform,
    has_gstreamer,
    probe_system_cv2,
)

cv2 = pytest.importorskip("cv2")


def _system_dir(tmp_path: Path, gstreamer: bool) -> Path:
    d = tmp_path / "dist-packages"
    (d / "cv2").mkdir(parents=True)
    (d / "cv2" / "__init__.py").write_text(
        "def getBuildInformation():\n"
        f"    return '  Video I/O:\\n    GStreamer:                   {'YES (1.20.3)' if gstreamer else 'NO'}\\n'\n")
    return d


def test_the_pip_opencv_here_has_no_gstreamer():
    assert not has_gstreamer(cv2.getBuildInformation())  # the premise of the next tests
    assert has_gstreamer("    GStreamer:                   YES (1.20.3)")


def test_pip_opencv_shadowing_a_gstreamer_system_build_is_named(tmp_path, caplog):
    system = _system_dir(tmp_path, gstreamer=True)
    assert probe_system_cv2(system, python=sys.executable) is True
    problems = check_platform(system_dirs=[str(system)], probe=lambda d: probe_system_cv2(d, python=sys.executable))
    assert [p.code for p in problems] == ["pip-opencv-shadows-system"]
    assert "pip uninstall" in problems[0].fix and "opencv-python" in problems[0].fix
    assert str(system) in problems[0].message and "has GStreamer" in problems[0].message
    # a gst: source cannot work: refused at start naming the fix; other sources only log it loudly
    with pytest.raises(ConfigError, match="pip uninstall"):
        enforce_platform("gst:nvarguscamerasrc ! appsink", problems)
    assert enforce_platform("v4l2:/dev/video0", problems) == problems
    assert any(r.levelname == "ERROR" and "pip uninstall" in r.getMessage() for r in caplog.records)


def test_no_problem_without_a_system_opencv_or_when_it_lacks_gstreamer_too(tmp_path):
    assert check_platform(system_dirs=[str(tmp_path / "none")]) == []
    plain = _system_dir(tmp_path, gstreamer=False)
    assert check_platform(system_dirs=[str(plain)], probe=lambda d: probe_system_cv2(d, python=sys.executable)) == []


def test_numpy_that_the_system_opencv_cannot_load_is_named():
    def jetpack_cv2_under_numpy2():
        # what JetPack's cv2 (built against numpy 1.x) raises when numpy 2 is installed
        raise ImportError("numpy.core.multiarray failed to import")

    problems = check_platform(import_cv2=jetpack_cv2_under_numpy2, numpy_major=lambda: 2)
    assert [p.code for p in problems] == ["numpy-breaks-system-opencv"]
    assert "numpy<2" in problems[0].fix
    with pytest.raises(ConfigError, match="numpy<2"):
        enforce_platform("file:/x.mp4", problems)


def test_system_opencv_in_use_with_numpy_2_is_flagged():
    site = Path(cv2.__file__).parent.parent  # pretend the OpenCV in use is the system's
    problems = check_platform(system_dirs=[str(site)], numpy_major=lambda: 2)
    assert [p.code for p in problems] == ["numpy-breaks-system-opencv"] and "numpy<2" in problems[0].fix
    assert check_platform(system_dirs=[str(site)], numpy_major=lambda: 1) == []
