"""`facediag export CKPT BUNDLE`: trained checkpoint -> model bundle with a checked FP32 ONNX."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

NAME = "export"
HELP = "export a trained checkpoint to a model bundle (FP32 ONNX + bundle.json), checked against PyTorch"
DESCRIPTION = (
    "Loads CKPT (a folder written by `facediag train`), exports one self-contained ONNX file (input `input` "
    "float32 [N,3,H,W] 0..255 in the contract's colour order, output `probabilities` [N,C], dynamic batch, "
    "opset 17), checks it with onnx.checker (full_check) and compares ONNX Runtime with PyTorch on real aligned "
    "crops made from --images (max abs difference of probabilities must be <= --tolerance). Writes BUNDLE/"
    "model.onnx and BUNDLE/bundle.json with the figure. A failed check leaves no bundle behind."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder (model.safetensors + checkpoint.json)")
    parser.add_argument("bundle", type=Path, help="bundle folder to create")
    parser.add_argument("--images", type=Path, required=True,
                        help="real photos or aligned crops for the parity check (folder, or image folder of --csv)")
    parser.add_argument("--csv", type=Path, default=None, help="CSV image,label[,split] listing images under --images")
    parser.add_argument("--count", type=int, default=32, help="how many real crops to compare on (default 32)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs probability difference allowed (default 1e-4)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, what TensorRT 8.5 reads)")
    parser.add_argument("--keep-prelu", action="store_true",
                        help="keep PReLU nodes (default: rewrite them as Relu + slope*Min, identical output, "
                        "much faster in ONNX Runtime on CPU)")
    add_detector_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace BUNDLE if it exists")
    parser.add_argument("--thresholds", type=Path, default=None,
                        help="report.json from `facediag evaluate`: its per-class thresholds (chosen on validation data "
                        "for a target sensitivity) become the bundle's decision thresholds (default: 0.5 placeholders)")
    parser.add_argument("--min-specificity", type=float, default=0.5,
                        help="refuse --thresholds whose validation specificity (recorded in the report) is below this "
                        "(default 0.5: at most half of the people without a condition referred for it)")
    parser.add_argument("--accept-low-specificity", action="store_true",
                        help="export --thresholds below --min-specificity (or without a recorded specificity) anyway; "
                        "logged, and recorded in bundle.json (thresholds_check)")


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.edge.face.detector import DETECTORS

    parser.add_argument("--detector", choices=DETECTORS.names(), default=None,
                        help="face detector for photos (default: yunet when --detector-model is given, else mtcnn)")
    parser.add_argument("--detector-model", type=Path, default=None, help="YuNet ONNX file")
    parser.add_argument("--aligned", choices=("auto", "yes", "no"), default="auto",
                        help="treat images as already-aligned crops: auto = when their size is the contract's crop size")


def make_cropper(args: argparse.Namespace, contract: Any) -> Any:
    """The photo cropper the detector options ask for (a ``facediag.edge.photos.PhotoCropper``)."""
    from facediag.calibration.calibration_set import Cropper

    detector = None
    if args.aligned != "yes":
        from facediag.edge.face.detector import make_detector

        name = args.detector or ("yunet" if args.detector_model else "mtcnn")
        detector = make_detector(name, args.detector_model)
    return Cropper(contract, detector, aligned=args.aligned)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from facediag.calibration.calibration_set import collect_inputs, list_sources, stratified_order
    from facediag.converters.export import export_checkpoint
    from facediag.edge.errors import ConfigError, FacediagError
    from facediag.edge.face.contract import PreprocessContract
    from facediag.training.checkpoint import read_meta

    if args.count < 1:
        raise ConfigError("--count must be >= 1")
    if not 0.0 <= args.min_specificity <= 1.0:
        raise ConfigError("--min-specificity must be within 0..1")
    meta = read_meta(args.checkpoint)
    contract = PreprocessContract.from_dict(meta["contract"])
    sources = stratified_order(list_sources(args.images, args.csv), seed=0)
    inputs, taken, skipped = collect_inputs(
        sources, contract, make_cropper(args, contract), args.count,
        progress=lambda it: tqdm(it, desc="parity crops", unit="photo", total=len(sources)),
    )
    if len(taken) == 0:
        raise FacediagError(f"no face found in any image under {args.images}: the parity check needs real faces")
    bundle = export_checkpoint(
        args.checkpoint, args.bundle, np.asarray(inputs), tolerance=args.tolerance, opset=args.opset,
        force=args.force, parity_sources=[sha for _, sha, _ in taken], prelu="keep" if args.keep_prelu else "decompose",
        thresholds_report=args.thresholds, min_specificity=args.min_specificity,
        accept_low_specificity=args.accept_low_specificity,
    )
    gate = bundle.precisions["fp32"].gate
    print(json.dumps({"bundle": str(args.bundle), "classes": bundle.classes, "opset": bundle.extra["export"]["opset"],
                      "parity_images": gate["images"], "max_prob_diff": gate["max_prob_diff"]}))
    return 0
