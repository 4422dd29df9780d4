"""Start-time checks for two platform traps that otherwise fail silently or cryptically.

1. **A pip OpenCV shadowing the system's.** On a Jetson, JetPack's OpenCV (in
   ``/usr/lib/python3/dist-packages``) is built with GStreamer, which the CSI camera
   (``nvarguscamerasrc``) needs. ``pip install facediag[station]`` in a venv made with
   ``--system-site-packages`` also installs ``opencv-python(-headless)``, which comes first on
   ``sys.path`` and has no GStreamer: every ``gst:`` source then fails to open, with no word
   about why. Detected when the imported ``cv2`` has no GStreamer while a system ``cv2`` exists;
   the fix named: ``pip uninstall opencv-python opencv-python-headless`` in the venv.
2. **A numpy that the system OpenCV cannot load.** JetPack's and Debian's OpenCV are compiled
   against numpy 1.x; a numpy 2 in the venv makes ``import cv2`` fail ("compiled using NumPy
   1.x cannot be run in NumPy 2.x", ``_ARRAY_API not found``). Detected from that import error,
   or beforehand when the ``cv2`` in use is the system's and numpy is 2.x; the fix named:
   ``pip install 'numpy<2'`` in the venv.

:func:`check_platform` returns the problems found; :func:`enforce_platform` logs them and raises
ConfigError (exit 78) for one that makes the configured source impossible.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from facediag.edge.errors import ConfigError

log = logging.getLogger(__name__)

SYSTEM_DIST_DIRS: tuple[str, ...] = (
    "/usr/lib/python3/dist-packages",
    f"/usr/lib/python3.{sys.version_info.minor}/dist-packages",
    "/usr/local/lib/python3/dist-packages",
)
SYSTEM_PYTHON = "/usr/bin/python3"
_NUMPY_ABI_HINTS = ("numpy 1.x cannot be run in numpy 2", "_array_api not found", "numpy.core.multiarray failed to import",
                    "numpy.core._multiarray_umath")
PIP_OPENCV_FIX = ("remove pip's OpenCV from this venv so JetPack's (with GStreamer) is used: "
                  "`pip uninstall -y opencv-python opencv-python-headless opencv-contrib-python`")
NUMPY_FIX = "install a numpy that the system OpenCV was built for: `pip install 'numpy<2'` in this venv"


@dataclass(frozen=True)
class PlatformProblem:
    code: str  # "pip-opencv-shadows-system" | "numpy-breaks-system-opencv" | "opencv-missing"
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message}. Fix: {self.fix}"


def has_gstreamer(build_information: str) -> bool:
    """Whether an OpenCV build-information text says GStreamer: YES."""
    for line in build_information.splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def system_cv2_dirs(dirs: Sequence[str] = SYSTEM_DIST_DIRS) -> list[Path]:
    """System site folders that hold a cv2 package or extension module."""
    found = []
    for d in dict.fromkeys(dirs):
        p = Path(d)
        if (p / "cv2").is_dir() or any(p.glob("cv2*.so")):
            found.append(p)
    return found


def probe_system_cv2(site_dir: Path, python: str = SYSTEM_PYTHON) -> bool | None:
    """Whether the cv2 in ``site_dir`` has GStreamer, asked in a separate interpreter (None: cannot tell)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import cv2; "
            "print('GST', 'YES' if any(l.strip().startswith('GStreamer:') and 'YES' in l "
            "for l in cv2.getBuildInformation().splitlines()) else 'NO')")
    try:
        out = subprocess.run([python, "-c", code, str(site_dir)], capture_output=True, text=True, timeout=30,
                             env={"PATH": "/usr/bin:/bin"}).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if "GST YES" in out:
        return True
    return False if "GST NO" in out else None


def _is_numpy_abi_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(h.lower() in text for h in _NUMPY_ABI_HINTS)


def _numpy_major() -> int:
    try:
        import numpy

        return int(str(numpy.__version__).split(".")[0])
    except (ImportError, ValueError):
        return 0


def check_platform(
    *,
    import_cv2: Callable[[], ModuleType] = lambda: importlib.import_module("cv2"),
    system_dirs: Sequence[str] = SYSTEM_DIST_DIRS,
    probe: Callable[[Path], bool | None] = probe_system_cv2,
    numpy_major: Callable[[], int] = _numpy_major,
) -> list[PlatformProblem]:
    """The OpenCV / numpy problems of this interpreter (see the module docstring)."""
    try:
        cv2 = import_cv2()
    except (ImportError, AttributeError) as exc:
        if _is_numpy_abi_error(exc):
            return [PlatformProblem("numpy-breaks-system-opencv",
                                    f"OpenCV cannot be imported with numpy {numpy_major()}.x ({str(exc).strip()[:160]})",
                                    NUMPY_FIX)]
        return [PlatformProblem("opencv-missing", f"OpenCV cannot be imported ({exc})",
                                "install the station extra: `pip install 'facediag[station]'` (on a Jetson, use "
                                "JetPack's python3-opencv in a venv made with --system-site-packages)")]
    problems: list[PlatformProblem] = []
    cv2_file = Path(str(getattr(cv2, "__file__", "") or ""))
    systems = system_cv2_dirs(system_dirs)
    from_system = any(s in cv2_file.parents for s in systems)
    build = str(cv2.getBuildInformation()) if hasattr(cv2, "getBuildInformation") else ""
    if systems and not from_system and not has_gstreamer(build):
        system_gst = probe(systems[0])
        if system_gst is not False:
            problems.append(PlatformProblem(
                "pip-opencv-shadows-system",
                f"the OpenCV in use ({cv2_file.parent}) has no GStreamer and shadows the system's in {systems[0]}"
                + (" (which has GStreamer)" if system_gst else ""), PIP_OPENCV_FIX))
    if from_system and numpy_major() >= 2:
        problems.append(PlatformProblem(
            "numpy-breaks-system-opencv",
            f"the system OpenCV ({cv2_file.parent}) runs with numpy {numpy_major()}.x; distribution OpenCV builds "
            "are compiled against numpy 1.x and may crash or fail to convert frames", NUMPY_FIX))
    return problems


def enforce_platform(source_uri: str, problems: list[PlatformProblem] | None = None) -> list[PlatformProblem]:
    """Log every problem (error priority); ConfigError when one makes ``source_uri`` impossible to open."""
    problems = check_platform() if problems is None else problems
    fatal: list[PlatformProblem] = []
    for p in problems:
        needs_gst = source_uri.startswith("gst:") and p.code == "pip-opencv-shadows-system"
        unimportable = p.code in ("numpy-breaks-system-opencv", "opencv-missing") and "cannot be imported" in p.message
        if needs_gst or unimportable:
            fatal.append(p)
        log.error("platform: %s", p)
    if fatal:
        raise ConfigError("; ".join(str(p) for p in fatal))
    return problems
