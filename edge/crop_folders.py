"""Folders of aligned crops written by ``facediag crop``, read back as input that needs no detection.

``facediag crop SRC DST`` writes, beside the crops (``DST/<same relative path>.png``):

- ``crop_settings.json``: how the crops were made; since issue 10 it names the alignment
  ``contract`` (template, height, width, landmarks) and the ``front_end`` that made them
  (``PHOTO_FRONT_END``: the photo-collection policy that training, evaluation and calibration
  use on photos, so the crops are bit for bit what they would have made);
- ``manifest.csv``: one row per source photo (``source``, ``status`` ok / skipped, ``output``,
  ``reason``).

:func:`read_crop_folder` reads those two files; :func:`resolve_aligned` turns the ``--aligned``
option of ``train`` / ``evaluate`` (auto / yes / no) into the cropper's mode, refusing a crop
folder made for another template with a message naming both. The crops themselves go through
``facediag.edge.photos.PhotoCropper``'s aligned branch: one front-end definition for photos
and crops.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facediag.edge.errors import ConfigError

if TYPE_CHECKING:
    from facediag.edge.face.contract import PreprocessContract

log = logging.getLogger(__name__)

CROP_SETTINGS = "crop_settings.json"
CROP_MANIFEST = "manifest.csv"
PHOTO_FRONT_END = "facediag.edge.face.pipeline.PhotoFrontEnd"
ALIGNED_CHOICES = ("auto", "yes", "no")


class CropFolderMismatch(ConfigError):
    """A crop folder's alignment (template, size) is not the model's."""


def contract_geometry(contract: PreprocessContract) -> dict[str, Any]:
    """What of a contract decides a crop's pixels: template, height, width, landmarks (for crop_settings.json)."""
    return {"template": contract.template, "height": contract.height, "width": contract.width,
            "landmarks": contract.landmarks.round(4).tolist()}


@dataclass(frozen=True)
class AlignedCropFolder:
    """A ``facediag crop`` output folder: the crops' alignment, who made them, and source <-> crop names."""

    root: Path
    template: str
    height: int
    width: int
    front_end: str
    landmarks: list[list[float]] | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # source (relative) -> crop (relative), status ok
    skipped: dict[str, str] = field(default_factory=dict)  # source (relative) -> why no crop was made

    @property
    def sources(self) -> dict[str, str]:
        """crop (relative) -> source (relative)."""
        return {v: k for k, v in self.outputs.items()}

    def describe(self) -> str:
        return f"template {self.template} ({self.width}x{self.height})"

    def check(self, contract: PreprocessContract) -> None:
        """Refuse (CropFolderMismatch) when these crops are not aligned the way ``contract`` needs."""
        import numpy as np

        same = (self.template, self.height, self.width) == (contract.template, contract.height, contract.width)
        if same and self.landmarks is not None:
            same = bool(np.allclose(np.asarray(self.landmarks), contract.landmarks, atol=1e-3))
        if not same:
            raise CropFolderMismatch(
                f"{self.root} holds crops aligned for {self.describe()}, but the model needs template "
                f"{contract.template} ({contract.width}x{contract.height}): make crops for it with "
                f"`facediag crop SRC DST --template {contract.template}`, or give the original photos "
                "(they are detected and aligned for the model)"
            )
        if self.front_end != PHOTO_FRONT_END:
            log.warning("%s: crops made by %s, not the photo front-end that training and evaluation use on photos; "
                        "they may differ from the crops of the original photos", self.root, self.front_end)

    def summary(self) -> dict[str, Any]:
        """For reports and checkpoints: the folder, its alignment, its front-end, photos it has no crop of."""
        return {"folder": str(self.root), "template": self.template, "height": self.height, "width": self.width,
                "front_end": self.front_end, "crops": len(self.outputs), "skipped_at_crop": len(self.skipped)}


def _read_manifest(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    outputs: dict[str, str] = {}
    skipped: dict[str, str] = {}
    if not path.is_file():
        return outputs, skipped
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        for row in csv.DictReader(fh):
            source = row.get("source") or ""
            if row.get("status") == "ok" and row.get("output"):
                outputs[source] = str(row["output"])
            elif row.get("status") == "skipped":
                skipped[source] = row.get("reason") or "skipped"
    return outputs, skipped


def read_crop_folder(root: Path) -> AlignedCropFolder | None:
    """The crop folder at ``root``, or None when ``root`` holds no ``crop_settings.json``."""
    from facediag.edge.face.contract import TEMPLATES

    path = Path(root) / CROP_SETTINGS
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        geometry = settings.get("contract") or {"template": settings["template"]}
        template = str(geometry["template"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a crop settings file written by `facediag crop` ({exc})") from None
    if template not in TEMPLATES:
        raise ConfigError(f"{path}: unknown alignment template {template!r}")
    height, width = int(geometry.get("height", TEMPLATES[template][0])), int(geometry.get("width", TEMPLATES[template][1]))
    # Folders from before the front-end was recorded were made by the plain station front-end.
    front_end = settings.get("front_end") or {"name": f"facediag.edge.face.pipeline.FaceFrontEnd (pad {settings.get('pad', 0.0)})"}
    outputs, skipped = _read_manifest(Path(root) / CROP_MANIFEST)
    return AlignedCropFolder(Path(root), template, height, width, str(front_end.get("name")), geometry.get("landmarks"),
                             outputs, skipped)


def resolve_aligned(
    mode: str, root: Path | None, contract: PreprocessContract
) -> tuple[str, AlignedCropFolder | None]:
    """(``"yes"`` or ``"no"``, the crop folder) for ``--aligned MODE`` on the photos under ``root``.

    ``auto``: aligned when ``root`` is a ``facediag crop`` folder, else detected; ``yes``: every image is
    taken as an aligned crop (it must have the contract's size); ``no``: always detected, even in a crop
    folder. A crop folder made for another template is refused (CropFolderMismatch) unless ``no``.
    """
    if mode not in ALIGNED_CHOICES:
        raise ConfigError(f"--aligned must be one of {', '.join(ALIGNED_CHOICES)}, got {mode!r}")
    if mode == "no":
        return "no", None
    folder = read_crop_folder(root) if root is not None else None
    if folder is not None:
        folder.check(contract)
        log.info("%s: aligned crops (%s), taken without detection", folder.root, folder.describe())
        return "yes", folder
    return ("yes", None) if mode == "yes" else ("no", None)
