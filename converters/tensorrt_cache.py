"""TensorRT timing caches on disk: one file per TensorRT version and GPU generation.

A cache from another TensorRT, or one cut short by a power cut, is not an error: TensorRT's
``create_timing_cache`` returns None for it, and the build starts a fresh cache.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facediag.edge.atomicio import atomic_write_bytes

log = logging.getLogger(__name__)


def _version_tag(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z.]+", "_", text) or "unknown"


def timing_cache_path(cache_dir: str | Path, tensorrt_version: str, compute_capability: Sequence[int]) -> Path:
    """One timing cache per TensorRT version and GPU generation (a cache from another version is useless)."""
    cc = "".join(str(int(v)) for v in compute_capability)
    return Path(cache_dir) / f"timing-cache.trt-{_version_tag(tensorrt_version)}.sm{cc}.bin"


def default_cache_dir() -> Path:
    """$FACEDIAG_CACHE, else $XDG_CACHE_HOME/facediag/tensorrt, else ~/.cache/facediag/tensorrt."""
    if os.environ.get("FACEDIAG_CACHE"):
        return Path(os.environ["FACEDIAG_CACHE"]) / "tensorrt"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facediag" / "tensorrt"


def attach_timing_cache(config: Any, path: Path) -> None:
    """Give the builder the timing cache from ``path``, or a fresh one when the file is missing, corrupt or
    from another TensorRT (``create_timing_cache`` returns None for those, and ``set_timing_cache`` refuses
    None)."""
    previous = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(previous) if previous else None
    if previous and (cache is None or not config.set_timing_cache(cache, False)):
        log.warning("timing cache %s is corrupt or from another TensorRT/GPU; starting a fresh one", path)
        cache = None
    if cache is None:
        fresh = config.create_timing_cache(b"")
        if fresh is None or not config.set_timing_cache(fresh, False):
            log.warning("TensorRT refused an empty timing cache; building without one")


def save_timing_cache(config: Any, path: Path) -> None:
    """Write the builder's timing cache (atomically) for the next build with this TensorRT and GPU."""
    timing = config.get_timing_cache()
    if timing is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, bytes(timing.serialize()))
