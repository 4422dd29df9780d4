"""facediag: facial-diagnosis screening on edge devices.

Layers (each installed under this one namespace): ``facediag.edge`` (on-device,
no torch), ``facediag.calibration``, ``facediag.converters``, ``facediag.training``,
and the CLI (``facediag.cli``, ``facediag.commands``) on top. See docs/architecture.md.
"""

from facediag.edge.version import __version__

__all__ = ["__version__"]
