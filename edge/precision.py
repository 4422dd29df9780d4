"""The precision table: one row per model precision a bundle can hold, read by everything else.

A bundle always holds the FP32 model (``facediag export``); the others are made from
it and let in only after an accuracy gate (``facediag fp16``, ``facediag quantize``).
Each row says what the precision is called, which file it is in the bundle, which
TensorRT engine (if any) a station builds from it, which runtimes may run it, how
it is made, how far ``facediag verify`` lets its probabilities move, and where it
ranks when a station's config says ``precision = "auto"``.

The one rule about runtimes lives in :func:`check_runtime`: ``int8-cpu`` (unsigned
activations, asymmetric) is an ONNX Runtime model and TensorRT cannot run it, and
``int8-tensorrt`` (signed symmetric Q/DQ) is built into a TensorRT engine.

This module is pure data plus look-ups (no heavy imports), so the station, the
converters and the command line all import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from facediag.edge.errors import ConfigError
from facediag.edge.registry import Registry

ONNXRUNTIME = "onnxruntime"
TENSORRT = "tensorrt"
RUNTIMES = (ONNXRUNTIME, TENSORRT)
AUTO = "auto"
REFERENCE = "fp32"  # every other precision is gated and verified against this one
# The engine `facediag build` / `verify` make and check when not told (and for a station's precision "auto"):
# FP16 needs no calibration data and every TensorRT GPU runs it.
ENGINE_DEFAULT = "fp16"


@dataclass(frozen=True)
class Precision:
    """One row of the precision table."""

    name: str  # the bundle precision ("fp32", "fp16", "int8-cpu", "int8-tensorrt")
    file: str  # its ONNX file in the bundle folder
    runtimes: tuple[str, ...]  # runtimes allowed to run it
    make: str  # the command that makes it (shown in hints)
    maker: str  # "export" | "fp16" | "quantize"
    verify_max_prob_diff: float  # default largest |p - p_reference| for `facediag verify`
    engine_short: str | None = None  # name of its TensorRT engine on the command line, None: no engine
    # Builder flag a weakly typed TensorRT build needs to keep this model's reduced-precision layers
    # (strongly typed builds take the precision from the ONNX itself).
    tensorrt_flag: str | None = None
    quantize_target: str | None = None  # `facediag quantize --target` that makes it
    auto_rank: tuple[tuple[str, int], ...] = ()  # (runtime, rank) for precision "auto": lower first
    description: str = ""

    @property
    def engine_file(self) -> str | None:
        """``model.<short>.engine`` for precisions TensorRT builds, else None."""
        return None if self.engine_short is None else f"model.{self.engine_short}.engine"

    def runs_on(self, runtime: str) -> bool:
        return runtime in self.runtimes


PRECISIONS: tuple[Precision, ...] = (
    Precision(
        name="fp32", file="model.onnx", runtimes=(ONNXRUNTIME, TENSORRT),
        make="`facediag export CHECKPOINT BUNDLE`", maker="export", verify_max_prob_diff=0.01,
        engine_short="fp32", auto_rank=((TENSORRT, 2), (ONNXRUNTIME, 0)),
        description="the exported model; the reference of every other precision",
    ),
    Precision(
        name="fp16", file="model.fp16.onnx", runtimes=(ONNXRUNTIME, TENSORRT),
        make="`facediag fp16 BUNDLE`", maker="fp16", verify_max_prob_diff=0.03,
        engine_short="fp16", tensorrt_flag="FP16", auto_rank=((TENSORRT, 1),),
        description="FP16 weights and most ops, float32 input/output",
    ),
    Precision(
        name="int8-cpu", file="model.int8-cpu.onnx", runtimes=(ONNXRUNTIME,),
        make="`facediag quantize BUNDLE --calib SET --target cpu`", maker="quantize", verify_max_prob_diff=0.10,
        quantize_target="cpu",
        description="INT8 Q/DQ, unsigned activations: fast in ONNX Runtime on the CPU, never run by TensorRT",
    ),
    Precision(
        name="int8-tensorrt", file="model.int8-tensorrt.onnx", runtimes=(TENSORRT,),
        make="`facediag quantize BUNDLE --calib SET --target tensorrt`", maker="quantize", verify_max_prob_diff=0.10,
        engine_short="int8", tensorrt_flag="INT8", quantize_target="tensorrt", auto_rank=((TENSORRT, 0),),
        description="INT8 Q/DQ, signed symmetric: what TensorRT builds an INT8 engine from",
    ),
)

_BY_NAME: dict[str, Precision] = {p.name: p for p in PRECISIONS}
NAMES: tuple[str, ...] = tuple(_BY_NAME)
# Short engine names (fp32, fp16, int8) and bundle names of the precisions TensorRT builds.
_ENGINE_ALIASES: dict[str, str] = {
    alias: p.name for p in PRECISIONS if p.engine_short is not None for alias in (p.name, p.engine_short)
}


def get(name: str) -> Precision:
    """The row for a bundle precision name; ConfigError naming the known ones otherwise."""
    row = _BY_NAME.get(name)
    if row is None:
        raise ConfigError(f"unknown precision {name!r}: choose one of {', '.join(NAMES)}")
    return row


def file_name(name: str) -> str:
    """The bundle file of a precision (``model.int8-cpu.onnx`` ...)."""
    return get(name).file


def files() -> dict[str, str]:
    """Precision name -> bundle file name, for every row."""
    return {p.name: p.file for p in PRECISIONS}


def for_runtime(runtime: str) -> tuple[str, ...]:
    """Precision names a runtime may run, in table order."""
    return tuple(p.name for p in PRECISIONS if p.runs_on(runtime))


def auto_order(runtime: str) -> tuple[str, ...]:
    """What ``precision = "auto"`` tries on ``runtime``, most preferred first.

    TensorRT: the most compact verified engine (int8, fp16, fp32). ONNX Runtime: FP32 only,
    because INT8 on the CPU is a trade-off the operator should make knowingly (``int8-cpu``).
    """
    ranked = [(dict(p.auto_rank)[runtime], p.name) for p in PRECISIONS if runtime in dict(p.auto_rank)]
    return tuple(name for _, name in sorted(ranked))


def config_choices() -> tuple[str, ...]:
    """Values of ``[engine] precision`` in station.toml: ``auto`` and every precision."""
    return (AUTO, *NAMES)


@dataclass(frozen=True)
class PrecisionChoice:
    """A value of ``[engine] precision``: a row of the table, or ``auto``."""

    name: str
    summary: str


@lru_cache(maxsize=1)
def config_registry() -> Registry[PrecisionChoice]:
    """The ``[engine] precision`` values as a registry (what station.toml validation and --help read)."""
    registry: Registry[PrecisionChoice] = Registry("engine precision")
    registry.register(PrecisionChoice(AUTO, "TensorRT: the most compact verified engine; ONNX Runtime: fp32"))
    for row in PRECISIONS:
        registry.register(PrecisionChoice(row.name, f"{row.description} ({', '.join(row.runtimes)})"))
    return registry


def check_runtime(name: str, runtime: str) -> Precision:
    """The row for ``name`` when ``runtime`` may run it; ConfigError saying what to use instead otherwise.

    This is the one place that says int8-cpu is ONNX Runtime only and int8-tensorrt TensorRT only.
    """
    row = get(name)
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if row.runs_on(runtime):
        return row
    alternatives = [p.name for p in PRECISIONS if p.maker == row.maker and p.runs_on(runtime)]
    instead = f"; use {' or '.join(repr(a) for a in alternatives)} with {runtime}" if alternatives else ""
    raise ConfigError(
        f"precision {name!r} is a model for {' and '.join(row.runtimes)} only and {runtime} cannot run it{instead}"
    )


def engine_precisions() -> tuple[str, ...]:
    """Bundle precisions a station can build a TensorRT engine from."""
    return tuple(p.name for p in PRECISIONS if p.engine_short is not None)


def engine_choices() -> tuple[str, ...]:
    """Short names ``facediag build/verify --precision`` accepts for engines (fp32, fp16, int8)."""
    return tuple(p.engine_short for p in PRECISIONS if p.engine_short is not None)


def from_engine_name(name: str) -> str:
    """``fp32`` / ``fp16`` / ``int8`` (or ``int8-tensorrt``) -> the bundle precision an engine runs."""
    key = _ENGINE_ALIASES.get(str(name).strip().lower())
    if key is None:
        cpu_only = [p.name for p in PRECISIONS if TENSORRT not in p.runtimes]
        raise ConfigError(
            f"unknown engine precision {name!r}: choose {', '.join(engine_choices())} (int8 builds the bundle's "
            f"int8-tensorrt Q/DQ model; {', '.join(cpu_only)} is for ONNX Runtime only)"
        )
    return key


def short_name(name: str) -> str:
    """The name to type on the command line for a precision (``int8-tensorrt`` -> ``int8``)."""
    row = _BY_NAME.get(name)
    return row.engine_short if row is not None and row.engine_short is not None else name


def engine_file(name: str) -> str:
    """``model.<short>.engine`` for an engine precision (short or bundle name)."""
    row = get(from_engine_name(name))
    assert row.engine_file is not None  # from_engine_name only returns engine precisions
    return row.engine_file


def quantize_targets() -> tuple[str, ...]:
    """``facediag quantize --target`` choices."""
    return tuple(p.quantize_target for p in PRECISIONS if p.quantize_target is not None)


def for_quantize_target(target: str) -> str:
    """The precision ``facediag quantize --target TARGET`` makes."""
    for p in PRECISIONS:
        if p.quantize_target == target:
            return p.name
    raise ConfigError(f"--target must be one of {', '.join(quantize_targets())}, got {target!r}")


def make_hint(name: str) -> str:
    """``make it with `facediag ...``` for a precision, or '' for an unknown name."""
    row = _BY_NAME.get(name)
    return f"make it with {row.make}" if row is not None else ""


def cli_name(name: str) -> str:
    """Accept a bundle precision or an engine short name on the command line -> the bundle precision."""
    if name in _BY_NAME:
        return name
    return from_engine_name(name)
