"""Labelled photos for training: read a folder tree or a split CSV, check it, split it.

The photos are read by the photo-collection layer (``facediag.edge.photos``),
which accepts two layouts:

- a folder of class sub-folders (``DIR/<class>/*.jpg``), optionally one level
  deeper per split (``DIR/train/<class>/...``, ``DIR/val/...``, ``DIR/test/...``);
- a CSV with columns ``image,label,split`` (split one of train / val / test) and
  an images folder the ``image`` paths are relative to.

When there is no validation split, a stratified one is carved out of train with
a seeded generator, because calibration and model selection must never look at
the photos they are judged on.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from facediag.edge.errors import ConfigError
from facediag.edge.face.contract import PreprocessContract
from facediag.edge.photos import (
    SPLITS,
    LabelledPhoto,
    PhotoCropper,
    PhotoSetError,
    read_labelled,
    read_labelled_csv,
    read_labelled_folder,
)

log = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.2

# The photo-collection layer reads the sets; these names stay for the callers of this module.
Sample = LabelledPhoto
DatasetError = PhotoSetError


@dataclass
class Dataset:
    """Samples plus the class list (index = model output index) and the healthy class, if any."""

    samples: list[Sample]
    classes: list[str]
    healthy_class: str | None

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """split -> class -> number of samples (every class listed, zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for sp in SPLITS:
            c = Counter(s.label for s in self.samples if s.split == sp)
            if c:
                out[sp] = {k: int(c.get(k, 0)) for k in self.classes}
        return out

    def label_index(self, samples: list[Sample]) -> np.ndarray:
        idx = {c: i for i, c in enumerate(self.classes)}
        return np.array([idx[s.label] for s in samples], dtype=np.int64)


def read_folder(root: str | Path) -> list[Sample]:
    """Samples from ``root/<class>/*`` (all train) or ``root/<split>/<class>/*``."""
    return read_labelled_folder(root)


def read_csv(csv_path: str | Path, images_dir: str | Path) -> list[Sample]:
    """Samples from an ``image,label,split`` CSV; every problem names its row."""
    return read_labelled_csv(csv_path, images_dir)


def restrict_to(samples: list[Sample], classes: list[str]) -> list[Sample]:
    """Keep only the given classes (``--binary POS NEG``); every class must exist."""
    present = {s.label for s in samples}
    unknown = [c for c in classes if c not in present]
    if unknown:
        raise ConfigError(
            f"class(es) {', '.join(unknown)} not in the data; classes present: {', '.join(sorted(present))}"
        )
    if len(set(classes)) != len(classes):
        raise ConfigError(f"the classes to keep must differ, got {classes}")
    keep = set(classes)
    return [s for s in samples if s.label in keep]


def carve_validation(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Move a stratified, seeded ``fraction`` of each class's train samples into ``val``.

    Each class keeps at least one training sample and gives at least one to val.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng([seed, 7])
    by_class: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.split == "train":
            by_class.setdefault(s.label, []).append(i)
    to_val: set[int] = set()
    for label in sorted(by_class):
        idx = by_class[label]
        if len(idx) < 2:
            continue  # check_dataset reports this with a clear message
        n_val = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        chosen = rng.permutation(len(idx))[:n_val]
        to_val.update(idx[j] for j in chosen)
    return [replace(s, split="val") if i in to_val else s for i, s in enumerate(samples)]


def resolve_healthy(classes: list[str], healthy: str | None) -> str | None:
    """The healthy class: the one named, else "healthy" when present, else None."""
    if healthy is not None:
        if healthy not in classes:
            raise ConfigError(f"--healthy {healthy!r} is not one of the classes: {', '.join(classes)}")
        return healthy
    return "healthy" if "healthy" in classes else None


def check_counts(samples: list[Sample], classes: list[str], context: str = "") -> None:
    """Every class needs >= 2 training photos (one to fit, one to validate)."""
    train = Counter(s.label for s in samples if s.split == "train")
    val = Counter(s.label for s in samples if s.split == "val")
    for c in classes:
        n = train.get(c, 0) + val.get(c, 0)
        if n < 2:
            raise DatasetError(
                f"class {c!r} has {n} usable training image(s){context}; every class needs at least 2 "
                "(add photos, or leave the class out with --binary / --classes)"
            )
        if train.get(c, 0) < 1:
            raise DatasetError(f"class {c!r} has no training image{context} (all its photos are in val)")
    if len(classes) < 2:
        raise DatasetError(f"need at least 2 classes, found {classes}")


def build_dataset(
    samples: list[Sample],
    *,
    keep_classes: list[str] | None = None,
    healthy: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
) -> Dataset:
    """Restrict classes, check counts, carve a validation split when missing; classes sorted by name."""
    if keep_classes:
        samples = restrict_to(samples, keep_classes)
    classes = sorted({s.label for s in samples})
    check_counts(samples, classes)
    if not any(s.split == "val" for s in samples) and val_fraction > 0:  # 0: none wanted (dtl2 out-of-fold)
        samples = carve_validation(samples, val_fraction, seed)
        log.info("no val split given: carved %.0f%% of train per class (seed %d)", val_fraction * 100, seed)
    missing_val = [c for c in classes if not any(s.split == "val" and s.label == c for s in samples)]
    if missing_val and val_fraction > 0:
        log.warning("class(es) %s have no validation photo; calibration sees none of them", ", ".join(missing_val))
    return Dataset(samples=samples, classes=classes, healthy_class=resolve_healthy(classes, healthy))


def load_dataset(
    *,
    data_dir: str | Path | None = None,
    csv_path: str | Path | None = None,
    images_dir: str | Path | None = None,
    keep_classes: list[str] | None = None,
    healthy: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
) -> Dataset:
    """Read ``--data DIR`` or ``--csv CSV --images DIR`` and build a checked dataset."""
    samples = read_labelled(folder=data_dir, csv_path=csv_path, images_dir=images_dir)
    return build_dataset(samples, keep_classes=keep_classes, healthy=healthy, val_fraction=val_fraction, seed=seed)


def data_root(data_dir: str | Path | None, images_dir: str | Path | None) -> Path | None:
    """The folder the photos are under: ``--data DIR``, else the ``--images DIR`` of ``--csv``."""
    root = data_dir if data_dir is not None else images_dir
    return Path(root) if root is not None else None


def photo_cropper(
    contract: PreprocessContract,
    *,
    aligned: str = "auto",
    root: str | Path | None = None,
    detector: str | None = None,
    detector_model: str | Path | None = None,
) -> PhotoCropper:
    """The cropper of ``train`` / ``evaluate``: ``facediag.edge.photos.PhotoCropper`` for ``contract``.

    ``aligned`` (``--aligned``): ``auto`` takes the images under ``root`` as aligned crops, without
    detection, when ``root`` was written by ``facediag crop`` for this contract's template (refused,
    naming both templates, when it was written for another); ``yes`` takes every image as an aligned
    crop; ``no`` detects and aligns every image. Detection uses ``detector`` (default: yunet when
    ``detector_model`` is given, else mtcnn).
    """
    from facediag.edge.crop_folders import resolve_aligned
    from facediag.training.crop_cache import make_cropper

    mode, folder = resolve_aligned(aligned, Path(root) if root is not None else None, contract)
    if mode == "yes":
        return PhotoCropper(contract, None, aligned="yes", crop_folder=folder)
    return make_cropper(detector, detector_model, contract)
