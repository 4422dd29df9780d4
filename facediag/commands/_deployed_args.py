"""``facediag evaluate BUNDLE --as-station``: options and run of the deployed-decision evaluation.

The evaluation itself is ``facediag.training.deployed_eval`` (the station's own
pipeline and decision) and ``facediag.training.deployed_report`` (figures, table).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("facediag.evaluate")

DEPLOYED_HELP = """\
As the station runs it (--as-station; implied by --videos, --station-config,
--prevalence, --min-confidence, --good-frames): MODEL must be a bundle. Each
labelled photo is one session of one frame, each labelled video one session,
through the station's own front-end ([detector], [quality]), session rule
(good_frames within window_s, probabilities averaged), engine (ONNX Runtime on
this CPU, the precision the station would pick: [engine] precision, auto = fp32)
and decision (the bundle's thresholds, screening.min_confidence). Reports refer /
no finding / retake per true class, sensitivity and specificity of "refer"
(conditions vs the healthy class; decided sessions, and all sessions with a
retake counted as not referred), PPV/NPV at --prevalence, and why sessions were
retakes: deployed-report.json (one row per session) + deployed-report.md.
"""


def add_deployed_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.commands._args import finite_float

    g = parser.add_argument_group("as the station runs it (MODEL is a bundle)")
    g.add_argument("--as-station", action="store_true",
                   help="score the bundle's deployed decision (refer / no finding / retake) instead of its top-1")
    g.add_argument("--videos", type=Path, metavar="CSV|DIR",
                   help="labelled videos instead of photos: a CSV video,label[,split] or class sub-folders "
                   "(optionally <split>/<class>/); each video is one station session")
    g.add_argument("--video-root", type=Path, metavar="DIR",
                   help="folder the --videos CSV's paths are relative to (default: the CSV's folder)")
    g.add_argument("--station-config", type=Path, metavar="PATH",
                   help="station TOML whose [detector], [quality], [screening] and [engine] precision are used "
                   "(default: the station defaults, with --detector/--detector-model)")
    g.add_argument("--min-confidence", type=finite_float, default=None,
                   help="override screening.min_confidence (below it: retake)")
    g.add_argument("--good-frames", type=int, default=None, help="override screening.good_frames (videos)")
    g.add_argument("--prevalence", type=finite_float, default=None, metavar="P",
                   help="share of screened people with a condition, for PPV/NPV (e.g. 0.05)")


def deployed_requested(args: argparse.Namespace) -> bool:
    return bool(args.as_station or args.videos is not None or args.station_config is not None
                or args.prevalence is not None or args.min_confidence is not None or args.good_frames is not None)


def _refuse_checkpoint_options(args: argparse.Namespace) -> None:
    from facediag.edge.errors import ConfigError

    given = [flag for flag, on in (
        ("--val-split", args.val_split != "val"), ("--sensitivity", args.sensitivity != 0.9),
        ("--val-fraction", args.val_fraction is not None), ("--seed", args.seed is not None),
    ) if on]
    if given:
        raise ConfigError(f"{', '.join(given)} choose thresholds on validation data; the station-run evaluation "
                          "uses the bundle's own thresholds. Leave them out, or leave out --as-station")
    if getattr(args, "aligned", "auto") == "yes":
        raise ConfigError("--aligned yes skips face detection, but the station finds and aligns the face in each "
                          "photo or frame itself: give the original photos with --as-station")
    if args.min_confidence is not None and args.min_confidence > 1:
        raise ConfigError(f"--min-confidence must be within 0..1, got {args.min_confidence}")
    if args.good_frames is not None and args.good_frames < 1:
        raise ConfigError(f"--good-frames must be >= 1, got {args.good_frames}")
    if args.videos is not None and (args.data is not None or args.csv is not None):
        raise ConfigError("give either photos (--data or --csv/--images) or --videos, not both")


def run_deployed(args: argparse.Namespace) -> int:
    from facediag.commands._args import labelled_photo_source, labelled_photos_from_args
    from facediag.training.deployed_eval import (
        StationOverrides,
        check_bundle_path,
        evaluate_deployed,
        items_from_photos,
        read_labelled_videos,
    )
    from facediag.training.deployed_report import format_markdown, write_deployed_report

    _refuse_checkpoint_options(args)
    check_bundle_path(args.model)
    if args.videos is not None:
        kind = "video"
        items = read_labelled_videos(args.videos, args.video_root, args.split)
        source = {"videos": str(args.videos), "video_root": str(args.video_root) if args.video_root else None}
    else:
        kind = "photo"
        items = items_from_photos(labelled_photos_from_args(args), args.split)
        source = {k: v for k, v in labelled_photo_source(args).items()}
        # one info line per new photo size from the pipeline is noise here
        logging.getLogger("facediag.edge.station.pipeline").setLevel(logging.WARNING)
    overrides = StationOverrides(
        precision=args.precision, threads=args.threads, min_confidence=args.min_confidence,
        good_frames=args.good_frames,
        detector=None if args.detector == "auto" and args.detector_model is None else args.detector,
        detector_model=args.detector_model,
    )
    report = evaluate_deployed(args.model, items, kind, config_path=args.station_config, overrides=overrides,
                               prevalence=args.prevalence, data_source={**source, "split": args.split},
                               progress=not args.no_progress)
    out = args.out or (args.model / f"deployed-{kind}s-{args.split}")
    paths = write_deployed_report(out, report)
    print(format_markdown(report), end="")
    print(f"report: {paths['deployed-report.json']}\ntable:  {paths['deployed-report.md']}")
    return 0
