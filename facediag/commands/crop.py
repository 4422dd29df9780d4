"""`facediag crop SRC DST`: photos -> aligned face crops + manifest.csv, ready for `train` / `evaluate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

NAME = "crop"
HELP = "detect, align and crop the face in every photo of a folder (class sub-folders kept)"
DESCRIPTION = (
    "Walks SRC (a folder, class sub-folders allowed, or one photo), finds the subject's face (the largest, "
    "most central), aligns its 5 landmarks onto TEMPLATE and writes PNG crops under DST with the same relative "
    "paths, plus DST/manifest.csv (source path and sha256, box, landmarks, quality figures, and for each "
    "skipped file the reason) and DST/crop_settings.json (the template, crop size and front-end). Bad files "
    "are reported and skipped. Re-running skips files already done. The face front-end is the one `train` and "
    "`evaluate` use on photos, so `facediag train --data DST` (or --csv CSV --images DST) takes the crops "
    "as they are, without detecting again, when TEMPLATE is the backbone's, and refuses them otherwise."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.commands._front_end_args import add_front_end_arguments

    parser.add_argument("src", type=Path, help="folder of photos (or one photo)")
    parser.add_argument("dst", type=Path, help="output folder for crops, manifest.csv and crop_settings.json")
    add_front_end_arguments(parser)
    parser.add_argument(
        "--template",
        default="arcface_112x112",
        help="alignment template: arcface_112x112, sphereface_112x96, facenet_160x160, vggface_224x224 "
        "(use the backbone's: facenet_160x160 for the default facenet, sphereface_112x96 for mobilefacenet)",
    )
    parser.add_argument("--strict-quality", action="store_true", help="skip faces that fail a quality gate (default: crop them and note the reasons)")
    parser.add_argument("--force", action="store_true", help="redo every file (needed to change settings for an existing DST)")


def _front_end(args: argparse.Namespace, contract: Any) -> tuple[Any, dict[str, Any]]:
    """(front-end, its description for crop_settings.json): the photo-collection one, or with --pad the plain one."""
    from facediag.commands._front_end_args import front_end_from_args
    from facediag.edge.crop_folders import PHOTO_FRONT_END
    from facediag.edge.face.detector import auto_detector_name, make_detector
    from facediag.edge.face.pipeline import PhotoFrontEnd
    from facediag.edge.face.quality import QualityGates

    if args.pad > 0:  # the station's plain front-end with this padding: not what train/evaluate do to photos
        return front_end_from_args(args, contract), {
            "name": f"facediag.edge.face.pipeline.FaceFrontEnd (pad {args.pad})"}
    if args.detector == "auto":
        args.detector = auto_detector_name(args.detector_model)
    detector = make_detector(args.detector, model_path=args.detector_model)
    info = {"name": PHOTO_FRONT_END, **PhotoFrontEnd.policy(),
            "coordinates": "manifest box and landmarks refer to the image the face was found in: upscaled for "
                           "photos under tight_crop_side px and for retries"}
    return PhotoFrontEnd(detector, contract, gates=QualityGates()), info


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facediag.edge.crop_folders import contract_geometry
    from facediag.edge.face.batch_crop import crop_folder
    from facediag.edge.face.contract import PreprocessContract

    contract = PreprocessContract(template=args.template)
    front_end, front_end_info = _front_end(args, contract)
    settings = {
        "template": args.template,
        "contract": contract_geometry(contract),
        "front_end": front_end_info,
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
             "manifest": str(args.dst / "manifest.csv"), "template": args.template,
             "size": f"{contract.width}x{contract.height}"}
        )
    )
    return 0
