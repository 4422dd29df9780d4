"""The installed package's version, read from its metadata (the one place it is defined is pyproject.toml).

Lives in the bottom layer so that edge, converters, calibration and training can
record which facediag wrote a file without importing the CLI package.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__: str = metadata.version("facediag")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
