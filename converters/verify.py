"""Prove an engine on the device: run it and ONNX Runtime on the same real crops and compare.

A TensorRT engine is built on the station itself, with tactics chosen there, so the
only honest check is on that station: feed the engine and the bundle's ONNX model
(run by ONNX Runtime on the CPU) the same inputs, and require that the top-1 class
agrees on (almost) every crop and that no class probability moves by more than a
set amount. The result is written into the engine's manifest, where the daemon
and an auditor can read that this engine, on this device, was proven.

Reference: by default the ONNX file the engine was built from (so the check
isolates what TensorRT did); ``reference="fp32"`` compares with the FP32 model
instead (what the bundle's accuracy gate was measured against).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ConfigError, FacediagError

log = logging.getLogger(__name__)

DEFAULT_MIN_AGREEMENT = 0.99
# Largest allowed |p_engine - p_reference| per precision: FP32 engines differ from ONNX
# Runtime only by kernel choice (TF32 on Ampere+), FP16 by rounding, INT8 by quantisation.
DEFAULT_MAX_PROB_DIFF: dict[str, float] = {"fp32": 0.01, "fp16": 0.03, "int8-tensorrt": 0.10}
MIN_RECOMMENDED_INPUTS = 100
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class VerificationFailed(FacediagError):
    """Raised by callers that want an exception rather than a result with ``passed=False``."""


@dataclass(frozen=True)
class Comparison:
    """How two backends' probabilities differ on the same inputs."""

    n: int
    top1_agreement: float
    max_prob_diff: float
    mean_abs_diff: float
    disagreements: list[int]  # row indices whose top-1 differs
    nonfinite_rows: int


def compare_probabilities(candidate: np.ndarray, reference: np.ndarray) -> Comparison:
    """Top-1 agreement and probability differences between two (N, C) arrays."""
    cand = np.asarray(candidate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if cand.ndim != 2 or cand.shape != ref.shape:
        raise FacediagError(
            f"the two backends disagree on the output shape ({cand.shape} vs {ref.shape}): the engine was not "
            "built from this model; rebuild it with `facediag build`"
        )
    if cand.shape[0] == 0:
        raise ConfigError("no inputs to verify on: give at least one crop")
    bad = ~np.all(np.isfinite(cand), axis=1)
    diff = np.abs(cand - ref)
    diff[bad] = np.inf
    agree = np.argmax(cand, axis=1) == np.argmax(ref, axis=1)
    agree &= ~bad
    return Comparison(
        n=int(cand.shape[0]),
        top1_agreement=float(np.mean(agree)),
        max_prob_diff=float(np.max(diff)),
        mean_abs_diff=float(np.mean(diff[~bad])) if np.any(~bad) else float("inf"),
        disagreements=[int(i) for i in np.flatnonzero(~agree)],
        nonfinite_rows=int(np.sum(bad)),
    )


@dataclass
class VerifyResult:
    """The verdict, the numbers behind it and what was compared (stored in the engine manifest)."""

    passed: bool
    n: int
    top1_agreement: float
    max_prob_diff: float
    mean_abs_diff: float
    min_agreement: float
    max_prob_diff_gate: float
    candidate: str
    reference: str
    inputs: str
    reasons: list[str] = field(default_factory=list)
    disagreements: list[int] = field(default_factory=list)
    checked_utc: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["disagreements"] = self.disagreements[:50]
        for k in ("max_prob_diff", "mean_abs_diff"):
            if not np.isfinite(d[k]):
                d[k] = None  # JSON has no infinity
        return d

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"{verdict}: {self.candidate} vs {self.reference} on {self.n} inputs ({self.inputs}): top-1 agreement "
            f"{self.top1_agreement:.4f} (gate >= {self.min_agreement}), max probability difference "
            f"{self.max_prob_diff:.4g} (gate <= {self.max_prob_diff_gate}), mean {self.mean_abs_diff:.3g}"
            + ("".join(f"\n  - {r}" for r in self.reasons))
        )


