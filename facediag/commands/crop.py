"""`facediag crop SRC DST`: photos -> aligned face crops + manifest.csv."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "crop"
HELP = "detect, align and crop the face in every photo of a folder (class sub-folders kept)"
DESCRIPTION = (
    "Walks SRC (a folder, class sub-folders allowed, or one photo), finds the subject's face (the largest, "
    "most central), aligns its 5 landmarks onto TEMPLATE and writes PNG crops under DST with the same relative "
    "paths, plus DST/manifest.csv: source path and sha256, box, landmarks, quality figures, and for each "
    "skipped file the reason. Bad files are reported and skipped. Re-running skips files already done."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.commands._front_end_args import add_front_end_arguments

    parser.add_argument("src", type=Path, help="folder of photos (or one photo)")
    parser.add_argument("dst", type=Path, help="output folder for crops and manifest.csv")
    add_front_end_arguments(parser)
    parser.add_argument(
        "--template",
        default="arcface_112x112",
        help="alignment template: arcface_112x112, sphereface_112x96, facenet_160x160, vggface_224x224",
    )
    parser.add_argument("--strict-quality", action="store_true", help="skip faces that fail a quality gate (default: crop them and note the reasons)")
    parser.add_argument("--force", action="store_true", help="redo every file (needed to change settings for an existing DST)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facediag.commands._front_end_args import front_end_from_args
    from facediag.edge.face.batch_crop import crop_folder
    from facediag.edge.face.contract import PreprocessContract

    contract = PreprocessContract(template=args.template)
    front_end = front_end_from_args(args, contract)
    settings = {
        "template": args.template,
        "detector": args.detector,
        "detector_model": str(args.detector_model) if args.detector_model else None,
        "pad": args.pad,
        "strict_quality": args.strict_quality,
    }
    summary = crop_folder(
        args.src,
        args.dst,
        front_end,
        settings,
        skip_failing_quality=args.strict_quality,
        force=args.force,
        progress=lambda it: tqdm(it, desc="crop", unit="photo"),
    )
    print(
        json.dumps(
            {"cropped": summary.done, "skipped": summary.skipped, "already_done": summary.already_done,
             "manifest": str(args.dst / "manifest.csv")}
        )
    )
    return 0
