"""`facediag fp16 BUNDLE`: an FP16 ONNX (float32 input/output), accuracy-gated against FP32."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "fp16"
HELP = "make an FP16 model (float32 IO) for TensorRT / GPUs; added only if it passes the accuracy gate"
DESCRIPTION = (
    "Converts the bundle's FP32 ONNX to FP16 (weights and most ops; scaling reductions, L2 norm and softmax "
    "stay FP32; input and output stay float32) and compares it with FP32 on CPU on real images: all rows of "
    "--calib SET and/or the labelled --val set. A model that fails the gate is deleted and not added."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.commands.quantize import add_gate_arguments

    parser.add_argument("bundle", type=Path, help="model bundle folder")
    parser.add_argument("--calib", type=Path, default=None, help="calibration set whose images the gate compares on")
    add_gate_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from facediag.calibration.calibration_set import load_calibration_set
    from facediag.commands.quantize import gate_inputs
    from facediag.converters.fp16 import convert_to_fp16
    from facediag.converters.gate import gate_and_add
    from facediag.edge import precision as precision_table
    from facediag.edge.bundle import load_bundle
    from facediag.edge.errors import ConfigError

    if args.calib is None and args.val is None:
        raise ConfigError("the FP16 accuracy gate needs real images: pass --calib SET (from `facediag calibrate`) and/or --val")
    bundle = load_bundle(args.bundle)
    # Nothing is fitted to the images for FP16, so every row of the set can be used for the gate.
    cset = load_calibration_set(args.calib, bundle) if args.calib else None
    images = cset.inputs if cset is not None else np.zeros((0, 3, bundle.contract.height, bundle.contract.width), np.float32)
    labels = cset.class_indices(list(bundle.classes)) if cset is not None else None
    criteria, val = gate_inputs(args, bundle)
    final = precision_table.file_name(NAME)  # the command is named after the precision it makes
    candidate = bundle.path / f".{final}.candidate"
    try:
        convert_to_fp16(bundle.model_path(precision_table.REFERENCE), candidate)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    settings = {"tool": "onnxruntime.transformers.float16", "io": "float32", "kept_fp32": "reductions, L2 norm, softmax"}
    result = gate_and_add(bundle, NAME, candidate, images, criteria, val, settings=settings, threads=args.threads,
                          heldout_labels=labels)
    print(json.dumps({"precision": NAME, "file": final, "gate": result.to_dict()}))
    return 0
