"""The kiosk: the screening page a person uses, the staff page, and the rules between them.

``make_kiosk(cfg, bundle)`` gives the controller (pipeline gate and station add-on);
``KioskWeb`` (``facediag.edge.kiosk.web``) serves the pages on the station API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from facediag.edge.kiosk.controller import KioskController

if TYPE_CHECKING:
    from facediag.edge.config import StationConfig

__all__ = ["KioskController", "make_kiosk"]


def make_kiosk(cfg: StationConfig) -> KioskController | None:
    """The kiosk for a station whose API is on (the pages and Start live there); None without the API."""
    if not cfg.api.enabled:
        return None
    s = cfg.screening
    start_timeout = max(30.0, 3 * s.window_s)
    return KioskController(trigger=s.trigger, result_hold_s=s.result_hold_s, start_timeout_s=start_timeout,
                           good_frames=s.good_frames)
