"""`facediag run --config station.toml`: the screening station daemon (what systemd starts)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "run"
HELP = "run the screening station daemon (camera -> face -> model -> screening results)"
DESCRIPTION = (
    "Reads and validates the station TOML (unknown keys and bad values stop it with exit status 78, naming the "
    "key), loads the model bundle, picks the engine (TensorRT when an engine built and verified on this device "
    "exists, else ONNX Runtime on the CPU), opens the source and screens every person who steps up: N good "
    "frames of one face -> refer / no finding / retake, appended to the results file as one JSON line. Speaks "
    "systemd's notify protocol (READY=1 after a first frame and a warm-up inference, WATCHDOG=1 while frames "
    "and processing are fresh, STATUS=, STOPPING=1) and serves a token-protected API on loopback. "
    "Results are screening aids for trained staff, not diagnoses."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="station TOML (see systemd/station.toml)")
    parser.add_argument("--print-config", action="store_true",
                        help="validate the config, print it with every default filled in (JSON) and exit")


def run(args: argparse.Namespace) -> int:
    from facediag.edge.config import load_config

    if args.print_config:
        print(json.dumps(load_config(args.config).to_dict(), indent=2))
        return 0
    from facediag.edge.platform_checks import enforce_platform

    enforce_platform(load_config(args.config).source.uri)  # pip OpenCV shadowing JetPack's, numpy 2 vs system cv2
    from facediag.edge.daemon import run_station
    from facediag.edge.errors import BundleError, ConfigError, ModelFileError

    try:
        return run_station(args.config)
    except (BundleError, ModelFileError) as exc:
        # the configured bundle or model is unusable: a restart cannot fix it, so exit 78 (RestartPreventExitStatus)
        raise ConfigError(str(exc)) from exc
