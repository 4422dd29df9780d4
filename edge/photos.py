"""Photo collections: which files are photos, labelled photo sets, and photos -> aligned crops.

One policy for every reader of photo folders (training, evaluation, calibration,
export parity, verify, ``facediag crop`` and the station's folder source):

- a file is an *image* when its suffix, in any case, is one of ``IMAGE_SUFFIXES``;
- hidden files and everything inside hidden folders (``.DS_Store``, ``._x.jpg``
  left by macOS, ``.git/``) are never photos;
- ``facediag crop`` is more permissive (:func:`list_photo_candidates`): it takes
  every file that is not obviously text or data, because some collections have
  no image suffix at all (the Yale database's ``subject01.glasses``), and it
  reports each file the decoder refuses instead of ignoring it.

A labelled set is either a CSV ``image,label[,split]`` with an images folder the
``image`` paths are relative to, or a folder with one sub-folder per class,
optionally one level deeper per split (``DIR/train/<class>/``). Every problem is
reported with the CSV line or the folder it comes from.

:class:`PhotoCropper` turns a decoded photo into the contract's aligned crop with
the photo-collection front-end (``facediag.edge.face.pipeline.PhotoFrontEnd``),
the one used wherever photos become model inputs.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facediag.edge.compat import is_relative_to
from facediag.edge.crop_folders import AlignedCropFolder, read_crop_folder
from facediag.edge.errors import ConfigError, FacediagError

if TYPE_CHECKING:  # numpy and the face front-end load only when photos are cropped
    import numpy as np

    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.face.detector import Detector
    from facediag.edge.face.pipeline import PhotoFrontEnd

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}
)
# Files that are certainly not photos, even for the permissive listing of ``facediag crop``.
NOT_PHOTO_SUFFIXES: frozenset[str] = frozenset({".txt", ".csv", ".md", ".json", ".xml", ".html", ".py", ".pdf"})
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "train"


class PhotoSetError(FacediagError):
    """A photo collection is malformed: a missing file or folder, a bad CSV row, no photos at all."""


# --- which files are photos -------------------------------------------------------------------


def suffix_list() -> str:
    """The image suffixes, for messages."""
    return ", ".join(sorted(IMAGE_SUFFIXES))


def has_image_suffix(path: str | Path) -> bool:
    """Whether the name ends in an image suffix (case-insensitive: ``IMG_0001.JPG`` is an image)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_hidden(path: str | Path, root: str | Path | None = None) -> bool:
    """Whether the file, or any folder between ``root`` and it, is hidden (name starts with a dot)."""
    p = Path(path)
    parts = p.relative_to(root).parts if root is not None else (p.name,)
    return any(part.startswith(".") for part in parts)


def is_image_file(path: str | Path) -> bool:
    """A regular, non-hidden file with an image suffix."""
    p = Path(path)
    return has_image_suffix(p) and not p.name.startswith(".") and p.is_file()


def escapes(path: Path, root: Path) -> bool:
    """Whether ``path`` is a symlink (or lies under one) that leads out of ``root`` (logged when it does).

    Used with ``contained=True`` (the station's folder source: an unattended folder must not make the
    daemon read elsewhere; issue 11). Training and evaluation sets made of symlinks to a photo
    collection stay allowed: that is how the project builds them without copying photos."""
    try:
        inside = is_relative_to(path.resolve(), root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        log.warning("%s: refused, a symlink leading out of %s", path, root)
    return not inside


def list_images(folder: str | Path, *, recursive: bool = False, contained: bool = False) -> list[Path]:
    """Image files in ``folder`` (and its sub-folders when ``recursive``), sorted by path.

    Hidden files and the contents of hidden folders are left out.
    """
    root = Path(folder)
    if not root.is_dir():
        raise PhotoSetError(f"{root}: not a folder")
    entries = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in entries if has_image_suffix(p) and not is_hidden(p, root) and p.is_file()
                  and not (contained and escapes(p, root)))


def list_photo_candidates(src: str | Path, *, exclude_names: Iterable[str] = (),
                          contained: bool = False) -> list[Path]:
    """Every regular, non-hidden file under ``src`` that is not obviously text or data, sorted.

    Files with an unknown suffix or none are included (the Yale database's
    ``subject01.glasses``); whether a file really is an image is decided by the
    decoder, and the caller reports the failures. ``src`` may be one file.
    """
    root = Path(src)
    if not root.exists():
        raise PhotoSetError(f"{root}: no such folder")
    if root.is_file():
        return [root]
    skip = set(exclude_names)
    out = []
    for p in sorted(root.rglob("*")):
        if is_hidden(p, root) or not p.is_file():
            continue
        if p.suffix.lower() in NOT_PHOTO_SUFFIXES or p.name in skip or (contained and escapes(p, root)):
            continue
        out.append(p)
    return out


