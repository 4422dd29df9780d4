"""``facediag train``: photos -> calibrated classifier checkpoint (transfer learning from face recognition)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facediag.training.train import TrainConfig

NAME = "train"
HELP = "train a classifier on labelled face photos (DTL2 / DTL1 / from scratch / dense SIFT)"
DESCRIPTION = """\
Train a facial-diagnosis classifier from labelled photos and write a checkpoint
folder (model.safetensors + checkpoint.json) for `facediag evaluate` and
`facediag export`.

Data: --data DIR with one sub-folder per class (optionally DIR/train|val|test/<class>/),
or --csv CSV --images DIR with columns image,label,split (split: train, val, test).
dtl2 (the default) fits on every training photo (train and val) and chooses the
SVM's C and the probability calibration by stratified 5-fold cross-validation
(calibration on out-of-fold scores, kept in the checkpoint for `evaluate`'s
thresholds); --calibration-data val restores a held-out validation split. The
other strategies, without a val split, hold out a stratified 20% of train (seeded)
for early stopping and probability calibration. Every photo goes through the station's face
front-end (detector -> alignment with the backbone's contract); photos with no
face are skipped and counted. Crops are cached (--cache). A folder written by
`facediag crop` (crop_settings.json) goes in as aligned crops, without detection,
when its template is the backbone's, and is refused otherwise (--aligned).

Strategies (from Jin et al., IEEE Access 2020):
{strategies}

Backbones (--backbone):
{backbones}

Feature recipes (dtl2; --backbone BACKBONE[+BACKBONE...][:taps][:flip]):
  facenet:taps        the embedding plus pooled activations of the last blocks
  facenet+dlib        several backbones on one crop, features concatenated (fusion)
  facenet:flip        features of the crop and its mirror image averaged
All of it runs inside the exported model; the station feeds one crop.

Repeated splits: --repeats K re-splits all labelled photos K times with the
data's per-class train/test counts, reports per-split top-1 (and AUC for two
classes), mean and a 95% t-interval over splits (repeats.json, repeats.md in
--out); no checkpoint is written.

Example (the proxy benchmark):
  facediag train --csv ../shared/fixtures/faces/celeba/proxy_dsf_split.csv \\
      --images ../shared/fixtures/faces/celeba --backbone mobilefacenet \\
      --weights ../shared/fixtures/models/mobilefacenet_112x96_casia.ckpt --strategy dtl2 --out runs/mfn-dtl2
