"""The manifest written beside every TensorRT engine, and its comparison with the device.

A serialized TensorRT engine only runs with the exact TensorRT version and the GPU
that built it. Loading it elsewhere fails with "Version tag does not match" or
"incompatible device", or simply crashes the process. So ``facediag build``
records what the engine was built from and on, and the station compares that
record with itself *before* it hands the bytes to TensorRT; a mismatch is refused
with one message per differing field, each saying how to rebuild. The daemon
never rebuilds by itself: a build takes minutes and is the engine-build unit's job.

This module is pure (no TensorRT import) so that it runs and is tested anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facediag.edge import precision as precision_table
from facediag.edge.atomicio import atomic_write_json
from facediag.edge.errors import ConfigError, ModelFileError

MANIFEST_FORMAT = "facediag-engine-manifest"
MANIFEST_VERSION = 1

# TensorRT precisions a station can build, named by the bundle precision they run (the precision table).
ENGINE_PRECISIONS = precision_table.engine_precisions()


def normalize_precision(name: str) -> str:
    """``fp32`` / ``fp16`` / ``int8`` (or ``int8-tensorrt``) -> the bundle precision an engine runs."""
    return precision_table.from_engine_name(name)


def short_precision(precision: str) -> str:
    """The name to type on the command line for an engine precision (``int8-tensorrt`` -> ``int8``)."""
    return precision_table.short_name(precision)


def source_precision(precision: str, legacy_calibrator: bool = False) -> str:
    """Which bundle model an engine of ``precision`` is built from.

    Explicit quantization (the default) builds INT8 from the Q/DQ ONNX. The legacy
    implicit-calibration path builds INT8 from the FP32 ONNX plus calibration data.
    """
    precision = normalize_precision(precision)
    if legacy_calibrator:
        if precision != precision_table.for_quantize_target("tensorrt"):
            raise ConfigError("--legacy-calibrator only applies to --precision int8")
        return precision_table.REFERENCE
    return precision


def engine_file_name(precision: str) -> str:
    """``model.<short precision>.engine``: one engine per precision per bundle folder."""
    return precision_table.engine_file(precision)


def manifest_path_for(engine_path: str | Path) -> Path:
    """The manifest lives beside the engine: ``<engine>.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def rebuild_hint(bundle: str, precision: str, dla_core: int | None = None) -> str:
    cmd = f"facediag build {bundle} --precision {short_precision(precision)}"
    if dla_core is not None:
        cmd += f" --dla-core {dla_core}"
    return f"rebuild it on this device: `{cmd}`"


