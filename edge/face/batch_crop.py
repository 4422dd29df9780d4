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
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ConfigError, FacediagError, ImageLoadError
from edge.face.imageio import load_image
from edge.face.pipeline import FaceFrontEnd
from edge.hashing import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
SETTINGS = "crop_settings.json"
NOT_PHOTOS = {".txt", ".csv", ".md", ".json", ".xml", ".html", ".py", ".pdf"}
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

    Files without an extension are included (the Yale database has none); whether a file
    really is an image is decided by the decoder, and failures are reported per file.
    """
    if not src.exists():
        raise FacediagError(f"{src}: no such folder")
    if src.is_file():
        return [src]
    out = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() in NOT_PHOTOS or p.name in (MANIFEST, SETTINGS):
            continue
        out.append(p)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_manifest(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing manifest keyed by source; a torn last line (crash mid-write) is ignored."""
    if not path.is_file():
        return {}
    rows: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
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
    _atomic_write(path, json.dumps(settings, indent=2, sort_keys=True).encode())


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
    import cv2

    photos = list_photos(src)
    src_is_file = src.is_file()
    dst.mkdir(parents=True, exist_ok=True)
    _check_settings(dst, settings, force)
    manifest_path = dst / MANIFEST
    previous = {} if force else read_manifest(manifest_path)
    summary = CropSummary()
    rows: dict[str, dict[str, str]] = dict(previous)
    new_file = not manifest_path.exists() or force
    with open(manifest_path, "w" if new_file else "a", newline="", encoding="utf-8") as fh:
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
                image = load_image(photo)
                result = front_end.process(image)
                if result.face is None:
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
                out_rel = rel.with_suffix(".png") if rel.suffix.lower() != ".png" else rel
                ok, encoded = cv2.imencode(".png", result.crop)
                if not ok:
                    raise ImageLoadError(f"{photo}: could not encode the crop")
                _atomic_write(dst / out_rel, encoded.tobytes())
                row.update(status="ok", output=out_rel.as_posix(), reason="; ".join(notes))
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
    _atomic_write(manifest_path, buf.getvalue().encode("utf-8"))
    return summary
