"""`facediag station install --root DIR`: lay out the units, example config and system files from the wheel."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "station"
HELP = "install this station's systemd units, example config, sysusers.d and tmpfiles.d files"
DESCRIPTION = (
    "`facediag station install` copies what the wheel carries (facediag.station_files) into place under --root "
    "(default /): the units to etc/systemd/system, the sysusers.d and tmpfiles.d files to usr/lib, the example "
    "config to etc/facediag/station.toml and a fresh API token to etc/facediag/api.token (0600, passed to the "
    "daemon with LoadCredential=) -- those two only when absent, never overwritten -- and a wrapper "
    "usr/local/bin/facediag that runs this installation. Then it prints the systemctl commands to run."
)

UNITS = ("facediag.service", "facediag-engine-build.service", "facediag-bundle.path",
         "facediag-bundle-changed.service")
# (file in the package, destination under the root, mode, keep an existing file)
LAYOUT: tuple[tuple[str, str, int, bool], ...] = (
    *((u, f"etc/systemd/system/{u}", 0o644, False) for u in UNITS),
    ("facediag-sysusers.conf", "usr/lib/sysusers.d/facediag.conf", 0o644, False),
    ("facediag-tmpfiles.conf", "usr/lib/tmpfiles.d/facediag.conf", 0o644, False),
    ("README.md", "usr/share/doc/facediag/systemd-README.md", 0o644, False),
    ("station.toml", "etc/facediag/station.toml", 0o640, True),
)
WRAPPER = "usr/local/bin/facediag"
TOKEN = "etc/facediag/api.token"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inst = sub.add_parser("install", help="lay out units, config and system files under --root")
    inst.add_argument("--root", type=Path, default=Path("/"), help="file system root to install into (default /)")
    inst.add_argument("--python", default=sys.executable,
                      help="interpreter the wrapper runs `-m facediag` with (default: this one, i.e. this venv)")


def _write(path: Path, data: bytes, mode: int) -> None:
    from facediag.edge.atomicio import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data, mode=mode)
    path.chmod(mode)  # an existing file keeps no looser mode than the layout says


def install(root: Path, python: str) -> list[Path]:
    """Lay the files out under ``root``; returns the paths written (kept files are not listed)."""
    from facediag.edge.compat import package_files

    files = package_files("facediag.station_files")  # importlib.resources.files, also on 3.8
    written: list[Path] = []
    for name, dest, mode, keep in LAYOUT:
        target = root / dest
        if keep and target.exists():
            log.info("kept %s (an existing file is never overwritten)", target)
            continue
        _write(target, files.joinpath(name).read_bytes(), mode)
        written.append(target)
    token = root / TOKEN
    if not token.exists():
        _write(token, (secrets.token_urlsafe(32) + "\n").encode("ascii"), 0o600)
        written.append(token)
    wrapper = f"#!/bin/sh\n# written by `facediag station install`: the units run this\nexec {python} -m facediag \"$@\"\n"
    _write(root / WRAPPER, wrapper.encode("utf-8"), 0o755)
    written.append(root / WRAPPER)
    return written


def run(args: argparse.Namespace) -> int:
    root = args.root.resolve()
    for path in install(root, args.python):
        print(f"wrote {path}")
    prefix = "" if root == Path("/") else f" --root={root}"
    print("\nnext (as root):")
    print(f"  systemd-sysusers{prefix} && systemd-tmpfiles{prefix} --create facediag.conf")
    print(f"  edit {root / 'etc/facediag/station.toml'}: [source] uri, [station] id, [trust] keys")
    print("  systemctl daemon-reload && systemctl enable --now facediag-bundle.path facediag.service")
    return 0
