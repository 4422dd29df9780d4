"""The engine-backend registry: each backend a station can be told to use, with its spec.

``[engine] backend`` in station.toml, ``plan_engine`` and the command line all read
this registry, so adding a backend is one ``register_backend`` call with a spec:

* ``runtime``: the runtime whose column of the precision table
  (:mod:`facediag.edge.precision`) says which precisions it may run; ``None`` for a
  policy that picks another backend (``auto``).
* ``open``: loads an ``Engine`` for a plan (the heavy import happens inside it, so a
  CPU-only station never imports TensorRT).

``ENGINE_BACKENDS`` is a :class:`facediag.edge.registry.Registry` like the detectors'
and capture sources'; tests register a backend of their own with ``ENGINE_BACKENDS.registered``.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facediag.edge import precision as precision_table
from facediag.edge.registry import Registry

if TYPE_CHECKING:
    from facediag.edge.engine.base import Engine
    from facediag.edge.engine.select import EnginePlan

Opener = typing.Callable[["EnginePlan", "int | None", typing.Sequence[str]], "Engine"]  # typing.*: 3.8


@dataclass(frozen=True)
class BackendSpec:
    """One engine backend: its config name, what it is, the runtime it uses and how to open it."""

    name: str
    summary: str
    runtime: str | None = None  # a precision-table runtime; None: a policy choosing among the others
    open: Opener | None = None

    def precisions(self) -> tuple[str, ...]:
        """Precisions this backend may run (every precision for a policy such as ``auto``)."""
        return precision_table.for_runtime(self.runtime) if self.runtime else precision_table.NAMES

    def check_precision(self, precision: str) -> None:
        """ConfigError when ``precision`` (a table name or ``auto``) cannot run on this backend."""
        if precision == precision_table.AUTO:
            return
        if self.runtime is None:
            precision_table.get(precision)
        else:
            precision_table.check_runtime(precision, self.runtime)


ENGINE_BACKENDS: Registry[BackendSpec] = Registry("engine backend")


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add a backend; ValueError when the name is taken or its runtime is not in the precision table."""
    if spec.runtime is not None and spec.runtime not in precision_table.RUNTIMES:
        raise ValueError(f"engine backend {spec.name!r}: runtime {spec.runtime!r} is not in the precision table")
    return ENGINE_BACKENDS.register(spec)


def backend_names() -> tuple[str, ...]:
    """Registered backend names, in registration order (``auto`` first)."""
    return ENGINE_BACKENDS.names()


def get_backend(name: str) -> BackendSpec:
    """The spec for ``name``; ConfigError (UnknownEntryError) naming the registered backends otherwise."""
    return ENGINE_BACKENDS.get(name)


def check_engine_choice(backend: str, precision: str) -> None:
    """Validate an ``[engine]`` backend/precision pair (config loading, command line)."""
    get_backend(backend).check_precision(precision)


def ort_providers(configured: Sequence[str]) -> tuple[str, ...]:
    """Providers for ONNX Runtime: the configured list, or the CPU provider when it is empty."""
    return tuple(configured) if configured else ("CPUExecutionProvider",)


def _open_onnxruntime(plan: EnginePlan, threads: int | None, providers: Sequence[str]) -> Engine:
    from facediag.edge.engine.onnxruntime import OrtEngine

    return OrtEngine(plan.path, providers=ort_providers(providers), threads=threads, precision=plan.precision)


def _open_tensorrt(plan: EnginePlan, threads: int | None, providers: Sequence[str]) -> Engine:
    from facediag.edge.engine.tensorrt import TensorRTEngine

    return TensorRTEngine(
        plan.path, expected_onnx_sha256=plan.expected_onnx_sha256 or "", precision=plan.precision,
        bundle_hint=str(plan.path.parent),
    )


register_backend(BackendSpec(
    "auto",
    "TensorRT when an engine built and verified on this device exists, else ONNX Runtime on the CPU",
))
register_backend(BackendSpec(
    precision_table.TENSORRT, "a TensorRT engine built on this device (`facediag build`, `facediag verify`)",
    runtime=precision_table.TENSORRT, open=_open_tensorrt,
))
register_backend(BackendSpec(
    precision_table.ONNXRUNTIME, "the bundle's ONNX model in ONNX Runtime (CPU unless engine.providers say otherwise)",
    runtime=precision_table.ONNXRUNTIME, open=_open_onnxruntime,
))
