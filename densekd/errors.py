"""Error types whose message is one readable line (``str(KeyError)`` would add quotes)."""
from __future__ import annotations


class DenseKDError(Exception):
    """Base class for densekd's own errors."""


class UnknownNameError(DenseKDError, KeyError):
    """A module, loss, key or config name that does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(DenseKDError, ValueError):
    """A configuration value that is missing, unknown or of the wrong type."""
