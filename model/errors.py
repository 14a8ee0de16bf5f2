"""Errors a user can cause and fix. The CLI and the service turn these into messages, never tracebacks."""


class MetahError(Exception):
    """Base class for every user-facing error raised by ``model``."""


class ConfigError(MetahError):
    """An invalid setting: unknown backbone or method, a bit length that is not a multiple of 8, ..."""


class DataError(MetahError):
    """Unusable training or evaluation data: an empty class, an empty target folder, no readable image."""


class CheckpointError(MetahError):
    """A checkpoint or encoder artefact that cannot be read or does not match this code."""
