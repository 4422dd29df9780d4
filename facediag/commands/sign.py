"""`facediag sign BUNDLE --key KEY`: sign a model bundle for the stations that trust KEY.pub."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sign"
HELP = "sign a model bundle (bundle.sig) with a key from `facediag keygen`"
DESCRIPTION = (
    "Checks the bundle completely (every file's sha256 and bundle.json's self-hash), then signs bundle.json's "
    "self-hash with the Ed25519 private KEY and writes BUNDLE/bundle.sig. Sign last: any later change to the "
    "bundle (quantize, fp16, an edited threshold) changes bundle.json and voids the signature. Stations run "
    "only bundles signed by a key in their config's [trust] keys."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="model bundle folder")
    parser.add_argument("--key", type=Path, required=True, help="private key file from `facediag keygen`")


def run(args: argparse.Namespace) -> int:
    from facediag.edge.signing import (
        PublicKey,
        check_bundle_signature,
        key_id_of,
        load_private_key,
        sign_bundle,
    )

    path = sign_bundle(args.bundle, args.key)
    from cryptography.hazmat.primitives import serialization

    raw = load_private_key(args.key).public_key().public_bytes(serialization.Encoding.Raw,
                                                               serialization.PublicFormat.Raw)
    check = check_bundle_signature(args.bundle, [PublicKey(raw, key_id_of(raw))])  # read back what was written
    print(f"signed: {path} (key {check.key_id}, bundle.json {check.bundle_sha256[:12]}...)")
    return 0