"""


class _BackboneChoices(list):  # type: ignore[type-arg]
    """The registered backbones (what --help and the registry tests list); feature recipes are accepted too."""

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and (("+" in value or ":" in value) or list.__contains__(self, value))


def _backbone_arg(value: str) -> str:
    """A registered backbone or a feature recipe (checked here so a typo fails before any photo is cropped)."""
    from facediag.training.backbones import BACKBONES
    from facediag.training.features import is_recipe, parse_recipe

    if is_recipe(value):
        from facediag.edge.errors import ConfigError

        try:
            return parse_recipe(value).name
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if value not in BACKBONES:
        raise argparse.ArgumentTypeError(f"unknown backbone {value!r} (choose from {', '.join(BACKBONES.names())})")
    return value


def _run_repeats(cfg: TrainConfig, k: int) -> int:
    from facediag.training.repeats import run_repeats

    cache = cfg.cache
    doc = run_repeats(cfg, k, feature_cache=Path(cache) / "features" if cache else None)
    print(Path(cfg.out) / "repeats.md")
    print(Path(cfg.out, "repeats.md").read_text(encoding="utf-8"))
    return 0 if doc["splits"] else 1


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
    model.add_argument("--backbone", type=_backbone_arg, choices=_BackboneChoices(BACKBONES.names()), default=None,
                       metavar="NAME",
                       help=f"backbone or feature recipe to transfer from: {', '.join(BACKBONES.names())}, or a dtl2 "
                       "recipe such as facenet+dlib:taps:flip (default: facenet:taps:flip for dtl2, chosen by repeated "
                       "splits (benchmarks/recipes.md), facenet for the other strategies; both offline "
                       "weights; see the list above)")
    model.add_argument("--weights", type=Path, metavar="PATH", help="backbone weights file (needed by all but facenet)")
    model.add_argument("--strategy", choices=STRATEGIES.names(), default="dtl2",
                       help="training strategy (default dtl2; see the list above)")
    model.add_argument("--calibration", choices=CALIBRATIONS, default="temperature",
                       help="probability calibration (platt: two classes only; default temperature)")
    model.add_argument("--calibration-data", choices=("cv", "val"), default=None,
                       help="what the calibration is fitted on: dtl2 default cv = out-of-fold scores of all training "
                       "photos (no val split carved); val = a held-out validation split (the other strategies' only way)")
    model.add_argument("--repeats", type=int, metavar="K",
                       help="run K stratified random train/test splits and report mean and 95%% interval (no checkpoint)")

    hp = parser.add_argument_group("hyperparameters (default: the strategy's own)")
    hp.add_argument("--epochs", type=int, help="maximum epochs (dtl1 60, scratch 40)")
    hp.add_argument("--lr", type=float, help="learning rate (dtl1 5e-5, scratch 1e-2)")
    hp.add_argument("--head-lr-mult", type=float, help="learning-rate multiplier of the new last layer (dtl1 1000, i.e. 0.05 for the new layer)")
    hp.add_argument("--unfreeze", type=int, help="dtl1: trailing backbone blocks that train too, unfrozen one at a time after the head "
                    "(see --unfreeze-every; default 0 = last layer only)")
    hp.add_argument("--augment", type=float, metavar="S",
                    help="dtl1/scratch: strength of the colour and geometry jitter of training batches (1: "
                    "+-10%% brightness/contrast/saturation, +-5 degrees, +-5%% scale, +-4%% shift; default 0 = mirror "
                    "images only)")
    hp.add_argument("--unfreeze-every", type=int, metavar="E",
                    help="dtl1 with --unfreeze N: unfreeze one more trailing block every E epochs after the head-only "
                    "stage (default 3; 0 = all N blocks from the start)")
    hp.add_argument("--head-epochs", type=int, metavar="E",
                    help="dtl1 with --unfreeze N: most epochs of the head-only stage (default 40; early stopping ends it)")
    hp.add_argument("--block-lr-mult", type=float, metavar="M",
                    help="dtl1: learning rate of the last unfrozen block = --lr x M (default 20)")
    hp.add_argument("--layer-lr-decay", type=float, metavar="D",
                    help="dtl1: each earlier unfrozen block learns D times the rate of the block after it (default 0.5)")
    hp.add_argument("--batch-size", type=int, help="mini-batch size (dtl1/scratch 32; dtl2 embedding batch 64)")
    hp.add_argument("--patience", type=int, help="early stopping: epochs without a better val loss (default 8)")
    hp.add_argument("--svm-c", type=float, help="dtl2/dsift: fix the SVM's C (default: dtl2 picks it by 5-fold cross-validation on the training photos)")
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
        head_lr_mult=args.head_lr_mult, augment=args.augment, unfreeze_every=args.unfreeze_every,
        head_epochs=args.head_epochs, block_lr_mult=args.block_lr_mult, layer_lr_decay=args.layer_lr_decay,
        cache=None if args.no_cache else (args.cache or DEFAULT_CACHE),
        detector=None if args.detector == "auto" else args.detector, detector_model=args.detector_model,
        aligned=args.aligned,
        keep_classes=list(args.binary) if args.binary else None, healthy=args.healthy,
        calibration=args.calibration, calibration_data=args.calibration_data, val_fraction=args.val_fraction,
        threads=args.threads,
        progress=not args.no_progress,
    )
    if args.repeats is not None:
        return _run_repeats(cfg, args.repeats)
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
