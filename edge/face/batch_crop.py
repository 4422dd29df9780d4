"""Folder of photos -> aligned crops in the same structure + manifest.csv.

A bad file is reported in the manifest and skipped, never fatal. Each row is
appended and flushed as soon as its file is done, and crops are written
atomically, so an interrupted run loses nothing; a re-run skips files already
done (same path and same sha256) with the same settings.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from facediag.edge.atomicio import atomic_write_bytes
from facediag.edge.errors import ConfigError, ImageLoadError
from facediag.edge.face.imageio import load_image
from facediag.edge.face.pipeline import FaceFrontEnd
from facediag.edge.hashing import sha256_file
from facediag.edge.photos import NOT_PHOTO_SUFFIXES, list_photo_candidates

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
SETTINGS = "crop_settings.json"
NOT_PHOTOS = NOT_PHOTO_SUFFIXES  # kept for callers of this name
QUALITY_KEYS = ("face_px", "sharpness", "brightness", "clipped_fraction", "roll_deg", "yaw", "pitch")
FIELDS = (
    ["source", "source_sha256", "status", "reason", "output", "faces_found", "score", "x1", "y1", "x2", "y2", "landmarks"]
    + list(QUALITY_KEYS)
    + ["quality_flags"]
)


@dataclass
class CropSummary:
    done: int = 0
    skipped: int = 0
    already_done: int = 0

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.already_done


def list_photos(src: Path) -> list[Path]:
    """Every regular, non-hidden file under ``src`` that is not obviously a text/data file.

    The permissive listing of the photo-collection layer: files without an image suffix are
    included (the Yale database has none); whether a file really is an image is decided by
    the decoder, and failures are reported per file. This tool's own outputs are left out.
    """
    return list_photo_candidates(src, exclude_names=(MANIFEST, SETTINGS))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def read_manifest(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing manifest keyed by source; a torn last line (crash mid-write) is ignored."""
    if not path.is_file():
        return {}
    rows: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        for row in csv.DictReader(fh):
            if row.get("status") in ("ok", "skipped") and row.get("source_sha256"):
                rows[row["source"]] = row
    return rows


def _check_settings(dst: Path, settings: dict[str, object], force: bool) -> None:
    path = dst / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings and not force:
            raise ConfigError(
                f"{dst} was made with other crop settings ({path}); use a new destination folder, "
                "or pass --force to redo every file with the new settings"
            )
    _write(path, json.dumps(settings, indent=2, sort_keys=True).encode())


def crop_name(rel: Path) -> Path:
    """The crop of ``rel``: its whole name plus ``.png`` (``subject01.glasses`` -> ``subject01.glasses.png``,
    ``a.jpg`` -> ``a.jpg.png``), so two photos never share a crop; a ``.png`` source becomes ``x.png.png``
    for the same reason (``x`` and ``x.png`` may both exist)."""
    return rel.with_name(rel.name + ".png")


def _crop_one(
    photo: Path, rel: Path, dst: Path, front_end: FaceFrontEnd, skip_failing_quality: bool, row: dict[str, str]
) -> None:
    """Crop one photo into ``dst/rel`` (as PNG) and fill its manifest ``row``; ImageLoadError when skipped.

    The face's figures are filled in before a quality-gate refusal, so a skipped row still says why.
    """
    import cv2

    image = load_image(photo)
    result = front_end.process(image)
    if result.face is None or result.crop is None:
        raise ImageLoadError(f"{photo}: no face found")
    face = result.face
    row.update(
        faces_found=str(len(result.faces)),
        score=f"{face.score:.4f}",
        x1=f"{face.box[0]:.1f}", y1=f"{face.box[1]:.1f}", x2=f"{face.box[2]:.1f}", y2=f"{face.box[3]:.1f}",
        landmarks=json.dumps([[round(float(v), 2) for v in p] for p in face.landmarks]),
        quality_flags="; ".join(result.reasons),
    )
    for k in QUALITY_KEYS:
        if k in result.quality.figures:
            row[k] = f"{result.quality.figures[k]:.4f}"
    notes = []
    if len(result.faces) > 1:
        notes.append(f"{len(result.faces)} faces found; kept the largest, most central one")
    if result.reasons and skip_failing_quality:
        raise ImageLoadError(f"{photo}: failed quality gates: {'; '.join(result.reasons)}")
    out_rel = crop_name(rel)
    ok, encoded = cv2.imencode(".png", result.crop)
    if not ok:
        raise ImageLoadError(f"{photo}: could not encode the crop")
    _write(dst / out_rel, encoded.tobytes())
    row.update(status="ok", output=out_rel.as_posix(), reason="; ".join(notes))


def crop_folder(
    src: Path,
    dst: Path,
    front_end: FaceFrontEnd,
    settings: dict[str, object],
    skip_failing_quality: bool = False,
    force: bool = False,
    progress: Callable[[Iterable[Path]], Iterable[Path]] | None = None,
) -> CropSummary:
    """Crop every photo under ``src`` into ``dst`` (same relative paths, ``.png``)."""
    photos = list_photos(src)
    src_is_file = src.is_file()
    dst.mkdir(parents=True, exist_ok=True)
    _check_settings(dst, settings, force)
    manifest_path = dst / MANIFEST
    previous = {} if force else read_manifest(manifest_path)
    summary = CropSummary()
    rows: dict[str, dict[str, str]] = dict(previous)
    new_file = not manifest_path.exists() or force
    # The manifest is an append-only journal while the run lasts (each row flushed and fsynced, a
    # torn last row is ignored on re-read), then replaced atomically by its compacted form below.
    with open(manifest_path, "w" if new_file else "a", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        iterable: Iterable[Path] = progress(photos) if progress else photos
        for photo in iterable:
            rel = Path(photo.name) if src_is_file else photo.relative_to(src)
            key = rel.as_posix()
            try:
                digest = sha256_file(photo)
            except OSError as exc:
                digest = ""
                log.warning("%s: cannot read (%s)", photo, exc)
            old = previous.get(key)
            if old and old["source_sha256"] == digest and (old["status"] != "ok" or (dst / old["output"]).is_file()):
                summary.already_done += 1
                continue
            row = {k: "" for k in FIELDS}
            row.update(source=key, source_sha256=digest)
            try:
                _crop_one(photo, rel, dst, front_end, skip_failing_quality, row)
                summary.done += 1
            except ImageLoadError as exc:
                row.update(status="skipped", reason=str(exc))
                summary.skipped += 1
                log.warning("skipped %s", exc)
            writer.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())
            rows[key] = row
    # Compact: one row per source (a re-run appended newer rows for changed files).
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    for key in sorted(rows):
        w.writerow({k: rows[key].get(k, "") for k in FIELDS})
    _write(manifest_path, buf.getvalue().encode("utf-8", errors="surrogateescape"))  # file names of any encoding
    return summary