# --- labelled photo sets -----------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledPhoto:
    """One photo of a labelled set.

    ``label`` is "" only where unlabelled rows were allowed; ``split`` is one of ``SPLITS``
    ("train" when the set does not say); ``where`` names the CSV line or the file, for
    messages; ``name`` is the photo's path relative to the set's root, for manifests.
    """

    path: Path
    label: str
    split: str = DEFAULT_SPLIT
    where: str = ""
    name: str = ""


def read_labelled_csv(
    csv_path: str | Path,
    images_dir: str | Path,
    *,
    require_label: bool = True,
    splits: tuple[str, ...] | None = SPLITS,
    only_split: str | None = None,
) -> list[LabelledPhoto]:
    """Photos from an ``image,label[,split]`` CSV, image paths relative to ``images_dir``.

    The split defaults to train; it must be one of ``splits`` (``None``: any name, for sets
    whose split column tags rows for other uses, such as a "calib" share). Every problem
    names its line. With ``require_label=False`` a row may have an empty label (an unlabelled photo).
    With ``only_split`` the rows of other splits are passed over unchecked.
    """
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    if not csv_path.is_file():
        raise PhotoSetError(f"--csv {csv_path}: no such file")
    if not images_dir.is_dir():
        raise PhotoSetError(f"--images {images_dir}: not a folder")
    photos: list[LabelledPhoto] = []
    crops = read_crop_folder(images_dir)  # a `facediag crop` folder: the CSV names the source photos
    not_cropped = 0
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing_cols = {"image", "label"} - set(reader.fieldnames or [])
        if missing_cols:
            raise PhotoSetError(
                f"{csv_path}: header must name the columns image,label[,split]; missing {', '.join(sorted(missing_cols))}"
            )
        for lineno, row in enumerate(reader, start=2):
            where = f"{csv_path.name} line {lineno}"
            image = (row.get("image") or "").strip()
            label = (row.get("label") or "").strip()
            split = (row.get("split") or DEFAULT_SPLIT).strip().lower()
            if not image or (require_label and not label):
                raise PhotoSetError(f"{where}: empty image or label ({row})")
            if only_split is not None and split != only_split.strip().lower():
                continue
            if splits is not None and split not in splits:
                raise PhotoSetError(f"{where}: unknown split {split!r} for {image}; use one of {', '.join(splits)}")
            path = images_dir / image
            if crops is not None and image in crops.skipped:
                not_cropped += 1  # `facediag crop` found no usable face in it
                continue
            if crops is not None and image in crops.outputs:
                path = images_dir / crops.outputs[image]
            if not path.is_file():
                raise PhotoSetError(f"{where}: image {image} not found under {images_dir}")
            photos.append(LabelledPhoto(path, label, split, where=where, name=image))
    if not_cropped:
        log.warning("%s: %d photo(s) listed in %s have no crop (skipped by `facediag crop`; see its manifest.csv)",
                    images_dir, not_cropped, csv_path.name)
    if not photos:
        raise PhotoSetError(f"{csv_path}: no rows{f' with split {only_split!r}' if only_split else ''}")
    return photos


def _visible_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def read_labelled_folder(root: str | Path) -> list[LabelledPhoto]:
    """Photos from ``root/<class>/*`` (all train) or ``root/<split>/<class>/*``; class = folder name."""
    root = Path(root)
    if not root.is_dir():
        raise PhotoSetError(f"--data {root}: not a folder; give a folder with one sub-folder per class")
    subdirs = _visible_dirs(root)
    split_dirs = [d for d in subdirs if d.name in SPLITS]
    if split_dirs:
        others = [d.name for d in subdirs if d.name not in SPLITS]
        if others:
            raise PhotoSetError(
                f"{root}: has split folders ({', '.join(d.name for d in split_dirs)}) and other folders "
                f"({', '.join(others)}); use either <class>/ or <split>/<class>/ sub-folders, not both"
            )
        layout = [(d.name, d) for d in split_dirs]
    else:
        layout = [(DEFAULT_SPLIT, root)]
    photos: list[LabelledPhoto] = []
    crops = read_crop_folder(root)  # a `facediag crop` folder: photos keep their source names
    sources = crops.sources if crops is not None else {}
    for split, base in layout:
        for cdir in _visible_dirs(base):
            for p in list_images(cdir):
                rel = p.relative_to(root).as_posix()
                photos.append(LabelledPhoto(p, cdir.name, split, where=str(p), name=sources.get(rel, rel)))
    if not photos:
        raise PhotoSetError(f"{root}: no images found; expected {root}/<class>/<photo>.jpg (suffixes {suffix_list()})")
    return photos


