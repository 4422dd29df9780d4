"""What the collector accepts on ``facediag/<station>/results`` and ``.../status``.

Everything that arrives over the network is checked before it touches the store:
size, UTF-8 JSON object, the record kind, a well-formed result id whose station
part is the topic's station (a station cannot write another station's results),
and the fields the fleet view needs. A refusal is a :class:`Refused` with a short
machine reason (``oversized``, ``malformed``, ``wrong_station``, ...) that is
counted per reason and logged.
"""

from __future__ import annotations

import json
from typing import Any

from facediag.collector.store import ResultRow
from facediag.edge.uplink.topics import result_id_station, station_of_topic

MAX_RESULT_BYTES = 64 * 1024  # the station's own limit for one results line
MAX_STATUS_BYTES = 8 * 1024
DECISIONS = ("refer", "no_finding", "retake", "abstain")


class Refused(ValueError):
    def __init__(self, reason: str, detail: str, result_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.result_id = result_id


def _decode(payload: bytes, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise Refused("oversized", f"{len(payload)} bytes, the limit is {limit}")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused("malformed", f"not UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise Refused("malformed", f"a JSON {type(doc).__name__}, not an object")
    return doc


def parse_result(topic: str, payload: bytes) -> tuple[ResultRow, dict[str, Any]]:
    """(row to store, decoded record) or Refused."""
    station = station_of_topic(topic, "results")
    if station is None:
        raise Refused("bad_topic", f"topic {topic[:120]!r} is not facediag/<station id>/results")
    doc = _decode(payload, MAX_RESULT_BYTES)
    rid = doc.get("result_id")
    rid_text = rid if isinstance(rid, str) and len(rid) <= 200 else None
    if doc.get("record") != "screening_result":
        raise Refused("malformed", f"'record' is {str(doc.get('record'))[:40]!r}, not 'screening_result'", rid_text)
    owner = result_id_station(rid)
    if owner is None:
        raise Refused("malformed", f"result_id {str(rid)[:80]!r} is missing or not <station>:<time>-<random>", rid_text)
    if owner != station or doc.get("station_id", station) != station:
        raise Refused("wrong_station", f"result {rid} names station {doc.get('station_id', owner)!r} but came on "
                      f"{station!r}'s topic", rid_text)
    decision, decided_at = doc.get("decision"), doc.get("decided_at")
    condition, bundle_id = doc.get("condition"), doc.get("bundle_id")
    if decision not in DECISIONS:
        raise Refused("malformed", f"decision {str(decision)[:40]!r} is not one of {', '.join(DECISIONS)}", rid_text)
    if not isinstance(decided_at, str) or not 10 <= len(decided_at) <= 40:
        raise Refused("malformed", "decided_at must be an ISO timestamp", rid_text)
    if condition is not None and not isinstance(condition, str):
        raise Refused("malformed", "condition must be a string or null", rid_text)
    if bundle_id is not None and not isinstance(bundle_id, str):
        raise Refused("malformed", "bundle_id must be a string", rid_text)
    row = ResultRow(result_id=str(rid), station_id=station, decided_at=decided_at, decision=str(decision),
                    condition=condition, bundle_id=bundle_id,
                    payload=json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
    return row, doc


def parse_status(topic: str, payload: bytes) -> tuple[str, dict[str, Any]]:
    station = station_of_topic(topic, "status")
    if station is None:
        raise Refused("bad_topic", f"topic {topic[:120]!r} is not facediag/<station id>/status")
    doc = _decode(payload, MAX_STATUS_BYTES)
    if doc.get("station_id", station) != station:
        raise Refused("wrong_station", f"status names station {str(doc.get('station_id'))[:80]!r} on {station!r}'s topic")
    if doc.get("state") not in ("online", "offline"):
        raise Refused("malformed", f"status state {str(doc.get('state'))[:40]!r} is not online/offline")
    return station, doc