@dataclass(frozen=True)
class DeviceInfo:
    """What a station is, as far as engine compatibility goes."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    num_dla_cores: int = 0

    @property
    def compute_capability_text(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass
class EngineManifest:
    """Everything that decides whether an engine may be loaded here, plus how it was made and proven."""

    engine_file: str
    engine_sha256: str
    onnx_file: str
    onnx_sha256: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    input_name: str
    input_shapes: dict[str, list[int]]  # "min" / "opt" / "max" -> full NCHW shape
    dla_core: int | None = None
    builder_options: dict[str, Any] = field(default_factory=dict)
    package_version: str = ""
    created_utc: str = ""
    verify: dict[str, Any] | None = None

    @property
    def max_batch(self) -> int:
        return int(self.input_shapes["max"][0])

    @property
    def min_batch(self) -> int:
        return int(self.input_shapes["min"][0])

    @property
    def opt_batch(self) -> int:
        return int(self.input_shapes["opt"][0])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        d["format"] = MANIFEST_FORMAT
        d["format_version"] = MANIFEST_VERSION
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "engine manifest") -> EngineManifest:
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ModelFileError(f"{where} is not a facediag engine manifest; rebuild the engine with `facediag build`")
        if data.get("format_version") != MANIFEST_VERSION:
            raise ModelFileError(
                f"{where} has manifest format_version {data.get('format_version')!r}, this facediag reads "
                f"{MANIFEST_VERSION}; rebuild the engine with this facediag (`facediag build`)"
            )
        names = {f for f in cls.__dataclass_fields__}
        missing = [f for f in ("engine_file", "engine_sha256", "onnx_file", "onnx_sha256", "precision",
                               "tensorrt_version", "gpu_name", "compute_capability", "input_name",
                               "input_shapes") if f not in data]
        if missing:
            raise ModelFileError(f"{where} lacks field(s) {', '.join(missing)}; rebuild the engine with `facediag build`")
        kwargs = {k: v for k, v in data.items() if k in names}
        try:
            cc = tuple(int(v) for v in kwargs["compute_capability"])
            if len(cc) != 2:
                raise ValueError
            kwargs["compute_capability"] = cc
            shapes = {k: [int(v) for v in kwargs["input_shapes"][k]] for k in ("min", "opt", "max")}
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelFileError(f"{where} has malformed compute_capability or input_shapes; rebuild the engine") from exc
        kwargs["input_shapes"] = shapes
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        """Write atomically (a half-written manifest must never sit beside a good engine)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> EngineManifest:
        p = Path(path)
        if not p.is_file():
            raise ModelFileError(
                f"engine manifest {p} is missing: an engine without its manifest cannot be checked against this "
                "device; rebuild it with `facediag build BUNDLE --precision P`"
            )
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"engine manifest {p} is corrupted ({exc}); rebuild the engine with `facediag build`") from exc
        return cls.from_dict(data, where=str(p))


def compare_manifest(
    manifest: EngineManifest,
    device_info: DeviceInfo,
    onnx_sha256: str,
    precision: str,
    *,
    bundle: str = "BUNDLE",
) -> list[str]:
    """One message per field where the engine does not fit this device / bundle / request; [] if it fits.

    ``onnx_sha256`` is what the *bundle* records for the model the engine must come
    from, ``precision`` what the caller asked for. Each message says what differs and
    the exact command that rebuilds the engine here.
    """
    try:
        wanted = normalize_precision(precision)
    except ConfigError:
        wanted = precision
    how = rebuild_hint(bundle, wanted, manifest.dla_core)
    problems: list[str] = []
    if manifest.precision != wanted:
        problems.append(
            f"precision: the engine is {manifest.precision}, but {wanted} was requested; "
            f"{rebuild_hint(bundle, wanted, manifest.dla_core)}"
        )
    if manifest.onnx_sha256 != onnx_sha256:
        problems.append(
            f"onnx_sha256: the engine was built from a different model ({manifest.onnx_file} "
            f"sha256 {manifest.onnx_sha256[:12]}..., the bundle has {onnx_sha256[:12]}...); {how}"
        )
    if manifest.tensorrt_version != device_info.tensorrt_version:
        problems.append(
            f"tensorrt_version: the engine was built with TensorRT {manifest.tensorrt_version}, this device has "
            f"TensorRT {device_info.tensorrt_version} (engines only load in the exact version that built them); {how}"
        )
    if manifest.gpu_name != device_info.gpu_name:
        problems.append(
            f"gpu_name: the engine was built on {manifest.gpu_name!r}, this device is {device_info.gpu_name!r}; {how}"
        )
    if tuple(manifest.compute_capability) != tuple(device_info.compute_capability):
        built = f"{manifest.compute_capability[0]}.{manifest.compute_capability[1]}"
        problems.append(
            f"compute_capability: the engine was built for compute capability {built}, this GPU has "
            f"{device_info.compute_capability_text}; {how}"
        )
    if manifest.dla_core is not None and not (0 <= manifest.dla_core < device_info.num_dla_cores):
        problems.append(
            f"dla_core: the engine runs on DLA core {manifest.dla_core}, this device has "
            f"{device_info.num_dla_cores} DLA core(s); {rebuild_hint(bundle, wanted, None)}"
            + (" (or pick an existing core with --dla-core)" if device_info.num_dla_cores else " (a GPU engine)")
        )
    return problems
