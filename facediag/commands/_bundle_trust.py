"""`build` and `verify` check a bundle's signature before they touch its model (as the daemon does)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                        help="public key (KEY.pub from `facediag keygen`, or its 'ed25519:...' line) whose signature "
                             "this bundle must carry; repeatable. With --config the config's [trust] keys count too")
    parser.add_argument("--allow-unsigned", action="store_true",
                        help="accept an unsigned bundle (development only; like [trust] allow_unsigned = true)")


def check_trust(args: argparse.Namespace, bundle: Path) -> Any:
    """The SignatureCheck of ``bundle`` under the --config [trust] section plus the command-line options."""
    from facediag.edge.signing import check_bundle_signature, load_trusted_keys

    keys = load_trusted_keys(args.trusted_key, Path.cwd())
    allow = bool(args.allow_unsigned)
    config = getattr(args, "config", None)
    if config is not None:
        from facediag.edge.config import load_config

        trust = load_config(config).trust
        keys += load_trusted_keys(trust.keys, Path(config).resolve().parent)
        allow = allow or trust.allow_unsigned
    return check_bundle_signature(bundle, keys, allow_unsigned=allow)
