"""One screening result as a typed record: what the station writes per person, one JSON line each.

``ScreeningResult`` is the in-memory form; ``to_json()`` gives the plain-JSON dict
written to ``results.jsonl`` (keys in the order the daemon has always written them)
and ``ScreeningResult.from_json()`` checks a dict read back: the record kind, the
schema version, every field's type and range, and that the decision fits its
fields. A record that fails raises ``ResultRecordError`` naming the field.

Schema history:

1. the first version (facediag 0.2). Optional fields ``station_id``, ``result_id`` and
   ``visit_id`` are written only when set, so a reader of version 1 accepts
   records with or without them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from facediag.edge.errors import FacediagError
from facediag.edge.screening.decision import NO_FINDING, REFER, RETAKE

RESULT_RECORD = "screening_result"
RESULT_SCHEMA = 1
DECISION_KINDS = (REFER, NO_FINDING, RETAKE)

_REQUIRED = (
    "record", "schema", "session_id", "started_at", "decided_at", "decision", "condition", "probability",
    "probabilities", "reason", "frames_used", "quality", "bundle_id", "model_sha256", "precision", "backend",
    "notice",
)
_OPTIONAL = ("station_id", "result_id", "visit_id")


class ResultRecordError(FacediagError):
    """A result record is not a valid screening result of a schema this version reads."""


@dataclass(frozen=True)
class QualitySummary:
    """How the frames of one session fared against the quality gates."""

    frames_seen: int
    good_frames: int
    rejected_frames: int
    rejections: Mapping[str, int] = field(default_factory=dict)  # gate name -> frames it rejected

    def to_json(self) -> dict[str, Any]:
        return {
            "frames_seen": self.frames_seen,
            "good_frames": self.good_frames,
            "rejected_frames": self.rejected_frames,
            "rejections": dict(self.rejections),
        }

    @classmethod
    def from_json(cls, doc: object, where: str = "quality") -> QualitySummary:
        obj = _object(doc, where)
        _exact_keys(obj, ("frames_seen", "good_frames", "rejected_frames", "rejections"), (), where)
        rejections = _object(obj["rejections"], f"{where}.rejections")
        return cls(
            frames_seen=_count(obj["frames_seen"], f"{where}.frames_seen"),
            good_frames=_count(obj["good_frames"], f"{where}.good_frames"),
            rejected_frames=_count(obj["rejected_frames"], f"{where}.rejected_frames"),
            rejections={k: _count(v, f"{where}.rejections.{k}") for k, v in rejections.items()},
        )


@dataclass(frozen=True)
class ScreeningResult:
    """One person's screening outcome (see the module docstring for the on-disk form)."""

    session_id: str
    started_at: str  # ISO 8601 UTC, milliseconds, "Z"
    decided_at: str
    decision: str  # refer | no_finding | retake
    condition: str | None  # refer: the class that reached its threshold
    probability: float | None  # refer: that class's probability
    probabilities: Mapping[str, float]  # mean class probabilities (empty for a retake without inference)
    reason: str
    frames_used: int  # crops in the inference batch (0: no inference)
    quality: QualitySummary
    bundle_id: str
    model_sha256: str
    precision: str
    backend: str
    notice: str
    station_id: str | None = None
    result_id: str | None = None  # unique across the fleet: "<station_id>:<ms hex>-<random hex>" (uplink)
    visit_id: str | None = None
    schema: int = RESULT_SCHEMA

    def to_json(self) -> dict[str, Any]:
        """The plain-JSON dict written as one line (schema 1's keys in their order; optional ones last)."""
        doc: dict[str, Any] = {
            "record": RESULT_RECORD,
            "schema": self.schema,
            "session_id": self.session_id,
            "started_at": self.started_at,
            "decided_at": self.decided_at,
            "decision": self.decision,
            "condition": self.condition,
            "probability": self.probability,
            "probabilities": dict(self.probabilities),
            "reason": self.reason,
            "frames_used": self.frames_used,
            "quality": self.quality.to_json(),
            "bundle_id": self.bundle_id,
            "model_sha256": self.model_sha256,
            "precision": self.precision,
            "backend": self.backend,
            "notice": self.notice,
        }
        if self.station_id is not None:
            doc["station_id"] = self.station_id
        if self.result_id is not None:
            doc["result_id"] = self.result_id
        if self.visit_id is not None:
            doc["visit_id"] = self.visit_id
        return doc

    @classmethod
    def from_json(cls, doc: object) -> ScreeningResult:
        """Validate a decoded JSON line; ResultRecordError naming the first field that is wrong."""
        obj = _object(doc, "result")
        if obj.get("record") != RESULT_RECORD:
            raise ResultRecordError(f"not a screening result: 'record' is {obj.get('record')!r}, "
                                    f"expected {RESULT_RECORD!r}")
        schema = obj.get("schema")
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise ResultRecordError(f"result 'schema' must be an integer, got {schema!r}")
        if schema != RESULT_SCHEMA:
            newer = " (written by a newer facediag: upgrade this reader)" if schema > RESULT_SCHEMA else ""
            raise ResultRecordError(f"result schema {schema} is not one this version reads ({RESULT_SCHEMA}){newer}")
        _exact_keys(obj, _REQUIRED, _OPTIONAL, "result")
        result = cls(
            session_id=_text(obj["session_id"], "session_id", nonempty=True),
            started_at=_timestamp(obj["started_at"], "started_at"),
            decided_at=_timestamp(obj["decided_at"], "decided_at"),
            decision=_choice(obj["decision"], "decision", DECISION_KINDS),
            condition=_optional_text(obj["condition"], "condition"),
            probability=None if obj["probability"] is None else _probability(obj["probability"], "probability"),
            probabilities={str(k): _probability(v, f"probabilities.{k}")
                           for k, v in _object(obj["probabilities"], "probabilities").items()},
            reason=_text(obj["reason"], "reason"),
            frames_used=_count(obj["frames_used"], "frames_used"),
            quality=QualitySummary.from_json(obj["quality"]),
            bundle_id=_text(obj["bundle_id"], "bundle_id"),
            model_sha256=_text(obj["model_sha256"], "model_sha256"),
            precision=_text(obj["precision"], "precision"),
            backend=_text(obj["backend"], "backend"),
            notice=_text(obj["notice"], "notice"),
            station_id=_optional_text(obj.get("station_id"), "station_id"),
            result_id=_optional_text(obj.get("result_id"), "result_id"),
            visit_id=_optional_text(obj.get("visit_id"), "visit_id"),
            schema=schema,
        )
        result.check_consistent()
        return result

    def check_consistent(self) -> None:
        """The decision fits its fields: a referral names its class and probability, nothing else does."""
        if self.decision == REFER:
            if self.condition is None or self.probability is None:
                raise ResultRecordError("a 'refer' result needs a condition and its probability")
            if self.probabilities and self.condition not in self.probabilities:
                raise ResultRecordError(f"condition {self.condition!r} is not among the probabilities")
        elif self.condition is not None or self.probability is not None:
            raise ResultRecordError(f"a {self.decision!r} result has no condition or probability")
        if _parse_time(self.decided_at) < _parse_time(self.started_at):
            raise ResultRecordError(f"decided_at {self.decided_at} is before started_at {self.started_at}")


