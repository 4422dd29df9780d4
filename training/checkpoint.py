"""The checkpoint folder ``facediag train`` writes and evaluate/export read.

``model.safetensors`` holds the state dict of the whole classifier, backbone
weights included, so a checkpoint is self-contained: it loads on a machine that
never saw the original backbone weights file. ``checkpoint.json`` says how to
rebuild the module (backbone name, class count, head options) and everything a
later stage or a reader needs (classes, healthy class, preprocessing contract,
strategy, hyperparameters, seed, package versions, metrics, temperature).

``checkpoint.json`` is a typed record, :class:`CheckpointMeta`, validated on read
like ``facediag.edge.bundle.Bundle``: a field of the wrong type, or a schema version
this facediag does not know, is a ModelFileError that says what is wrong. Every file
is written through ``facediag.edge.atomicio``.
"""

from __future__ import annotations

import json
import logging
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facediag.edge.atomicio import atomic_write_bytes, atomic_writer
from facediag.edge.errors import ConfigError, ModelFileError
from facediag.edge.face.contract import PreprocessContract

log = logging.getLogger(__name__)

FORMAT = "facediag-checkpoint"
FORMAT_VERSION = 1  # the schema version of checkpoint.json this code writes and reads
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
REQUIRED_KEYS = ("backbone", "classes", "contract", "strategy", "temperature")


