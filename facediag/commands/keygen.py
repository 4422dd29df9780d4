"""`facediag keygen --out KEY`: a new Ed25519 key pair for signing model bundles."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "keygen"
HELP = "make an Ed25519 key pair for signing model bundles (KEY, mode 0600, and KEY.pub)"
DESCRIPTION = (
    "Writes a new private key to KEY (PKCS#8 PEM, readable only by you: keep it off the stations) and the "
    "public key to KEY.pub (one line 'ed25519:BASE64 KEYID COMMENT'). Sign bundles with "
    "`facediag sign BUNDLE --key KEY`; on each station list KEY.pub (its path or the line) in the config's "
    "[trust] keys. Never overwrites an existing file."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="private key file to create (KEY.pub beside it)")
    parser.add_argument("--comment", default="", help="free text written after the key id in KEY.pub")


def run(args: argparse.Namespace) -> int:
    from facediag.edge.signing import generate_keypair, parse_public_key

    private_path, public_path = generate_keypair(args.out, args.comment)
    key = parse_public_key(public_path.read_text(encoding="ascii"))
    print(f"private key: {private_path} (keep it secret; mode 0600)")
    print(f"public key:  {public_path} (key id {key.key_id}); list it in each station's [trust] keys")
    return 0
