"""Calibration sets: real photos -> exactly the tensors the model sees, plus a manifest.

INT8 ranges are only as good as the data they come from, so a calibration set
is made from real photos (or already-aligned crops) through the bundle's own
preprocessing: the face front-end (detector -> subject -> 5-point alignment to
the bundle's template) and ``crops_to_input``. What is stored is the model
input itself, ``inputs.npy`` (float32 NCHW 0..255), so quantisation, the
accuracy gate and TensorRT calibration all read identical numbers.

Part of the set is held out (never used to compute ranges) so that the gate
compares FP32 with each variant on images the variant was not fitted to.

Folder layout::

    inputs.npy       float32 (N, 3, H, W), rows in manifest order
    manifest.json    sources (path, sha256, label, split), array sha256,
                     the bundle's contract and model sha256, seed, skips
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facediag.edge.errors import ConfigError, FacediagError, ImageLoadError
from facediag.edge.face.contract import PreprocessContract, crops_to_input
from facediag.edge.hashing import sha256_bytes, sha256_file
from facediag.edge.photos import (
    PhotoCropper,
    PhotoSetError,
    list_images,
    read_labelled_csv,
    read_labelled_folder,
    suffix_list,
)

log = logging.getLogger(__name__)

FORMAT = "facediag-calibration"
FORMAT_VERSION = 1
INPUTS = "inputs.npy"
MANIFEST = "manifest.json"
CALIB, HOLDOUT = "calib", "holdout"
class CalibrationError(FacediagError):
    """A calibration set is missing, corrupt, too small or made for another contract."""


@dataclass
class Source:
    """One photo to take: where it is, its label when known, and how the manifest names it."""

    path: Path
    label: str | None
    name: str


def list_sources(src: str | Path, csv_path: str | Path | None = None, split: str | None = None) -> list[Source]:
    """Photos under ``src`` with labels from ``csv_path`` (image,label[,split]) or from class sub-folders.

    Read by the photo-collection layer (``facediag.edge.photos``). Without a CSV: images directly
    in ``src`` are unlabelled; when ``src`` holds only sub-folders, each sub-folder name is the
    label of the images in it (``<split>/<class>/`` folders are understood too). With a CSV, rows
    may have an empty label (unlabelled), the split column may hold any name (e.g. "calib"), and
    ``split`` keeps only the rows of that split.
    """
    src = Path(src)
    if not src.exists():
        raise ConfigError(f"{src}: no such folder or file")
    if csv_path is not None:
        rows = read_labelled_csv(csv_path, src, require_label=False, splits=None, only_split=split)
        return [Source(r.path, r.label or None, r.name) for r in rows]
    if src.is_file():
        return [Source(src, None, src.name)]
    top = list_images(src)
    has_subdirs = any(p.is_dir() and not p.name.startswith(".") for p in src.iterdir())
    if top or not has_subdirs:
        if not top:
            raise PhotoSetError(f"{src}: no images found (suffixes {suffix_list()})")
        return [Source(p, None, p.name) for p in top]
    return [Source(p.path, p.label, p.name) for p in read_labelled_folder(src)]


def stratified_order(sources: list[Source], seed: int) -> list[Source]:
    """All sources in the order to try them: classes interleaved so any prefix is near-stratified.

    Each class is shuffled with ``seed``; then one item per class in turn (class proportions are
    kept by taking from each class in proportion to its size). Unlabelled sources are just shuffled.
    """
    rng = random.Random(seed)
    groups: dict[str | None, list[Source]] = defaultdict(list)
    for s in sources:
        groups[s.label].append(s)
    for items in groups.values():
        rng.shuffle(items)
    total = len(sources)
    # Proportional interleave: item k of class c has "time" (k + 0.5) / n_c; sort by time.
    keyed = []
    for label in sorted(groups, key=lambda x: (x is None, x or "")):
        items = groups[label]
        for k, s in enumerate(items):
            keyed.append(((k + 0.5) / len(items), rng.random(), s))
    keyed.sort(key=lambda t: (t[0], t[1]))
    assert len(keyed) == total
    return [s for _, _, s in keyed]


class Cropper(PhotoCropper):
    """Photo -> aligned crop for a contract, with the policy training used (``PhotoFrontEnd``).

    Images already of the contract's crop size are taken as aligned crops and not detected
    again (``aligned="auto"``). Kept as the calibration name of ``facediag.edge.photos.PhotoCropper``.
    """

    def __init__(self, contract: PreprocessContract, detector: Any | None = None, aligned: str = "auto") -> None:
        super().__init__(contract, detector, aligned=aligned)


@dataclass
class Item:
    source: str
    source_sha256: str
    label: str | None
    split: str
    aligned_input: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_sha256": self.source_sha256,
            "label": self.label,
            "split": self.split,
            "aligned_input": self.aligned_input,
        }


def collect_inputs(
    sources: Iterable[Source],
    contract: PreprocessContract,
    cropper: PhotoCropper,
    count: int,
    progress: Callable[[Iterable[Source]], Iterable[Source]] | None = None,
) -> tuple[np.ndarray, list[tuple[Source, str, bool]], list[dict[str, str]]]:
    """Take sources in order until ``count`` crops are made. Returns (inputs, taken, skipped)."""
    from facediag.edge.face.imageio import load_image

    crops: list[np.ndarray] = []
    taken: list[tuple[Source, str, bool]] = []
    skipped: list[dict[str, str]] = []
    iterable = progress(sources) if progress else sources
    for source in iterable:
        if len(crops) >= count:
            break
        try:
            image = load_image(source.path)
        except ImageLoadError as exc:
            skipped.append({"source": source.name, "reason": str(exc)})
            continue
        outcome = cropper.crop(image)
        if outcome.crop is None:
            skipped.append({"source": source.name, "reason": "; ".join(outcome.reasons)})
            continue
        crops.append(outcome.crop)
        taken.append((source, sha256_file(source.path), outcome.aligned_input))
    if not crops:
        return np.zeros((0, 3, contract.height, contract.width), np.float32), taken, skipped
    return crops_to_input(np.stack(crops), contract), taken, skipped


def assign_holdout(labels: list[str | None], fraction: float, seed: int) -> list[str]:
    """Split per label so that the held-out part is stratified too; at least one held out when possible."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--holdout must be in [0, 1), got {fraction}")
    rng = random.Random(seed + 1)
    splits = [CALIB] * len(labels)
    by_label: dict[str | None, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    for idx in by_label.values():
        rng.shuffle(idx)
        n_hold = int(round(len(idx) * fraction))
        if fraction > 0 and n_hold == 0 and len(idx) > 1:
            n_hold = 1
        for i in idx[:n_hold]:
            splits[i] = HOLDOUT
    return splits


def build_calibration_set(
    bundle: Any,
    sources: list[Source],
    out_dir: str | Path,
    *,
    count: int = 300,
    holdout: float = 0.25,
    seed: int = 0,
    cropper: PhotoCropper | None = None,
    force: bool = False,
    progress: Callable[[Iterable[Source]], Iterable[Source]] | None = None,
) -> CalibrationSet:
    """Make a calibration set for ``bundle`` (a ``facediag.edge.bundle.Bundle``) in ``out_dir``."""
    from facediag.edge.atomicio import atomic_write_bytes
    from facediag.edge.bundle import canonical_json
    from facediag.edge.version import __version__

    out = Path(out_dir)
    if count < 2:
        raise ConfigError(f"--count must be at least 2, got {count}")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} already exists and is not empty: choose a new folder or pass --force")
    contract = bundle.contract
    cropper = cropper or Cropper(contract)
    ordered = stratified_order(sources, seed)
    inputs, taken, skipped = collect_inputs(ordered, contract, cropper, count, progress)
    if len(taken) < 2:
        raise CalibrationError(
            f"only {len(taken)} usable face(s) among {len(sources)} photos ({len(skipped)} skipped, e.g. "
            f"{skipped[0]['reason'] if skipped else 'none'}): a calibration set needs real faces"
        )
    if len(taken) < count:
        log.warning("asked for %d images, found faces in only %d of %d photos", count, len(taken), len(sources))
    labels = [s.label for s, _, _ in taken]
    splits = assign_holdout(labels, holdout, seed)
    items = [Item(s.name, sha, s.label, sp, al) for (s, sha, al), sp in zip(taken, splits, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, inputs.astype(np.float32), allow_pickle=False)
    data = buf.getvalue()
    atomic_write_bytes(out / INPUTS, data)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "creator": f"facediag {__version__}",
        "bundle": {
            "path": str(Path(bundle.path).resolve()),
            "model_sha256": bundle.files[bundle.precisions["fp32"].file],
            "classes": list(bundle.classes),
        },
        "contract": contract.to_dict(),
        "count_requested": count,
        "count": len(items),
        "seed": seed,
        "holdout_fraction": holdout,
        "arrays": {INPUTS: {"sha256": sha256_bytes(data), "shape": list(inputs.shape), "dtype": "float32"}},
        "front_end": cropper.description,
        "items": [it.to_dict() for it in items],
        "skipped": skipped,
    }
    atomic_write_bytes(out / MANIFEST, canonical_json(manifest))
    log.info("calibration set %s: %d images (%d held out), %d skipped", out, len(items), splits.count(HOLDOUT), len(skipped))
    return load_calibration_set(out, bundle)


