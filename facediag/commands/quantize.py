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
    "compared with FP32 on CPU on SET's held-out images (and --val when given): top-1 agreement on non-tie "
    "images >= --min-agreement shown at --confidence (too few images fail, and the message says how many are "
    "needed), agreement over all images >= --min-agreement-all, accuracy drop on labelled images (--val, or "
    "SET's own labels) <= --max-drop points, optional --max-prob-diff. Entropy and percentile ranges are "
    "computed from streamed histograms (one image's activations in memory at a time). A model that fails is "
    "deleted and not added; the command exits 1 with the figures."
)


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate's criteria, its labelled validation set and the detector that crops it (fp16, quantize)."""
    from facediag.commands._args import add_gate_criteria_arguments
    from facediag.commands.export import add_detector_arguments

    add_gate_criteria_arguments(parser, labels=True)
    g = parser.add_argument_group("accuracy gate inputs")
    g.add_argument("--val", type=Path, default=None, help="labelled validation images: CSV (image,label[,split]) or class folders")
    g.add_argument("--val-images", type=Path, default=None, help="image folder for --val CSV paths (default: the CSV's folder)")
    g.add_argument("--val-split", default=None, help="with a --val CSV: only rows of this split (e.g. test)")
    g.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the gate (default: all cores)")
    add_detector_arguments(parser)


def gate_inputs(args: argparse.Namespace, bundle: Any) -> tuple[Any, Any]:
    """(criteria, LabelledInputs or None) from the gate options."""
    from tqdm import tqdm

    from facediag.calibration.calibration_set import load_labelled_inputs
    from facediag.commands._args import gate_criteria_from_args
    from facediag.commands.export import make_cropper
    from facediag.converters.gate import LabelledInputs

    criteria = gate_criteria_from_args(args)
    val = None
    if args.val is not None:
        inputs, labels, skipped = load_labelled_inputs(
            args.val, bundle.contract, bundle.classes, images_dir=args.val_images, split=args.val_split,
            cropper=make_cropper(args, bundle.contract), progress=lambda it: tqdm(it, desc="validation crops", unit="photo"),
        )
        val = LabelledInputs(inputs, labels, source=str(args.val) + (f" split={args.val_split}" if args.val_split else ""))
    return criteria, val


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.edge import precision as precision_table

    parser.add_argument("bundle", type=Path, help="model bundle folder")
    parser.add_argument("--calib", type=Path, default=None, help="calibration set made by `facediag calibrate` (required)")
    parser.add_argument("--target", choices=precision_table.quantize_targets(), required=True,
                        help="tensorrt: S8/S8 symmetric (for `facediag build`); cpu: U8/S8 (fast in ONNX Runtime)")
    parser.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                        help="range calibration method (default minmax)")
    parser.add_argument("--no-per-channel", action="store_true", help="per-tensor weight scales (default: per channel)")
    add_gate_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from facediag.calibration.calibration_set import load_calibration_set
    from facediag.calibration.readers import OrtCalibrationReader
    from facediag.converters.gate import gate_and_add
    from facediag.converters.quantize import QuantSettings, can_stream_histograms, quantize_onnx
    from facediag.edge import precision as precision_table
    from facediag.edge.bundle import load_bundle
    from facediag.edge.errors import ConfigError

    if args.calib is None:
        raise ConfigError(
            "INT8 quantisation needs real calibration images and --calib was not given: make a set with "
            "`facediag calibrate BUNDLE PHOTOS SET` and pass --calib SET (facediag never calibrates on random data)"
        )
    bundle = load_bundle(args.bundle)
    cset = load_calibration_set(args.calib, bundle)
    settings = QuantSettings(args.target, per_channel=not args.no_per_channel, method=args.method)
    criteria, val = gate_inputs(args, bundle)
    precision = precision_table.for_quantize_target(args.target)
    candidate = bundle.path / f".{precision_table.file_name(precision)}.candidate"
    try:
        # Histogram methods (entropy, percentile) are streamed one batch at a time, every row used; where ORT
        # must collect them all at once its histograms need equal batches and the last partial one is dropped.
        histogram = settings.method != "minmax"
        drop_last = histogram and not can_stream_histograms()
        batch = (8 if len(cset.calib_inputs) >= 8 or not drop_last else 1) if histogram else 16
        reader = OrtCalibrationReader(cset, batch_size=batch, drop_last=drop_last)
        how = quantize_onnx(bundle.model_path(precision_table.REFERENCE), candidate, reader, settings)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    gate_settings = {**settings.to_dict(), **how, "calibration_set": str(args.calib),
                     "calibration_images": len(cset.calib_inputs)}
    result = gate_and_add(bundle, precision, candidate, cset.holdout_inputs, criteria, val, target=args.target,
                          settings=gate_settings, threads=args.threads,
                          heldout_labels=cset.class_indices(list(bundle.classes), split="holdout"))
    print(json.dumps({"precision": precision, "file": precision_table.file_name(precision), "gate": result.to_dict()}))
    return 0
