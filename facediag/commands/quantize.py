"""`facediag quantize BUNDLE --calib SET --target tensorrt|cpu`: INT8 Q/DQ ONNX, accuracy-gated."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

NAME = "quantize"
HELP = "make an INT8 (Q/DQ) model for TensorRT or the CPU from a calibration set; added only if it passes the gate"
DESCRIPTION = (
    "Static INT8 quantisation with ONNX Runtime (QDQ, per-channel weights) using the calibration rows of SET. "
    "--target tensorrt: signed symmetric INT8 activations and weights (what TensorRT accepts); --target cpu: "
    "unsigned activations, signed weights (what ONNX Runtime's CPU kernels are fast with). The result is "
    "compared with FP32 on CPU on SET's held-out images (and --val when given): top-1 agreement >= "
    "--min-agreement, accuracy drop <= --max-drop points, optional --max-prob-diff. A model that fails is "
    "deleted and not added; the command exits 1 with the figures."
)


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.commands.export import add_detector_arguments

    g = parser.add_argument_group("accuracy gate")
    g.add_argument("--val", type=Path, default=None, help="labelled validation images: CSV (image,label[,split]) or class folders")
    g.add_argument("--val-images", type=Path, default=None, help="image folder for --val CSV paths (default: the CSV's folder)")
    g.add_argument("--val-split", default=None, help="with a --val CSV: only rows of this split (e.g. test)")
    g.add_argument("--min-agreement", type=float, default=0.99, help="min top-1 agreement with FP32 (default 0.99)")
    g.add_argument("--max-drop", type=float, default=1.0, help="max accuracy drop in points, with --val (default 1.0)")
    g.add_argument("--max-prob-diff", type=float, default=None, help="max abs probability difference (default: report only)")
    g.add_argument("--tie-margin", type=float, default=0.01,
                   help="images where FP32's top-1 beats top-2 by less than this are left out of the agreement "
                   "figure (a tie flips with any noise); default 0.01")
    g.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the gate (default: all cores)")
    add_detector_arguments(parser)


def gate_inputs(args: argparse.Namespace, bundle: Any) -> tuple[Any, Any]:
    """(criteria, LabelledInputs or None) from the gate options."""
    from tqdm import tqdm

    from calibration.calibration_set import load_labelled_inputs
    from converters.gate import GateCriteria, LabelledInputs
    from facediag.commands.export import make_cropper

    criteria = GateCriteria(args.min_agreement, args.max_drop, args.max_prob_diff, args.tie_margin)
    val = None
    if args.val is not None:
        inputs, labels, skipped = load_labelled_inputs(
            args.val, bundle.contract, bundle.classes, images_dir=args.val_images, split=args.val_split,
            cropper=make_cropper(args, bundle.contract), progress=lambda it: tqdm(it, desc="validation crops", unit="photo"),
        )
        val = LabelledInputs(inputs, labels, source=str(args.val) + (f" split={args.val_split}" if args.val_split else ""))
    return criteria, val


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="model bundle folder")
    parser.add_argument("--calib", type=Path, default=None, help="calibration set made by `facediag calibrate` (required)")
    parser.add_argument("--target", choices=("tensorrt", "cpu"), required=True,
                        help="tensorrt: S8/S8 symmetric (for `facediag build`); cpu: U8/S8 (fast in ONNX Runtime)")
    parser.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                        help="range calibration method (default minmax)")
    parser.add_argument("--no-per-channel", action="store_true", help="per-tensor weight scales (default: per channel)")
    add_gate_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from calibration.calibration_set import load_calibration_set
    from calibration.readers import OrtCalibrationReader
    from converters.gate import gate_and_add
    from converters.quantize import QuantSettings, quantize_onnx
    from edge.bundle import PRECISION_FILES, load_bundle
    from edge.errors import ConfigError

    if args.calib is None:
        raise ConfigError(
            "INT8 quantisation needs real calibration images and --calib was not given: make a set with "
            "`facediag calibrate BUNDLE PHOTOS SET` and pass --calib SET (facediag never calibrates on random data)"
        )
    bundle = load_bundle(args.bundle)
    cset = load_calibration_set(args.calib, bundle)
    settings = QuantSettings(args.target, per_channel=not args.no_per_channel, method=args.method)
    criteria, val = gate_inputs(args, bundle)
    precision = f"int8-{args.target}"
    candidate = bundle.path / f".{PRECISION_FILES[precision]}.candidate"
    try:
        # ORT's histogram calibrators (entropy, percentile) need equal batches: the last partial one is dropped.
        histogram = settings.method != "minmax"
        batch = (8 if len(cset.calib_inputs) >= 8 else 1) if histogram else 16
        reader = OrtCalibrationReader(cset, batch_size=batch, drop_last=histogram)
        quantize_onnx(bundle.model_path("fp32"), candidate, reader, settings)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    gate_settings = {**settings.to_dict(), "calibration_set": str(args.calib), "calibration_images": len(cset.calib_inputs)}
    result = gate_and_add(bundle, precision, candidate, cset.holdout_inputs, criteria, val, target=args.target,
                          settings=gate_settings, threads=args.threads)
    print(json.dumps({"precision": precision, "file": PRECISION_FILES[precision], "gate": result.to_dict()}))
    return 0
