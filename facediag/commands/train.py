"""``facediag train``: photos -> calibrated classifier checkpoint (transfer learning from face recognition)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train"
HELP = "train a classifier on labelled face photos (DTL2 / DTL1 / from scratch / dense SIFT)"
DESCRIPTION = """\
Train a facial-diagnosis classifier from labelled photos and write a checkpoint
folder (model.safetensors + checkpoint.json) for `facediag evaluate` and
`facediag export`.

Data: --data DIR with one sub-folder per class (optionally DIR/train|val|test/<class>/),
or --csv CSV --images DIR with columns image,label,split (split: train, val, test).
Without a val split, a stratified 20% of train is held out (seeded) for early
stopping and probability calibration. Every photo goes through the station's face
front-end (detector -> alignment with the backbone's contract); photos with no
face are skipped and counted. Crops are cached (--cache).

Strategies (from Jin et al., IEEE Access 2020):
{strategies}

Backbones (--backbone):
{backbones}

Example (the proxy benchmark):
  facediag train --csv ../shared/fixtures/faces/celeba/proxy_dsf_split.csv \\
      --images ../shared/fixtures/faces/celeba --backbone mobilefacenet \\
      --weights ../shared/fixtures/models/mobilefacenet_112x96_casia.ckpt --strategy dtl2 --out runs/mfn-dtl2
"""


def description() -> str:
    """DESCRIPTION with the registered strategies and backbones filled in (one line each)."""
    from facediag.training.backbones import BACKBONES
    from facediag.training.strategies import STRATEGIES

    return DESCRIPTION.format(strategies=STRATEGIES.help_text(), backbones=BACKBONES.help_text())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, metavar="DIR", help="folder of class sub-folders")
    data.add_argument("--csv", type=Path, metavar="CSV", help="CSV with columns image,label,split")
    data.add_argument("--images", type=Path, metavar="DIR", help="folder the CSV's image paths are relative to")
    data.add_argument("--binary", nargs=2, metavar=("POS", "NEG"), help="keep only these two classes")
    data.add_argument("--healthy", metavar="CLASS", help='the healthy class (default: "healthy" when present)')
    data.add_argument("--val-fraction", type=float, default=0.2, help="share of train held out when there is no val split (default 0.2)")

    from facediag.training.backbones import BACKBONES
    from facediag.training.strategies import CALIBRATIONS, STRATEGIES

    parser.description = description()
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=BACKBONES.names(), default="facenet", metavar="NAME",
                       help=f"backbone to transfer from: {', '.join(BACKBONES.names())} (default facenet: offline "
                       "weights; see the list above)")
    model.add_argument("--weights", type=Path, metavar="PATH", help="backbone weights file (needed by all but facenet)")
    model.add_argument("--strategy", choices=STRATEGIES.names(), default="dtl2",
                       help="training strategy (default dtl2; see the list above)")
    model.add_argument("--calibration", choices=CALIBRATIONS, default="temperature",
                       help="probability calibration fitted on val (platt: two classes only; default temperature)")

    hp = parser.add_argument_group("hyperparameters (default: the strategy's own)")
    hp.add_argument("--epochs", type=int, help="maximum epochs (dtl1 60, scratch 40)")
    hp.add_argument("--lr", type=float, help="learning rate (dtl1 5e-5, scratch 1e-2)")
    hp.add_argument("--head-lr-mult", type=float, help="learning-rate multiplier of the new last layer (dtl1 1000, i.e. 0.05 for the new layer)")
    hp.add_argument("--unfreeze", type=int, help="dtl1: trailing backbone blocks that train too (default 0 = last layer only)")
    hp.add_argument("--batch-size", type=int, help="mini-batch size (dtl1/scratch 32; dtl2 embedding batch 64)")
    hp.add_argument("--patience", type=int, help="early stopping: epochs without a better val loss (default 8)")
    hp.add_argument("--svm-c", type=float, help="dtl2/dsift: fix the SVM's C (default: dtl2 picks it by 5-fold cross-validation on train)")
    hp.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same numbers (default 0)")
    hp.add_argument("--threads", type=int, default=2, help="torch CPU threads, fixed for repeatability (default 2)")

    from facediag.commands._front_end_args import add_photo_front_end_arguments

    add_photo_front_end_arguments(parser)

    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="checkpoint folder to write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def run(args: argparse.Namespace) -> int:
    from facediag.edge.errors import ConfigError
    from facediag.training.crop_cache import DEFAULT_CACHE
    from facediag.training.train import TrainConfig, run_training

    if args.data is None and args.csv is None:
        raise ConfigError("give the photos: --data DIR (class sub-folders) or --csv CSV --images DIR")
    if args.data is not None and args.csv is not None:
        raise ConfigError("give either --data or --csv, not both")
    cfg = TrainConfig(
        out=args.out, backbone=args.backbone, strategy=args.strategy, data_dir=args.data, csv_path=args.csv,
        images_dir=args.images, weights=args.weights, seed=args.seed, epochs=args.epochs, lr=args.lr,
        unfreeze=args.unfreeze, batch_size=args.batch_size, patience=args.patience, svm_c=args.svm_c,
        head_lr_mult=args.head_lr_mult, cache=None if args.no_cache else (args.cache or DEFAULT_CACHE),
        detector=None if args.detector == "auto" else args.detector, detector_model=args.detector_model,
        keep_classes=list(args.binary) if args.binary else None, healthy=args.healthy,
        calibration=args.calibration, val_fraction=args.val_fraction, threads=args.threads,
        progress=not args.no_progress,
    )
    outcome = run_training(cfg)
    meta = outcome.meta
    m = meta.get("metrics", {})
    print(f"checkpoint: {outcome.out_dir}")
    print(f"backbone {meta['backbone']}, strategy {meta['strategy']}, classes {', '.join(meta['classes'])}, "
          f"seed {meta.get('seed')}, temperature {meta['temperature']:.4g}")
    cols = ["split", "n", "accuracy", "loss_uncalibrated", "loss", "ece_uncalibrated", "ece"]
    heads = ["split", "n", "top-1", "NLL raw", "NLL cal", "ECE raw", "ECE cal"]
    table = [heads] + [[_fmt(r.get(c)) for c in cols] for r in outcome.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    if m.get("skipped_total"):
        print(f"skipped photos (no usable face): {m['skipped_total']} {m.get('skipped_photos')}")
    return 0
