"""`facediag collect --broker URL --db URL`: the central collector for a fleet of stations."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

NAME = "collect"
HELP = "store every station's results and status from an MQTT broker into SQLite or PostgreSQL"
DESCRIPTION = (
    "Subscribes to facediag/+/results and facediag/+/status with a persistent MQTT session and stores each result "
    "once (by its fleet-unique result id) in SQLite (default) or PostgreSQL (a postgresql:// URL). A message is "
    "acknowledged only after its row is committed, so a crash of the collector loses nothing. Malformed, oversized "
    "or foreign messages and result ids reused with other content are refused, counted and logged."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    parser.add_argument("--db", default="sqlite:///var/lib/facediag/fleet.db",
                        help="sqlite:///PATH (default %(default)s) or postgresql://USER@HOST/DB")
    parser.add_argument("--client-id", default="facediag-collector",
                        help="MQTT client id; the persistent session belongs to it (default %(default)s)")
    parser.add_argument("--ca-file", type=Path, default=None, help="TLS: the CA that signed the broker's certificate")
    parser.add_argument("--cert-file", type=Path, default=None, help="TLS client certificate")
    parser.add_argument("--key-file", type=Path, default=None, help="TLS client key")
    parser.add_argument("--credentials-file", type=Path, default=None,
                        help="two lines: MQTT user name and password (systemd LoadCredential=)")
    parser.add_argument("--migrate-only", action="store_true", help="create or upgrade the schema and exit")
    parser.add_argument("--max-seconds", type=float, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    import logging

    from facediag.collector.service import Collector, CollectorOptions
    from facediag.collector.store import open_store

    log = logging.getLogger("facediag.collect")
    store = open_store(args.db)
    if args.migrate_only:
        print(f"{store.where}: schema version {store.version()}")
        store.close()
        return 0
    options = CollectorOptions(
        broker=args.broker, client_id=args.client_id,
        ca_file=str(args.ca_file) if args.ca_file else None, cert_file=str(args.cert_file) if args.cert_file else None,
        key_file=str(args.key_file) if args.key_file else None,
        credentials_file=str(args.credentials_file) if args.credentials_file else None,
    )
    collector = Collector(options, store)
    signal.signal(signal.SIGTERM, lambda *_: collector.stop())
    signal.signal(signal.SIGINT, lambda *_: collector.stop())
    try:
        collector.run(max_seconds=args.max_seconds)
    except Exception as exc:  # noqa: BLE001 - e.g. the database went away
        # Nothing that was not committed has been acknowledged: the broker keeps it for the next start
        # (systemd Restart=on-failure). Exit rather than guess.
        log.error("collector: the store failed (%s: %s); exiting, nothing unacknowledged is lost",
                  type(exc).__name__, exc)
        return 1
    finally:
        store.close()
        log.info("collector stopped: %s", dict(collector.counts))
    return 0
