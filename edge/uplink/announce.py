"""Bundle announcements for a fleet: which bundle a station should run.

The collector side publishes a retained JSON message on ``facediag/<id>/bundle``
(one station) or ``facediag/_fleet/bundle`` (every station)::

    {"bundle_id": "mobilefacenet-2026-11", "bundle_sha256": "<64 hex>", "issued_at": 1764547200.0}

``bundle_sha256`` is the bundle's self-hash (``bundle.json``'s ``bundle_sha256``,
which covers the SHA-256 of every model file). A station reports the bundle it
runs in its status; the uplink never downloads or runs anything. Before an
operator (or a future installer) switches a station to an announced bundle,
:func:`check_bundle` loads it with every integrity check and refuses it unless its
self-hash is exactly the announced one.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facediag.edge.errors import BundleError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_ANNOUNCEMENT_BYTES = 4096


@dataclass(frozen=True)
class BundleAnnouncement:
    bundle_id: str
    bundle_sha256: str
    issued_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"bundle_id": self.bundle_id, "bundle_sha256": self.bundle_sha256, "issued_at": self.issued_at}

    def to_payload(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def parse_announcement(payload: bytes) -> BundleAnnouncement:
    """ValueError unless ``payload`` is a well-formed announcement."""
    if len(payload) > MAX_ANNOUNCEMENT_BYTES:
        raise ValueError(f"announcement of {len(payload)} bytes is too large")
    doc = json.loads(payload.decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("announcement is not a JSON object")
    bid, sha, at = doc.get("bundle_id"), doc.get("bundle_sha256"), doc.get("issued_at", 0.0)
    if not isinstance(bid, str) or not _NAME.match(bid):
        raise ValueError(f"bad bundle_id {bid!r}")
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise ValueError("bundle_sha256 must be 64 lower-case hex digits")
    if not isinstance(at, (int, float)) or isinstance(at, bool):
        raise ValueError("issued_at must be a number")
    return BundleAnnouncement(bid, sha, float(at))


def announcement_for(bundle_path: str | Path, bundle_id: str | None = None) -> BundleAnnouncement:
    """The announcement for a local bundle folder (checked completely first); the id defaults to its folder name."""
    sha = _verified_self_hash(bundle_path)
    name = bundle_id or Path(bundle_path).resolve().name
    if not _NAME.match(name):
        raise BundleError(f"bundle id {name!r} is not allowed: letters, digits and . _ : - only")
    return BundleAnnouncement(name, sha, time.time())


def check_bundle(bundle_path: str | Path, announcement: BundleAnnouncement) -> None:
    """BundleError unless the bundle at ``bundle_path`` passes every integrity check and is the announced one."""
    sha = _verified_self_hash(bundle_path)
    if sha != announcement.bundle_sha256:
        raise BundleError(f"bundle {bundle_path} is not the announced bundle {announcement.bundle_id}: its "
                          f"bundle_sha256 is {sha[:12]}..., the announcement says {announcement.bundle_sha256[:12]}...")


def _verified_self_hash(bundle_path: str | Path) -> str:
    from facediag.edge.bundle import BUNDLE_JSON, SELF_HASH_FIELD, load_bundle

    bundle = load_bundle(bundle_path, verify_files=True)  # raises BundleError for any integrity failure
    doc = json.loads((Path(bundle.path) / BUNDLE_JSON).read_text(encoding="utf-8"))
    return str(doc[SELF_HASH_FIELD])
