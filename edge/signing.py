"""Signed model bundles: Ed25519 signatures over bundle.json's self-hash.

Why this is enough: ``bundle.json`` lists the SHA-256 of every file in the bundle and
carries a self-hash (``bundle_sha256``) over its own canonical form (see
:mod:`facediag.edge.bundle`). So one signature over that self-hash covers every byte
the station will run. The signature lives beside it in ``bundle.sig`` (detached, so
bundle.json keeps its exact canonical form)::

    {"format": "facediag-bundle-signature", "version": 1, "algorithm": "ed25519",
     "key_id": "<16 hex>", "bundle_sha256": "<64 hex>", "signature": "<base64>"}

The signed message is ``b"facediag-bundle-signature-v1\\0" + bundle_sha256`` (domain
separated, so a key used for bundles signs nothing else by accident).

What a station refuses, and how it names the culprit:

* a model file changed without re-hashing -> :func:`load_bundle` names the file;
* a changed model "re-hashed" into bundle.json -> the self-hash no longer matches the
  signed one: bundle.json is named as changed after signing;
* no ``bundle.sig`` -> unsigned (unless ``[trust] allow_unsigned = true``);
* a signature by a key not in ``[trust] keys`` -> untrusted, naming the key id.

Keys: ``facediag keygen --out KEY`` writes the private key (PKCS#8 PEM, mode 0600) and
``KEY.pub``, one line ``ed25519:<base64 of the 32 raw bytes> <key id> <comment>``. The
station config lists public keys either as that line (or its first word) or as the path
of a ``.pub`` file.

A refusal is a :class:`BundleTrustError`, a kind of ConfigError: the daemon exits 78 and
systemd does not restart it (no restart loop can fix which bundle is installed or
which keys are trusted).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from facediag.edge.atomicio import atomic_write_bytes
from facediag.edge.bundle import BUNDLE_JSON, SELF_HASH_FIELD, load_bundle
from facediag.edge.errors import ConfigError, FacediagError
from facediag.edge.hashing import sha256_bytes

log = logging.getLogger(__name__)

SIGNATURE_FILE = "bundle.sig"
SIGNATURE_FORMAT = "facediag-bundle-signature"
SIGNATURE_VERSION = 1
PUBLIC_PREFIX = "ed25519:"
_DOMAIN = b"facediag-bundle-signature-v1\0"
_CRYPTO_HINT = "the `cryptography` package is needed for bundle signatures: pip install 'cryptography>=42'"


class BundleTrustError(ConfigError):
    """A bundle is unsigned, signed by a key this station does not trust, or changed after signing."""


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key: its 32 raw bytes and its id (first 16 hex of their SHA-256)."""

    raw: bytes
    key_id: str
    source: str = ""

    def line(self, comment: str = "") -> str:
        text = f"{PUBLIC_PREFIX}{base64.b64encode(self.raw).decode('ascii')} {self.key_id}"
        return f"{text} {comment}".rstrip()


@dataclass(frozen=True)
class SignatureCheck:
    """What the station found: ``signed`` False only when unsigned bundles were allowed."""

    signed: bool
    key_id: str | None
    bundle_sha256: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"signed": self.signed, "key_id": self.key_id, "bundle_sha256": self.bundle_sha256,
                "detail": self.detail}


def key_id_of(raw: bytes) -> str:
    """The id of a public key: the first 16 hex digits of the SHA-256 of its raw bytes."""
    return sha256_bytes(raw)[:16]


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - cryptography is a base dependency
        raise FacediagError(_CRYPTO_HINT) from exc
    return ed25519


def _message(bundle_sha256: str) -> bytes:
    return _DOMAIN + bundle_sha256.encode("ascii")


# ------------------------------------------------------------------------------------ keys
def generate_keypair(out: str | Path, comment: str = "") -> tuple[Path, Path]:
    """Write a new private key to ``out`` (mode 0600) and its public line to ``out.pub``. Refuses to overwrite."""
    from cryptography.hazmat.primitives import serialization

    private_path = Path(out)
    public_path = private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise ConfigError(f"{p} exists already; keygen never overwrites a key (choose another --out)")
    key = _crypto().Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(private_path, pem, mode=0o600)
    public = PublicKey(raw, key_id_of(raw))
    atomic_write_bytes(public_path, (public.line(comment) + "\n").encode("ascii"), mode=0o644)
    return private_path, public_path


def load_private_key(path: str | Path) -> Any:
    """An Ed25519 private key from a PKCS#8 PEM file written by :func:`generate_keypair`."""
    from cryptography.hazmat.primitives import serialization

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"signing key {p} cannot be read: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{p} is not an unencrypted PEM private key ({exc}); make one with `facediag keygen`") from None
    if not isinstance(key, _crypto().Ed25519PrivateKey):
        raise ConfigError(f"{p} is not an Ed25519 key; make one with `facediag keygen`")
    if os.name == "posix" and p.stat().st_mode & 0o077:
        log.warning("signing key %s is readable by other users; chmod 0600 it", p)
    return key


