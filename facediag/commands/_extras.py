"""Name the pip extra a command needs instead of ending in an ImportError traceback."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence


def missing_extras(needs: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """{extra: [modules that do not import]} for every extra with a module missing (imports are tried for real)."""
    missing: dict[str, list[str]] = {}
    for extra, modules in needs.items():
        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError:
                missing.setdefault(extra, []).append(name)
    return missing


def require_extras(command: str, needs: Mapping[str, Sequence[str]]) -> None:
    """Raise FacediagError naming ``pip install 'facediag[...]'`` when a module of ``needs`` is missing."""
    from facediag.edge.errors import FacediagError

    missing = missing_extras(needs)
    if not missing:
        return
    extras = ",".join(sorted(missing))
    what = "; ".join(f"{extra}: {', '.join(mods)}" for extra, mods in sorted(missing.items()))
    raise FacediagError(
        f"`facediag {command}` needs the '{extras}' extra, which is not installed here (missing {what}). "
        f"Install it with: pip install 'facediag[{extras}]' (a station-only install has no training stack; "
        "torch may need its own index URL, see README)"
    )
