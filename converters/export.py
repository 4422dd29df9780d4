"""PyTorch classifier -> one self-contained FP32 ONNX file, checked and compared with PyTorch.

Why the TorchScript exporter (``dynamo=False``) by default: with torch 2.13 it
writes opset 17 directly (the opset TensorRT 8.5 on JetPack 5 reads), folds
batch norm, and gives a small graph that passes ``onnx.checker`` with
``full_check``. The dynamo exporter starts at opset 18 and its down-conversion
to 17 fails on reductions. When a future torch drops the TorchScript exporter
the dynamo one is used instead (opset 18, still fine for TensorRT >= 10).

The graph's input is ``input`` float32 [N, 3, H, W] 0..255 (``crops_to_input``
output) and its output ``probabilities`` [N, C]; the batch axis is dynamic.

PReLU (MobileFaceNet has 33) is rewritten as ``Relu(x) + slope * Min(x, 0)``:
the same numbers bit for bit (the parity check runs after the rewrite), but
ONNX Runtime's CPU PRelu kernel took ~60 % of MobileFaceNet's time, and the
rewritten graph runs ~2.4x faster in FP32 and lets the INT8 CPU model use
quantised Mul/Add kernels. Every op used exists in every TensorRT version.
``prelu="keep"`` leaves PReLU as exported.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.errors import FacediagError, ModelFileError

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(FacediagError):
    """The exported graph is invalid or does not reproduce the PyTorch model."""


@dataclass
class ExportInfo:
    """What the exporter did: recorded in bundle.json."""

    opset: int
    exporter: str
    torch_version: str
    onnx_version: str
    prelu: str = "decompose"

    def to_dict(self) -> dict[str, Any]:
        return {"opset": self.opset, "exporter": self.exporter, "torch": self.torch_version, "onnx": self.onnx_version,
                "prelu": self.prelu}


def _export_torchscript(model: Any, example: Any, out: Path, opset: int) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of the TorchScript exporter
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
            dynamo=False,
        )


def _export_dynamo(model: Any, example: Any, out: Path, opset: int) -> None:
    import torch

    torch.onnx.export(
        model,
        (example,),
        str(out),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=max(opset, 18),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        external_data=False,
        dynamo=True,
        verbose=False,
    )


def decompose_prelu(proto: Any) -> int:
    """Replace every PRelu node by Relu(x) + slope * Min(x, 0) in place; returns how many were replaced."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    zero = "facediag_prelu_zero"
    nodes = []
    count = 0
    for node in graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope = node.input[0], node.input[1]
        out = node.output[0]
        base = node.name or out
        nodes += [
            helper.make_node("Relu", [x], [f"{out}_pos"], name=f"{base}_relu"),
            helper.make_node("Min", [x, zero], [f"{out}_neg"], name=f"{base}_min"),
            helper.make_node("Mul", [f"{out}_neg", slope], [f"{out}_neg_scaled"], name=f"{base}_mul"),
            helper.make_node("Add", [f"{out}_pos", f"{out}_neg_scaled"], [out], name=f"{base}_add"),
        ]
        count += 1
    if count:
        graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def export_model(
    model: Any, contract: Any, out_path: str | Path, opset: int = DEFAULT_OPSET, prelu: str = "decompose"
) -> ExportInfo:
    """Export ``model`` (input: crops_to_input output, output: probabilities) to ``out_path`` and check it."""
    import onnx
    import torch

    out = Path(out_path)
    model = model.eval()
    example = torch.rand(2, 3, contract.height, contract.width) * 255.0
    exporter = "torchscript"
    with torch.no_grad():
        try:
            _export_torchscript(model, example, out, opset)
        except (TypeError, RuntimeError, NotImplementedError) as exc:  # exporter missing in this torch
            log.warning("TorchScript ONNX exporter unavailable (%s); using the dynamo exporter", exc)
            exporter = "dynamo"
            _export_dynamo(model, example, out, opset)
    proto = onnx.load(str(out), load_external_data=False)
    if prelu == "decompose" and decompose_prelu(proto):
        onnx.save_model(proto, str(out), save_as_external_data=False)
    # Self-contained: a model whose weights live in side files cannot be hashed or shipped as one file.
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(f"{out}: {len(external)} weight tensor(s) were written as external data; the model is too large for one file")
    check_graph(out)
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportInfo(
        opset=int(version), exporter=exporter, torch_version=torch.__version__, onnx_version=onnx.__version__, prelu=prelu
    )


