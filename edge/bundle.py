"""The model bundle: one folder with ``bundle.json`` and the ONNX files it names.

A bundle is made on the workstation (``facediag export``, then ``quantize`` /
``fp16``) and read on every station, so its format lives here, on the station
side, with no dependency on torch or the converters.

Integrity, and why it is done this way
--------------------------------------
``bundle.json`` lists the SHA-256 of every other file (``files``). To protect
``bundle.json`` itself without a second file that can get separated from it,
it carries a self-hash, ``bundle_sha256``: the SHA-256 of the document's
*canonical* serialisation with that one field left out (keys sorted, two-space
indent, ASCII only, newline at the end). The file on disk must also be exactly
that canonical serialisation (with the field put back), so any changed byte is
caught: a change of content breaks the self-hash, a change of layout alone
(whitespace, key order) breaks the canonical form. Both errors name
``bundle.json``; a wrong model file is named by its file name.

Hand edits are therefore refused on purpose. To change a threshold, load the
bundle, change it, and call :meth:`Bundle.save` (which rewrites the hash).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facediag.edge import precision as precision_table
from facediag.edge.atomicio import atomic_write_bytes
from facediag.edge.errors import BundleError, ConfigError
from facediag.edge.face.contract import PreprocessContract
from facediag.edge.hashing import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUNDLE_JSON = "bundle.json"
SELF_HASH_FIELD = "bundle_sha256"
# Precision name -> the file name the converters give it (from the precision table).
PRECISION_FILES: dict[str, str] = precision_table.files()
REQUIRED_FIELDS = (
    "schema_version",
    "classes",
    "healthy_class",
    "contract",
    "thresholds",
    "precisions",
    "files",
    "creator",
    "source_checkpoint",
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REEXPORT = "re-export the bundle with `facediag export CHECKPOINT BUNDLE` (then quantize / fp16 again)"


def canonical_json(doc: dict[str, Any]) -> bytes:
    """The one byte-exact serialisation of a bundle document (what is hashed and written)."""
    text = json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("ascii")


def self_hash(doc: dict[str, Any]) -> str:
    """SHA-256 of the canonical serialisation of ``doc`` without its ``bundle_sha256`` field."""
    body = {k: v for k, v in doc.items() if k != SELF_HASH_FIELD}
    return sha256_bytes(canonical_json(body))


def serialise(doc: dict[str, Any]) -> bytes:
    """Canonical bytes of ``doc`` with a fresh self-hash (the exact content of bundle.json)."""
    body = {k: v for k, v in doc.items() if k != SELF_HASH_FIELD}
    body[SELF_HASH_FIELD] = self_hash(body)
    return canonical_json(body)


def _check_file_name(name: Any, where: str) -> str:
    """File names in a bundle are plain names inside the folder (no paths, no parent references)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise BundleError(f"{BUNDLE_JSON}: {where} names {name!r}, which is not a plain file name in the bundle folder; {_REEXPORT}")
    if name == BUNDLE_JSON:
        raise BundleError(f"{BUNDLE_JSON}: {where} may not name {BUNDLE_JSON} itself; {_REEXPORT}")
    return name


@dataclass
class PrecisionEntry:
    """One model file in the bundle, with the accuracy-gate results that let it in."""

    name: str
    file: str
    gate: dict[str, Any]
    target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "gate": self.gate}
        if self.target is not None:
            d["target"] = self.target
        return d