def judge(
    comparison: Comparison,
    *,
    min_agreement: float,
    max_prob_diff: float,
    candidate: str,
    reference: str,
    inputs: str,
) -> VerifyResult:
    """Apply the gate: agreement >= ``min_agreement`` and max difference <= ``max_prob_diff``."""
    if not 0.0 <= min_agreement <= 1.0:
        raise ConfigError(f"--min-agreement must be within 0..1, got {min_agreement}")
    if max_prob_diff < 0:
        raise ConfigError(f"--max-prob-diff must be >= 0, got {max_prob_diff}")
    reasons = []
    if comparison.nonfinite_rows:
        reasons.append(f"{comparison.nonfinite_rows} input(s) gave NaN/inf probabilities")
    if comparison.top1_agreement < min_agreement:
        reasons.append(
            f"top-1 agreement {comparison.top1_agreement:.4f} is below {min_agreement} "
            f"({len(comparison.disagreements)} of {comparison.n} inputs differ)"
        )
    if comparison.max_prob_diff > max_prob_diff:
        reasons.append(f"max probability difference {comparison.max_prob_diff:.4g} exceeds {max_prob_diff}")
    if comparison.n < MIN_RECOMMENDED_INPUTS:
        log.warning(
            "only %d inputs: one disagreement moves agreement by %.3f; use %d or more crops for a meaningful check",
            comparison.n, 1.0 / comparison.n, MIN_RECOMMENDED_INPUTS,
        )
    return VerifyResult(
        passed=not reasons,
        n=comparison.n,
        top1_agreement=comparison.top1_agreement,
        max_prob_diff=comparison.max_prob_diff,
        mean_abs_diff=comparison.mean_abs_diff,
        min_agreement=float(min_agreement),
        max_prob_diff_gate=float(max_prob_diff),
        candidate=candidate,
        reference=reference,
        inputs=inputs,
        reasons=reasons,
        disagreements=comparison.disagreements,
        checked_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def run_batches(engine: Any, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Run an ``Engine`` over ``inputs`` in batches and stack the probabilities."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    outs = [np.asarray(engine.infer(inputs[i : i + batch_size])) for i in range(0, inputs.shape[0], batch_size)]
    return np.concatenate(outs, axis=0)


def compare_engines(
    candidate: Any,
    reference: Any,
    inputs: np.ndarray,
    *,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_prob_diff: float,
    batch_size: int = 8,
    candidate_name: str = "candidate",
    reference_name: str = "reference",
    inputs_name: str = "arrays",
) -> VerifyResult:
    """Run both engines on the same inputs and judge the difference."""
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    cand = run_batches(candidate, x, batch_size)
    ref = run_batches(reference, x, batch_size)
    return judge(
        compare_probabilities(cand, ref),
        min_agreement=min_agreement,
        max_prob_diff=max_prob_diff,
        candidate=candidate_name,
        reference=reference_name,
        inputs=inputs_name,
    )


# --------------------------------------------------------------------------- inputs


def load_inputs(path: str | Path, contract: Any, *, limit: int | None = None) -> np.ndarray:
    """Model inputs (N, 3, H, W) float32 from a calibration set, a ``.npy`` array, or aligned crop images.

    Crops must already be aligned to the bundle's template at its crop size (what
    ``facediag crop`` writes); photos of whole scenes are refused rather than resized,
    because a resized scene is not what the model sees on the station.
    """
    from edge.face.contract import crops_to_input

    p = Path(path)
    shape = (3, contract.height, contract.width)
    if p.is_dir() and (p / "manifest.json").is_file() and (p / "inputs.npy").is_file():
        from calibration.calibration_set import load_calibration_set

        x = load_calibration_set(p).inputs
    elif p.suffix == ".npy" and p.is_file():
        x = np.load(p, allow_pickle=False)
    elif p.exists():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES) if p.is_dir() else [p]
        if not files:
            raise ConfigError(f"{p} holds no crop images ({', '.join(sorted(_IMAGE_SUFFIXES))})")
        if limit is not None:
            files = files[:limit]
        from edge.face.imageio import load_image

        crops = []
        for f in files:
            img = load_image(f)
            if img.shape[:2] != (contract.height, contract.width):
                raise ConfigError(
                    f"{f} is {img.shape[1]}x{img.shape[0]}, not an aligned {contract.width}x{contract.height} crop "
                    f"for template {contract.template}: make crops with `facediag crop`"
                )
            crops.append(img)
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


def verify_bundle(
    bundle_dir: str | Path,
    precision: str,
    inputs: np.ndarray,
    *,
    backend: str = "tensorrt",
    reference: str | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_prob_diff: float | None = None,
    batch_size: int = 8,
    engine_dir: str | Path | None = None,
    inputs_name: str = "arrays",
    record: bool = True,
    candidate_factory: Callable[[], Any] | None = None,
) -> VerifyResult:
    """Verify the ``precision`` engine of a bundle against ONNX Runtime; record the result in its manifest.

    ``backend="onnxruntime"`` checks the bundle's ``precision`` ONNX file under ONNX
    Runtime instead (a CPU-only station's proof), against FP32. ``candidate_factory``
    replaces how the candidate engine is opened (tests).
    """
    from edge.bundle import load_bundle
    from edge.engine.manifest import EngineManifest, engine_file_name, manifest_path_for, normalize_precision
    from edge.engine.onnxruntime import OrtEngine

    bundle = load_bundle(bundle_dir)
    key = normalize_precision(precision)
    if backend not in ("tensorrt", "onnxruntime"):
        raise ConfigError(f"--backend must be tensorrt or onnxruntime, got {backend!r}")
    gate = DEFAULT_MAX_PROB_DIFF[key] if max_prob_diff is None else float(max_prob_diff)

    manifest = None
    manifest_path = None
    if backend == "tensorrt":
        engine_path = Path(engine_dir or bundle.path) / engine_file_name(key)
        manifest_path = manifest_path_for(engine_path)
        manifest = EngineManifest.load(manifest_path)
        source = "fp32" if manifest.builder_options.get("legacy_calibrator") else key
        ref_key = reference or "source"
        ref_key = source if ref_key == "source" else ref_key
        if candidate_factory is None:
            from edge.engine.tensorrt import open_bundle_engine

            def candidate_factory() -> Any:
                return open_bundle_engine(bundle.path, key, engine_dir=engine_dir)

        cand_name = f"TensorRT {manifest.tensorrt_version} {engine_path.name} on {manifest.gpu_name}"
    else:
        ref_key = reference or "fp32"
        if ref_key in ("source", key):
            raise ConfigError(
                f"with --backend onnxruntime the candidate is the {key} ONNX itself; compare it with another "
                "precision (--reference fp32)"
            )
        if candidate_factory is None:

            def candidate_factory() -> Any:
                return OrtEngine(bundle.model_path(key), precision=key)

        cand_name = f"ONNX Runtime {bundle.precisions[key].file}" if key in bundle.precisions else f"ONNX Runtime {key}"

    ref_path = bundle.model_path(ref_key)
    candidate = candidate_factory()
    try:
        ref_engine = OrtEngine(ref_path, precision=ref_key)
        try:
            result = compare_engines(
                candidate,
                ref_engine,
                inputs,
                min_agreement=min_agreement,
                max_prob_diff=gate,
                batch_size=batch_size,
                candidate_name=cand_name,
                reference_name=f"ONNX Runtime {ref_path.name} (CPU)",
                inputs_name=inputs_name,
            )
        finally:
            ref_engine.close()
    finally:
        candidate.close()

    if record and manifest is not None and manifest_path is not None:
        current = EngineManifest.load(manifest_path)
        if current.engine_sha256 != manifest.engine_sha256:
            raise FacediagError(f"{manifest_path.name} changed during verification (engine rebuilt?); run verify again")
        current.verify = result.to_dict()
        current.save(manifest_path)
        log.info("recorded the verification in %s", manifest_path.name)
    return result
