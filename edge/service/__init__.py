"""Running as a service: systemd notification, the local HTTP API and Prometheus metrics.

``sdnotify`` and ``api`` use only the standard library; ``metrics`` needs
prometheus-client (the ``station`` extra) and is imported only by who uses it.
"""
