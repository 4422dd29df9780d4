"""Command-line options for the face front-end, shared by crop, train, evaluate and calibrate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_front_end_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detector",
        choices=("auto", "mtcnn", "yunet"),
        default="auto",
        help="face detector: yunet (needs --detector-model, see `facediag models fetch yunet`) or mtcnn "
        "(works offline, ships with the station extra); auto = yunet when a model path is given, else mtcnn",
    )
    parser.add_argument("--detector-model", type=Path, default=None, help="path of the YuNet ONNX file")
    parser.add_argument(
        "--pad",
        type=float,
        default=0.0,
        help="pad each side by this fraction of the image before detection (helps tightly cropped photos)",
    )


def front_end_from_args(args: argparse.Namespace, contract: Any, gates: Any = None) -> Any:
    """A FaceFrontEnd for the options above. ``auto`` resolves in place on ``args.detector``."""
    from edge.face.detector import make_detector
    from edge.face.pipeline import FaceFrontEnd
    from edge.face.quality import QualityGates

    if args.detector == "auto":
        args.detector = "yunet" if args.detector_model else "mtcnn"
    detector = make_detector(args.detector, model_path=args.detector_model)
    return FaceFrontEnd(detector, contract, gates=gates if gates is not None else QualityGates(), pad_fraction=args.pad)


def add_photo_front_end_arguments(parser: argparse.ArgumentParser) -> None:
    """Detector and crop-cache options of the commands that read labelled photo collections (train, evaluate)."""
    fe = parser.add_argument_group("face front-end")
    fe.add_argument("--detector", choices=("auto", "mtcnn", "yunet"), default="auto",
                    help="face detector; auto = yunet when --detector-model is given, else mtcnn")
    fe.add_argument("--detector-model", type=Path, metavar="PATH", help="YuNet ONNX file")
    fe.add_argument("--cache", type=Path, metavar="DIR", help="crop cache folder (default ~/.cache/facediag/crops)")
    fe.add_argument("--no-cache", action="store_true", help="do not read or write the crop cache")