@dataclass
class Bundle:
    """A loaded (and verified) bundle. Mutate through :meth:`add_precision` / :meth:`save` only."""

    path: Path
    classes: list[str]
    healthy_class: str
    contract: PreprocessContract
    thresholds: dict[str, float]
    precisions: dict[str, PrecisionEntry]
    files: dict[str, str]
    creator: str
    source_checkpoint: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def provenance(self) -> dict[str, Any]:
        """Origin and licence of the backbone(s) and detector (``{"backbones": [...], "detector": ...}``); ``{}``
        for a bundle exported before facediag recorded them."""
        found = self.extra.get("provenance")
        return dict(found) if isinstance(found, dict) else {}

    def model_path(self, precision: str = "fp32") -> Path:
        """Path of the ONNX file for ``precision``; BundleError naming the precisions there are otherwise."""
        if precision not in self.precisions:
            have = ", ".join(sorted(self.precisions)) or "none"
            hint = precision_table.make_hint(precision) if precision != precision_table.REFERENCE else ""
            raise BundleError(f"bundle {self.path} has no {precision!r} model (it has: {have}). {hint}".strip())
        return self.path / self.precisions[precision].file

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            {
                "schema_version": self.schema_version,
                "classes": list(self.classes),
                "healthy_class": self.healthy_class,
                "contract": self.contract.to_dict(),
                "thresholds": {k: float(v) for k, v in self.thresholds.items()},
                "precisions": {name: p.to_dict() for name, p in self.precisions.items()},
                "files": dict(self.files),
                "creator": self.creator,
                "source_checkpoint": dict(self.source_checkpoint),
            }
        )
        return doc

    def save(self) -> None:
        """Rewrite bundle.json atomically with a fresh self-hash."""
        atomic_write_bytes(self.path / BUNDLE_JSON, serialise(self.to_dict()))

    def add_precision(self, name: str, file: str, gate: dict[str, Any], target: str | None = None) -> PrecisionEntry:
        """Register a model file that passed its gate: hash it, record it, rewrite bundle.json atomically."""
        _check_file_name(file, f"precision {name!r}")
        path = self.path / file
        if not path.is_file():
            raise BundleError(f"cannot add precision {name!r}: {path} does not exist")
        old = self.precisions.get(name)
        entry = PrecisionEntry(name=name, file=file, gate=dict(gate), target=target)
        self.precisions[name] = entry
        self.files[file] = sha256_file(path)
        if old is not None and old.file != file and not any(p.file == old.file for p in self.precisions.values()):
            self.files.pop(old.file, None)
        self.save()
        log.info("bundle %s: added %s (%s)", self.path, name, file)
        return entry

    def remove_precision(self, name: str) -> None:
        """Drop a precision from bundle.json (the file itself is left for the caller to delete)."""
        if name == precision_table.REFERENCE:
            raise BundleError("the fp32 model is the reference of every other precision and cannot be removed")
        entry = self.precisions.pop(name, None)
        if entry is None:
            return
        if not any(p.file == entry.file for p in self.precisions.values()):
            self.files.pop(entry.file, None)
        self.save()

    def verify_files(self) -> None:
        """Re-hash every listed file; BundleError naming the first that is missing, a symlink, or differs;
        an ONNX file's external-data files must be listed (hashed) too."""
        for name, expected in sorted(self.files.items()):
            path = self.path / name
            if path.is_symlink():
                raise BundleError(f"bundle {self.path}: {name} is a symlink; a bundle holds its own files, "
                                  f"copy the real file in or {_REEXPORT}")
            if name.endswith(".onnx") and path.is_file():
                unlisted = [x for x in onnx_external_data(path) if x not in self.files]
                if unlisted:
                    raise BundleError(f"bundle {self.path}: {name} reads external data {', '.join(unlisted)} that "
                                      f"bundle.json does not hash; {_REEXPORT}")
            if not path.is_file():
                raise BundleError(f"bundle {self.path}: {name} is missing (bundle.json lists it); copy the whole bundle folder again or {_REEXPORT}")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(
                    f"bundle {self.path}: {name} is corrupted or was modified (sha256 {actual[:12]}... but bundle.json "
                    f"records {expected[:12]}...); copy the bundle again or {_REEXPORT}"
                )


