"""`facediag fleet`: what every station reported to the collector; and bundle announcements for a fleet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "fleet"
HELP = "per-station last seen, backlog, results per day and decisions (--json); announce a bundle"
DESCRIPTION = (
    "Reads the collector's store and prints, per station: state (online/offline, from the retained status and "
    "its last will), when it was last seen, its unsent backlog, results per day and decisions. With "
    "--announce-bundle it publishes (retained) which bundle a station, or with --all every station, should run: "
    "the bundle's id and its sha256 (bundle.json's self-hash). Stations report the bundle they run and never run "
    "a bundle that fails its integrity checks."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default="sqlite:///var/lib/facediag/fleet.db",
                        help="the collector's store: sqlite:///PATH or postgresql://... (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--days", type=int, default=7, help="results per day for this many days (default 7)")
    ann = parser.add_argument_group("bundle announcements")
    ann.add_argument("--announce-bundle", type=Path, metavar="BUNDLE",
                     help="check this bundle folder completely and announce it (needs --broker)")
    ann.add_argument("--bundle-id", default=None, help="the name to announce (default: the folder name)")
    ann.add_argument("--broker", default=None, help="mqtt://HOST:PORT to publish the announcement to")
    target = ann.add_mutually_exclusive_group()
    target.add_argument("--station", default=None, help="announce to this station only")
    target.add_argument("--all", action="store_true", help="announce to every station (facediag/_fleet/bundle)")


def run(args: argparse.Namespace) -> int:
    if args.announce_bundle is not None:
        return _announce(args)
    from facediag.collector.fleet import fleet_summary, format_table
    from facediag.collector.store import open_store

    store = open_store(args.db, migrate=False)
    try:
        rows = fleet_summary(store, days=args.days)
    finally:
        store.close()
    print(json.dumps({"stations": rows}, indent=2) if args.json else format_table(rows))
    return 0


def _announce(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from facediag.edge.errors import ConfigError
    from facediag.edge.uplink.announce import announcement_for
    from facediag.edge.uplink.topics import FLEET_BUNDLE_TOPIC, bundle_topic, parse_broker_url

    if not args.broker or not (args.station or args.all):
        raise ConfigError("--announce-bundle needs --broker and either --station ID or --all")
    topic = FLEET_BUNDLE_TOPIC if args.all else bundle_topic(args.station)
    ann = announcement_for(args.announce_bundle, args.bundle_id)  # BundleError if it fails any integrity check
    addr = parse_broker_url(args.broker)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if addr.username:
        client.username_pw_set(addr.username, addr.password)
    if addr.tls:
        client.tls_set()
    client.connect(addr.host, addr.port)
    client.loop_start()
    try:
        info = client.publish(topic, ann.to_payload(), qos=1, retain=True)
        info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    print(json.dumps({"topic": topic, **ann.to_dict()}) if args.json else
          f"announced bundle {ann.bundle_id} ({ann.bundle_sha256}) on {topic}")
    return 0
