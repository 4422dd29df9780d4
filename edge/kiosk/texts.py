"""Words on the pages: the per-language strings shipped with the pages, and the bundle's display names.

The page strings live in ``facediag.edge.web`` as ``i18n/<lang>.json`` (English is the
fallback for any missing key). A bundle may name its classes and give outcome texts
per language in ``bundle.json``::

    "display": {"en": {"classes": {"glasses": "Glasses"}, "texts": {"refer": "..."}},
                "de": {...}}

Without it (or for a missing language or class), the page shows the class name with
underscores as spaces.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from facediag.edge.compat import package_files

log = logging.getLogger(__name__)

WEB_PACKAGE = "facediag.edge.web"
LANG = re.compile(r"^[a-z]{2}(-[A-Za-z]{2})?$")


def web_file(name: str) -> bytes | None:
    """A shipped page file (no path traversal: one or two plain name components)."""
    parts = name.split("/")
    if not 1 <= len(parts) <= 2 or any(not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", p) for p in parts):
        return None
    try:
        node = package_files(WEB_PACKAGE)
        for p in parts:
            node = node.joinpath(p)
        return node.read_bytes() if node.is_file() else None
    except (OSError, ModuleNotFoundError):
        return None


def languages() -> list[str]:
    """The languages the pages ship strings for, English first."""
    try:
        names = sorted(p.name[:-5] for p in package_files(WEB_PACKAGE).joinpath("i18n").iterdir()
                       if p.name.endswith(".json"))
    except (OSError, ModuleNotFoundError):
        names = []
    return sorted(names, key=lambda n: (n != "en", n))


def humanise(name: str) -> str:
    return name.replace("_", " ").strip().capitalize()


def bundle_display(bundle_path: str | Path, classes: list[str]) -> dict[str, Any]:
    """``{"classes": [...], "display": {lang: {"classes": {...}, "texts": {...}}}, "fallback": {...}}``."""
    display: dict[str, Any] = {}
    try:
        doc = json.loads((Path(bundle_path) / "bundle.json").read_text(encoding="utf-8"))
        raw = doc.get("display")
        if isinstance(raw, dict):
            for lang, entry in raw.items():
                if not (isinstance(lang, str) and LANG.match(lang) and isinstance(entry, dict)):
                    continue
                names_raw, texts_raw = entry.get("classes"), entry.get("texts")
                names: dict[str, Any] = names_raw if isinstance(names_raw, dict) else {}
                texts: dict[str, Any] = texts_raw if isinstance(texts_raw, dict) else {}
                display[lang] = {
                    "classes": {k: str(v) for k, v in names.items() if k in classes and isinstance(v, str)},
                    "texts": {k: str(v) for k, v in texts.items() if isinstance(k, str) and isinstance(v, str)},
                }
    except (OSError, ValueError) as exc:
        log.warning("kiosk: the bundle's display names cannot be read (%s); class names are shown", exc)
    return {"classes": list(classes), "display": display, "fallback": {c: humanise(c) for c in classes}}
