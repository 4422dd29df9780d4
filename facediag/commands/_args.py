"""Command-line option groups shared by several commands: labelled photo sets, bundles, station config,
gate criteria.

Each ``add_*`` function adds one group of options (and returns the group, so a
command can add its own options next to them); the matching ``*_from_args``
function turns the parsed options into library objects. The detector options
live in ``_front_end_args``. Only the standard library is imported at the top:
``facediag --help`` builds every command's parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# The same names as facediag.edge.photos.SPLITS (a test checks that they agree).
SPLITS = ("train", "val", "test")

ArgumentContainer = Any  # an ArgumentParser or one of its argument groups


def add_labelled_photo_arguments(parser: argparse.ArgumentParser, title: str = "data") -> Any:
    """``--data DIR`` (class sub-folders) or ``--csv CSV --images DIR``; returns the argument group."""
    group = parser.add_argument_group(title)
    group.add_argument("--data", type=Path, metavar="DIR",
                       help="folder of class sub-folders (optionally DIR/train|val|test/<class>/)")
    group.add_argument("--csv", type=Path, metavar="CSV", help="CSV with columns image,label,split")
    group.add_argument("--images", type=Path, metavar="DIR", help="folder the CSV's image paths are relative to")
    return group


def labelled_photos_from_args(args: argparse.Namespace) -> list[Any]:
    """The labelled photos named by ``--data`` or ``--csv``/``--images`` (``facediag.edge.photos.LabelledPhoto``)."""
    from facediag.edge.photos import read_labelled

    photos: list[Any] = read_labelled(folder=args.data, csv_path=args.csv, images_dir=args.images)
    return photos


def labelled_photo_source(args: argparse.Namespace) -> dict[str, str | None]:
    """Where the photos came from, for reports."""
    return {
        "csv": str(args.csv) if args.csv else None,
        "images": str(args.images) if args.images else None,
        "folder": str(args.data) if args.data else None,
    }


def add_split_argument(
    container: ArgumentContainer, default: str | None = "test", help: str = "split to evaluate (default test)",
    flag: str = "--split", extra_choices: tuple[str, ...] = (),
) -> None:
    """A split option whose choices are the photo-collection layer's splits (plus ``extra_choices``)."""
    container.add_argument(flag, default=default, choices=(*SPLITS, *extra_choices), help=help)


def add_bundle_argument(parser: ArgumentContainer, help: str = "model bundle folder", optional: bool = False) -> None:
    """The positional BUNDLE folder; ``optional`` when ``--config`` can name it instead."""
    if optional:
        parser.add_argument("bundle", type=Path, nargs="?", help=f"{help} (or give --config)")
    else:
        parser.add_argument("bundle", type=Path, help=help)


def add_config_argument(
    parser: ArgumentContainer, required: bool = False,
    help: str = "station TOML (see systemd/station.toml)",
) -> None:
    """``--config PATH``: the station's configuration file."""
    parser.add_argument("--config", type=Path, required=required, metavar="PATH", help=help)


def station_config_from_args(args: argparse.Namespace) -> Any:
    """The station configuration named by ``--config`` (``facediag.edge.config``), or None without one."""
    if getattr(args, "config", None) is None:
        return None
    from facediag.edge.config import load_config

    return load_config(args.config)


# --------------------------------------------------------------------------- gate criteria (fp16, quantize, verify)
# All three compare a candidate model with a reference through facediag.converters.compare; these options
# build its Criteria. The precision gates have labels and so also --max-drop; verify has none, and its
# --max-prob-diff defaults to the precision table's figure for the precision it checks.

DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_TIE_MARGIN = 0.01
DEFAULT_MAX_DROP = 1.0
DEFAULT_CONFIDENCE = 0.95


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` would make every comparison pass; issue 11)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def add_gate_criteria_arguments(parser: argparse.ArgumentParser, *, labels: bool, reference: str = "FP32") -> None:
    """--min-agreement, --max-prob-diff, --tie-margin (and --max-drop when the check has labels)."""
    from facediag.edge import precision as precision_table

    g = parser.add_argument_group("gate criteria")
    g.add_argument("--min-agreement", type=finite_float, default=DEFAULT_MIN_AGREEMENT,
                   help=f"min top-1 agreement with {reference}, near-ties left out (default {DEFAULT_MIN_AGREEMENT})")
    if labels:
        g.add_argument("--max-drop", type=finite_float, default=DEFAULT_MAX_DROP,
                       help=f"max accuracy drop in points, with --val (default {DEFAULT_MAX_DROP})")
        g.add_argument("--max-prob-diff", type=finite_float, default=None,
                       help="max abs class-probability difference (default: report only)")
    else:
        defaults = ", ".join(f"{p.verify_max_prob_diff:g} {p.name}" for p in precision_table.PRECISIONS)
        g.add_argument("--max-prob-diff", type=finite_float, default=None,
                       help=f"max abs class-probability difference (default per precision: {defaults})")
    g.add_argument("--tie-margin", type=finite_float, default=DEFAULT_TIE_MARGIN,
                   help=f"inputs where {reference}'s top-1 beats its top-2 by less than this are left out of the "
                   f"agreement figure (a tie flips with any noise; the probability difference still covers them); "
                   f"default {DEFAULT_TIE_MARGIN}")
    g.add_argument("--min-agreement-all", type=finite_float, default=None,
                   help="min top-1 agreement over ALL inputs, near-ties included, so that flips cannot hide among "
                   "ties (default: --min-agreement minus 0.02)")
    g.add_argument("--confidence", type=finite_float, default=DEFAULT_CONFIDENCE,
                   help=f"--min-agreement must be shown at this confidence: the one-sided Clopper-Pearson lower "
                   f"bound of the non-tie agreement must exceed it, else the check fails and says how many photos "
                   f"are needed (299 non-tie photos for 0.99 with no flip); 0: judge the point estimate only "
                   f"(default {DEFAULT_CONFIDENCE})")


def gate_criteria_from_args(args: argparse.Namespace) -> Any:
    """The precision gate's ``Criteria`` (fp16, quantize)."""
    from facediag.converters.compare import gate_criteria

    return gate_criteria(args.min_agreement, args.max_drop, args.max_prob_diff, args.tie_margin,
                         args.min_agreement_all, args.confidence)

