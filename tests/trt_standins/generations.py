"""What each TensorRT generation's Python bindings offer, one small class per generation.

Read from NVIDIA's binding sources (python/src/infer/pyCore.cpp and the docstrings in
python/docstrings/infer/pyCoreDoc.h on release/8.5, 8.6, 10.3, 10.12, 10.16, 11.1) and
the TensorRT 11 migration notes. ``None`` means absent (reading it raises
AttributeError), ``"deprecated"`` present but recorded when used, ``"yes"`` present.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Generation:
    version: str  # what ``tensorrt.__version__`` reports
    binding_api: str | None  # execute_async_v2, num_bindings, build_engine, max_workspace_size
    explicit_batch: str | None  # NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    strongly_typed: str | None  # NetworkDefinitionCreationFlag.STRONGLY_TYPED
    precision_flags: str | None  # BuilderFlag.FP16 / INT8
    calibrator: str | None  # IInt8EntropyCalibrator2, IBuilderConfig.int8_calibrator / set_calibration_profile
    wide_types: bool  # DataType.UINT8 / INT64 exist (TensorRT 10)
    dla_supported: bool  # the library can run DLA at all (the API is present in every generation)


class TensorRT8:
    """JetPack 5 (8.5, Python 3.8 bindings only) and x86 8.6: weak typing, binding API, EXPLICIT_BATCH required."""

    V85 = Generation("8.5.2.2", "yes", "yes", None, "yes", "yes", False, True)
    V86 = Generation("8.6.1.6", "yes", "yes", None, "yes", "yes", False, True)


class TensorRT10:
    """JetPack 6 (10.3) and later 10.x: STRONGLY_TYPED opt-in; FP16/INT8 flags deprecated only from 10.12.

    10.x reports ``__version__`` without the build number ("10.3.0").
    """

    V103 = Generation("10.3.0", None, "deprecated", "yes", "yes", "deprecated", True, True)
    V1016 = Generation("10.16.0", None, "deprecated", "yes", "deprecated", "deprecated", True, True)


class TensorRT11:
    """PyPI 11.x: always strongly typed (STRONGLY_TYPED kept, deprecated), no EXPLICIT_BATCH, no precision
    flags, no implicit calibration. 11.0-11.3 keep the DLA API but have no DLA support at all."""

    V111 = Generation("11.1.0", None, None, "deprecated", None, None, True, False)


GENERATIONS: dict[str, Generation] = {
    g.version: g
    for g in (TensorRT8.V85, TensorRT8.V86, TensorRT10.V103, TensorRT10.V1016, TensorRT11.V111)
}
