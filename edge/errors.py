"""Exceptions that carry a message meant for the person at the keyboard."""

from __future__ import annotations


class FacediagError(Exception):
    """Base class: the message says what is wrong and what to do about it."""


class ImageLoadError(FacediagError):
    """A photo could not be read (missing, empty, corrupt, too large, unsupported)."""


class ConfigError(FacediagError):
    """A configuration value or key is wrong. The daemon exits with status 78 on this."""


class ModelFileError(FacediagError):
    """A model file is missing, corrupt, or has the wrong shape."""


class BundleError(FacediagError):
    """A model bundle is incomplete, tampered with, or of an unknown schema."""
