"""The ``facediag`` command: one front door, a subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from facediag.edge.version import __version__

log = logging.getLogger("facediag")

# Python 3.8 (JetPack 5, whose TensorRT 8.5 has Python bindings for 3.8 only) runs a station: these
# commands and all of facediag.edge. The workstation's (crop to export, quantisation, evaluation, the demo,
# which builds its model with torch) and the fleet collector's need Python 3.10 or newer, and say so.
# .ci/py38 runs the station's tests under a real CPython 3.8.
PYTHON_3_8_COMMANDS = frozenset({"station", "build", "verify", "run", "bench", "models", "keygen", "sign"})
WORKSTATION_PYTHON = (3, 10)

# Order in which subcommands are listed in --help (the user's path through the tool).
_ORDER = [
    "crop", "train", "evaluate", "compare", "export", "calibrate", "quantize", "fp16", "keygen", "sign",
    "station", "build", "verify", "run", "demo", "bench", "collect", "fleet", "models",
]


def _command_modules() -> list[ModuleType]:
    import facediag.commands as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    return [importlib.import_module(f"facediag.commands.{n}") for n in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facediag",
        description=(
            "Facial-diagnosis screening on edge devices. Workstation: crop -> train -> evaluate -> "
            "export -> calibrate -> quantize/fp16 -> sign. Station: station install -> build -> verify -> run. "
            "Fleet: collect, fleet. "
            "Try `facediag demo` first: it needs no camera, GPU or network. "
            "Results are screening aids for trained staff, not diagnoses."
        ),
    )
    parser.add_argument("--version", action="version", version=f"facediag {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from facediag.edge.service.journal import use_journal_priorities

    use_journal_priorities()  # under systemd: <N> priority prefixes, so `journalctl -p err` finds the errors


def python_refusal(command: str, version: tuple[int, int, int] = sys.version_info[:3]) -> str | None:
    """Why ``command`` cannot run on this (older) Python, or None when it can; see PYTHON_3_8_COMMANDS."""
    if command in PYTHON_3_8_COMMANDS or version[:2] >= WORKSTATION_PYTHON:
        return None
    need = ".".join(map(str, WORKSTATION_PYTHON))
    return (
        f"`facediag {command}` needs Python {need} or newer; this is Python {'.'.join(map(str, version))}. "
        f"On Python 3.8 (JetPack 5) facediag runs the station's commands only: "
        f"{', '.join(sorted(PYTHON_3_8_COMMANDS))}. Run `facediag {command}` where Python >= {need} is installed "
        "(a workstation, the fleet's collector host, or a JetPack 6 station)"
    )


def _command_name(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv`` (the top-level options take no values, so it is the first non-option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    command = _command_name(words)
    known = {m.NAME for m in _command_modules()}
    refusal = python_refusal(command) if command is not None and command in known else None
    if refusal is not None:  # before argparse, which would first complain about the command's options
        _configure_logging(0, False)
        log.error("%s", refusal)
        return 1
    args = parser.parse_args(words)
    _configure_logging(args.verbose, args.quiet)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from facediag.edge.errors import ConfigError, FacediagError

    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        log.error("%s", exc)
        return 78
    except FacediagError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