@dataclass
class CalibrationSet:
    """A loaded calibration set: the stored inputs and which rows are for calibration or held out."""

    path: Path
    inputs: np.ndarray
    items: list[Item]
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    def _rows(self, split: str) -> np.ndarray:
        return np.array([i for i, it in enumerate(self.items) if it.split == split], dtype=np.int64)

    @property
    def calib_rows(self) -> np.ndarray:
        """Indices of the calibration rows in ``inputs`` (readers slice batches from them, no copy of the set)."""
        return self._rows(CALIB)

    @property
    def calib_inputs(self) -> np.ndarray:
        return np.asarray(self.inputs[self._rows(CALIB)])

    @property
    def holdout_inputs(self) -> np.ndarray:
        return np.asarray(self.inputs[self._rows(HOLDOUT)])

    @property
    def holdout_labels(self) -> list[str | None]:
        return [self.items[i].label for i in self._rows(HOLDOUT)]

    @property
    def contract(self) -> PreprocessContract:
        return PreprocessContract.from_dict(self.manifest["contract"])

    def class_indices(self, classes: list[str], split: str | None = None) -> np.ndarray | None:
        """Class indices of the rows of ``split`` (all rows when None), or None unless every one is labelled
        with one of ``classes`` (a gate then measures the accuracy drop on them)."""
        rows = range(len(self.items)) if split is None else self._rows(split)
        labels = [self.items[int(i)].label for i in rows]
        if not labels or any(lab not in classes for lab in labels):
            return None
        return np.array([classes.index(str(lab)) for lab in labels], dtype=np.int64)