# ------------------------------------------------------------------ field checks
def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ResultRecordError(f"result field {where!r} must be a JSON object, got {type(value).__name__}")
    return value


def _exact_keys(obj: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...], where: str) -> None:
    missing = [k for k in required if k not in obj]
    if missing:
        raise ResultRecordError(f"{where} is missing {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise ResultRecordError(f"{where} has unknown field(s) {', '.join(repr(k) for k in unknown)}")


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ResultRecordError(f"result field {where!r} must be a whole number >= 0, got {value!r}")
    return value


def _probability(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise ResultRecordError(f"result field {where!r} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _text(value: object, where: str, *, nonempty: bool = False) -> str:
    if not isinstance(value, str) or (nonempty and not value):
        raise ResultRecordError(f"result field {where!r} must be a{' non-empty' if nonempty else ''} string, "
                                f"got {value!r}")
    return value


def _optional_text(value: object, where: str) -> str | None:
    return None if value is None else _text(value, where, nonempty=True)


def _choice(value: object, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ResultRecordError(f"result field {where!r} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _parse_time(text: str) -> datetime:
    """ISO 8601 with a time zone ("Z" allowed, which Python 3.10's fromisoformat does not read)."""
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed


def _timestamp(value: object, where: str) -> str:
    text = _text(value, where, nonempty=True)
    try:
        _parse_time(text)
    except ValueError as exc:
        raise ResultRecordError(f"result field {where!r} is not an ISO 8601 time with a zone: {text!r} "
                                f"({exc})") from None
    return text