def check_graph(path: str | Path, num_classes: int | None = None) -> None:
    """``onnx.checker`` with full_check (shape inference too), and the IO names and dynamic batch axis."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path} fails onnx.checker (full_check): {exc}") from exc
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise ExportError(
            f"{path}: expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, found "
            f"{[i.name for i in inputs]} -> {[o.name for o in proto.graph.output]}"
        )
    for value in (inputs[0], proto.graph.output[0]):
        tensor = value.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"{path}: {value.name} must be float32, is {onnx.TensorProto.DataType.Name(tensor.elem_type)}")
        batch = tensor.shape.dim[0]
        if batch.HasField("dim_value"):
            raise ExportError(f"{path}: the batch axis of {value.name} is fixed at {batch.dim_value}; it must be dynamic")
    if num_classes is not None:
        dims = proto.graph.output[0].type.tensor_type.shape.dim
        if len(dims) != 2 or (dims[1].HasField("dim_value") and dims[1].dim_value != num_classes):
            raise ExportError(f"{path}: output shape does not end in {num_classes} classes")


def torch_probabilities(model: Any, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The PyTorch model's probabilities for ``inputs`` (float32 NCHW), in batches."""
    from facediag.converters.compare import TorchEngine, run_batches

    return run_batches(TorchEngine(model), inputs, batch_size)