def load_calibration_set(path: str | Path, bundle: Any | None = None) -> CalibrationSet:
    """Read and verify a calibration set; with ``bundle``, also check it was made for that bundle's contract."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CalibrationError(f"{folder} is not a calibration set ({MANIFEST} missing): make one with `facediag calibrate BUNDLE SRC {folder}`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{manifest_path} is corrupted ({exc}): re-run `facediag calibrate`") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise CalibrationError(f"{manifest_path}: not a facediag calibration set of format version {FORMAT_VERSION}; re-run `facediag calibrate`")
    array_path = folder / INPUTS
    if not array_path.is_file():
        raise CalibrationError(f"{array_path} is missing: re-run `facediag calibrate`")
    expected = manifest["arrays"][INPUTS]["sha256"]
    if sha256_file(array_path) != expected:
        raise CalibrationError(f"{array_path} does not match the sha256 in {MANIFEST} (corrupted or replaced): re-run `facediag calibrate`")
    inputs = np.load(array_path, allow_pickle=False)
    items = [Item(**it) for it in manifest["items"]]
    contract = PreprocessContract.from_dict(manifest["contract"])
    if inputs.dtype != np.float32 or inputs.shape != (len(items), 3, contract.height, contract.width):
        raise CalibrationError(f"{array_path}: shape {inputs.shape} {inputs.dtype} does not match the manifest; re-run `facediag calibrate`")
    if bundle is not None:
        if bundle.contract != contract:
            raise CalibrationError(
                f"{folder} was made for preprocessing contract {contract.template} ({contract.colour_order}, "
                f"{contract.scaling}) but the bundle uses {bundle.contract.template} ({bundle.contract.colour_order}, "
                f"{bundle.contract.scaling}): make a calibration set for this bundle with `facediag calibrate`"
            )
        model_sha = bundle.files.get(bundle.precisions["fp32"].file)
        if manifest.get("bundle", {}).get("model_sha256") != model_sha:
            log.warning("%s was made with another model of the same contract; its images are still valid inputs", folder)
    return CalibrationSet(path=folder, inputs=inputs, items=items, manifest=manifest)


def load_labelled_inputs(
    val: str | Path,
    contract: PreprocessContract,
    classes: list[str],
    *,
    images_dir: str | Path | None = None,
    split: str | None = None,
    cropper: PhotoCropper | None = None,
    progress: Callable[[Iterable[Source]], Iterable[Source]] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """A labelled validation set (CSV image,label[,split] or class sub-folders) -> (inputs, class indices, skipped).

    CSV image paths are relative to ``images_dir`` (default: the CSV's folder). Every label must be
    one of the bundle's ``classes``: a validation set of another task cannot measure this model.
    """
    val = Path(val)
    if val.is_file() and val.suffix.lower() == ".csv":
        sources = list_sources(images_dir or val.parent, val, split=split)
    elif val.is_dir():
        sources = list_sources(val)
    else:
        raise ConfigError(f"--val {val}: expected a CSV file (image,label[,split]) or a folder with one sub-folder per class")
    unlabelled = [s.name for s in sources if s.label is None]
    if unlabelled:
        raise ConfigError(f"--val {val}: {len(unlabelled)} image(s) without a label (e.g. {unlabelled[0]}); use class sub-folders or a CSV")
    unknown = sorted({str(s.label) for s in sources} - set(classes))
    if unknown:
        raise ConfigError(f"--val {val}: label(s) {', '.join(map(str, unknown))} are not classes of this bundle ({', '.join(classes)})")
    cropper = cropper or Cropper(contract)
    inputs, taken, skipped = collect_inputs(sources, contract, cropper, len(sources), progress)
    labels = np.array([classes.index(str(s.label)) for s, _, _ in taken], dtype=np.int64)
    if len(labels) == 0:
        raise CalibrationError(f"--val {val}: no face found in any of {len(sources)} images")
    return inputs, labels, skipped
