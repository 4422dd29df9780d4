"""Model files a station downloads once: pinned URLs and sha256 checks."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from facediag.edge.atomicio import atomic_writer
from facediag.edge.errors import ModelFileError
from facediag.edge.hashing import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    name: str
    filename: str
    url: str
    sha256: str
    licence: str


KNOWN_MODELS: dict[str, ModelFile] = {
    "yunet": ModelFile(
        name="yunet",
        filename="face_detection_yunet_2026may.onnx",
        url="https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2026may.onnx",
        sha256="ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
        licence="MIT (OpenCV Zoo)",
    ),
}


def default_models_dir() -> Path:
    """Where fetched models live: $FACEDIAG_MODELS, else $XDG_DATA_HOME/facediag/models."""
    if os.environ.get("FACEDIAG_MODELS"):
        return Path(os.environ["FACEDIAG_MODELS"])
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "facediag" / "models"


def check_sha256(path: Path, expected: str) -> None:
    """Raise ModelFileError unless the file's sha256 is ``expected``."""
    _check_digest(path, sha256_file(path), expected)


def _check_digest(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ModelFileError(
            f"{path}: sha256 {actual} does not match the pinned {expected}; the download is corrupt "
            "or the file was replaced. Delete it and fetch again."
        )


def fetch_model(name: str, dest_dir: Path | None = None, url: str | None = None) -> Path:
    """Download a known model, verify its pinned sha256, and move it into place atomically.

    An existing file with the right hash is kept; one with a wrong hash is replaced.
    ``url`` overrides the pinned address (a mirror); the hash is still enforced.
    """
    if name not in KNOWN_MODELS:
        raise ModelFileError(f"unknown model {name!r}: known models are {', '.join(KNOWN_MODELS)}")
    spec = KNOWN_MODELS[name]
    dest_dir = dest_dir or default_models_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / spec.filename
    if target.is_file():
        try:
            check_sha256(target, spec.sha256)
            log.info("%s already present and verified: %s", name, target)
            return target
        except ModelFileError:
            log.warning("%s exists but its hash is wrong; fetching again", target)
    source = url or spec.url
    # Streamed into a temporary file beside the target; a wrong hash raises inside the writer,
    # so the temporary file is removed and an existing target is left as it was.
    digest = hashlib.sha256()
    with atomic_writer(target) as out:
        try:
            with urllib.request.urlopen(source, timeout=60) as resp:  # noqa: S310 - pinned https URL
                while block := resp.read(1 << 16):
                    out.write(block)
                    digest.update(block)
        except OSError as exc:
            raise ModelFileError(
                f"could not download {name} from {source}: {exc}. On a machine without network, copy "
                f"{spec.filename} into {dest_dir} by hand (its sha256 must be {spec.sha256})"
            ) from None
        _check_digest(target, digest.hexdigest(), spec.sha256)
    log.info("fetched %s -> %s (sha256 verified)", name, target)
    return target
