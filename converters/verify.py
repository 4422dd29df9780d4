"""Prove an engine on the device: run it and ONNX Runtime on the same real crops and compare.

A TensorRT engine is built on the station itself, with tactics chosen there, so the
only honest check is on that station: feed the engine and the bundle's ONNX model
(run by ONNX Runtime on the CPU) the same inputs, and require that the top-1 class
agrees on (almost) every crop and that no class probability moves by more than a
set amount. The result is written into the engine's manifest, where the daemon
and an auditor can read that this engine, on this device, was proven.

The check is judged by the one comparison layer (:mod:`facediag.converters.compare`):
agreement on non-tie crops shown at 95 % confidence (so a handful of crops is refused,
with the number needed), agreement over all crops, and the probability difference.

Reference: by default the ONNX file the engine was built from (so the check
isolates what TensorRT did); ``reference="fp32"`` compares with the FP32 model
instead (what the bundle's accuracy gate was measured against).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from facediag.converters.agreement import DEFAULT_CONFIDENCE
from facediag.converters.compare import Verdict, compare_engines, ort_opener, verify_criteria
from facediag.edge import precision as precision_table
from facediag.edge.errors import ConfigError, FacediagError
from facediag.edge.photos import list_images, suffix_list

log = logging.getLogger(__name__)

DEFAULT_MIN_AGREEMENT = 0.99
# Largest allowed |p_engine - p_reference| per precision (the precision table's column): FP32 engines
# differ from ONNX Runtime only by kernel choice (TF32 on Ampere+), FP16 by rounding, INT8 by quantisation.
DEFAULT_MAX_PROB_DIFF: dict[str, float] = {p.name: p.verify_max_prob_diff for p in precision_table.PRECISIONS}
MIN_RECOMMENDED_INPUTS = 100


class VerificationFailed(FacediagError):
    """Raised by callers that want an exception rather than a result with ``passed=False``."""


# --------------------------------------------------------------------------- inputs


def load_inputs(path: str | Path, contract: Any, *, limit: int | None = None) -> np.ndarray:
    """Model inputs (N, 3, H, W) float32 from a calibration set, a ``.npy`` array, or aligned crop images.

    Crops must already be aligned to the bundle's template at its crop size (what
    ``facediag crop`` writes); photos of whole scenes are refused rather than resized,
    because a resized scene is not what the model sees on the station.
    """
    from facediag.edge.face.contract import crops_to_input

    p = Path(path)
    shape = (3, contract.height, contract.width)
    if p.is_dir() and (p / "manifest.json").is_file() and (p / "inputs.npy").is_file():
        from facediag.calibration.calibration_set import load_calibration_set

        x = load_calibration_set(p).inputs
    elif p.suffix == ".npy" and p.is_file():
        x = np.load(p, allow_pickle=False)
    elif p.exists():
        files = list_images(p, recursive=True) if p.is_dir() else [p]
        if not files:
            raise ConfigError(f"{p} holds no crop images ({suffix_list()})")
        if limit is not None:
            files = files[:limit]
        from facediag.edge.errors import ImageLoadError
        from facediag.edge.face.imageio import load_image

        crops = []
        for f in files:
            try:
                img = load_image(f)
            except ImageLoadError as exc:  # skip and report a bad file, carry on (issue 11)
                log.warning("skipping %s", exc)
                continue
            if img.shape[:2] != (contract.height, contract.width):
                raise ConfigError(
                    f"{f} is {img.shape[1]}x{img.shape[0]}, not an aligned {contract.width}x{contract.height} crop "
                    f"for template {contract.template}: make crops with `facediag crop`"
                )
            crops.append(img)
        if not crops:
            raise ConfigError(f"none of the {len(files)} crop images in {p} could be read (see the warnings)")
        x = crops_to_input(np.stack(crops), contract)
    else:
        raise ConfigError(f"verification inputs {p} do not exist: give a calibration set, a .npy file or a crops folder")
    x = np.asarray(x)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise ConfigError(f"inputs from {p} have shape {x.shape}, the model takes N x {shape}")
    if limit is not None:
        x = x[:limit]
    return np.ascontiguousarray(x, dtype=np.float32)


# --------------------------------------------------------------------------- the command's work


def _backend_for(precision: str, backend: str | None) -> str:
    """The runtime that checks ``precision``: as asked, else TensorRT when it can run it, else ONNX Runtime."""
    row = precision_table.get(precision)
    if backend is None or backend == precision_table.AUTO:
        return precision_table.TENSORRT if row.runs_on(precision_table.TENSORRT) else precision_table.ONNXRUNTIME
    if backend not in precision_table.RUNTIMES:
        raise ConfigError(f"--backend must be one of {', '.join(precision_table.RUNTIMES)}, got {backend!r}")
    if backend == precision_table.TENSORRT:
        precision_table.check_runtime(precision, backend)  # int8-cpu has no engine
    # ONNX Runtime can read every ONNX file of a bundle (the gates run them all in it on the workstation).
    return backend


def verify_bundle(
    bundle_dir: str | Path,
    precision: str,
    inputs: np.ndarray,
    *,
    backend: str | None = None,
    reference: str | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_prob_diff: float | None = None,
    tie_margin: float | None = None,
    min_agreement_all: float | None = None,
    confidence: float | None = DEFAULT_CONFIDENCE,
    batch_size: int = 8,
    engine_dir: str | Path | None = None,
    inputs_name: str = "arrays",
    record: bool = True,
    candidate_factory: Callable[[], Any] | None = None,
) -> Verdict:
    """Verify a bundle precision against ONNX Runtime on the CPU; record a TensorRT result in its manifest.

    ``precision``: a bundle precision or an engine short name (``int8`` = int8-tensorrt).
    ``backend``: ``tensorrt`` runs the precision's engine (reference: the ONNX it was built from);
    ``onnxruntime`` runs the precision's ONNX file in ONNX Runtime (reference: FP32), which is how
    ``int8-cpu`` is verified; None picks TensorRT for precisions it runs, else ONNX Runtime.
    ``candidate_factory`` replaces how the candidate engine is opened (tests).
    ``min_agreement_all``: agreement over every input, near-ties included (None: ``min_agreement`` - 0.02);
    ``confidence``: the level at which ``min_agreement`` must be shown (None or 0: point estimate only);
    too few inputs then fail the check, and the verdict says how many are needed.
    """
    from facediag.edge.bundle import load_bundle
    from facediag.edge.engine.manifest import (
        EngineManifest,
        engine_file_name,
        manifest_path_for,
        source_precision,
    )

    bundle = load_bundle(bundle_dir)
    key = precision_table.cli_name(precision)
    runtime = _backend_for(key, backend)
    criteria = verify_criteria(key, min_agreement, max_prob_diff,
                               **({} if tie_margin is None else {"tie_margin": tie_margin}),
                               min_agreement_all=min_agreement_all, confidence=confidence)
    manifest = manifest_path = None
    if runtime == precision_table.TENSORRT:
        engine_path = Path(engine_dir or bundle.path) / engine_file_name(key)
        manifest_path = manifest_path_for(engine_path)
        manifest = EngineManifest.load(manifest_path)
        source = source_precision(key, bool(manifest.builder_options.get("legacy_calibrator")))
        ref_key = source if reference in (None, "source") else str(reference)
        if candidate_factory is None:
            from facediag.edge.engine.tensorrt import open_bundle_engine

            def candidate_factory() -> Any:
                return open_bundle_engine(bundle.path, key, engine_dir=engine_dir)

        cand_name = f"TensorRT {manifest.tensorrt_version} {engine_path.name} on {manifest.gpu_name}"
    else:
        ref_key = reference or precision_table.REFERENCE
        if ref_key in ("source", key):
            raise ConfigError(
                f"with --backend onnxruntime the candidate is the {key} ONNX itself; compare it with another "
                "precision (--reference fp32)"
            )
        candidate_path = bundle.model_path(key)
        candidate_factory = candidate_factory or ort_opener(candidate_path, key)
        cand_name = f"ONNX Runtime {candidate_path.name}"
    ref_path = bundle.model_path(ref_key)
    result = compare_engines(
        candidate_factory, ort_opener(ref_path, ref_key), inputs, criteria, batch_size=batch_size,
        candidate=cand_name, reference=f"ONNX Runtime {ref_path.name} (CPU)", inputs_name=inputs_name,
    )
    if criteria.confidence is None and result.images < MIN_RECOMMENDED_INPUTS:
        log.warning(
            "only %d inputs: one disagreement moves agreement by %.3f; use %d or more crops for a meaningful check",
            result.images, 1.0 / result.images, MIN_RECOMMENDED_INPUTS,
        )
    if record and manifest is not None and manifest_path is not None:
        _record_in_manifest(manifest_path, manifest.engine_sha256, result)
    return result


def _record_in_manifest(manifest_path: Path, engine_sha256: str, result: Verdict) -> None:
    """Write ``result`` into the engine's manifest, unless the engine changed while it was being verified."""
    from facediag.edge.engine.manifest import EngineManifest

    current = EngineManifest.load(manifest_path)
    if current.engine_sha256 != engine_sha256:
        raise FacediagError(f"{manifest_path.name} changed during verification (engine rebuilt?); run verify again")
    current.verify = result.to_dict()
    current.save(manifest_path)
    log.info("recorded the verification in %s", manifest_path.name)