def _fail(where: str, message: str) -> ModelFileError:
    return ModelFileError(f"{where}: {message}; train the checkpoint again with `facediag train`")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class CheckpointMeta:
    """``checkpoint.json`` of a checkpoint folder (schema ``FORMAT_VERSION``), validated.

    The named fields are the ones later stages rely on; everything else the writer
    recorded (calibration, data, backbone weights, files, ...) is kept in ``extra``.
    """

    backbone: str
    classes: tuple[str, ...]
    contract: PreprocessContract
    strategy: str
    temperature: float
    healthy_class: str | None = None
    seed: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # where the backbone and detector weights come from and their licences ({"backbones": [...], "detector": ...});
    # empty for checkpoints written before it was recorded
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Any, where: str = META_FILE) -> CheckpointMeta:
        """Validate a parsed checkpoint.json; ModelFileError naming the field otherwise."""
        if not isinstance(doc, dict):
            raise _fail(where, f"expected a JSON object, got {type(doc).__name__}")
        if doc.get("format") != FORMAT:
            raise ModelFileError(f"{where}: format is {doc.get('format')!r}, expected {FORMAT!r}")
        version = doc.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version != FORMAT_VERSION:
            newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
            raise ModelFileError(
                f"{where}: format_version {version!r}; this facediag reads version {FORMAT_VERSION}"
                + ("; it was written by a newer facediag: upgrade facediag to read it" if newer else "")
            )
        missing = [k for k in REQUIRED_KEYS if k not in doc]
        if missing:
            raise ModelFileError(f"{where}: missing key(s) {', '.join(missing)}")
        for key in ("backbone", "strategy"):
            if not isinstance(doc[key], str) or not doc[key]:
                raise _fail(where, f"field {key!r} must be a non-empty string, got {doc[key]!r}")
        classes = doc["classes"]
        if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)):
            raise _fail(where, "field 'classes' must be a list of at least two class names")
        if len(set(classes)) != len(classes):
            raise _fail(where, "field 'classes' has duplicate names")
        healthy = doc.get("healthy_class")
        if healthy is not None and healthy not in classes:
            raise _fail(where, f"field 'healthy_class' ({healthy!r}) is not one of the classes")
        if not isinstance(doc["contract"], dict):
            raise _fail(where, "field 'contract' must be an object")
        try:
            contract = PreprocessContract.from_dict(doc["contract"])
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise _fail(where, f"field 'contract' is invalid ({exc})") from None
        if not _is_number(doc["temperature"]) or doc["temperature"] <= 0:
            raise _fail(where, f"field 'temperature' must be a positive number, got {doc['temperature']!r}")
        seed = doc.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise _fail(where, f"field 'seed' must be an integer, got {seed!r}")
        tables = {k: doc.get(k) or {} for k in ("hyperparameters", "metrics", "versions", "head")}
        for key, value in tables.items():
            if not isinstance(value, dict):
                raise _fail(where, f"field {key!r} must be an object, got {type(value).__name__}")
        provenance = doc.get("provenance") or {}
        if not isinstance(provenance, dict):
            raise _fail(where, f"field 'provenance' must be an object, got {type(provenance).__name__}")
        thresholds = doc.get("thresholds")
        if thresholds is not None:
            if not isinstance(thresholds, dict):
                raise _fail(where, "field 'thresholds' must be an object (class -> probability) or null")
            for name, value in thresholds.items():
                if name not in classes or not _is_number(value) or not 0.0 <= value <= 1.0:
                    raise _fail(where, f"threshold {name!r}: {value!r} must be a probability for one of the classes")
        named = {"format", "format_version", *REQUIRED_KEYS, "healthy_class", "seed", "thresholds", "provenance", *tables}
        return cls(
            backbone=doc["backbone"], classes=tuple(classes), contract=contract, strategy=doc["strategy"],
            temperature=float(doc["temperature"]), healthy_class=healthy, seed=seed,
            hyperparameters=tables["hyperparameters"], metrics=tables["metrics"],
            thresholds=None if thresholds is None else {k: float(v) for k, v in thresholds.items()},
            versions=tables["versions"], head=tables["head"], extra={k: v for k, v in doc.items() if k not in named},
            format_version=version, provenance=provenance,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (the inverse of ``from_dict``)."""
        return {
            "format": FORMAT, "format_version": self.format_version, "backbone": self.backbone,
            "classes": list(self.classes), "healthy_class": self.healthy_class, "contract": self.contract.to_dict(),
            "strategy": self.strategy, "hyperparameters": self.hyperparameters, "seed": self.seed,
            "versions": self.versions, "metrics": self.metrics, "temperature": self.temperature,
            "thresholds": self.thresholds, "head": self.head, **self.extra,
            **({"provenance": self.provenance} if self.provenance else {}),
        }


def model_provenance(backbone: str, detector: str | None) -> dict[str, Any]:
    """Origin and licence of the backbone weights (each part of a feature recipe) and of the face detector."""
    from facediag.edge.errors import FacediagError
    from facediag.edge.face.detector import detector_provenance
    from facediag.training.backbones import backbone_provenance

    unknown = {"origin": "not stated", "licence": "not stated"}
    try:
        backbones: list[dict[str, str]] = backbone_provenance(backbone)
    except FacediagError:  # not a registered backbone (e.g. a strategy without one)
        backbones = [{"name": backbone, **unknown}]
    det: dict[str, str] | None = None
    if detector:
        try:
            det = detector_provenance(detector)
        except FacediagError:
            det = {"name": detector, **unknown}
    return {"backbones": backbones, "detector": det}


def package_versions() -> dict[str, str]:
    """Versions of what shaped the numbers (facediag, python, torch, numpy, sklearn, opencv, safetensors)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    try:
        from facediag.edge.version import __version__

        out["facediag"] = __version__
    except ImportError:  # pragma: no cover
        pass
    for dist in ("torch", "numpy", "scikit-learn", "opencv-python-headless", "safetensors", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _jsonable(obj: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python numbers, recursively (strict JSON)."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_checkpoint(out_dir: str | Path, model: Any, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` + ``checkpoint.json`` into ``out_dir`` (created); returns the folder.

    ``meta`` needs at least backbone, classes, contract (dict), strategy; the
    temperature is taken from the model. Files are written atomically
    (``facediag.edge.atomicio``), so a crash never leaves a half-written file
    under the final names.
    """
    from safetensors.torch import save

    missing = [k for k in ("backbone", "classes", "contract", "strategy") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {', '.join(missing)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    full = dict(meta)
    full["format"] = FORMAT
    full["format_version"] = FORMAT_VERSION
    full["temperature"] = float(model.temperature) if hasattr(model, "temperature") else float(meta.get("temperature", 1.0))
    full.setdefault("versions", package_versions())
    full.setdefault("thresholds", None)
    full.setdefault("provenance", model_provenance(str(meta["backbone"]), (meta.get("data") or {}).get("detector")))
    full["head"] = {
        "num_classes": len(meta["classes"]),
        "l2_normalize": bool(getattr(model, "l2_normalize", True)),
        **full.get("head", {}),
    }
    full["state_dict_keys"] = len(state)
    doc = _jsonable(full)
    CheckpointMeta.from_dict(doc, f"the metadata for {out / META_FILE}")  # never write what read_meta would refuse
    with atomic_writer(out / WEIGHTS_FILE) as fh:
        fh.write(save(state, metadata={"format": FORMAT, "backbone": str(meta["backbone"])}))
    atomic_write_bytes(out / META_FILE, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    log.info("checkpoint written to %s", out)
    return out


def read_checkpoint_meta(ckpt_dir: str | Path) -> CheckpointMeta:
    """The typed, validated ``checkpoint.json`` of a checkpoint folder."""
    return CheckpointMeta.from_dict(_read_meta_doc(ckpt_dir), str(Path(ckpt_dir) / META_FILE))


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` of a checkpoint folder as a dict, validated like :func:`read_checkpoint_meta`."""
    doc = _read_meta_doc(ckpt_dir)
    CheckpointMeta.from_dict(doc, str(Path(ckpt_dir) / META_FILE))
    return doc  # type: ignore[no-any-return]


def _read_meta_doc(ckpt_dir: str | Path) -> Any:
    ckpt = Path(ckpt_dir)
    meta_path = ckpt / META_FILE
    if not ckpt.is_dir():
        raise ModelFileError(f"{ckpt}: not a checkpoint folder (expected {META_FILE} and {WEIGHTS_FILE} in it)")
    if not meta_path.is_file():
        raise ModelFileError(f"{ckpt}: no {META_FILE}; is this a folder written by `facediag train`?")
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{meta_path}: not valid JSON ({exc})") from None


def _build_module(meta: dict[str, Any], backbone_weights: str | Path | None) -> Any:
    """An untrained module of the checkpoint's architecture."""
    from facediag.training.backbones import BACKBONES, get_backbone
    from facediag.training.classifier import FaceClassifier

    name = meta["backbone"]
    if name not in BACKBONES and not ("+" in name or ":" in name):  # a feature recipe builds from its parts
        raise ModelFileError(f"checkpoint backbone {name!r} is unknown to this facediag ({', '.join(BACKBONES)})")
    contract = PreprocessContract.from_dict(meta["contract"])
    backbone = get_backbone(name, weights=backbone_weights, pretrained=False)
    if backbone.contract != contract:
        raise ModelFileError(
            f"checkpoint contract {contract} differs from backbone {name!r}'s contract {backbone.contract}: "
            "the checkpoint was made by an incompatible version"
        )
    head = meta.get("head", {})
    n = int(head.get("num_classes", len(meta["classes"])))
    if n != len(meta["classes"]):
        raise ModelFileError(f"checkpoint lists {len(meta['classes'])} classes but its head has {n} outputs")
    return FaceClassifier(backbone, n, l2_normalize=bool(head.get("l2_normalize", True)))


def load_classifier(ckpt_dir: str | Path, backbone_weights: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode returning probabilities, meta) from a checkpoint folder.

    ``backbone_weights`` is not needed (the checkpoint carries every weight);
    when given it is only used to build the architecture. Missing or extra keys,
    or tensors of another shape (a checkpoint of another backbone), are errors
    that name the keys.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt = Path(ckpt_dir)
    meta = read_meta(ckpt)
    from facediag.training.strategies import STRATEGIES

    if meta["strategy"] in STRATEGIES and not STRATEGIES.get(meta["strategy"]).torch_checkpoint:
        spec = STRATEGIES.get(meta["strategy"])
        raise ModelFileError(
            f"{ckpt} is a {spec.name} checkpoint ({spec.summary}), not a neural network: "
            "read it with facediag.training.strategies.load_checkpoint"
        )
    weights_path = ckpt / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelFileError(f"{ckpt}: no {WEIGHTS_FILE}; the checkpoint is incomplete")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    model = _build_module(meta, backbone_weights)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelFileError(
            f"{weights_path} does not match a {meta['backbone']!r} classifier: "
            + (f"missing {len(missing)} key(s) ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unexpected {len(extra)} key(s) ({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})" if extra else "")
            + ". Is it a checkpoint of another backbone?"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ModelFileError(
            f"{weights_path}: tensor shapes differ from a {meta['backbone']!r} classifier with "
            f"{len(meta['classes'])} classes: {'; '.join(wrong[:5])}. Is it a checkpoint of another backbone?"
        )
    model.load_state_dict(state, strict=True)
    if "temperature" in state and abs(float(state["temperature"]) - float(meta["temperature"])) > 1e-5 * max(
        1.0, abs(float(meta["temperature"]))
    ):
        raise ModelFileError(
            f"{ckpt}: temperature in {META_FILE} ({meta['temperature']}) differs from the weights file "
            f"({float(state['temperature'])}); the folder mixes two checkpoints"
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, meta
