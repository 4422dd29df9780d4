"""`facediag models`: fetch and check the model files a station downloads once."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "models"
HELP = "download a detector model (YuNet) and check its pinned sha256, or verify a local copy"
DESCRIPTION = (
    "The YuNet face detector's ONNX file is not in any pip package; fetch it once from the OpenCV Zoo. "
    "The sha256 is pinned: a download that does not match is refused. MTCNN needs no download."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    fetch = sub.add_parser("fetch", help="download a model and verify its sha256")
    fetch.add_argument("name", help="model name (yunet)")
    fetch.add_argument("--dir", type=Path, default=None, help="destination folder (default: $FACEDIAG_MODELS or ~/.local/share/facediag/models)")
    fetch.add_argument("--url", default=None, help="a mirror to download from instead (the pinned sha256 still applies)")
    check = sub.add_parser("check", help="verify a local model file against the pinned sha256")
    check.add_argument("name", help="model name (yunet)")
    check.add_argument("path", type=Path, help="the file to check")
    sub.add_parser("list", help="list known models with their pinned hashes")


def run(args: argparse.Namespace) -> int:
    from facediag.edge.models import KNOWN_MODELS, check_sha256, fetch_model

    if args.models_action == "list":
        for spec in KNOWN_MODELS.values():
            print(f"{spec.name}\t{spec.filename}\t{spec.sha256}\t{spec.licence}")
        return 0
    if args.models_action == "check":
        from facediag.edge.errors import ModelFileError

        if args.name not in KNOWN_MODELS:
            raise ModelFileError(f"unknown model {args.name!r}: known models are {', '.join(KNOWN_MODELS)}")
        if not args.path.is_file():
            raise ModelFileError(f"{args.path}: no such file")
        check_sha256(args.path, KNOWN_MODELS[args.name].sha256)
        print(f"{args.path}: sha256 matches the pinned {args.name} model")
        return 0
    path = fetch_model(args.name, args.dir, args.url)
    print(path)
    return 0
