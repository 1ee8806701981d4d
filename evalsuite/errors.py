"""Exceptions a user is expected to read; each says what to do next."""

from __future__ import annotations


class EvalsuiteError(Exception):
    """Base class of every error evalsuite raises on purpose."""


class MissingBackendError(EvalsuiteError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class ConfigError(EvalsuiteError, ValueError):
    """A reward, benchmark or generator was configured in a way that cannot work."""


class UnknownNameError(EvalsuiteError, KeyError):
    """A registry lookup for a name nobody registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


class PluginError(EvalsuiteError, RuntimeError):
    """A registered plugin failed to load."""


class ModelLoadError(EvalsuiteError, OSError):
    """A model could not be loaded (offline, gated, misspelled id, missing folder); says how to fix it."""

    model: str = ""  # the id or folder that failed
    reason: str = ""  # why, in words
