"""Results uplink: an on-disk outbox and an MQTT publisher (issue 13). Off unless ``[uplink] enabled = true``.

paho-mqtt is imported only when a connection is made, so the package imports without it.
"""

from facediag.edge.uplink.announce import (
    BundleAnnouncement,
    announcement_for,
    check_bundle,
    parse_announcement,
)
from facediag.edge.uplink.outbox import Outbox, OutboxStats
from facediag.edge.uplink.publisher import Uplink
from facediag.edge.uplink.settings import UplinkSettings
from facediag.edge.uplink.topics import (
    new_result_id,
    results_topic,
    station_id_problem,
    status_topic,
    validate_station_id,
)

__all__ = [
    "BundleAnnouncement", "Outbox", "OutboxStats", "Uplink", "UplinkSettings", "announcement_for", "check_bundle",
    "new_result_id", "parse_announcement", "results_topic", "station_id_problem", "status_topic",
    "validate_station_id",
]
