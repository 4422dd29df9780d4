"""Writing a built TensorRT engine and its manifest (part of ``facediag.converters.tensorrt_build``).

The engine and its manifest are written atomically, engine first: a crash between
the two leaves a manifest whose engine hash does not match, which the station
refuses with a rebuild message rather than loading a wrong engine.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

from facediag.converters.tensorrt_plan import BuildPlan, TrtApi
from facediag.edge.atomicio import atomic_write_bytes, remove_stale_temporaries
from facediag.edge.engine.manifest import DeviceInfo, EngineManifest, manifest_path_for
from facediag.edge.errors import FacediagError
from facediag.edge.hashing import sha256_bytes

# The builder's logger: these messages were always reported under facediag.converters.tensorrt_build.
log = logging.getLogger("facediag.converters.tensorrt_build")


def _engine_bytes(serialized: Any, onnx_name: str) -> bytes:
    """The serialized engine (``build_serialized_network`` returns an IHostMemory, or None on failure)."""
    if serialized is None:
        raise FacediagError(
            f"TensorRT could not build an engine from {onnx_name} (see TensorRT's messages above). Try a larger "
            "--workspace-mib, a smaller --max-batch, or another precision"
        )
    data = bytes(serialized)
    if not data:
        raise FacediagError(f"TensorRT returned an empty engine for {onnx_name}; see its messages above")
    return data


def _builder_options(plan: BuildPlan, workspace_bytes: int, timing_cache: Path | None) -> dict[str, Any]:
    """The build settings recorded in the manifest (``builder_options``)."""
    return {
        "network_flags": list(plan.network_flags),
        "builder_flags": list(plan.builder_flags),
        "strongly_typed": plan.strongly_typed,
        "legacy_calibrator": plan.legacy_calibrator,
        "workspace_bytes": workspace_bytes,
        "timing_cache": timing_cache.name if timing_cache else None,
        "gpu_fallback": "GPU_FALLBACK" in plan.builder_flags,
        "dla_static_profile": plan.dla_core is not None,
    }


def _write_engine(engine_path: Path, data: bytes, onnx_name: str, onnx_sha: str, key: str, api: TrtApi,
                  device_info: DeviceInfo, input_name: str, shapes: dict[str, list[int]], dla_core: int | None,
                  builder_options: dict[str, Any]) -> EngineManifest:
    """Write the engine, then its manifest, each atomically (engine first: see the module docstring)."""
    from facediag.edge.version import __version__

    manifest_path = manifest_path_for(engine_path)
    for target in (engine_path, manifest_path):
        remove_stale_temporaries(target)
    manifest = EngineManifest(
        engine_file=engine_path.name,
        engine_sha256=sha256_bytes(data),
        onnx_file=onnx_name,
        onnx_sha256=onnx_sha,
        precision=key,
        tensorrt_version=api.version,
        gpu_name=device_info.gpu_name,
        compute_capability=tuple(device_info.compute_capability),  # type: ignore[arg-type]
        input_name=input_name,
        input_shapes=shapes,
        dla_core=dla_core,
        builder_options=builder_options,
        package_version=__version__,
        created_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        verify=None,
    )
    atomic_write_bytes(engine_path, data)
    manifest.save(manifest_path)
    log.info("wrote %s (%.1f MiB) and %s", engine_path, len(data) / 2**20, manifest_path.name)
    return manifest
