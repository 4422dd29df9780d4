"""The uplink as a station add-on: started with the station, fed after each durable result write.

``uplink_add_ons(cfg)`` returns ``[]`` unless ``[uplink] enabled = true``, so a station
without an uplink never imports paho-mqtt. The add-on's ``status()`` goes under
``uplink`` in ``/status`` (its ``state`` reads ``uplink: backlog full`` when the outbox is
at its limit, which also appears in sd_notify STATUS=), and ``bind_metrics`` adds the
alert-able gauges to the station's Prometheus registry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facediag.edge.errors import ConfigError
from facediag.edge.uplink.publisher import Uplink
from facediag.edge.uplink.settings import UplinkSettings, settings_from_config

if TYPE_CHECKING:
    from facediag.edge.config import StationConfig

log = logging.getLogger(__name__)


class UplinkAddOn:
    name = "uplink"

    def __init__(self, settings: UplinkSettings, bundle_path: str | None = None) -> None:
        self.settings = settings
        self.bundle_path = bundle_path
        self.uplink: Uplink | None = None

    def start(self) -> None:
        self.uplink = Uplink(self.settings, identity=_bundle_identity(self.bundle_path))
        self.uplink.start()
        log.info("uplink: results go to %s as station %s (outbox %s)", self.settings.address().display(),
                 self.settings.station_id, self.settings.outbox_path)

    def on_result(self, _result: object) -> None:
        if self.uplink is not None:
            self.uplink.notify()

    def status(self) -> Mapping[str, object]:
        if self.uplink is None:
            return {"state": "uplink: not started"}
        return self.uplink.snapshot()

    def stop(self) -> None:
        if self.uplink is not None:
            self.uplink.stop()

    def bind_metrics(self, registry: Any) -> None:
        """Register the uplink gauges in a prometheus_client registry."""
        registry.register(_UplinkCollector(self))


class _UplinkCollector:
    def __init__(self, add_on: UplinkAddOn) -> None:
        self.add_on = add_on

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = self.add_on.uplink
        snap = up.snapshot() if up is not None else {}
        yield GaugeMetricFamily("facediag_uplink_connected", "1 while the uplink is connected to its broker.",
                                value=1.0 if snap.get("connected") else 0.0)
        yield GaugeMetricFamily("facediag_uplink_unsent_results",
                                "Results in the local log the broker has not acknowledged yet.",
                                value=float(snap.get("unsent") or 0))
        yield GaugeMetricFamily("facediag_uplink_oldest_unsent_age_seconds",
                                "Age of the oldest unacknowledged result (0 when none).",
                                value=float(snap.get("oldest_unsent_age_s") or 0.0))
        yield GaugeMetricFamily("facediag_uplink_backlog_full", "1 while the outbox is at its size limit.",
                                value=1.0 if snap.get("backlog_full") else 0.0)
        yield CounterMetricFamily("facediag_uplink_acknowledged", "Results acknowledged by the broker (PUBACK).",
                                  value=float(snap.get("acked_total") or 0))


def _bundle_identity(bundle_path: str | None) -> dict[str, str]:
    """The running bundle's self-hash (what the station reports in its status)."""
    if not bundle_path:
        return {}
    try:
        doc = json.loads((Path(bundle_path) / "bundle.json").read_text(encoding="utf-8"))
        return {"bundle_id": str(doc.get("bundle_sha256", ""))}
    except (OSError, ValueError):
        return {}


def uplink_add_ons(cfg: StationConfig) -> list[UplinkAddOn]:
    """``[UplinkAddOn]`` when ``[uplink] enabled = true``, else ``[]``."""
    if not cfg.uplink.enabled:
        return []
    try:
        import paho.mqtt.client  # noqa: F401 - checked here so that a missing package stops the start (exit 78)
    except ImportError:
        raise ConfigError("[uplink] enabled = true needs paho-mqtt: pip install 'facediag[station]'") from None
    return [UplinkAddOn(settings_from_config(cfg), cfg.engine.bundle)]