def create_bundle(
    folder: str | Path,
    *,
    classes: list[str],
    healthy_class: str,
    contract: PreprocessContract,
    thresholds: dict[str, float],
    fp32_file: str,
    fp32_gate: dict[str, Any],
    source_checkpoint: dict[str, Any],
    creator: str,
    extra: dict[str, Any] | None = None,
) -> Bundle:
    """Write bundle.json for a folder that already holds the FP32 ONNX file, and return the loaded bundle."""
    folder = Path(folder)
    bundle = Bundle(
        path=folder,
        classes=list(classes),
        healthy_class=healthy_class,
        contract=contract,
        thresholds=dict(thresholds),
        precisions={"fp32": PrecisionEntry("fp32", _check_file_name(fp32_file, "fp32"), dict(fp32_gate))},
        files={fp32_file: sha256_file(folder / fp32_file)},
        creator=creator,
        source_checkpoint=dict(source_checkpoint),
        extra=dict(extra or {}),
    )
    _validate(bundle.to_dict(), folder)  # the same checks a station makes, before anything is written
    bundle.save()
    return load_bundle(folder)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def onnx_external_data(path: Path) -> list[str]:
    """The external-data files an ONNX model reads (``location`` of its EXTERNAL initializers), [] when none."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt model: the hash check names it
        log.debug("cannot parse %s for external data: %s", path, exc)
        return []
    locations: list[str] = []
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if where and where not in locations:
                locations.append(where)
    return locations


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise BundleError(f"{BUNDLE_JSON}: {message}; {_REEXPORT}")


def _validate(doc: dict[str, Any], folder: Path) -> Bundle:
    missing = [k for k in REQUIRED_FIELDS if k not in doc]
    _require(not missing, f"required field(s) missing: {', '.join(missing)}")
    classes = doc["classes"]
    _require(
        isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes),
        "field 'classes' must be a list of at least two class names",
    )
    _require(len(set(classes)) == len(classes), "field 'classes' has duplicate names")
    _require(doc["healthy_class"] in classes, f"field 'healthy_class' ({doc['healthy_class']!r}) is not one of the classes")
    _require(isinstance(doc["contract"], dict), "field 'contract' must be an object")
    try:
        contract = PreprocessContract.from_dict(doc["contract"])
    except ConfigError as exc:
        raise BundleError(f"{BUNDLE_JSON}: field 'contract' is invalid ({exc}); {_REEXPORT}") from exc
    thresholds = doc["thresholds"]
    _require(isinstance(thresholds, dict), "field 'thresholds' must be an object (class -> probability)")
    for cls, value in thresholds.items():
        _require(cls in classes, f"field 'thresholds' names {cls!r}, which is not one of the classes")
        _require(
            isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value < 1.0,
            f"threshold for {cls!r} must be a probability in (0, 1), got {value!r} (0 refers everyone, 1 no one)",
        )
    files = doc["files"]
    _require(isinstance(files, dict) and bool(files), "field 'files' must be a non-empty object (file name -> sha256)")
    for name, digest in files.items():
        _check_file_name(name, "field 'files'")
        _require(isinstance(digest, str) and bool(_HEX64.match(digest)), f"field 'files' has no valid sha256 for {name!r}")
    precisions_doc = doc["precisions"]
    _require(isinstance(precisions_doc, dict) and "fp32" in precisions_doc, "field 'precisions' must contain 'fp32'")
    precisions: dict[str, PrecisionEntry] = {}
    for name, entry in precisions_doc.items():
        _require(isinstance(entry, dict), f"precision {name!r} must be an object")
        _require("file" in entry and "gate" in entry, f"precision {name!r} needs 'file' and 'gate'")
        _check_file_name(entry["file"], f"precision {name!r}")
        _require(entry["file"] in files, f"precision {name!r} names {entry['file']!r}, which has no sha256 in 'files'")
        _require(isinstance(entry["gate"], dict), f"precision {name!r}: 'gate' must be an object")
        _require(entry["gate"].get("passed", True) is True, f"precision {name!r}: its accuracy gate is marked failed")
        target = entry.get("target")
        _require(target is None or isinstance(target, str), f"precision {name!r}: 'target' must be a string")
        precisions[name] = PrecisionEntry(name=name, file=entry["file"], gate=entry["gate"], target=target)
    _require(isinstance(doc["creator"], str) and bool(doc["creator"]), "field 'creator' must be a string")
    source = doc["source_checkpoint"]
    _require(isinstance(source, dict) and "path" in source and "sha256" in source, "field 'source_checkpoint' needs 'path' and 'sha256'")
    # optional (bundles exported before it was recorded have none): model origins and licences
    _require(isinstance(doc.get("provenance", {}), dict), "field 'provenance' must be an object")
    known = set(REQUIRED_FIELDS) | {SELF_HASH_FIELD}
    return Bundle(
        path=folder,
        classes=list(classes),
        healthy_class=doc["healthy_class"],
        contract=contract,
        thresholds={k: float(v) for k, v in thresholds.items()},
        precisions=precisions,
        files=dict(files),
        creator=doc["creator"],
        source_checkpoint=dict(source),
        extra={k: v for k, v in doc.items() if k not in known},
        schema_version=doc["schema_version"],
    )


def load_bundle(path: str | Path, verify_files: bool = True) -> Bundle:
    """Read and verify a bundle folder (or its bundle.json).

    Checks, in order: bundle.json exists and is JSON, its schema version is
    known, its self-hash and canonical form hold (nothing edited), every
    required field is there and well-formed, and (unless ``verify_files`` is
    False) every listed file exists with the recorded SHA-256. Each failure is
    a :class:`BundleError` that names the file or field and says what to do.
    """
    folder = Path(path)
    if folder.name == BUNDLE_JSON and folder.is_file():
        folder = folder.parent
    meta = folder / BUNDLE_JSON
    if not folder.is_dir():
        raise BundleError(f"no bundle folder at {folder}: make one with `facediag export CHECKPOINT {folder}`")
    if not meta.is_file():
        raise BundleError(f"{folder} is not a model bundle: {BUNDLE_JSON} is missing; {_REEXPORT}")
    raw = meta.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # also NaN/Infinity, huge ints, deep nesting
        raise BundleError(f"{meta}: {BUNDLE_JSON} is corrupted (not valid JSON: {str(exc)[:200]}); {_REEXPORT}") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{meta}: {BUNDLE_JSON} must hold a JSON object; {_REEXPORT}")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION or type(version) is not int:  # 1.0 and true equal 1, but are not the schema
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            hint = "it was made by a newer facediag: upgrade facediag on this station"
        else:
            hint = f"it is not a facediag bundle or {BUNDLE_JSON} was altered; {_REEXPORT}"
        raise BundleError(
            f"{meta}: unsupported bundle schema_version {version!r} (this facediag reads version {SCHEMA_VERSION}); {hint}"
        )
    stored = doc.get(SELF_HASH_FIELD)
    if stored != self_hash(doc):
        raise BundleError(
            f"{meta}: {BUNDLE_JSON} was modified after it was written (its {SELF_HASH_FIELD} does not match its "
            f"content); {_REEXPORT}, or change bundles only through facediag.edge.bundle.Bundle.save()"
        )
    if raw != canonical_json(doc):
        raise BundleError(
            f"{meta}: {BUNDLE_JSON} was modified after it was written (its layout is not the canonical one "
            f"facediag writes); {_REEXPORT}, or change bundles only through facediag.edge.bundle.Bundle.save()"
        )
    try:
        bundle = _validate(doc, folder)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # wrong types inside a re-hashed bundle.json
        raise BundleError(f"{meta}: a field has the wrong type ({type(exc).__name__}: {str(exc)[:200]}); "
                          f"{_REEXPORT}") from None
    if verify_files:
        bundle.verify_files()
    return bundle