def parse_public_key(text: str, source: str = "") -> PublicKey:
    """A public key from its line ``ed25519:BASE64 [key id] [comment]`` (the first word is what counts)."""
    word = text.strip().split()[0] if text.strip() else ""
    where = source or "a trusted key"
    if not word.startswith(PUBLIC_PREFIX):
        raise ConfigError(f"{where} is not a facediag public key (expected 'ed25519:BASE64...', "
                          "as written by `facediag keygen` into KEY.pub)")
    try:
        raw = base64.b64decode(word[len(PUBLIC_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the key after 'ed25519:' is not valid base64") from None
    if len(raw) != 32:
        raise ConfigError(f"{where}: an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return PublicKey(raw, key_id_of(raw), source)


def load_trusted_keys(entries: Iterable[str], base_dir: str | Path | None = None) -> list[PublicKey]:
    """``[trust] keys``: each an inline ``ed25519:...`` key or the path of a ``.pub`` file (relative to ``base_dir``)."""
    keys: list[PublicKey] = []
    for entry in entries:
        if entry.strip().startswith(PUBLIC_PREFIX):
            keys.append(parse_public_key(entry, "trust.keys entry"))
            continue
        p = Path(os.path.expandvars(entry)).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        try:
            text = p.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"trust.keys names {p}, which cannot be read ({exc}); give the path of a .pub file "
                              "from `facediag keygen` or the 'ed25519:...' line itself") from None
        keys.append(parse_public_key(text, f"trust.keys file {p}"))
    return keys


# ------------------------------------------------------------------------------------ sign / verify
def _bundle_self_hash(folder: Path) -> str:
    """Load and fully verify the bundle (every file hash), then return bundle.json's self-hash."""
    bundle = load_bundle(folder)
    doc = json.loads((bundle.path / BUNDLE_JSON).read_bytes())
    return str(doc[SELF_HASH_FIELD])


def sign_bundle(folder: str | Path, private_key: str | Path) -> Path:
    """Verify the bundle, sign its bundle.json self-hash and write ``bundle.sig`` (atomically). Returns its path."""
    from cryptography.hazmat.primitives import serialization

    folder = Path(folder)
    key = load_private_key(private_key)
    digest = _bundle_self_hash(folder)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    doc = {
        "format": SIGNATURE_FORMAT,
        "version": SIGNATURE_VERSION,
        "algorithm": "ed25519",
        "key_id": key_id_of(raw),
        "bundle_sha256": digest,
        "signature": base64.b64encode(key.sign(_message(digest))).decode("ascii"),
        "signed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    path = folder / SIGNATURE_FILE
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii"))
    log.info("signed bundle %s with key %s", folder, doc["key_id"])
    return path


def _read_signature(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleTrustError(f"{path}: {SIGNATURE_FILE} is unreadable or not JSON ({exc}); sign the bundle again "
                               "with `facediag sign BUNDLE --key KEY`") from None
    fields_ok = isinstance(doc, dict) and doc.get("format") == SIGNATURE_FORMAT and all(
        isinstance(doc.get(k), str) for k in ("key_id", "bundle_sha256", "signature"))
    if not fields_ok or doc.get("algorithm") != "ed25519" or doc.get("version") != SIGNATURE_VERSION:
        raise BundleTrustError(f"{path}: {SIGNATURE_FILE} is not a facediag version-{SIGNATURE_VERSION} Ed25519 "
                               "signature; sign the bundle again with `facediag sign BUNDLE --key KEY`")
    checked: dict[str, Any] = doc
    return checked


def check_bundle_signature(folder: str | Path, trusted: Sequence[PublicKey], *,
                           allow_unsigned: bool = False) -> SignatureCheck:
    """Verify the bundle (every file hash) and its signature by one of ``trusted``.

    Raises BundleError for a bundle that is damaged or edited in place (naming the file)
    and BundleTrustError for an unsigned one (unless ``allow_unsigned``), a signature by
    a key that is not trusted, or a bundle.json changed after it was signed.
    """
    folder = Path(folder)
    if folder.name == BUNDLE_JSON:
        folder = folder.parent
    digest = _bundle_self_hash(folder)
    sig_path = folder / SIGNATURE_FILE
    if not sig_path.exists():
        if allow_unsigned:
            log.warning("bundle %s is NOT signed; running it only because [trust] allow_unsigned = true", folder)
            return SignatureCheck(False, None, digest, "unsigned (allowed by trust.allow_unsigned)")
        raise BundleTrustError(
            f"bundle {folder} is not signed ({SIGNATURE_FILE} is missing): sign it with `facediag sign {folder} "
            "--key KEY` and list KEY.pub in the station's [trust] keys (or, for development only, set "
            "[trust] allow_unsigned = true)")
    doc = _read_signature(sig_path)
    by_id = {k.key_id: k for k in trusted}
    key = by_id.get(doc["key_id"])
    if key is None:
        known = ", ".join(sorted(by_id)) or "none"
        raise BundleTrustError(f"bundle {folder} is signed by key {doc['key_id']}, which this station does not trust "
                               f"(trusted: {known}); add its .pub to [trust] keys if you trust who made it")
    if doc["bundle_sha256"] != digest:
        raise BundleTrustError(
            f"bundle {folder}: {BUNDLE_JSON} was changed after it was signed (its self-hash {digest[:12]}... is not "
            f"the signed {doc['bundle_sha256'][:12]}...): a model or setting was replaced and re-hashed; install "
            "the bundle as its maker signed it")
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
        _crypto().Ed25519PublicKey.from_public_bytes(key.raw).verify(signature, _message(digest))
    except Exception as exc:  # cryptography raises InvalidSignature; bad base64 raises binascii.Error
        raise BundleTrustError(f"bundle {folder}: {SIGNATURE_FILE} does not verify with key {key.key_id} "
                               f"({type(exc).__name__}): the signature or {BUNDLE_JSON} was altered") from None
    return SignatureCheck(True, key.key_id, digest, f"signed by trusted key {key.key_id}")


def check_bundle_trust(folder: str | Path, trust: Any, base_dir: str | Path | None = None) -> SignatureCheck:
    """:func:`check_bundle_signature` with a station config's ``[trust]`` section (``keys``, ``allow_unsigned``)."""
    keys = load_trusted_keys(trust.keys, base_dir)
    return check_bundle_signature(folder, keys, allow_unsigned=bool(trust.allow_unsigned))
