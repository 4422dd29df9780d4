"""Photos -> aligned crops through the face front-end, cached on disk so re-runs are fast.

Training uses exactly the station's front-end (``facediag.edge.face.pipeline.FaceFrontEnd``)
with the backbone's preprocessing contract, so the model sees at training time
what it will see in a screening kiosk. Detection is the slow part, so each
photo's result (its crop, or the reason it has none) is stored in an ``.npz``
keyed by the photo's sha256, the contract, the detector and the small-image
policy below: change any of them and the crop is recomputed, rename or move the
photo and it is not.

Small, tightly cropped photos (CelebA's 89x109 aligned faces, GENKI's 64x64)
are upscaled and padded before detection (``facediag.edge.face.pipeline.PhotoFrontEnd``).
Photos in which no face is found are skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facediag.edge.atomicio import atomic_write_bytes
from facediag.edge.errors import FacediagError
from facediag.edge.face.contract import PreprocessContract
from facediag.edge.hashing import sha256_file
from facediag.edge.photos import PhotoCropper

if TYPE_CHECKING:
    from facediag.edge.face.detector import Detector

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("FACEDIAG_CACHE", Path.home() / ".cache" / "facediag")) / "crops"
UNREADABLE = "unreadable image"
CACHE_VERSION = 2


@dataclass
class CropSet:
    """Crops for a list of samples. ``kept[i]`` indexes the input list; ``skipped`` counts reasons."""

    crops: np.ndarray  # (K, H, W, 3) uint8 BGR
    kept: list[int]
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_items: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)


def cropper_key(cropper: PhotoCropper) -> str:
    """Everything that changes a crop except the photo itself (the cache folder's name)."""
    payload = {
        "contract": cropper.contract.to_dict(),
        "detector": cropper.detector_name,
        "small": [v for _, v in sorted(cropper.policy().items())],
        "version": CACHE_VERSION,
    }
    if cropper.aligned != "no":  # images taken as crops: never the entries of the detecting cropper
        payload["aligned"] = cropper.aligned
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class FaceCropper(PhotoCropper):
    """The photo-collection cropper (``facediag.edge.photos.PhotoCropper``) that always detects.

    Kept under its training name and argument order; knows its own cache key.
    """

    def __init__(self, detector: Detector, contract: PreprocessContract) -> None:
        super().__init__(contract, detector, aligned="no")

    @property
    def key(self) -> str:
        return cropper_key(self)


def make_cropper(detector_name: str | None, detector_model: str | Path | None, contract: PreprocessContract) -> FaceCropper:
    """Default detector: yunet when a model file is given, else mtcnn."""
    from facediag.edge.face.detector import make_detector

    name = detector_name or ("yunet" if detector_model else "mtcnn")
    return FaceCropper(make_detector(name, detector_model), contract)


def _load(path: Path) -> np.ndarray:
    from facediag.edge.face.imageio import load_image

    return load_image(path)


def _private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700: the cache holds photos of people's faces."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


class CropCache:
    """``root/<cropper key>/<sha[:2]>/<sha>.npz`` holding ``crop`` (or an empty array) and ``reasons``.

    Private: the folders are 0700 and the files 0600 (face crops identify people). ``root=None``
    turns the cache off (``--no-cache`` on the commands).
    """

    def __init__(self, root: str | Path | None, cropper: PhotoCropper) -> None:
        self.root = Path(root) if root is not None else None
        self.cropper = cropper
        self.hits = 0
        self.misses = 0

    def _entry(self, sha: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / cropper_key(self.cropper) / sha[:2] / f"{sha}.npz"

    def get(self, path: Path) -> tuple[np.ndarray | None, list[str]]:
        try:
            sha = sha256_file(path)
        except OSError as exc:
            return None, [f"{UNREADABLE}: {exc.strerror or exc}"]
        entry = self._entry(sha)
        if entry is not None and entry.is_file():
            try:
                with np.load(entry, allow_pickle=False) as z:
                    crop = z["crop"]
                    reasons = [str(r) for r in z["reasons"]]
                self.hits += 1
                return (crop if crop.size else None), reasons
            except (OSError, ValueError, KeyError):
                log.warning("crop cache entry %s is damaged; recomputing", entry)
        self.misses += 1
        try:
            image = _load(path)
        except FacediagError as exc:
            crop, reasons = None, [f"{UNREADABLE}: {exc}"]
        else:
            outcome = self.cropper.crop(image)
            crop, reasons = outcome.crop, outcome.reasons
        if entry is not None:
            for folder in (self.root, entry.parent.parent, entry.parent):
                assert folder is not None
                _private_dir(folder)
            buf = io.BytesIO()
            np.savez_compressed(
                buf,
                crop=crop if crop is not None else np.zeros((0,), np.uint8),
                reasons=np.array(reasons, dtype=str),
            )
            atomic_write_bytes(entry, buf.getvalue(), mode=0o600)
        return crop, reasons

    def crop_all(
        self,
        paths: Sequence[Path],
        wheres: Sequence[str] | None = None,
        desc: str = "crops",
        progress: bool = True,
        on_item: Callable[[int], None] | None = None,
    ) -> CropSet:
        """Crops for ``paths``; photos without a face are skipped and their reasons counted."""
        from tqdm import tqdm

        c = self.cropper.contract
        crops: list[np.ndarray] = []
        kept: list[int] = []
        skipped: Counter[str] = Counter()
        items: list[tuple[str, str]] = []
        for i, p in enumerate(tqdm(paths, desc=desc, unit="photo", disable=not progress, leave=False)):
            crop, reasons = self.get(Path(p))
            if crop is None:
                reason = reasons[0].split(":")[0] if reasons else "no face found"
                skipped[reason] += 1
                items.append((wheres[i] if wheres else str(p), "; ".join(reasons)))
            else:
                crops.append(crop)
                kept.append(i)
            if on_item:
                on_item(i)
        arr = np.stack(crops) if crops else np.zeros((0, c.height, c.width, 3), np.uint8)
        if skipped:
            log.info("%s: skipped %d of %d photos (%s)", desc, sum(skipped.values()), len(paths), dict(skipped))
        return CropSet(crops=arr, kept=kept, skipped=skipped, skipped_items=items)