def read_labelled(
    *, folder: str | Path | None = None, csv_path: str | Path | None = None, images_dir: str | Path | None = None
) -> list[LabelledPhoto]:
    """``--data DIR`` or ``--csv CSV --images DIR``: exactly one of the two layouts."""
    if (folder is None) == (csv_path is None):
        raise ConfigError("give the photos: either --data DIR or --csv CSV --images DIR")
    if csv_path is not None:
        if images_dir is None:
            raise ConfigError("--csv needs --images DIR (the folder the CSV's image paths are relative to)")
        return read_labelled_csv(csv_path, images_dir)
    assert folder is not None
    return read_labelled_folder(folder)


# --- photos -> aligned crops -------------------------------------------------------------------

ALIGNED_MODES = ("no", "auto", "yes")


@dataclass
class CropOutcome:
    """What became of one photo: its aligned crop or None, why not, and whether it was taken as a crop."""

    crop: np.ndarray | None
    reasons: list[str] = field(default_factory=list)
    aligned_input: bool = False


class PhotoCropper:
    """Decoded photo -> the contract's aligned crop, with the photo-collection front-end.

    ``aligned`` says what to do with images that already are crops: ``no`` always detects
    (training, evaluation), ``yes`` takes every image as an aligned crop (its size must be the
    contract's), ``auto`` takes images of exactly the contract's crop size as crops. Without a
    ``detector`` an MTCNN detector is made on first use (aligned crops need none).

    ``crop_folder`` (a ``facediag crop`` output, ``facediag.edge.crop_folders``) is the folder the
    aligned crops come from: it is refused here when it was aligned for another template, and
    named in ``description``. The crops of that folder are the ones this cropper's detecting
    branch makes of the source photos (``facediag crop`` runs the same ``PhotoFrontEnd``).
    """

    def __init__(self, contract: PreprocessContract, detector: Detector | None = None, *, aligned: str = "no",
                 crop_folder: AlignedCropFolder | None = None) -> None:
        if aligned not in ALIGNED_MODES:
            raise ConfigError(f"aligned must be one of {', '.join(ALIGNED_MODES)}, got {aligned!r}")
        if crop_folder is not None:
            if aligned == "no":
                raise ConfigError("a crop folder was given but aligned is 'no': its crops would be detected again")
            crop_folder.check(contract)
        self.contract = contract
        self.detector = detector
        self.aligned = aligned
        self.crop_folder = crop_folder
        self._front_end: PhotoFrontEnd | None = None
        # What the crops were made with, for manifests; the detector is named once it is used.
        self.description: dict[str, Any] = {"aligned": aligned}
        if crop_folder is not None:
            self.description["aligned_crops"] = crop_folder.summary()

    @property
    def detector_name(self) -> str:
        """The detector's name ("mtcnn" while the default one has not been made yet)."""
        if self.detector is None:
            return "mtcnn"
        return str(getattr(self.detector, "name", type(self.detector).__name__))

    @staticmethod
    def policy() -> dict[str, float]:
        """The tight-crop policy's numbers (for cache keys and manifests)."""
        from facediag.edge.face.pipeline import PhotoFrontEnd

        return PhotoFrontEnd.policy()

    def front_end(self) -> PhotoFrontEnd:
        if self._front_end is None:
            from facediag.edge.face.pipeline import PhotoFrontEnd

            if self.detector is None:
                from facediag.edge.face.detector import make_detector

                self.detector = make_detector("mtcnn")
            self._front_end = PhotoFrontEnd(self.detector, self.contract)
            self.description.update(
                policy={"front_end": "facediag.edge.face.pipeline.PhotoFrontEnd", **PhotoFrontEnd.policy()},
                detector=self.detector_name,
            )
        return self._front_end

    def crop(self, image_bgr: np.ndarray) -> CropOutcome:
        """The aligned crop of the photo's subject, or None with the reasons (e.g. "no face found")."""
        c = self.contract
        is_crop_sized = image_bgr.shape[:2] == (c.height, c.width)
        if self.aligned == "yes" or (self.aligned == "auto" and is_crop_sized):
            if not is_crop_sized:
                size = f"{image_bgr.shape[1]}x{image_bgr.shape[0]}"
                return CropOutcome(None, [f"not an aligned {c.height}x{c.width} crop ({size})"], True)
            return CropOutcome(image_bgr, [], True)
        result = self.front_end().process(image_bgr)
        if result.crop is None:
            return CropOutcome(None, list(result.reasons) or ["no face found"], False)
        return CropOutcome(result.crop, [], False)
