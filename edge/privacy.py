"""Nothing leaves the station: telemetry of every dependency is switched off before it loads.

ONNX Runtime's Python package (1.x on Linux) writes a telemetry database with a device
id under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` and looks up Microsoft's
telemetry host, unless ``ORT_DISABLE_TELEMETRY=1`` is in the environment *when it is
imported* (``onnxruntime.disable_telemetry_events()`` afterwards does not stop the
database). A health-screening station must send nothing anywhere, so
:func:`quiet_dependencies` sets the opt-out variables of the libraries the project
uses; ``facediag.edge`` calls it on import, i.e. before any of them is imported by the
daemon, the CLI or a library user. An operator who really wants a dependency's
telemetry sets its variable explicitly (``setdefault``: an explicit value wins).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# variable -> value that switches the dependency's telemetry off
TELEMETRY_OPT_OUTS: dict[str, str] = {
    "ORT_DISABLE_TELEMETRY": "1",        # ONNX Runtime (telemetry database + DNS lookups)
    "DO_NOT_TRACK": "1",                 # the common convention many tools honour
    "HF_HUB_DISABLE_TELEMETRY": "1",     # huggingface_hub (training-side downloads)
    "DISABLE_TELEMETRY": "1",            # older huggingface libraries
}


def quiet_dependencies(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set every opt-out in ``env`` (default ``os.environ``) unless already set; returns what was set."""
    target = os.environ if env is None else env
    added: dict[str, str] = {}
    for key, value in TELEMETRY_OPT_OUTS.items():
        if key not in target:
            target[key] = value
            added[key] = value
    return added


def silence_onnxruntime(ort: object) -> None:
    """After ``import onnxruntime``: also switch its telemetry events off (belt and braces)."""
    disable = getattr(ort, "disable_telemetry_events", None)
    if callable(disable):
        disable()
