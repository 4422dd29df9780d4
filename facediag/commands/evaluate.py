"""``facediag evaluate``: measure a checkpoint or a model bundle on labelled photos.

The command reads its options and prints; the evaluation itself (front-end,
crop cache, thresholds chosen on the validation split, the report) is
``facediag.training.evaluation``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from facediag.commands._deployed_args import (
    DEPLOYED_HELP,
    add_deployed_arguments,
    deployed_requested,
    run_deployed,
)

NAME = "evaluate"
HELP = "measure a checkpoint or bundle on labelled photos: report.json, plots, thresholds at a sensitivity"
DESCRIPTION = """\
Evaluate a model on one split of labelled photos and write a report.

MODEL is a checkpoint folder written by `facediag train` (deep or dense-SIFT) or a
model bundle folder (bundle.json + ONNX, run through ONNX Runtime on the CPU).

Data: --data DIR (class sub-folders, optionally DIR/train|val|test/<class>/) or
--csv CSV --images DIR (columns image,label,split). Photos whose label is not
one of the model's classes are left out and counted.

Per class (except the healthy class) a probability threshold that reaches
--sensitivity is chosen on the validation split (--val-split; without one, the
same stratified share of train that `facediag train` held out, from the
checkpoint's seed), then applied to the evaluated split.

Output (--out, default MODEL/eval-SPLIT): report.json (top-1, per-class
precision / sensitivity / specificity / F1, ROC AUC, ECE, confusion matrix,
thresholds, skipped photos, balanced accuracy, macro / weighted precision,
recall and F1, average precision, normalised confusion matrix, per-photo
predictions), confusion_matrix.png (counts and row-normalised), roc.png (the
thresholds' operating points marked), pr.png, reliability.png, and a table on
stdout. A folder written by `facediag crop` goes in as aligned crops (--aligned).

""" + DEPLOYED_HELP

log = logging.getLogger("facediag.evaluate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from facediag.commands._args import add_labelled_photo_arguments, add_split_argument
    from facediag.commands._front_end_args import add_photo_front_end_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", type=Path, metavar="MODEL", help="checkpoint folder or model bundle folder")
    data = add_labelled_photo_arguments(parser)
    add_split_argument(data)
    add_split_argument(
        data, flag="--val-split", default="val", extra_choices=("none",),
        help="split the thresholds are chosen on (default val, carved from train as in training when absent; "
        "none: no thresholds)",
    )
    data.add_argument("--val-fraction", type=float, default=None,
                      help="share of train held out as val when there is no val split (default: as in training, else 0.2)")
    data.add_argument("--seed", type=int, default=None,
                      help="seed of that hold-out (default: the checkpoint's seed, else 0)")

    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--sensitivity", type=float, default=0.9,
                    help="target sensitivity for the per-class thresholds (default 0.9)")
    ev.add_argument("--ece-bins", type=int, default=15, help="equal-width bins of the calibration error (default 15)")
    from facediag.edge import precision as precision_table

    ort = precision_table.for_runtime(precision_table.ONNXRUNTIME)
    ev.add_argument("--precision", default=None, choices=(precision_table.AUTO, *ort),
                    help=f"bundle only: which model file to run ({', '.join(ort)}; default fp32; with --as-station "
                    "default the station config's [engine] precision, auto = what ONNX Runtime on a CPU runs)")
    ev.add_argument("--batch-size", type=int, default=32, help="crops per inference batch (default 32)")
    ev.add_argument("--threads", type=int, default=2, help="CPU threads for inference (default 2)")
    ev.add_argument("--out", type=Path, metavar="DIR", help="report folder (default MODEL/eval-SPLIT)")

    add_photo_front_end_arguments(parser)
    add_deployed_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from facediag.commands._args import labelled_photo_source, labelled_photos_from_args
    from facediag.training.crop_cache import DEFAULT_CACHE, CropCache
    from facediag.training.data import data_root, photo_cropper
    from facediag.training.evaluation import EvaluationOptions, evaluate, load_model
    from facediag.training.report import PLOT_FILES, format_table, write_report

    if deployed_requested(args):
        return run_deployed(args)
    from facediag.edge import precision as precision_table

    if args.precision in (None, precision_table.AUTO):
        args.precision = precision_table.auto_order(precision_table.ONNXRUNTIME)[0]  # fp32, as a CPU station
    options = EvaluationOptions(
        split=args.split,
        val_split=None if args.val_split == "none" else args.val_split,
        val_fraction=args.val_fraction,
        seed=args.seed,
        sensitivity=args.sensitivity,
        ece_bins=args.ece_bins,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    ).checked()
    model = load_model(args.model, args.precision, args.threads)
    photos = labelled_photos_from_args(args)
    cache_root = None if args.no_cache else (args.cache or DEFAULT_CACHE)
    detector = None if args.detector == "auto" else args.detector
    cropper = photo_cropper(model.contract, aligned=args.aligned, root=data_root(args.data, args.images),
                            detector=detector, detector_model=args.detector_model)
    cache = CropCache(cache_root, cropper)
    report = evaluate(model, photos, cache, options, data_source=labelled_photo_source(args))

    out = args.out or (args.model / f"eval-{args.split}")
    paths = write_report(out, report)
    print(format_table(report))
    print(f"report: {paths['report.json']}")
    for name in PLOT_FILES:
        if name in paths:
            print(f"plot:   {paths[name]}")
    return 0
