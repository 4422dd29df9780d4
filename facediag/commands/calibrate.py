"""`facediag calibrate BUNDLE SRC OUT`: real photos -> a calibration set for INT8 quantisation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "calibrate"
HELP = "make an INT8 calibration set from real photos through the bundle's own preprocessing"
DESCRIPTION = (
    "Takes --count photos (or already-aligned crops) from SRC, stratified by class when labels are known "
    "(--csv image,label[,split], or class sub-folders), runs each through the bundle's face front-end and "
    "contract, and writes OUT/inputs.npy (float32 NCHW, exactly what the model is fed) and OUT/manifest.json "
    "(source paths and sha256, labels, the array's sha256, the bundle's contract and model sha256). A part "
    "(--holdout) is held out from calibration for the accuracy gate of `facediag quantize`."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.commands._args import add_bundle_argument
    from facediag.commands.export import add_detector_arguments

    add_bundle_argument(parser)
    parser.add_argument("src", type=Path, help="folder of photos or crops (class sub-folders allowed); with --csv, the image folder")
    parser.add_argument("out", type=Path, help="calibration set folder to create")
    parser.add_argument("--count", type=int, default=300, help="number of images to take (default 300)")
    parser.add_argument("--csv", type=Path, default=None, help="labels: CSV with columns image,label[,split]")
    parser.add_argument("--split", default=None,
                        help="with --csv: only rows whose split column holds this name (e.g. train, or calib)")
    parser.add_argument("--holdout", type=float, default=0.25, help="fraction held out from calibration for the gate (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    add_detector_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facediag.calibration.calibration_set import build_calibration_set, list_sources
    from facediag.commands.export import make_cropper
    from facediag.edge.bundle import load_bundle
    from facediag.edge.photos import PhotoCropper

    bundle = load_bundle(args.bundle)
    sources = list_sources(args.src, args.csv, split=args.split)
    cropper = make_cropper(args, bundle.contract)
    assert isinstance(cropper, PhotoCropper)
    cset = build_calibration_set(
        bundle, sources, args.out, count=args.count, holdout=args.holdout, seed=args.seed,
        cropper=cropper, force=args.force,
        progress=lambda it: tqdm(it, desc="calibration crops", unit="photo", total=len(sources)),
    )
    print(json.dumps({"out": str(args.out), "images": len(cset.items), "calibration": len(cset.calib_inputs),
                      "held_out": len(cset.holdout_inputs), "skipped": len(cset.manifest["skipped"])}))
    return 0