def parity(model: Any, onnx_path: str | Path, inputs: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch on real inputs; ExportError when they differ by more than ``tolerance``.

    Returns the verdict's record (what bundle.json keeps as the fp32 model's ``gate``).
    """
    from facediag.converters.compare import TorchEngine, compare_engines, ort_opener, parity_criteria

    if len(inputs) == 0:
        raise ExportError("the parity check needs at least one real aligned crop")
    try:
        verdict = compare_engines(
            ort_opener(Path(onnx_path)), lambda: TorchEngine(model), inputs, parity_criteria(tolerance),
            candidate=f"{Path(onnx_path).name} (onnxruntime CPU)", reference="pytorch", inputs_name="real aligned crops",
        )
    except FacediagError as exc:  # e.g. the two disagree on the output shape
        raise ExportError(f"ONNX Runtime and PyTorch cannot be compared: {exc}") from exc
    if not verdict.passed:
        raise ExportError(
            f"ONNX Runtime and PyTorch differ by {verdict.max_prob_diff:.3g} in probability on {len(inputs)} real crops "
            f"(tolerance {tolerance:g}); the export is not faithful: check for training-only layers or "
            f"unsupported ops, or file a bug with the checkpoint"
        )
    return verdict.to_dict()


def check_output_is_probability(probs: np.ndarray) -> None:
    """Rows must be probabilities (the checkpoint contract): non-negative, summing to 1."""
    if probs.min() < -1e-6 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise ModelFileError("the model's output rows are not probabilities (softmax missing?); load it with facediag.training.checkpoint.load_classifier")


def _checkpoint_sha(ckpt_dir: Path) -> str:
    from facediag.edge.hashing import sha256_file

    weights = ckpt_dir / "model.safetensors"
    if not weights.is_file():
        raise ModelFileError(f"{ckpt_dir} is not a facediag checkpoint: model.safetensors is missing (train one with `facediag train`)")
    return sha256_file(weights)


def default_thresholds(classes: list[str], healthy_class: str | None) -> dict[str, float]:
    """0.5 for every class but the healthy one: a placeholder until thresholds are chosen on validation data."""
    return {c: 0.5 for c in classes if c != healthy_class}


def thresholds_from_report(report_path: str | Path, classes: list[str], healthy_class: str) -> tuple[dict[str, float], str]:
    """The per-class thresholds of a ``facediag evaluate`` report, checked against this model's classes."""
    import json

    path = Path(report_path)
    if not path.is_file():
        raise FacediagError(f"{path}: no such report; run `facediag evaluate CKPT ... --out DIR` and pass DIR/report.json")
    try:
        report = json.loads(path.read_text())
        report_classes = list(report["model"]["classes"])
        found = {str(k): float(v) for k, v in report["thresholds"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FacediagError(f"{path}: not a facediag evaluate report ({exc})") from None
    if report_classes != list(classes):
        raise FacediagError(
            f"{path}: the report is for classes {report_classes}, this checkpoint has {list(classes)}: "
            "evaluate this checkpoint and use that report"
        )
    missing = [c for c in classes if c != healthy_class and c not in found]
    if missing:
        raise FacediagError(f"{path}: no threshold for {', '.join(missing)} (no validation photos of it?)")
    bad = [c for c, v in found.items() if not 0.0 <= v <= 1.0]
    if bad:
        raise FacediagError(f"{path}: thresholds of {', '.join(bad)} are not probabilities")
    sensitivity = (report.get("threshold_selection") or {}).get("target_sensitivity")
    return found, f"{path.name} (chosen on validation data for sensitivity {sensitivity})"


def _load_for_export(ckpt_dir: Path) -> tuple[Any, dict[str, Any], Any]:
    """(model in eval mode, checkpoint metadata, its PreprocessContract)."""
    from facediag.edge.face.contract import PreprocessContract
    from facediag.training.checkpoint import load_classifier

    model, meta = load_classifier(ckpt_dir)
    model.eval()
    contract: PreprocessContract | None = getattr(model, "contract", None)
    if "contract" in meta:
        contract = PreprocessContract.from_dict(meta["contract"])
    if contract is None:
        raise ModelFileError(f"{ckpt_dir}: the checkpoint records no preprocessing contract; re-save it with `facediag train`")
    return model, meta, contract


def _choose_thresholds(
    meta: dict[str, Any], classes: list[str], healthy: str, report: str | Path | None
) -> tuple[dict[str, float], str]:
    """(thresholds, where they came from): the evaluate report, else the checkpoint, else 0.5 placeholders."""
    if report is not None:
        return thresholds_from_report(report, classes, healthy)
    if meta.get("thresholds"):
        return dict(meta["thresholds"]), "checkpoint"
    log.warning("bundle thresholds are the 0.5 placeholder; choose them with `facediag evaluate` first")
    return default_thresholds(classes, healthy), "default 0.5 (no thresholds given: run facediag evaluate and export --thresholds)"


def _parity_gate(
    model: Any, onnx_path: Path, parity_inputs: np.ndarray, tolerance: float, parity_sources: list[str] | None
) -> dict[str, Any]:
    """The fp32 gate: the model's outputs are probabilities and ONNX Runtime matches PyTorch on them."""
    reference = torch_probabilities(model, parity_inputs[:2])
    check_output_is_probability(reference)
    gate = parity(model, onnx_path, parity_inputs, tolerance=tolerance)
    if parity_sources:
        # Content hashes only: a bundle never carries the photos' file names (clinical file names can
        # identify patients), so anything that is not a sha256 is refused here.
        if not all(isinstance(d, str) and re.fullmatch(r"[0-9a-f]{64}", d) for d in parity_sources):
            raise ValueError("parity_sources must be the sha256 of the parity photos, never their file names")
        gate["source_sha256"] = list(parity_sources[:50])  # beside the verdict's own fields
    return gate


def _provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's model origins and licences; rebuilt from its backbone and detector names if it predates them."""
    if isinstance(meta.get("provenance"), dict) and meta["provenance"]:
        return dict(meta["provenance"])
    from facediag.training.checkpoint import model_provenance

    return model_provenance(str(meta["backbone"]), (meta.get("data") or {}).get("detector"))


def _healthy_class(meta: dict[str, Any], classes: list[str], ckpt_dir: Path) -> str:
    """The checkpoint's healthy class; ModelFileError when it is not one of its classes."""
    healthy = meta.get("healthy_class")
    if not isinstance(healthy, str) or healthy not in classes:
        raise ModelFileError(f"{ckpt_dir}/checkpoint.json: healthy_class {healthy!r} is not one of the classes {classes}")
    return healthy


def _publish(work: Path, bundle_dir: Path) -> None:
    """Give the assembled folder normal permissions and rename it into place (replacing an old bundle)."""
    import os
    import shutil

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp makes it 0700; a bundle is meant to be copied and read
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    work.rename(bundle_dir)


def _check_thresholds(report: str | Path | None, thresholds: dict[str, float], classes: list[str], healthy: str,
                      min_specificity: float, accept_low: bool) -> dict[str, Any] | None:
    """The specificity floor on thresholds taken from an evaluate report (None when they come from elsewhere)."""
    if report is None:
        return None
    from facediag.converters.threshold_check import check_threshold_specificity

    return check_threshold_specificity(report, thresholds, classes, healthy, min_specificity=min_specificity,
                                       accept_low=accept_low)


def export_checkpoint(
    ckpt_dir: str | Path,
    bundle_dir: str | Path,
    parity_inputs: np.ndarray,
    *,
    tolerance: float = PARITY_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    parity_sources: list[str] | None = None,
    prelu: str = "decompose",
    thresholds_report: str | Path | None = None,
    min_specificity: float = 0.5,
    accept_low_specificity: bool = False,
) -> Any:
    """Checkpoint folder -> new bundle folder with model.onnx and bundle.json. Returns the loaded Bundle.

    Decision thresholds come from ``thresholds_report`` (a ``facediag evaluate`` report.json, whose
    thresholds were chosen on validation data for a target sensitivity), else from the checkpoint,
    else 0.5 for every condition (logged as a placeholder). Thresholds from a report whose validation
    specificity is below ``min_specificity`` (or not recorded) are refused unless
    ``accept_low_specificity``; see ``facediag.converters.threshold_check``.

    The bundle is assembled in a temporary sibling folder and renamed into place only when the
    graph check and the parity check passed, so a failed export leaves no half bundle behind.
    """
    import shutil
    import tempfile

    from facediag.edge import precision as precision_table
    from facediag.edge.bundle import create_bundle, load_bundle
    from facediag.edge.version import __version__

    ckpt_dir, bundle_dir = Path(ckpt_dir), Path(bundle_dir)
    if bundle_dir.exists() and any(bundle_dir.iterdir()) and not force:
        raise FacediagError(f"{bundle_dir} already exists and is not empty: choose a new folder or pass --force to replace it")
    source_sha = _checkpoint_sha(ckpt_dir)
    model, meta, contract = _load_for_export(ckpt_dir)
    classes = list(meta["classes"])
    expected = (contract.height, contract.width)
    if parity_inputs.ndim != 4 or parity_inputs.shape[1:] != (3, *expected):
        raise ExportError(f"parity inputs must be N x 3 x {expected[0]} x {expected[1]}, got {parity_inputs.shape}")
    healthy = _healthy_class(meta, classes, ckpt_dir)
    thresholds, thresholds_source = _choose_thresholds(meta, classes, healthy, thresholds_report)
    threshold_check = _check_thresholds(thresholds_report, thresholds, classes, healthy, min_specificity,
                                        accept_low_specificity)
    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{bundle_dir.name}.", dir=bundle_dir.parent))
    try:
        onnx_name = precision_table.file_name(precision_table.REFERENCE)
        info = export_model(model, contract, work / onnx_name, opset=opset, prelu=prelu)
        check_graph(work / onnx_name, num_classes=len(classes))
        gate = _parity_gate(model, work / onnx_name, parity_inputs, tolerance, parity_sources)
        extra: dict[str, Any] = {
            "export": info.to_dict(),
            "thresholds_source": thresholds_source,
            "training": {k: meta[k] for k in ("backbone", "strategy", "temperature", "metrics", "seed") if k in meta},
        }
        if threshold_check is not None:
            extra["thresholds_check"] = threshold_check
        extra["provenance"] = _provenance(meta)
        create_bundle(
            work,
            classes=classes,
            healthy_class=healthy,
            contract=contract,
            thresholds={k: float(v) for k, v in thresholds.items()},
            fp32_file=onnx_name,
            fp32_gate=gate,
            source_checkpoint={"path": str(ckpt_dir.resolve()), "sha256": source_sha},
            creator=f"facediag {__version__}",
            extra=extra,
        )
        _publish(work, bundle_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return load_bundle(bundle_dir)
