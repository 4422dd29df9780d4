"""Command-line options for the face front-end, shared by crop, train, evaluate and calibrate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def detector_choices() -> tuple[str, ...]:
    """``--detector`` choices: ``auto`` and every registered detector (facediag.edge.face.detector.DETECTORS)."""
    from facediag.edge.face.detector import DETECTORS

    return ("auto", *DETECTORS.names())


def detector_help() -> str:
    """One clause per registered detector, for ``--detector`` help."""
    from facediag.edge.face.detector import DETECTORS

    entries = [f"{s.name}: {s.summary} (faces from ~{s.min_face_px} px)" for s in DETECTORS.specs()]
    return ("face detector; auto = yunet when --detector-model is given, else mtcnn. " + "; ".join(entries))


def add_detector_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--detector`` (choices and help from the detector registry) and ``--detector-model``."""
    parser.add_argument("--detector", choices=detector_choices(), default="auto", help=detector_help())
    parser.add_argument("--detector-model", type=Path, default=None, metavar="PATH",
                        help="the detector's model file, for detectors that need one (yunet: its ONNX file)")


def add_front_end_arguments(parser: argparse.ArgumentParser) -> None:
    add_detector_arguments(parser)
    parser.add_argument(
        "--pad",
        type=float,
        default=0.0,
        help="pad each side by this fraction of the image before detection (helps tightly cropped photos)",
    )


def front_end_from_args(args: argparse.Namespace, contract: Any, gates: Any = None) -> Any:
    """A FaceFrontEnd for the options above. ``auto`` resolves in place on ``args.detector``."""
    from facediag.edge.face.detector import auto_detector_name, make_detector
    from facediag.edge.face.pipeline import FaceFrontEnd
    from facediag.edge.face.quality import QualityGates

    if args.detector == "auto":
        args.detector = auto_detector_name(args.detector_model)
    detector = make_detector(args.detector, model_path=args.detector_model)
    return FaceFrontEnd(detector, contract, gates=gates if gates is not None else QualityGates(), pad_fraction=args.pad)


def add_photo_front_end_arguments(parser: argparse.ArgumentParser) -> None:
    """Detector and crop-cache options of the commands that read labelled photo collections (train, evaluate)."""
    fe = parser.add_argument_group("face front-end")
    add_detector_arguments(fe)
    fe.add_argument("--cache", type=Path, metavar="DIR", help="crop cache folder (default ~/.cache/facediag/crops)")
    fe.add_argument("--no-cache", action="store_true", help="do not read or write the crop cache")
    fe.add_argument("--aligned", choices=("auto", "yes", "no"), default="auto",
                    help="the images are aligned crops, taken without detection: auto (default) = when the data "
                    "folder (--data, or --images with --csv) was written by `facediag crop` (crop_settings.json), "
                    "whose template must be the model's; yes = every image is a crop of the model's size; "
                    "no = detect and align every image, even in a crop folder")
